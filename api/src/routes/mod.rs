//! The routes of API.md and the helpers every handler shares.

pub mod blocks;
pub mod bookings;
pub mod health;
pub mod ical;
pub mod ops;
pub mod properties;
pub mod reads;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_domain::PropertyCalendar;
use ledger_infra::{Execution, Reply};
use serde::Serialize;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

pub const POSITION_HEADER: &str = "x-ledger-position";

/// A UUID from the path; anything else is a 400, not a routing failure.
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::validation("the path is malformed"))?;
        raw.parse()
            .map(PathId)
            .map_err(|_| ApiError::validation(format!("{raw:?} is not a UUID")))
    }
}

/// Runs a command and answers with the view `view` finds in the calendar
/// after it (a stored reply, when the Idempotency-Key was seen before).
pub async fn execute<V, F>(
    state: &AppState,
    execution: Execution,
    status: StatusCode,
    view: F,
) -> Result<Response, ApiError>
where
    V: Serialize,
    F: Fn(&PropertyCalendar, i64) -> Option<V> + Send + Sync,
{
    execute_as(state, execution, move |calendar, position| {
        view(calendar, position).map(|body| (status, body))
    })
    .await
}

/// Like [`execute`], with the status chosen by the view from the outcome.
pub async fn execute_as<V, F>(
    state: &AppState,
    execution: Execution,
    view: F,
) -> Result<Response, ApiError>
where
    V: Serialize,
    F: Fn(&PropertyCalendar, i64) -> Option<(StatusCode, V)> + Send + Sync,
{
    let render = |calendar: &PropertyCalendar, position: i64| match view(calendar, position)
        .map(|(status, body)| (status, serde_json::to_value(body)))
    {
        Some((status, Ok(body))) => Reply {
            status: status.as_u16(),
            body,
        },
        _ => Reply {
            status: StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
            body: serde_json::json!({"error": {"code": "INTERNAL_ERROR", "message": "the result could not be rendered", "request_id": crate::request_id::current()}}),
        },
    };
    let reply = state.bus.execute(&execution, &render).await?;
    Ok(written(reply))
}

fn written(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(reply.body)).into_response()
}

/// A read reply with the log position it reflects in `x-ledger-position`.
pub fn read_reply<V: Serialize>(position: i64, body: V) -> Response {
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(POSITION_HEADER, HeaderValue::from(position));
    response
}

/// On routes addressed by a booking or block id, a property the caller may
/// not see means the booking or block is not found.
pub fn not_found_as(replacement: fn() -> ApiError) -> impl Fn(ApiError) -> ApiError {
    move |error| match error {
        ApiError::PropertyNotFound => replacement(),
        other => other,
    }
}

/// `?limit=` (1–500, default 50) and `?cursor=` of list routes.
#[derive(Debug, Clone)]
pub struct Page {
    pub limit: i64,
    pub cursor: Option<String>,
}

#[derive(serde::Deserialize)]
struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Page {
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
        Ok(Page {
            limit,
            cursor: query.cursor.filter(|c| !c.is_empty()),
        })
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
