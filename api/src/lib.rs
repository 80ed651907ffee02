//! The HTTP skin of the ledger: routes, extractors, auth and error mapping
//! over the command bus, plus the `ledger` binary's application start-up.
//! No business decision is made here; they are in `ledger-domain`.

pub mod auth;
pub mod conditional;
pub mod config;
pub mod console;
pub mod cors;
pub mod dto;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod jwks;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod request_id;
pub mod routes;
pub mod startup;
pub mod state;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{middleware, Extension, Router};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::routes::resync;
use crate::routes::{
    agencies, blocks, bookings, health, ical, ops, properties, reads, room_types, stream,
};
use crate::state::AppState;

/// Request bodies over this many bytes get 413 `PAYLOAD_TOO_LARGE`.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Every documented route. A handler answers at the path of its
/// `#[utoipa::path]`, so a route is written once and the router and
/// `/openapi.json` cannot disagree.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        // `GET` of one property or booking: with an `ETag`, and 304 when
        // `If-None-Match` names it.
        .routes(conditional_read(routes!(reads::get_property)))
        .routes(conditional_read(routes!(reads::get_booking)))
        // One handler a line; those of one path share it.
        .routes(routes!(reads::list_properties))
        .routes(routes!(properties::register))
        .routes(routes!(properties::update))
        .routes(routes!(properties::archive))
        .routes(routes!(properties::events))
        .routes(routes!(resync::property))
        .routes(routes!(resync::checksum))
        .routes(routes!(room_types::list))
        .routes(routes!(room_types::create))
        .routes(routes!(room_types::update))
        .routes(routes!(reads::list_bookings))
        .routes(routes!(bookings::reserve))
        .routes(routes!(bookings::modify))
        .routes(routes!(bookings::confirm))
        .routes(routes!(bookings::cancel))
        .routes(routes!(bookings::check_in))
        .routes(routes!(bookings::check_out))
        .routes(routes!(bookings::no_show))
        .routes(routes!(stream::stream))
        .routes(routes!(reads::availability))
        .routes(routes!(reads::search))
        .routes(routes!(reads::audit_log))
        .routes(routes!(blocks::create))
        .routes(routes!(blocks::get))
        .routes(routes!(blocks::release))
        .routes(routes!(ical::rotate_token))
        .routes(routes!(ical::list_feeds))
        .routes(routes!(ical::add_feed))
        .routes(routes!(ical::delete_feed))
        .routes(routes!(ical::export_feed))
        .routes(routes!(ical::export_room_type_feed))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(ops::current_commit))
        .routes(routes!(ops::env_sanity))
        .routes(routes!(ops::projections))
        .routes(routes!(ops::retry_parked))
        .routes(routes!(ops::replay_progress))
        .routes(routes!(ops::start_replay))
        .routes(routes!(agencies::list))
        .routes(routes!(agencies::create))
        .routes(routes!(agencies::get))
        .routes(routes!(agencies::suspend))
        .routes(routes!(agencies::reinstate))
        .routes(routes!(agencies::features))
        .routes(routes!(agencies::audit_log))
        .routes(routes!(resync::start))
        .routes(routes!(resync::progress))
        .routes(routes!(ops::consumers))
        // The probes again under the names Kubernetes users expect; the
        // document lists them through `openapi::HealthAliases`.
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
}

/// Answers a read with the `ETag` of the resource's version (`conditional::on_read`).
fn conditional_read(
    (schemas, paths, method): UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    (
        schemas,
        paths,
        method.layer(middleware::from_fn(conditional::on_read)),
    )
}

pub fn router(state: AppState) -> Router {
    let (routes, document) = openapi::split(api_routes());
    let routes = routes
        .merge(openapi::routes(document))
        .merge(console::routes(&state.config))
        .fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn(idempotency::middleware))
        .layer(Extension(live::Hub::new(
            state.pool.clone(),
            state.bus.waker().clone(),
        )))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            health::bounded_by_database,
        ));
    let app = limits::around(routes, &state)
        .layer(CatchPanicLayer::custom(|_panic| {
            axum::response::IntoResponse::into_response(ApiError::internal("a handler panicked"))
        }))
        .layer(middleware::from_fn(request_id::middleware))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .with_state(state.clone());
    // Around the whole router (a layer of a router wraps each route on its
    // own): a preflight needs no token and is no agency's request.
    match cors::Origins::from_config(&state.config.cors_origins) {
        Some(origins) => Router::new()
            .fallback_service(app)
            .layer(middleware::from_fn_with_state(origins, cors::middleware)),
        None => app,
    }
}
