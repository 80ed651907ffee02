//! Conditional requests on properties and bookings: their replies carry
//! `ETag: "<version>"`, a write may name the version it saw in `If-Match`
//! (checked by the domain in the same decision as the command: a stale one
//! is 412 `VERSION_MISMATCH`), and `GET` by id honours `If-None-Match` (304).

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, Request};
use axum::http::header::{ETAG, IF_MATCH, IF_NONE_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;
use crate::routes::POSITION_HEADER;

/// The largest resource reply read back to find its version.
const MAX_RESOURCE_BYTES: usize = 1024 * 1024;

/// The version named by `If-Match: "<version>"`; `None` without the header
/// or with `*` (any current version). Anything else is 400: a client that
/// meant a condition must not have its write go through unconditionally.
pub struct IfMatch(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(IF_MATCH).iter();
        let Some(value) = values.next() else {
            return Ok(IfMatch(None));
        };
        let malformed =
            || ApiError::validation("If-Match must be one entity tag \"<version>\" (or *)");
        if values.next().is_some() {
            return Err(malformed());
        }
        let text = value.to_str().map_err(|_| malformed())?.trim();
        if text == "*" {
            return Ok(IfMatch(None));
        }
        version_of_tag(text)
            .map(|v| IfMatch(Some(v)))
            .ok_or_else(malformed)
    }
}

/// `"12"` → 12. Weak tags (`W/"12"`) never match for a write (RFC 9110's
/// strong comparison), so they are refused rather than ignored.
fn version_of_tag(tag: &str) -> Option<u64> {
    let digits = tag.strip_prefix('"')?.strip_suffix('"')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The entity tag of a resource at `version`.
pub fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The `version` of a resource body, when it has one.
pub fn version_in(body: &Value) -> Option<u64> {
    body.get("version").and_then(Value::as_u64)
}

/// Whether `If-None-Match` names `tag` (or is `*`), by weak comparison.
fn none_match_hits(headers: &HeaderMap, tag: &HeaderValue) -> bool {
    let Ok(tag) = tag.to_str() else {
        return false;
    };
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|candidate| {
            candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
        })
}

/// Around `GET` of one property or booking: adds the `ETag` of the reply and
/// answers 304 (no body) when `If-None-Match` already names it.
pub async fn on_read(request: Request, next: Next) -> Response {
    let conditions = request.headers().clone();
    let response = next.run(request).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match to_bytes(body, MAX_RESOURCE_BYTES).await {
        Ok(bytes) => bytes,
        Err(error) => return ApiError::internal(error).into_response(),
    };
    let version = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .as_ref()
        .and_then(version_in);
    if let Some(version) = version {
        let tag = etag(version);
        if none_match_hits(&conditions, &tag) {
            let mut not_modified = StatusCode::NOT_MODIFIED.into_response();
            let headers = not_modified.headers_mut();
            headers.insert(ETAG, tag);
            if let Some(position) = parts.headers.get(POSITION_HEADER) {
                headers.insert(POSITION_HEADER, position.clone());
            }
            return not_modified;
        }
        parts.headers.insert(ETAG, tag);
    }
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_version_is_read_and_anything_else_is_not() {
        assert_eq!(version_of_tag("\"7\""), Some(7));
        assert_eq!(version_of_tag("7"), None);
        assert_eq!(version_of_tag("W/\"7\""), None);
        assert_eq!(version_of_tag("\"\""), None);
        assert_eq!(version_of_tag("\"-1\""), None);
        assert_eq!(version_of_tag("\"99999999999999999999999\""), None);
    }

    #[test]
    fn if_none_match_compares_weakly_and_in_lists() {
        let mut headers = HeaderMap::new();
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("\"1\", W/\"3\""));
        assert!(none_match_hits(&headers, &etag(3)));
        assert!(none_match_hits(&headers, &etag(1)));
        assert!(!none_match_hits(&headers, &etag(2)));
    }
}
