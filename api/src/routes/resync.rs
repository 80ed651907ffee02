//! Channel resync and drift checks (docs/api.md "Channel resync and drift
//! checks"): ask for a snapshot of one property, or a background resync of
//! many, and read a property's drift checksum from the read model. The
//! snapshots themselves are published by the NATS publisher
//! (`ledger_infra::resync`, docs/channels.md).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{NaiveDate, Utc};
use ledger_domain::checksum::{self, ChannelRange};
use ledger_domain::{Action, CalendarError};
use ledger_infra::resync::{self, JobProgress};
use ledger_projections::{queries, Projection};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::reads::{parse_date, visible_row, MinPosition, MIN_POSITION_WAIT};
use super::{read_reply, visible_property, Params, PathId};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Body;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct ResyncRequested {
    /// The snapshot to come holds the property's log at least up to here.
    pub as_of_position: i64,
}

#[utoipa::path(post, path = "/api/v1/properties/{id}/resync", tag = "channels",
    responses((status = 202, body = ResyncRequested)))]
pub async fn property(
    State(state): State<AppState>, PathId(id): PathId, caller: Caller,
) -> Result<Response, ApiError> {
    visible_property(&state, &caller, id, Action::ResyncChannel).await?;
    let requested = resync::request_snapshot(&state.pool, id).await?;
    let body = ResyncRequested {
        as_of_position: requested.as_of_position,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResyncScope {
    /// Only this agency's properties.
    pub agency_id: Option<Uuid>,
    /// Only this property.
    pub property_id: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct ResyncStarted {
    pub job_id: Uuid,
}

#[utoipa::path(post, path = "/ops/resync", tag = "ops", request_body = ResyncScope,
    responses((status = 202, body = ResyncStarted)))]
pub async fn start(
    State(state): State<AppState>, caller: Caller, Body(scope): Body<ResyncScope>,
) -> Result<Response, ApiError> {
    caller.require(Action::Operate)?;
    // One statement queues every property; its own task, so a client that
    // hangs up cannot leave a job without its requests.
    let pool = state.pool.clone();
    let job_id =
        tokio::spawn(
            async move { resync::start_job(&pool, scope.agency_id, scope.property_id).await },
        )
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((StatusCode::ACCEPTED, Json(ResyncStarted { job_id })).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct ResyncProgress {
    /// `running` or `finished`.
    pub state: String,
    pub processed: i64,
    pub total: i64,
    pub started_at: chrono::DateTime<Utc>,
    pub finished_at: Option<chrono::DateTime<Utc>>,
}

impl From<JobProgress> for ResyncProgress {
    fn from(p: JobProgress) -> Self {
        ResyncProgress {
            state: p.state.to_owned(),
            processed: p.processed,
            total: p.total,
            started_at: p.started_at,
            finished_at: p.finished_at,
        }
    }
}

#[utoipa::path(get, path = "/ops/resync/{job_id}", tag = "ops",
    responses((status = 200, body = ResyncProgress)))]
pub async fn progress(
    State(state): State<AppState>, caller: Caller, PathId(job_id): PathId,
) -> Result<Json<ResyncProgress>, ApiError> {
    caller.require(Action::Operate)?;
    resync::progress(&state.pool, job_id)
        .await?
        .map(|p| Json(p.into()))
        .ok_or(ApiError::NotFound)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChecksumQuery {
    /// A date from 1900-01-01 to 2199-12-31; default today in the
    /// property's time zone.
    #[param(pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    from: Option<String>,
    /// A date after `from`; default `from` + 550 days.
    #[param(pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    to: Option<String>,
    #[allow(dead_code)]
    min_position: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChecksumView {
    pub as_of_position: i64,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Lowercase hex SHA-256 of the canonical text of the ranges.
    pub checksum: String,
}

#[utoipa::path(get, path = "/api/v1/properties/{id}/checksum", tag = "channels",
    params(ChecksumQuery),
    responses((status = 200, body = ChecksumView)))]
pub async fn checksum(
    State(state): State<AppState>, PathId(id): PathId, caller: Caller,
    MinPosition(min): MinPosition, Params(query): Params<ChecksumQuery>,
) -> Result<Response, ApiError> {
    let scope = caller.require(Action::ReadCalendar)?;
    let from = parse_date("from", &query.from)?;
    let to = parse_date("to", &query.to)?;
    if let (Some(from), Some(to)) = (from, to) {
        check_window(from, to)?;
    }
    let reached = queries::wait_for(
        &state.pool,
        &[Projection::Views, Projection::Inventory],
        min,
        MIN_POSITION_WAIT,
    )
    .await?
    .ok_or(ApiError::ProjectionLagging(min))?;
    let agency_id = caller.0.agency_id;
    let mut tx = queries::begin(&state.pool, agency_id).await?;
    let property = visible_row(&mut tx, &caller, scope, id).await?;
    let (default_from, _) = checksum::window(&property.details.timezone, state.now());
    let from = from.unwrap_or(default_from);
    let to = match to {
        Some(to) => to,
        None => checksum::window("UTC", from.and_time(chrono::NaiveTime::MIN).and_utc()).1,
    };
    check_window(from, to)?;
    let ranges: Vec<ChannelRange> = queries::ranges(&mut tx, agency_id, id, from, to)
        .await?
        .into_iter()
        .map(ChannelRange::from)
        .collect();
    let body = ChecksumView {
        as_of_position: reached,
        from,
        to,
        checksum: checksum::checksum(&ranges),
    };
    Ok(read_reply(reached, body))
}

fn check_window(from: NaiveDate, to: NaiveDate) -> Result<(), ApiError> {
    if to <= from {
        return Err(CalendarError::invalid("to", "must be after from").into());
    }
    Ok(())
}
