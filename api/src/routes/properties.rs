//! Property routes: register, update, archive, read one, raw history.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ledger_domain::commands::UpdateProperty;
use ledger_domain::{Action, CalendarCommand};
use ledger_projections::views::PropertyRow;

use super::{execute, read_reply, visible_property, Change, New, Paging, PathId};
use crate::auth::Caller;
use crate::conditional::IfMatch;
use crate::dto::{
    property_view, EmptyBody, EventView, Page, RegisterPropertyBody, UpdatePropertyBody,
};
use crate::error::ApiError;
use crate::state::AppState;

#[utoipa::path(post, path = "/api/v1/properties", tag = "properties",
    request_body = RegisterPropertyBody,
    responses((status = 201, body = PropertyRow)))]
pub async fn register(new: New<RegisterPropertyBody>) -> Result<Response, ApiError> {
    let command = CalendarCommand::RegisterProperty(new.body.into_command(new.id));
    let execution = new.ctx.execution(new.id, command);
    execute(&new.state, execution, StatusCode::CREATED, property_view).await
}

#[utoipa::path(patch, path = "/api/v1/properties/{id}", tag = "properties",
    request_body = UpdatePropertyBody,
    responses((status = 200, body = PropertyRow)))]
pub async fn update(change: Change<UpdatePropertyBody>) -> Result<Response, ApiError> {
    run(change, |body| {
        CalendarCommand::UpdateProperty(UpdateProperty::from(body))
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/properties/{id}/archive", tag = "properties",
    request_body = EmptyBody,
    responses((status = 200, body = PropertyRow)))]
pub async fn archive(change: Change<EmptyBody>) -> Result<Response, ApiError> {
    run(change, |EmptyBody {}| CalendarCommand::ArchiveProperty).await
}

/// Runs the command made from the body on the property and answers with
/// it; with `If-Match`, only while the property is at that version.
async fn run<B>(
    change: Change<B>, command: impl FnOnce(B) -> CalendarCommand,
) -> Result<Response, ApiError> {
    let Change {
        state,
        id,
        ctx,
        if_match: IfMatch(expected_version),
        body,
    } = change;
    let execution = ctx.execution_at(id, command(body), expected_version);
    execute(&state, execution, StatusCode::OK, property_view).await
}

#[utoipa::path(get, path = "/api/v1/properties/{id}/events", tag = "properties",
    params(Paging),
    responses((status = 200, body = Page<EventView>)))]
pub async fn events(
    State(state): State<AppState>, PathId(id): PathId, caller: Caller, page: Paging,
) -> Result<Response, ApiError> {
    visible_property(&state, &caller, id, Action::ReadEventHistory).await?;
    let rows = state
        .store()
        .history(id, page.after_number()?, page.fetch())
        .await?;
    // This route reads the log itself, which is always at its head: any
    // `min_position` a client sends is already reached.
    let position = state.store().head().await?;
    let events = page.page(rows, |e| e.sequence.to_string(), EventView::from);
    Ok(read_reply(position, events))
}
