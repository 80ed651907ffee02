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
use axum::handler::Handler;
use axum::routing::{get, patch, post, put};
use axum::{middleware, Extension, Router};
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;
use crate::routes::resync;
use crate::routes::{
    agencies, blocks, bookings, health, ical, ops, properties, reads, room_types, stream,
};
use crate::state::AppState;

/// Request bodies over this many bytes get 413 `PAYLOAD_TOO_LARGE`.
pub const BODY_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route(
            "/api/v1/properties",
            get(reads::list_properties).post(properties::register),
        )
        .route(
            "/api/v1/properties/{id}",
            get(reads::get_property.layer(middleware::from_fn(conditional::on_read)))
                .patch(properties::update),
        )
        .route("/api/v1/properties/{id}/archive", post(properties::archive))
        .route("/api/v1/properties/{id}/events", get(properties::events))
        .route("/api/v1/properties/{id}/resync", post(resync::property))
        .route("/api/v1/properties/{id}/checksum", get(resync::checksum))
        .route(
            "/api/v1/properties/{id}/room-types",
            get(room_types::list).post(room_types::create),
        )
        .route(
            "/api/v1/properties/{id}/room-types/{room_type_id}",
            patch(room_types::update),
        )
        .route(
            "/api/v1/bookings",
            get(reads::list_bookings).post(bookings::reserve),
        )
        .route(
            "/api/v1/bookings/{id}",
            get(reads::get_booking.layer(middleware::from_fn(conditional::on_read)))
                .patch(bookings::modify),
        )
        .route("/api/v1/bookings/{id}/confirm", post(bookings::confirm))
        .route("/api/v1/bookings/{id}/cancel", post(bookings::cancel))
        .route("/api/v1/bookings/{id}/check-in", post(bookings::check_in))
        .route("/api/v1/bookings/{id}/check-out", post(bookings::check_out))
        .route("/api/v1/bookings/{id}/no-show", post(bookings::no_show))
        .route("/api/v1/stream", get(stream::stream))
        .route("/api/v1/availability", get(reads::availability))
        .route("/api/v1/availability/search", get(reads::search))
        .route("/api/v1/audit-log", get(reads::audit_log))
        .route("/api/v1/availability/blocks", post(blocks::create))
        .route(
            "/api/v1/availability/blocks/{id}",
            get(blocks::get).delete(blocks::release),
        )
        .route(
            "/api/v1/properties/{id}/ical-token",
            post(ical::rotate_token),
        )
        .route(
            "/api/v1/properties/{id}/ical-feeds",
            get(ical::list_feeds).post(ical::add_feed),
        )
        .route(
            "/api/v1/properties/{id}/ical-feeds/{feed_id}",
            axum::routing::delete(ical::delete_feed),
        )
        .route("/ical/{file}", get(ical::export_feed))
        .route(
            "/ical/{property_id}/{file}",
            get(ical::export_room_type_feed),
        )
        .route("/health", get(health::live))
        .route("/healthz", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/readyz", get(health::ready))
        .route("/ops/current-commit", get(ops::current_commit))
        .route("/ops/env-sanity", get(ops::env_sanity))
        .route("/ops/projections", get(ops::projections))
        .route(
            "/ops/projections/{name}/parked/retry",
            post(ops::retry_parked),
        )
        .route(
            "/ops/projections/{name}/replay",
            get(ops::replay_progress).post(ops::start_replay),
        )
        .route("/ops/agencies", get(agencies::list).post(agencies::create))
        .route("/ops/agencies/{id}", get(agencies::get))
        .route("/ops/agencies/{id}/suspend", post(agencies::suspend))
        .route("/ops/agencies/{id}/reinstate", post(agencies::reinstate))
        .route("/ops/agencies/{id}/features", put(agencies::features))
        .route("/ops/audit-log", get(agencies::audit_log))
        .route("/ops/resync", post(resync::start))
        .route("/ops/resync/{job_id}", get(resync::progress))
        .route("/ops/consumers", get(ops::consumers))
        .merge(openapi::routes())
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
