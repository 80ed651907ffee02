//! Booking routes: reserve, modify, the status changes, read one.

use axum::http::StatusCode;
use axum::response::Response;
use ledger_domain::values::ClaimKind;
use ledger_domain::{CalendarCommand, Outcome};
use uuid::Uuid;

use super::{execute_as, execute_on, property_of, Change, New};
use crate::conditional::IfMatch;
use crate::dto::{
    booking_view, BookingView, CancelBody, EmptyBody, ModifyBookingBody, ReserveBody,
};
use crate::error::ApiError;

#[utoipa::path(post, path = "/api/v1/bookings", tag = "bookings",
    request_body = ReserveBody,
    responses((status = 201, body = BookingView)))]
pub async fn reserve(new: New<ReserveBody>) -> Result<Response, ApiError> {
    let property_id = new.body.property_id;
    let reserve = new.body.into_command(new.id);
    let execution = new
        .ctx
        .execution(property_id, CalendarCommand::ReserveStay(reserve));
    let booking_id = new.id;
    execute_as(&new.state, execution, move |calendar, outcome, position| {
        let (id, status) = match outcome {
            // A channel sent this booking before: 200 with the first booking.
            Outcome::AlreadyRecorded(first) => (*first, StatusCode::OK),
            _ => (booking_id, StatusCode::CREATED),
        };
        booking_view(calendar, id, position).map(|view| (status, view))
    })
    .await
}

impl<B> Change<B> {
    /// Runs the command made from the booking id (and the body) and answers
    /// with the booking; with `If-Match`, only while the booking is at that
    /// version.
    async fn run(
        self, command: impl FnOnce(Uuid, B) -> CalendarCommand,
    ) -> Result<Response, ApiError> {
        let Change {
            state,
            id: booking_id,
            ctx,
            if_match: IfMatch(expected_version),
            body,
        } = self;
        let property_id = property_of(&state, &ctx.caller, ClaimKind::Booking, booking_id).await?;
        let execution = ctx.execution_at(property_id, command(booking_id, body), expected_version);
        execute_on(
            &state,
            execution,
            ClaimKind::Booking,
            booking_id,
            booking_view,
        )
        .await
    }
}

#[utoipa::path(patch, path = "/api/v1/bookings/{id}", tag = "bookings",
    request_body = ModifyBookingBody,
    responses((status = 200, body = BookingView)))]
pub async fn modify(change: Change<ModifyBookingBody>) -> Result<Response, ApiError> {
    change
        .run(|id, body| CalendarCommand::ModifyBooking(body.into_command(id)))
        .await
}

/// A status change that takes no body: the route's handler runs `$command`
/// on the booking of the path. Written once for the four of them, with
/// their OpenAPI annotation.
macro_rules! status_change {
    ($name:ident, $path:literal, $command:ident) => {
        #[utoipa::path(post, path = $path, tag = "bookings", request_body = EmptyBody, responses((status = 200, body = BookingView)))]
        pub async fn $name(change: Change<EmptyBody>) -> Result<Response, ApiError> {
            change
                .run(|id, EmptyBody {}| CalendarCommand::$command { booking_id: id })
                .await
        }
    };
}

status_change!(confirm, "/api/v1/bookings/{id}/confirm", ConfirmBooking);
status_change!(check_in, "/api/v1/bookings/{id}/check-in", CheckIn);
status_change!(check_out, "/api/v1/bookings/{id}/check-out", CheckOut);
status_change!(no_show, "/api/v1/bookings/{id}/no-show", MarkNoShow);

#[utoipa::path(post, path = "/api/v1/bookings/{id}/cancel", tag = "bookings",
    request_body = CancelBody,
    responses((status = 200, body = BookingView)))]
pub async fn cancel(change: Change<CancelBody>) -> Result<Response, ApiError> {
    change
        .run(|id, body| CalendarCommand::CancelBooking {
            booking_id: id,
            reason: body.reason,
        })
        .await
}
