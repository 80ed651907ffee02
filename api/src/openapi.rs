//! The OpenAPI document, generated from the handlers' annotations, and the
//! Swagger UI that renders it (assets compiled into the binary: no CDN).

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::routes::{blocks, bookings, health, ical, ops, properties, reads};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Booking Ledger", description = "The system of record for who holds which nights of which property."),
    paths(
        properties::register, properties::update, properties::archive, properties::events,
        bookings::reserve, bookings::modify, bookings::confirm, bookings::cancel,
        bookings::check_in, bookings::check_out, bookings::no_show,
        blocks::create, blocks::release, blocks::get,
        health::live, health::ready, ops::current_commit, ops::env_sanity,
        ops::projections, ops::retry_parked, ops::start_replay, ops::replay_progress,
        reads::list_properties, reads::get_property, reads::list_bookings, reads::get_booking,
        reads::availability, reads::search, reads::audit_log,
        ical::export_feed, ical::rotate_token, ical::add_feed, ical::list_feeds, ical::delete_feed,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub fn routes() -> Router<AppState> {
    Router::from(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}
