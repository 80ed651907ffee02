//! The routes of docs/api.md and the helpers every handler shares.

pub mod agencies;
pub mod blocks;
pub mod bookings;
pub mod health;
pub mod ical;
pub mod ops;
pub mod properties;
pub mod reads;
pub mod resync;
pub mod room_types;
pub mod stream;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::ETAG;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

use ledger_domain::values::ClaimKind;
use ledger_domain::{Action, CalendarError, Outcome, PropertyCalendar};
use ledger_infra::{Answer, Decided, Execution, Reply, ReplyHook};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::{KnownFormat, Type};
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Caller;
use crate::conditional::{self, IfMatch};
use crate::dto::Page;
use crate::error::ApiError;
use crate::extract::{Body, WriteCtx};
use crate::openapi::query_parameter;
use crate::state::AppState;

pub const POSITION_HEADER: &str = "x-ledger-position";

/// A UUID from the path; anything else is a 400, not a routing failure.
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| malformed())?;
        path_uuid(&raw).map(PathId)
    }
}

/// Two UUIDs from the path (a property and one of its room types or
/// feeds), checked in order like [`PathId`].
pub struct PathIds(pub Uuid, pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((first, second)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| malformed())?;
        Ok(PathIds(path_uuid(&first)?, path_uuid(&second)?))
    }
}

fn malformed() -> ApiError {
    ApiError::validation("the path is malformed")
}

fn path_uuid(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::validation(format!("{raw:?} is not a UUID")))
}

/// A request that creates a property, booking or block: the id the new
/// resource gets (a UUIDv7, so ids sort by creation), the command context
/// and the body, extracted in that order.
pub struct New<B> {
    pub state: AppState,
    pub id: Uuid,
    pub ctx: WriteCtx,
    pub body: B,
}

impl<B: DeserializeOwned> FromRequest<AppState> for New<B> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = request.into_parts();
        let ctx = WriteCtx::from_request_parts(&mut parts, state).await?;
        let Body(body) = Body::from_request(Request::from_parts(parts, body), state).await?;
        Ok(New {
            state: state.clone(),
            id: Uuid::now_v7(),
            ctx,
            body,
        })
    }
}

/// A request that changes an existing property or booking: its id, the
/// command context, `If-Match` and the body, extracted in the order every
/// write route uses.
pub struct Change<B> {
    state: AppState,
    id: Uuid,
    ctx: WriteCtx,
    if_match: IfMatch,
    body: B,
}

impl<B: DeserializeOwned> FromRequest<AppState> for Change<B> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = request.into_parts();
        let PathId(id) = PathId::from_request_parts(&mut parts, state).await?;
        let ctx = WriteCtx::from_request_parts(&mut parts, state).await?;
        let if_match = IfMatch::from_request_parts(&mut parts, state).await?;
        let Body(body) = Body::from_request(Request::from_parts(parts, body), state).await?;
        Ok(Change {
            state: state.clone(),
            id,
            ctx,
            if_match,
            body,
        })
    }
}

/// Runs a command and answers with the view `view` finds in the calendar
/// after it (a stored reply, when the Idempotency-Key was seen before).
pub async fn execute<V, F>(
    state: &AppState, execution: Execution, status: StatusCode, view: F,
) -> Result<Response, ApiError>
where
    V: Serialize,
    F: Fn(&PropertyCalendar, i64) -> Option<V> + Send + Sync + 'static,
{
    execute_as(state, execution, move |calendar, _, position| {
        view(calendar, position).map(|body| (status, body))
    })
    .await
}

/// Like [`execute`], with the status chosen by the view from the outcome.
pub async fn execute_as<V, F>(
    state: &AppState, execution: Execution, view: F,
) -> Result<Response, ApiError>
where
    V: Serialize,
    F: Fn(&PropertyCalendar, &Outcome, i64) -> Option<(StatusCode, V)> + Send + Sync + 'static,
{
    // Runs in the command's own task, outside this request's scope.
    let request_id = execution.request_id.clone();
    let replies: Arc<dyn ReplyHook<Reply>> = Arc::new(HttpReplies {
        request_id: request_id.clone(),
    });
    let render = move |calendar: &PropertyCalendar, outcome: &Outcome, position: i64| match view(
        calendar, outcome, position,
    )
    .map(|(status, body)| (status, serde_json::to_value(body)))
    {
        Some((status, Ok(body))) => Reply {
            status: status.as_u16(),
            body,
        },
        _ => ApiError::internal("the result could not be rendered").reply_for(&request_id),
    };
    let answer = state.bus.execute(execution, render, Some(replies)).await?;
    Ok(written(match answer {
        Answer::Decided(decided) => decided.view,
        Answer::Replayed(reply) => reply,
    }))
}

/// What the HTTP layer keeps for an Idempotency-Key: the reply it sent, and
/// refusals decided from the ledger's state (404 of a missing resource, the
/// 409s, the 412 of a stale `If-Match`); a 400 or 403 is decided afresh on every retry.
struct HttpReplies {
    request_id: String,
}

impl ReplyHook<Reply> for HttpReplies {
    fn accepted(&self, decided: &Decided<Reply>) -> Reply {
        decided.view.clone()
    }

    fn refused(&self, refusal: &CalendarError) -> Option<Reply> {
        let reply = ApiError::from(refusal.clone()).reply_for(&self.request_id);
        // 412: the version the request named was not the resource's, a
        // refusal from state like a 409.
        matches!(reply.status, 404 | 409 | 412).then_some(reply)
    }
}

