//! Request ids and the per-request span: the id comes from `x-request-id`
//! when the client sent a usable one and is generated otherwise; it is on
//! every response, in every error body, and on the request's span.

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use uuid::Uuid;

use crate::error::ApiError;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served, for error bodies and logs.
pub fn current() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn usable(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let fits = !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic());
    fits.then(|| text.to_owned())
}

pub async fn middleware(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(usable)
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), route = %route, status = tracing::field::Empty);
    let scoped_id = id.clone();
    async move {
        let response = REQUEST_ID
            .scope(scoped_id.clone(), async move {
                let response = next.run(request).await;
                normalize(response)
            })
            .await;
        tracing::Span::current().record("status", response.status().as_u16());
        tracing::debug!("served");
        let mut response = response;
        if let Ok(value) = HeaderValue::from_str(&scoped_id) {
            response.headers_mut().insert(HEADER, value);
        }
        response
    }
    .instrument(span)
    .await
}

/// Error responses that did not come from our handlers (axum's 404/405/413,
/// a body limit) get the contract's error body too.
fn normalize(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    ApiError::for_status(status).into_response()
}
