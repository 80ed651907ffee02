//! The one error type of the HTTP contract, mapped to its status and body in
//! one place. Domain refusals, database failures and axum's own rejections
//! all arrive here.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_domain::{CalendarError, Current};
use ledger_infra::agencies::AgencyError;
use ledger_infra::{ExecuteError, Reply};
use ledger_projections::views::PropertyRow;
use serde_json::{json, Value};

use crate::dto::BookingView;
use crate::request_id;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Validation { message: String, details: Value },
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("the token has expired")]
    TokenExpired,
    #[error("{0}")]
    Forbidden(String),
    #[error("the agency is suspended")]
    AgencySuspended,
    #[error("the agency has no record")]
    AgencyNotFound,
    #[error("this feature is turned off for the agency")]
    FeatureDisabled,
    /// A refusal of the calendar, with the domain's message; its status,
    /// code and details are [`refusal_status`]'s and [`refusal_details`]'s.
    #[error(transparent)]
    Calendar(#[from] CalendarError),
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("the request body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("the database is unavailable")]
    DatabaseUnavailable,
    #[error("the read models did not reach position {0} within 5 s")]
    ProjectionLagging(i64),
    #[error("the property is too busy; retry")]
    Busy,
    #[error("the agency's request rate is over its limit; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError::Validation {
            message: message.into(),
            details: Value::Null,
        }
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        ApiError::Internal(error.to_string())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            Validation { .. } => (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            TokenExpired => (StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            AgencySuspended => (StatusCode::FORBIDDEN, "AGENCY_SUSPENDED"),
            AgencyNotFound => (StatusCode::NOT_FOUND, "AGENCY_NOT_FOUND"),
            FeatureDisabled => (StatusCode::FORBIDDEN, "FEATURE_DISABLED"),
            Calendar(refusal) => refusal_status(refusal),
            NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED"),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            DatabaseUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "DATABASE_UNAVAILABLE"),
            ProjectionLagging(_) => (StatusCode::SERVICE_UNAVAILABLE, "PROJECTION_LAGGING"),
            Busy => (StatusCode::SERVICE_UNAVAILABLE, "BUSY"),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        }
    }

    /// The error an empty or non-JSON error response of this status stands for
    /// (axum's own 404/405/413 and the like).
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => ApiError::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            StatusCode::UNAUTHORIZED => ApiError::Unauthenticated("authentication required"),
            StatusCode::FORBIDDEN => ApiError::Forbidden("forbidden".into()),
            s if s.is_client_error() => {
                ApiError::validation(s.canonical_reason().unwrap_or("bad request"))
            }
            s => ApiError::Internal(format!("unexpected status {s}")),
        }
    }
}

impl ApiError {
    /// The status and the contract's error body of the current request.
    pub fn reply(&self) -> Reply {
        self.reply_for(&request_id::current())
    }

