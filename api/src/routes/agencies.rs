//! Agency administration (operators only): agency records, their status and
//! feature flags, and the history of their life-cycle changes. Every change
//! goes through `ledger_infra::agencies`, as the `ledger agency` CLI does,
//! and is taken into this process's agency cache at once (other processes
//! within a second).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_domain::{values, Action};
use ledger_infra::agencies::{self, Agency, Change, Created};
use ledger_projections::queries::AuditEntry;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Paging, PathId};
use crate::auth::Caller;
use crate::dto::Page;
use crate::error::ApiError;
use crate::extract::Body;
use crate::state::AppState;

const NAME_MAX: usize = 200;
const REASON_MAX: usize = 500;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgency {
    /// Chosen by the service when left out.
    pub id: Option<Uuid>,
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeatureChange {
    pub ical_export: Option<bool>,
    pub ical_import: Option<bool>,
}

#[utoipa::path(get, path = "/ops/agencies", operation_id = "list_agencies", tag = "ops",
    params(Paging),
    responses((status = 200, description = "a page of agencies", body = Page<Agency>)))]
pub async fn list(
    State(state): State<AppState>, caller: Caller, page: Paging,
) -> Result<Json<Page<Agency>>, ApiError> {
    caller.require(Action::AdministerAgencies)?;
    let rows = agencies::list(&state.pool, page.after_id()?, page.fetch()).await?;
    Ok(Json(page.page(
        rows,
        |a| a.id.to_string(),
        std::convert::identity,
    )))
}

/// 201 for a new agency; 200 when it names an agency that got its record
/// from its first token; 400 when the id already has a named record.
#[utoipa::path(post, path = "/ops/agencies", operation_id = "create_agency", tag = "ops", request_body = NewAgency,
    responses((status = 201, description = "the new agency", body = Agency), (status = 200, description = "an existing unnamed agency, now named", body = Agency)))]
pub async fn create(
    State(state): State<AppState>, caller: Caller, Body(body): Body<NewAgency>,
) -> Result<Response, ApiError> {
    caller.require(Action::AdministerAgencies)?;
    values::text("name", &body.name, 1, NAME_MAX)?;
    let id = body.id.unwrap_or_else(Uuid::now_v7);
    let (agency, created) =
        agencies::create(&state.pool, id, &body.name, &caller.0.user_id).await?;
    state.agencies.note(&agency);
    let status = match created {
        Created::New => StatusCode::CREATED,
        Created::Named => StatusCode::OK,
    };
    Ok((status, Json(agency)).into_response())
}

#[utoipa::path(get, path = "/ops/agencies/{id}", operation_id = "get_agency", tag = "ops",
    responses((status = 200, description = "the agency", body = Agency)))]
pub async fn get(
    State(state): State<AppState>, caller: Caller, PathId(id): PathId,
) -> Result<Json<Agency>, ApiError> {
    caller.require(Action::AdministerAgencies)?;
    let agency = agencies::get(&state.pool, id)
        .await?
        .ok_or(ApiError::AgencyNotFound)?;
    Ok(Json(agency))
}

/// Suspend and reinstate: an operator's change with a checked reason.
/// Written once for both routes, with their OpenAPI annotation.
macro_rules! status_change {
    ($name:ident, $path:literal, $operation_id:literal, $change:ident) => {
        #[utoipa::path(post, path = $path, operation_id = $operation_id, tag = "ops", request_body = StatusChange,
            responses((status = 200, description = "the agency", body = Agency)))]
        pub async fn $name(
            State(state): State<AppState>, caller: Caller, PathId(id): PathId,
            Body(body): Body<StatusChange>,
        ) -> Result<Json<Agency>, ApiError> {
            caller.require(Action::AdministerAgencies)?;
            values::optional_text("reason", body.reason.as_deref(), REASON_MAX)?;
            apply(&state, &caller, id, Change::$change { reason: body.reason }).await
        }
    };
}

status_change!(
    suspend,
    "/ops/agencies/{id}/suspend",
    "suspend_agency",
    Suspend
);
status_change!(
    reinstate,
    "/ops/agencies/{id}/reinstate",
    "reinstate_agency",
    Reinstate
);

#[utoipa::path(put, path = "/ops/agencies/{id}/features", operation_id = "set_agency_features", tag = "ops",
    request_body = FeatureChange,
    responses((status = 200, description = "the agency", body = Agency)))]
pub async fn features(
    State(state): State<AppState>, caller: Caller, PathId(id): PathId,
    Body(body): Body<FeatureChange>,
) -> Result<Json<Agency>, ApiError> {
    caller.require(Action::AdministerAgencies)?;
    let change = Change::SetFeatures {
        ical_export: body.ical_export,
        ical_import: body.ical_import,
    };
    apply(&state, &caller, id, change).await
}

/// Runs a change in its own task (a client that hangs up cannot cut the
/// transaction short), then takes it into this process's cache.
async fn apply(
    state: &AppState, caller: &Caller, id: Uuid, change: Change,
) -> Result<Json<Agency>, ApiError> {
    let pool = state.pool.clone();
    let by = caller.0.user_id.clone();
    let agency = tokio::spawn(async move { agencies::change(&pool, id, change, &by).await })
        .await
        .map_err(ApiError::internal)??;
    state.agencies.note(&agency);
    Ok(Json(agency))
}

/// The agencies' life-cycle changes, oldest first, in the audit log's shape
/// (`resource_type` is `agency`; `position` is the history's own order).
#[utoipa::path(get, path = "/ops/audit-log", operation_id = "agency_audit_log", tag = "ops",
    params(Paging),
    responses((status = 200, description = "a page of the agency history", body = Page<AuditEntry>)))]
pub async fn audit_log(
    State(state): State<AppState>, caller: Caller, page: Paging,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    caller.require(Action::AdministerAgencies)?;
    let rows = agencies::history(&state.pool, page.after_number()?, page.fetch()).await?;
    Ok(Json(page.page(
        rows,
        |e| e.position.to_string(),
        AuditEntry::from,
    )))
}
