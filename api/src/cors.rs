//! CORS for browser front ends on other origins (`LEDGER_CORS_ORIGINS`).
//!
//! Only a request whose `Origin` is listed goes through tower-http's
//! `CorsLayer`: any other request passes by untouched, so an unlisted
//! origin gets no CORS header at all (its browser refuses the reply) and a
//! non-browser client sees the API exactly as without CORS. This layer sits
//! outside the limits and the idempotency layer: a preflight carries no
//! token, is never rate-limited as an agency, and is answered here (204).
//! It lists the methods of the route it asks about: the router's own answer
//! to an `OPTIONS` probe (405 with `Allow`) says which those are.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_REQUEST_METHOD, ALLOW, AUTHORIZATION, CONTENT_TYPE, ETAG, IF_MATCH,
    IF_NONE_MATCH, ORIGIN, RETRY_AFTER,
};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::Response;
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer, ExposeHeaders};

use crate::idempotency;
use crate::request_id;
use crate::routes::POSITION_HEADER;

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// The origins allowed, as the browser sends them in `Origin`.
#[derive(Clone)]
pub struct Origins(Arc<Vec<HeaderValue>>);

impl Origins {
    /// `None` when no origin is listed: then there is no CORS at all.
    pub fn from_config(origins: &[String]) -> Option<Origins> {
        let listed: Vec<HeaderValue> = origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        (!listed.is_empty()).then(|| Origins(Arc::new(listed)))
    }

    fn lists(&self, request: &Request) -> bool {
        request
            .headers()
            .get(ORIGIN)
            .is_some_and(|origin| self.0.contains(origin))
    }

    fn layer(&self) -> CorsLayer {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(self.0.iter().cloned()))
            .expose_headers(ExposeHeaders::list([
                HeaderName::from_static(request_id::HEADER),
                HeaderName::from_static(POSITION_HEADER),
                ETAG,
                RETRY_AFTER,
            ]))
    }
}

/// The request headers a front end may send: on every route, and on the
/// routes that read, the conditional GET's and the stream's resume header.
fn allowed_headers(reads: bool) -> Vec<HeaderName> {
    let mut headers = vec![
        AUTHORIZATION,
        CONTENT_TYPE,
        HeaderName::from_static(idempotency::HEADER),
        IF_MATCH,
        HeaderName::from_static(request_id::HEADER),
    ];
    if reads {
        headers.push(IF_NONE_MATCH);
        headers.push(HeaderName::from_static("last-event-id"));
    }
    headers
}

pub async fn middleware(State(origins): State<Origins>, request: Request, next: Next) -> Response {
    if !origins.lists(&request) {
        return next.run(request).await;
    }
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let (methods, request_id) = match route_methods(&next, request.uri().clone()).await {
            Ok(found) => found,
            // No such route (404), or the service could not say (503): that
            // answer, without CORS headers, so the browser stops here.
            Err(answer) => return answer,
        };
        let reads = methods.contains(&Method::GET);
        let layer = origins
            .layer()
            .allow_methods(methods)
            .allow_headers(allowed_headers(reads))
            .max_age(PREFLIGHT_MAX_AGE);
        let mut response = run(layer, next, request).await;
        if response.status() == StatusCode::OK {
            *response.status_mut() = StatusCode::NO_CONTENT;
        }
        if let Some(request_id) = request_id {
            response
                .headers_mut()
                .insert(HeaderName::from_static(request_id::HEADER), request_id);
        }
        return response;
    }
    run(origins.layer(), next, request).await
}

async fn run(layer: CorsLayer, next: Next, request: Request) -> Response {
    match layer.layer(next).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The methods of the route `uri` names, from the router's 405 to a bare
/// `OPTIONS` (no token, no origin: nothing else answers it), and the
/// request id it was given (the preflight's answer carries it too); the
/// router's answer when it names none (no such route).
async fn route_methods(
    next: &Next, uri: Uri,
) -> Result<(Vec<Method>, Option<HeaderValue>), Response> {
    let mut probe = Request::new(Body::empty());
    *probe.method_mut() = Method::OPTIONS;
    *probe.uri_mut() = uri;
    let answer = next.clone().run(probe).await;
    let methods: Vec<Method> = answer
        .headers()
        .get(ALLOW)
        .and_then(|allow| allow.to_str().ok())
        .map(|allow| {
            allow
                .split(',')
                .filter_map(|m| m.trim().parse().ok())
                .filter(|m| *m != Method::HEAD)
                .collect()
        })
        .unwrap_or_default();
    if methods.is_empty() {
        Err(answer)
    } else {
        Ok((methods, answer.headers().get(request_id::HEADER).cloned()))
    }
}