    /// The status and the contract's error body, as sent and as kept for an
    /// Idempotency-Key.
    pub fn reply_for(&self, request_id: &str) -> Reply {
        let (status, code) = self.status_and_code();
        let mut error = json!({
            "code": code,
            "message": self.to_string(),
            "request_id": request_id,
        });
        let details = match self {
            ApiError::Validation { details, .. } if !details.is_null() => Some(details.clone()),
            ApiError::Calendar(refusal) => refusal_details(refusal),
            _ => None,
        };
        if let Some(details) = details {
            error["details"] = details;
        }
        Reply {
            status: status.as_u16(),
            body: json!({ "error": error }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let request_id = request_id::current();
        match &self {
            ApiError::Internal(cause) => tracing::error!(%request_id, cause, "internal error"),
            ApiError::DatabaseUnavailable | ApiError::Busy => {
                tracing::warn!(%request_id, code, "{self}")
            }
            _ => tracing::debug!(%request_id, code, "{self}"),
        }
        let mut response = (status, Json(self.reply().body)).into_response();
        match self {
            ApiError::Busy => {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
            }
            ApiError::RateLimited { retry_after_secs } => {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

/// The contract's status and code of each refusal of the calendar:
/// exhaustive, so a new refusal does not compile until it has its own.
fn refusal_status(refusal: &CalendarError) -> (StatusCode, &'static str) {
    use CalendarError::*;
    match refusal {
        Invalid { .. } | PropertyAlreadyRegistered => (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
        Forbidden { .. } => (StatusCode::FORBIDDEN, "FORBIDDEN"),
        PropertyNotFound => (StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND"),
        BookingNotFound => (StatusCode::NOT_FOUND, "BOOKING_NOT_FOUND"),
        BlockNotFound => (StatusCode::NOT_FOUND, "BLOCK_NOT_FOUND"),
        RoomTypeNotFound => (StatusCode::NOT_FOUND, "ROOM_TYPE_NOT_FOUND"),
        NightsTaken { .. } | NightsFull { .. } => (StatusCode::CONFLICT, "BOOKING_CONFLICT"),
        InvalidTransition { .. } | HoldExpired | BlockAlreadyReleased => {
            (StatusCode::CONFLICT, "INVALID_STATE_TRANSITION")
        }
        PropertyArchived => (StatusCode::CONFLICT, "PROPERTY_ARCHIVED"),
        PropertyHasSingleUnitClaims => (StatusCode::CONFLICT, "PROPERTY_HAS_SINGLE_UNIT_CLAIMS"),
        CapacityExceeded { .. } => (StatusCode::CONFLICT, "CAPACITY_EXCEEDED"),
        VersionMismatch { .. } => (StatusCode::PRECONDITION_FAILED, "VERSION_MISMATCH"),
    }
}

/// The `details` of a refusal's error body, where it has any.
fn refusal_details(refusal: &CalendarError) -> Option<Value> {
    match refusal {
        CalendarError::Invalid { field, reason } => {
            Some(json!({ "field": field, "reason": reason }))
        }
        CalendarError::NightsTaken { conflicts } => Some(json!({ "conflicts": conflicts })),
        // `details.nights`: the full nights, or those that hold more than
        // the new units.
        CalendarError::NightsFull { nights } | CalendarError::CapacityExceeded { nights } => {
            Some(json!({ "nights": nights }))
        }
        // `details.current`: the resource as it is now.
        CalendarError::VersionMismatch { current, .. } => {
            Some(json!({ "current": current_view(current) }))
        }
        _ => None,
    }
}

/// The resource of a 412 as its own route shows it, less `position`: a
/// refusal appends nothing, and the calendar does not know the position of
/// the event that last changed the resource. Its `version` is what a retry
/// sends in `If-Match`.
fn current_view(current: &Current) -> Value {
    let view = match current {
        Current::Property(property) => serde_json::to_value(PropertyRow::new(property, 0)),
        Current::Booking { agency_id, booking } => {
            serde_json::to_value(BookingView::new(*agency_id, booking, 0))
        }
    };
    let mut view = view.unwrap_or(Value::Null);
    if let Some(fields) = view.as_object_mut() {
        fields.remove("position");
    }
    view
}

impl From<ExecuteError> for ApiError {
    fn from(error: ExecuteError) -> Self {
        match error {
            ExecuteError::Domain(refusal) => refusal.into(),
            ExecuteError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            ExecuteError::Busy => ApiError::Busy,
            ExecuteError::Unavailable(_) => ApiError::DatabaseUnavailable,
            ExecuteError::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

/// Every database failure of a handler: 503 when PostgreSQL is out of
/// reach, else a 500 (a bug). A constraint a client can break is mapped
/// where it is named, in `ledger_infra` (for example
/// `AgencyError::AlreadyExists`), never from its name here.
impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ledger_infra::DbError::from(error).into()
    }
}

impl From<AgencyError> for ApiError {
    fn from(error: AgencyError) -> Self {
        match error {
            AgencyError::NotFound => ApiError::AgencyNotFound,
            AgencyError::AlreadyExists => {
                ApiError::validation("an agency with this id already exists")
            }
            AgencyError::Db(e) => e.into(),
        }
    }
}

impl From<ledger_infra::DbError> for ApiError {
    fn from(error: ledger_infra::DbError) -> Self {
        ExecuteError::from(error).into()
    }
}
