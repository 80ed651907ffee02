//! Limits that keep one client or tenant from hurting the others: a cap on
//! requests in flight (past it, 503 `BUSY` at once instead of a queue in
//! front of the database pool), a timeout on each request and on reading
//! its body (503 `BUSY`: the server stopped waiting), and the optional
//! per-agency rate limit `LEDGER_RATE_LIMIT` (429 `RATE_LIMITED`).
//! Each answer is in the contract's error format and carries `Retry-After`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::error::Overloaded;
use tower::load_shed::LoadShedLayer;
use tower::timeout::error::Elapsed;
use tower::timeout::TimeoutLayer;
use tower::{BoxError, ServiceBuilder};

use crate::config::RateLimit;
use crate::error::ApiError;
use crate::state::AppState;
use crate::BODY_LIMIT;

/// `routes` behind the limits, outermost first: the agency's rate, the
/// in-flight cap, the request timeout, the body deadline.
pub fn around(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    let config = &state.config;
    let overload = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: BoxError| async move {
            if error.is::<Overloaded>() || error.is::<Elapsed>() {
                ApiError::Busy.into_response()
            } else {
                ApiError::internal(error).into_response()
            }
        }))
        .layer(LoadShedLayer::new())
        // Global: `Router::layer` wraps each route on its own, and the cap
        // is for the whole process.
        .layer(GlobalConcurrencyLimitLayer::new(
            config.max_in_flight as usize,
        ))
        .layer(TimeoutLayer::new(config.request_timeout));
    let routes = routes
        .layer(middleware::from_fn_with_state(
            config.body_timeout,
            body_deadline,
        ))
        .layer(overload);
    match AgencyLimiter::new(config.rate_limit) {
        Some(limiter) => routes.layer(middleware::from_fn_with_state(
            (state.clone(), limiter),
            rate_limit,
        )),
        None => routes,
    }
}

/// Reads the whole request body within `timeout`, so a client that sends
/// the headers and then trickles the body holds nothing past it. (An idle
/// timeout between chunks would not do: one byte a second never trips it.)
pub async fn body_deadline(
    State(timeout): State<Duration>, request: Request, next: Next,
) -> Response {
    let has_body = request
        .headers()
        .get(CONTENT_LENGTH)
        .is_none_or(|length| length != "0");
    if !has_body {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(timeout, to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return ApiError::PayloadTooLarge.into_response(),
        Err(_) => {
            tracing::info!(timeout = ?timeout, "a request body did not arrive in time");
            return ApiError::Busy.into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// One token bucket per agency.
pub struct AgencyLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl AgencyLimiter {
    pub fn new(limit: RateLimit) -> Option<Arc<Self>> {
        let RateLimit::PerAgency { count, per, burst } = limit else {
            return None;
        };
        let period = per / count.get();
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))?
            .allow_burst(burst.max(NonZeroU32::MIN));
        Some(Arc::new(Self {
            limiter: RateLimiter::keyed(quota),
        }))
    }

    /// `Err(seconds to wait)` when `agency` is over its rate.
    fn check(&self, agency: &str) -> Result<(), u64> {
        self.limiter
            .check_key(&agency.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
            })
    }
}

/// 429 `RATE_LIMITED` past the agency's rate. Only a verified token names an
/// agency: anything else passes here and is refused (or not) by the route.
pub async fn rate_limit(
    State((state, limiter)): State<(AppState, Arc<AgencyLimiter>)>, request: Request, next: Next,
) -> Response {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim);
    if let Some(token) = token {
        let agency = state
            .keys
            .verify_claims(token)
            .await
            .ok()
            .and_then(|claims| {
                claims.agency.map(|agency| match agency {
                    Value::String(agency) => agency,
                    other => other.to_string(),
                })
            });
        if let Some(agency) = agency {
            if let Err(retry_after_secs) = limiter.check(&agency) {
                return ApiError::RateLimited {
                    retry_after_secs: retry_after_secs.max(1),
                }
                .into_response();
            }
        }
    }
    next.run(request).await
}
