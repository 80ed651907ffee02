//! Request extractors: JSON bodies with the contract's errors, and the
//! context every command carries (caller, request id, Idempotency-Key).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use ledger_domain::{CalendarCommand, Command};
use ledger_infra::command_bus::Idempotency;
use ledger_infra::Execution;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::request_id;
use crate::state::AppState;

/// A JSON body. An empty body reads as `{}`, so action routes accept both;
/// anything else must be `application/json`. Every failure is a 400
/// `VALIDATION_ERROR` (413 when over the limit).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            });
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                    _ => ApiError::validation(rejection.body_text()),
                })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return parse(b"{}").map(Body);
        }
        if !is_json {
            return Err(ApiError::validation(
                "the body must be JSON with content-type: application/json",
            ));
        }
        parse(&bytes).map(Body)
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::validation(format!("invalid body: {e}")))?;
    // serde's derived structs also accept arrays (fields by position); no
    // body or field of the contract is an array, so refuse them outright.
    let Some(object) = value.as_object() else {
        return Err(ApiError::validation("the body must be a JSON object"));
    };
    if let Some(field) = first_array(object) {
        return Err(ApiError::validation(format!(
            "{field} must not be an array"
        )));
    }
    // From the bytes again, not the Value: that one has already merged
    // duplicate fields, which the typed parse refuses.
    typed(bytes)
}

/// The typed parse, whose refusals name the field they are about
/// (`check_in`, `guest.name`) in the message and in `details.field`:
/// serde's own errors say what was wrong, not where.
fn typed<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = e.path().to_string();
        let cause = e.into_inner();
        if field == "." {
            return ApiError::validation(format!("invalid body: {cause}"));
        }
        ApiError::Validation {
            message: format!("invalid body: {field}: {cause}"),
            details: serde_json::json!({ "field": field, "reason": cause.to_string() }),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::validation(format!("invalid body: {e}")))?;
    Ok(parsed)
}

/// The path of the first array anywhere inside `object`.
fn first_array(object: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    object.iter().find_map(|(key, value)| match value {
        serde_json::Value::Array(_) => Some(key.clone()),
        serde_json::Value::Object(inner) => first_array(inner).map(|path| format!("{key}.{path}")),
        _ => None,
    })
}

/// Everything a command needs from the request besides its body.
pub struct WriteCtx {
    pub caller: Caller,
    pub request_id: String,
    pub idempotency: Option<Idempotency>,
    /// The application clock's time when the request arrived.
    pub now: DateTime<Utc>,
}

impl FromRequestParts<AppState> for WriteCtx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        Ok(WriteCtx {
            caller,
            request_id: request_id::current(),
            idempotency: parts.extensions.get::<Idempotency>().cloned(),
            now: state.now(),
        })
    }
}

impl WriteCtx {
    /// A command that holds only while its resource is at
    /// `expected_version` (`If-Match`), when there is one.
    pub fn execution_at(
        &self, property_id: Uuid, action: CalendarCommand, expected_version: Option<u64>,
    ) -> Execution {
        let mut execution = self.execution(property_id, action);
        execution.command.expected_version = expected_version;
        execution
    }

    pub fn execution(&self, property_id: Uuid, action: CalendarCommand) -> Execution {
        Execution {
            property_id,
            command: Command {
                actor: self.caller.0.clone(),
                now: self.now,
                action,
                expected_version: None,
            },
            request_id: self.request_id.clone(),
            idempotency: self.idempotency.clone(),
        }
    }
}
