//! The `Idempotency-Key` header: validated, and bound to a hash of the
//! request (method, path, body), so the same key with another request is
//! recognised. The reply itself is stored by the command bus, in the
//! transaction of the events.

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ledger_infra::command_bus::Idempotency;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::BODY_LIMIT;

pub const HEADER: &str = "idempotency-key";

fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Reads the key of a write request and puts an [`Idempotency`] into the
/// request's extensions for the handlers' extractor.
pub async fn middleware(request: Request, next: Next) -> Response {
    let is_write = matches!(
        *request.method(),
        Method::POST | Method::PATCH | Method::DELETE | Method::PUT
    );
    let Some(key) = request.headers().get(HEADER).filter(|_| is_write) else {
        return next.run(request).await;
    };
    let Some(key) = key
        .to_str()
        .ok()
        .filter(|k| valid_key(k))
        .map(str::to_owned)
    else {
        return ApiError::validation("Idempotency-Key must be 1 to 255 printable ASCII characters")
            .into_response();
    };
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(_) => return ApiError::PayloadTooLarge.into_response(),
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(b" ");
    hasher.update(parts.uri.path().as_bytes());
    hasher.update(b"\n");
    hasher.update(&bytes);
    let request_hash = hex::encode(hasher.finalize());
    let mut request = Request::from_parts(parts, Body::from(bytes));
    request
        .extensions_mut()
        .insert(Idempotency { key, request_hash });
    next.run(request).await
}
