//! Liveness (the process runs) and readiness (PostgreSQL answers).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use ledger_projections::runner::{self, Checkpoint, Status};

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Live {
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ok` only when NATS answers and every projection is `running` with
    /// nothing parked; `degraded` otherwise (reads and writes still work).
    pub status: &'static str,
    pub db: &'static str,
    pub nats: &'static str,
    pub projections: Vec<ReadyProjection>,
}

/// A projection's progress as anyone may see it: no error texts (this route
/// is unauthenticated, and an error can carry an agency's data), no ids.
#[derive(Serialize, ToSchema)]
pub struct ReadyProjection {
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
    /// How many properties are parked.
    pub parked: usize,
}

impl From<Status> for ReadyProjection {
    fn from(s: Status) -> Self {
        ReadyProjection {
            parked: s.parked.len(),
            checkpoint: s.checkpoint,
        }
    }
}

#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = Live)))]
pub async fn live() -> Response {
    Json(Live { status: "ok" }).into_response()
}

/// Whether PostgreSQL answers a query within 800 ms: a readiness probe
/// answers within a second either way (docs/quality.md R4).
pub async fn database_answers(state: &AppState) -> bool {
    ledger_infra::db::answers(&state.pool, Duration::from_millis(800)).await
}

/// Whether the publisher's NATS connection is up (without one, whether
/// something accepts connections at the NATS address).
pub async fn nats_answers(state: &AppState) -> bool {
    if let Some(client) = &state.nats {
        return ledger_infra::nats::is_connected(client);
    }
    let address = state
        .config
        .nats_url
        .split("://")
        .last()
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_owned();
    let connect = tokio::net::TcpStream::connect(address);
    matches!(
        tokio::time::timeout(Duration::from_millis(500), connect).await,
        Ok(Ok(_))
    )
}

#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = Ready), (status = 503, body = crate::dto::ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (db, nats) = tokio::join!(database_answers(&state), nats_answers(&state));
    if !db {
        return Err(ApiError::DatabaseUnavailable);
    }
    let projections: Vec<ReadyProjection> = runner::statuses(&state.pool)
        .await
        .map_err(|_| ApiError::DatabaseUnavailable)?
        .into_iter()
        .map(ReadyProjection::from)
        .collect();
    let all_running = projections
        .iter()
        .all(|p| p.checkpoint.status == "running" && p.parked == 0);
    Ok(Json(Ready {
        status: if nats && all_running {
            "ok"
        } else {
            "degraded"
        },
        db: "ok",
        nats: if nats { "ok" } else { "degraded" },
        projections,
    })
    .into_response())
}

/// How long a request runs before the middleware below asks whether
/// PostgreSQL still answers.
const PATIENCE: Duration = Duration::from_millis(400);

/// Answers 503 `DATABASE_UNAVAILABLE` for a request still running while
/// PostgreSQL does not answer. A hung server (stopped, frozen host) accepts
/// TCP and never replies, so a query on an open pool connection would wait
/// forever: the pool's acquire timeout does not cover it and a server-side
/// statement timeout cannot fire. A slow request on a database that answers
/// (a `min_position` wait, a queue on a busy property) runs on; the probe is
/// asked again every `PATIENCE`. The answer comes from one shared watch
/// with a connection of its own (`DatabaseWatch`), so a saturated pool is
/// never mistaken for a hung server. The handler's future is dropped, exactly as
/// when its client disconnects, which every handler must survive anyway.
pub async fn bounded_by_database(
    State(state): State<AppState>, request: Request, next: Next,
) -> Response {
    if matches!(request.uri().path(), "/health" | "/healthz") {
        return next.run(request).await;
    }
    let handler = next.run(request);
    tokio::pin!(handler);
    loop {
        tokio::select! {
            response = &mut handler => return response,
            () = tokio::time::sleep(PATIENCE) => {}
        }
        if !state.database.answered_lately() {
            return ApiError::DatabaseUnavailable.into_response();
        }
    }
}