/// The reply of a write; a resource with a `version` carries its `ETag`.
fn written(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let version = status
        .is_success()
        .then(|| conditional::version_in(&reply.body))
        .flatten();
    let mut response = (status, Json(reply.body)).into_response();
    if let Some(version) = version {
        response
            .headers_mut()
            .insert(ETAG, conditional::etag(version));
    }
    response
}

/// A read reply with the log position it reflects in `x-ledger-position`.
pub fn read_reply<V: Serialize>(position: i64, body: V) -> Response {
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(POSITION_HEADER, HeaderValue::from(position));
    response
}

/// 404 for a property the caller may not see, 403 for a role that may not
/// take `action`.
pub async fn visible_property(
    state: &AppState, caller: &Caller, id: Uuid, action: Action,
) -> Result<(), ApiError> {
    caller.require(action)?;
    state
        .bus
        .read(id, |loaded| {
            loaded.calendar.property_for(&caller.0, action).map(|_| ())
        })
        .await??;
    Ok(())
}

/// The property of one of the caller's agency's bookings or blocks, even
/// when read models lag (the ref is written with the event that creates it).
pub async fn property_of(
    state: &AppState, caller: &Caller, kind: ClaimKind, id: Uuid,
) -> Result<Uuid, ApiError> {
    state
        .store()
        .resolve_ref(id, kind, caller.0.agency_id)
        .await?
        .ok_or(not_found(kind))
}

/// Runs a command on a booking or block and answers 200 with `view` of it.
pub async fn execute_on<V: Serialize + 'static>(
    state: &AppState, execution: Execution, kind: ClaimKind, id: Uuid,
    view: fn(&PropertyCalendar, Uuid, i64) -> Option<V>,
) -> Result<Response, ApiError> {
    execute(
        state,
        execution,
        StatusCode::OK,
        move |calendar, position| view(calendar, id, position),
    )
    .await
    .map_err(not_found_as(kind))
}

/// On routes addressed by a booking or block id, a property the caller may
/// not see means the booking or block is not found.
pub fn not_found_as(kind: ClaimKind) -> impl Fn(ApiError) -> ApiError {
    move |error| match error {
        ApiError::Calendar(CalendarError::PropertyNotFound) => not_found(kind),
        other => other,
    }
}

fn not_found(kind: ClaimKind) -> ApiError {
    match kind {
        ClaimKind::Booking => ApiError::Calendar(CalendarError::BookingNotFound),
        ClaimKind::Block => ApiError::Calendar(CalendarError::BlockNotFound),
    }
}

/// `?limit=` (1–500, default 50) and `?cursor=` of list routes.
#[derive(Debug, Clone)]
pub struct Paging {
    pub limit: i64,
    pub cursor: Option<String>,
}

impl Paging {
    /// How many rows to ask for: one past the page, which tells whether
    /// another page follows.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// The cursor of a list ordered by id.
    pub fn after_id(&self) -> Result<Option<Uuid>, ApiError> {
        self.cursor.as_deref().map(parse_cursor).transpose()
    }

    /// The cursor of a list ordered by a position or sequence (0: from the start).
    pub fn after_number(&self) -> Result<i64, ApiError> {
        self.cursor.as_deref().map_or(Ok(0), parse_cursor)
    }

    /// The page of `rows` (fetched with [`Paging::fetch`]): at most `limit`
    /// items, and the cursor of the last one when more follow.
    pub fn page<R, T>(
        &self, mut rows: Vec<R>, key: impl Fn(&R) -> String, item: impl FnMut(R) -> T,
    ) -> Page<T> {
        let next_cursor = if rows.len() as i64 > self.limit {
            rows.truncate(self.limit as usize);
            rows.last().map(key)
        } else {
            None
        };
        Page {
            items: rows.into_iter().map(item).collect(),
            next_cursor,
        }
    }
}

/// `?limit=` and `?cursor=` in the OpenAPI document: `params(Paging)`.
impl IntoParams for Paging {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            query_parameter("limit", Type::Integer, Some(KnownFormat::Int64)),
            query_parameter("cursor", Type::String, None),
        ]
    }
}

fn parse_cursor<T: std::str::FromStr>(cursor: &str) -> Result<T, ApiError> {
    cursor
        .parse()
        .map_err(|_| ApiError::validation("cursor is not one this route gave out"))
}

#[derive(serde::Deserialize)]
struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Paging {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query: PageQuery = serde_urlencoded_query(parts.uri.query().unwrap_or(""))?;
        let limit = match query.limit {
            None => 50,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|l| (1..=500).contains(l))
                .ok_or_else(|| ApiError::validation("limit must be an integer from 1 to 500"))?,
        };
        Ok(Paging {
            limit,
            cursor: query.cursor.filter(|c| !c.is_empty()),
        })
    }
}

/// A typed query string; one that does not parse is a 400
/// `VALIDATION_ERROR`, like a malformed body.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        serde_urlencoded_query(parts.uri.query().unwrap_or("")).map(Params)
    }
}

pub(crate) fn serde_urlencoded_query<T: serde::de::DeserializeOwned>(
    query: &str,
) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| ApiError::validation("the query string is malformed"))?,
    )
    .map(|q| q.0)
    .map_err(|e| ApiError::validation(format!("the query string is malformed: {}", e.body_text())))
}
