//! Availability block routes: block nights, release, read one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ledger_domain::values::ClaimKind;
use ledger_domain::{Action, CalendarCommand, CalendarError};

use super::{execute, execute_on, not_found_as, property_of, read_reply, New, PathId};
use crate::auth::Caller;
use crate::dto::{block_view, BlockBody, BlockView};
use crate::error::ApiError;
use crate::extract::WriteCtx;
use crate::state::AppState;

#[utoipa::path(post, path = "/api/v1/availability/blocks", tag = "availability",
    request_body = BlockBody,
    responses((status = 201, body = BlockView)))]
pub async fn create(new: New<BlockBody>) -> Result<Response, ApiError> {
    let property_id = new.body.property_id;
    let command = CalendarCommand::BlockNights(new.body.into_command(new.id));
    let execution = new.ctx.execution(property_id, command);
    let block_id = new.id;
    execute(
        &new.state,
        execution,
        StatusCode::CREATED,
        move |calendar, position| block_view(calendar, block_id, position),
    )
    .await
}

#[utoipa::path(delete, path = "/api/v1/availability/blocks/{id}", tag = "availability",
    responses((status = 200, body = BlockView)))]
pub async fn release(
    State(state): State<AppState>, PathId(id): PathId, ctx: WriteCtx,
) -> Result<Response, ApiError> {
    let property_id = property_of(&state, &ctx.caller, ClaimKind::Block, id).await?;
    let execution = ctx.execution(property_id, CalendarCommand::ReleaseBlock { block_id: id });
    execute_on(&state, execution, ClaimKind::Block, id, block_view).await
}

#[utoipa::path(get, path = "/api/v1/availability/blocks/{id}", tag = "availability",
    responses((status = 200, body = BlockView)))]
pub async fn get(
    State(state): State<AppState>, PathId(id): PathId, caller: Caller,
) -> Result<Response, ApiError> {
    let property_id = property_of(&state, &caller, ClaimKind::Block, id).await?;
    let (position, view) = state
        .bus
        .read(property_id, |loaded| {
            loaded
                .calendar
                .property_for(&caller.0, Action::ReadCalendar)
                .map_err(ApiError::from)
                .map_err(not_found_as(ClaimKind::Block))?;
            block_view(&loaded.calendar, id, loaded.position)
                .map(|view| (loaded.position, view))
                .ok_or(ApiError::Calendar(CalendarError::BlockNotFound))
        })
        .await??;
    Ok(read_reply(position, view))
}
