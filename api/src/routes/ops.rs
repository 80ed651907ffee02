//! Ops routes (admin only): what is running, and whether its environment is sane.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use ledger_domain::Action;
use serde::Serialize;
use utoipa::ToSchema;

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
    responses((status = 200, body = CurrentCommit), (status = "4XX", body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn current_commit(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<CurrentCommit>, ApiError> {
    caller.require(Action::Operate)?;
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
    pub projections: Vec<serde_json::Value>,
    /// Names of the configuration variables that are set; never their values.
    pub env_vars: Vec<&'static str>,
}

#[utoipa::path(get, path = "/ops/env-sanity", tag = "ops",
    responses((status = 200, body = EnvSanity), (status = "4XX", body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn env_sanity(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<EnvSanity>, ApiError> {
    caller.require(Action::Operate)?;
    let (db, nats) = tokio::join!(database_answers(&state), nats_answers(&state));
    Ok(Json(EnvSanity {
        db: if db { "ok" } else { "down" },
        nats: if nats { "ok" } else { "down" },
        projections: Vec::new(),
        env_vars: ServeConfig::env_vars_set(),
    }))
}
