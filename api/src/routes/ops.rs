//! Ops routes: what is running, and whether its environment is sane.
//! Operators may do everything here; an agency admin only reads the
//! projections' status (without error texts, which can carry another
//! agency's data) and the current commit.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use ledger_domain::policy::Scope;
use ledger_domain::Action;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ledger_projections::parking;
use ledger_projections::replay::{self, ReplayError};
use ledger_projections::runner::{self, Status};
use ledger_projections::Projection;
use uuid::Uuid;

use super::health::{database_answers, nats_answers};
use crate::auth::Caller;
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct CurrentCommit {
    pub commit_sha: &'static str,
    pub version: &'static str,
    pub built_at: &'static str,
    pub started_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/ops/current-commit", tag = "ops",
    responses((status = 200, body = CurrentCommit)))]
pub async fn current_commit(
    State(state): State<AppState>, caller: Caller,
) -> Result<Json<CurrentCommit>, ApiError> {
    caller.require(Action::ReadOpsStatus)?;
    Ok(Json(CurrentCommit {
        commit_sha: env!("LEDGER_COMMIT_SHA"),
        version: env!("CARGO_PKG_VERSION"),
        built_at: env!("LEDGER_BUILT_AT"),
        started_at: state.started_at,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct EnvSanity {
    pub db: &'static str,
    pub nats: &'static str,
    #[schema(value_type = Vec<Object>)]
    pub projections: Vec<Status>,
    /// Names of the configuration variables that are set; never their values.
    pub env_vars: Vec<&'static str>,
}

#[utoipa::path(get, path = "/ops/env-sanity", tag = "ops",
    responses((status = 200, body = EnvSanity)))]
pub async fn env_sanity(
    State(state): State<AppState>, caller: Caller,
) -> Result<Json<EnvSanity>, ApiError> {
    caller.require(Action::Operate)?;
    let (db, nats) = tokio::join!(database_answers(&state), nats_answers(&state));
    Ok(Json(EnvSanity {
        db: if db { "ok" } else { "down" },
        nats: if nats { "ok" } else { "down" },
        projections: runner::statuses(&state.pool).await.unwrap_or_default(),
        env_vars: ServeConfig::env_vars_set(),
    }))
}

#[utoipa::path(get, path = "/ops/projections", tag = "ops",
    responses((status = 200, body = Vec<Object>)))]
pub async fn projections(
    State(state): State<AppState>, caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let scope = caller.require(Action::ReadOpsStatus)?;
    let mut statuses = runner::statuses(&state.pool).await?;
    if scope != Scope::Platform {
        for status in &mut statuses {
            status.last_error = None;
            status.parked.retain(|p| p.agency_id == caller.0.agency_id);
        }
    }
    let mut body = serde_json::to_value(&statuses).map_err(ApiError::internal)?;
    if scope != Scope::Platform {
        for parked in body
            .as_array_mut()
            .into_iter()
            .flatten()
            .filter_map(|status| status["parked"].as_array_mut())
            .flatten()
        {
            parked["error"] = Value::Null;
        }
    }
    Ok(Json(body))
}

/// The projection a path names, for an operator (else 403); 404 as for any
/// unknown resource.
fn operated_projection(caller: &Caller, name: &str) -> Result<Projection, ApiError> {
    caller.require(Action::Operate)?;
    Projection::parse(name).ok_or(ApiError::NotFound)
}

#[derive(Serialize, ToSchema)]
pub struct ReplayStarted {
    pub replay_id: Uuid,
}

#[utoipa::path(post, path = "/ops/projections/{name}/replay", tag = "ops",
    responses((status = 202, body = ReplayStarted)))]
pub async fn start_replay(
    State(state): State<AppState>, caller: Caller, Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let projection = operated_projection(&caller, &name)?;
    // Asking again while a replay runs answers with the running one.
    let replay_id = match replay::start(&state.pool, projection).await {
        Ok(id) => id,
        Err(ReplayError::AlreadyRunning(running)) => {
            return Ok((
                StatusCode::ACCEPTED,
                Json(ReplayStarted { replay_id: running }),
            )
                .into_response());
        }
        Err(ReplayError::Db(e)) => return Err(e.into()),
        Err(other) => return Err(ApiError::internal(other.to_string())),
    };
    let pool = state.pool.clone();
    tokio::spawn(async move {
        let _ = replay::run(&pool, projection, replay_id).await;
    });
    Ok((StatusCode::ACCEPTED, Json(ReplayStarted { replay_id })).into_response())
}

#[utoipa::path(get, path = "/ops/projections/{name}/replay", tag = "ops",
    responses((status = 200, body = Object)))]
pub async fn replay_progress(
    State(state): State<AppState>, caller: Caller, Path(name): Path<String>,
) -> Result<Json<replay::Progress>, ApiError> {
    let projection = operated_projection(&caller, &name)?;
    replay::progress(&state.pool, projection)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound)
}

#[derive(Serialize, ToSchema)]
pub struct ParkedRetried {
    /// Properties whose waiting events all applied: no longer parked.
    pub released: Vec<Uuid>,
    /// Properties that still cannot be applied; they stay parked.
    pub still_parked: Vec<Uuid>,
}

#[utoipa::path(post, path = "/ops/projections/{name}/parked/retry", tag = "ops",
    params(("name" = String, Path, description = "inventory, views or audit")),
    responses((status = 202, body = ParkedRetried),
              (status = 503, body = crate::dto::ErrorBody)))]
pub async fn retry_parked(
    State(state): State<AppState>, caller: Caller, Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let projection = operated_projection(&caller, &name)?;
    // One transaction; its own task, so a client that hangs up cannot cut it short.
    let pool = state.pool.clone();
    let retried = tokio::spawn(async move { parking::retry(&pool, projection).await })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| {
            if e.is_unavailable() {
                ApiError::DatabaseUnavailable
            } else {
                ApiError::internal(e.to_string())
            }
        })?;
    let body = ParkedRetried {
        released: retried.released,
        still_parked: retried.still_parked,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Every durable consumer of the event stream (the iCal export and every
/// channel adapter) with what it has still to take: an operator sees them
/// all, an agency admin its agency's own durables (`agency-<id>-...`).
#[utoipa::path(get, path = "/ops/consumers", tag = "ops",
    responses((status = 200, body = Vec<Object>),
              (status = 503, body = crate::dto::ErrorBody)))]
pub async fn consumers(
    State(state): State<AppState>, caller: Caller,
) -> Result<Json<Vec<ledger_infra::channel::ConsumerLag>>, ApiError> {
    let scope = caller.require(Action::ReadOpsStatus)?;
    let client = state
        .nats
        .as_ref()
        .ok_or_else(|| ApiError::internal("no NATS client"))?;
    let mut consumers = ledger_infra::channel::consumers(client)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if scope != Scope::Platform {
        let own = ledger_infra::channel::agency_durable(caller.0.agency_id, "");
        consumers.retain(|c| c.name.starts_with(&own));
    }
    Ok(Json(consumers))
}
