//! Room type routes (docs/api.md "Room types"): create, update and list the
//! room types of a property. Room types live in the property's calendar, so
//! they are decided and read like its bookings and blocks.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ledger_domain::commands::{CreateRoomType, UpdateRoomType};
use ledger_domain::{Action, CalendarCommand, PropertyCalendar, RoomType};
use ledger_infra::Execution;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{execute, read_reply, PathId, PathIds};
use crate::auth::Caller;
use crate::dto::{line, not_null, nullable, optional_line};
use crate::error::ApiError;
use crate::extract::{Body, WriteCtx};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomTypeBody {
    #[schema(schema_with = line::<1, 200>)]
    pub name: String,
    #[schema(minimum = 1, maximum = 1000)]
    pub units: u32,
    #[serde(default)]
    #[schema(schema_with = optional_line::<0, 255>)]
    pub external_ref: Option<String>,
}

/// Any of the fields; `null` clears `external_ref` and is refused for the others.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoomTypeBody {
    #[serde(default, deserialize_with = "not_null")]
    #[schema(schema_with = line::<1, 200>)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = u32, minimum = 1, maximum = 1000)]
    pub units: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = optional_line::<0, 255>)]
    pub external_ref: Option<Option<String>>,
}

impl CreateRoomTypeBody {
    fn into_command(self, room_type_id: Uuid) -> CreateRoomType {
        CreateRoomType {
            room_type_id,
            name: self.name,
            units: self.units,
            external_ref: self.external_ref,
        }
    }
}

impl UpdateRoomTypeBody {
    fn into_command(self, room_type_id: Uuid) -> UpdateRoomType {
        UpdateRoomType {
            room_type_id,
            name: self.name,
            units: self.units,
            external_ref: self.external_ref,
        }
    }
}

/// A room type as the contract shows it: the calendar's record and the
/// position it was read at.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomTypeView {
    #[serde(flatten)]
    pub room_type: RoomType,
    pub position: i64,
}

impl RoomTypeView {
    fn new(t: &RoomType, position: i64) -> Self {
        RoomTypeView {
            room_type: t.clone(),
            position,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoomTypeList {
    pub data: Vec<RoomTypeView>,
}

fn room_type_view(calendar: &PropertyCalendar, id: Uuid, position: i64) -> Option<RoomTypeView> {
    calendar
        .room_types
        .get(&id)
        .map(|t| RoomTypeView::new(t, position))
}

#[utoipa::path(post, path = "/api/v1/properties/{id}/room-types", tag = "room types",
    request_body = CreateRoomTypeBody,
    responses((status = 201, body = RoomTypeView)))]
pub async fn create(
    State(state): State<AppState>, PathId(property_id): PathId, ctx: WriteCtx,
    Body(body): Body<CreateRoomTypeBody>,
) -> Result<Response, ApiError> {
    let room_type_id = Uuid::now_v7();
    let command = CalendarCommand::CreateRoomType(body.into_command(room_type_id));
    let execution = ctx.execution(property_id, command);
    decide(&state, execution, room_type_id, StatusCode::CREATED).await
}

#[utoipa::path(patch, path = "/api/v1/properties/{id}/room-types/{room_type_id}", tag = "room types",
    request_body = UpdateRoomTypeBody,
    responses((status = 200, body = RoomTypeView)))]
pub async fn update(
    State(state): State<AppState>, PathIds(property_id, room_type_id): PathIds, ctx: WriteCtx,
    Body(body): Body<UpdateRoomTypeBody>,
) -> Result<Response, ApiError> {
    let command = CalendarCommand::UpdateRoomType(body.into_command(room_type_id));
    let execution = ctx.execution(property_id, command);
    decide(&state, execution, room_type_id, StatusCode::OK).await
}

/// Runs a room type's command and answers with the room type after it.
async fn decide(
    state: &AppState, execution: Execution, room_type_id: Uuid, status: StatusCode,
) -> Result<Response, ApiError> {
    execute(state, execution, status, move |calendar, position| {
        room_type_view(calendar, room_type_id, position)
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/properties/{id}/room-types", tag = "room types",
    responses((status = 200, body = RoomTypeList)))]
pub async fn list(
    State(state): State<AppState>, PathId(property_id): PathId, caller: Caller,
) -> Result<Response, ApiError> {
    let (position, list) = state
        .bus
        .read(property_id, |loaded| {
            loaded
                .calendar
                .property_for(&caller.0, Action::ReadCalendar)
                .map_err(ApiError::from)?;
            let data = loaded
                .calendar
                .room_types
                .values()
                .map(|t| RoomTypeView::new(t, loaded.position))
                .collect();
            Ok::<_, ApiError>((loaded.position, RoomTypeList { data }))
        })
        .await??;
    Ok(read_reply(position, list))
}
