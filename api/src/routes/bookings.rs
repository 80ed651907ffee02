//! Booking routes: reserve, modify, the status changes, read one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ledger_domain::values::ClaimKind;
use ledger_domain::{CalendarCommand, Outcome};
use uuid::Uuid;

use super::{execute, execute_as, not_found_as, PathId};
use crate::auth::Caller;
use crate::conditional::IfMatch;
use crate::dto::{
    booking_view, BookingView, CancelBody, EmptyBody, ModifyBookingBody, ReserveBody,
};
use crate::error::ApiError;
use crate::extract::{Body, WriteCtx};
use crate::state::AppState;

#[utoipa::path(post, path = "/api/v1/bookings", tag = "bookings",
    request_body = ReserveBody,
    responses((status = 201, body = BookingView), (status = "4XX", body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn reserve(
    State(state): State<AppState>,
    ctx: WriteCtx,
    Body(body): Body<ReserveBody>,
) -> Result<Response, ApiError> {
    let booking_id = Uuid::now_v7();
    let property_id = body.property_id;
    let reserve = body.into_command(booking_id);
    let execution = ctx.execution(property_id, CalendarCommand::ReserveStay(reserve));
    execute_as(&state, execution, move |calendar, outcome, position| {
        let (id, status) = match outcome {
            // A channel sent this booking before: 200 with the first booking.
            Outcome::AlreadyRecorded(first) => (*first, StatusCode::OK),
            _ => (booking_id, StatusCode::CREATED),
        };
        booking_view(calendar, id, position).map(|view| (status, view))
    })
    .await
}

/// The property of one of the caller's agency's bookings, even when read
/// models lag (the ref is written with the event that creates the booking).
async fn property_of(
    state: &AppState,
    caller: &Caller,
    booking_id: Uuid,
) -> Result<Uuid, ApiError> {
    state
        .store()
        .resolve_ref(booking_id, ClaimKind::Booking, caller.0.agency_id)
        .await?
        .ok_or(ApiError::BookingNotFound)
}

/// Runs a command on an existing booking and answers with the booking;
/// with `If-Match`, only while the booking is at that version.
async fn change(
    state: AppState,
    booking_id: Uuid,
    (ctx, IfMatch(expected_version)): (WriteCtx, IfMatch),
    command: CalendarCommand,
) -> Result<Response, ApiError> {
    let property_id = property_of(&state, &ctx.caller, booking_id).await?;
    let mut execution = ctx.execution(property_id, command);
    execution.command.expected_version = expected_version;
    execute(
        &state,
        execution,
        StatusCode::OK,
        move |calendar, position| booking_view(calendar, booking_id, position),
    )
    .await
    .map_err(not_found_as(|| ApiError::BookingNotFound))
}

#[utoipa::path(patch, path = "/api/v1/bookings/{id}", tag = "bookings",
    request_body = ModifyBookingBody,
    responses((status = 200, body = BookingView), (status = "4XX", body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn modify(
    State(state): State<AppState>,
    PathId(id): PathId,
    ctx: WriteCtx,
    if_match: IfMatch,
    Body(body): Body<ModifyBookingBody>,
) -> Result<Response, ApiError> {
    change(
        state,
        id,
        (ctx, if_match),
        CalendarCommand::ModifyBooking(body.into_command(id)),
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/bookings/{id}/confirm", tag = "bookings",
    request_body = EmptyBody,
    responses((status = 200, body = BookingView), (status = "4XX", body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn confirm(
    State(state): State<AppState>,
    PathId(id): PathId,
    ctx: WriteCtx,
    if_match: IfMatch,
    Body(EmptyBody {}): Body<EmptyBody>,
) -> Result<Response, ApiError> {
    change(
        state,
        id,
        (ctx, if_match),
        CalendarCommand::ConfirmBooking { booking_id: id },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/bookings/{id}/cancel", tag = "bookings",
    request_body = CancelBody,
    responses((status = 200, body = BookingView), (status = "4XX", body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    PathId(id): PathId,
    ctx: WriteCtx,
    if_match: IfMatch,
    Body(body): Body<CancelBody>,
) -> Result<Response, ApiError> {
    let command = CalendarCommand::CancelBooking {
        booking_id: id,
        reason: body.reason,
    };
    change(state, id, (ctx, if_match), command).await
}

#[utoipa::path(post, path = "/api/v1/bookings/{id}/check-in", tag = "bookings",
    request_body = EmptyBody,
    responses((status = 200, body = BookingView), (status = "4XX", body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn check_in(
    State(state): State<AppState>,
    PathId(id): PathId,
    ctx: WriteCtx,
    if_match: IfMatch,
    Body(EmptyBody {}): Body<EmptyBody>,
) -> Result<Response, ApiError> {
    change(
        state,
        id,
        (ctx, if_match),
        CalendarCommand::CheckIn { booking_id: id },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/bookings/{id}/check-out", tag = "bookings",
    request_body = EmptyBody,
    responses((status = 200, body = BookingView), (status = "4XX", body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn check_out(
    State(state): State<AppState>,
    PathId(id): PathId,
    ctx: WriteCtx,
    if_match: IfMatch,
    Body(EmptyBody {}): Body<EmptyBody>,
) -> Result<Response, ApiError> {
    change(
        state,
        id,
        (ctx, if_match),
        CalendarCommand::CheckOut { booking_id: id },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/bookings/{id}/no-show", tag = "bookings",
    request_body = EmptyBody,
    responses((status = 200, body = BookingView), (status = "4XX", body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn no_show(
    State(state): State<AppState>,
    PathId(id): PathId,
    ctx: WriteCtx,
    if_match: IfMatch,
    Body(EmptyBody {}): Body<EmptyBody>,
) -> Result<Response, ApiError> {
    change(
        state,
        id,
        (ctx, if_match),
        CalendarCommand::MarkNoShow { booking_id: id },
    )
    .await
}
