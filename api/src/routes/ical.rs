//! iCal routes (docs/ical.md): the export feed a channel polls, its
//! per-property secret, and the feeds `ledger serve` imports.

use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_domain::ical::render;
use ledger_domain::Action;
use ledger_infra::agencies;
use ledger_infra::ical::fetch::AddressRules;
use ledger_infra::ical::{self, export, FeedRow};
use ledger_projections::queries;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{visible_property, PathId, PathIds};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Body;
use crate::state::{AppState, Feature};

pub const CALENDAR_CONTENT_TYPE: &str = "text/calendar; charset=utf-8";
const DEFAULT_INTERVAL_MINUTES: i32 = 60;

#[derive(Deserialize)]
pub struct FeedQuery {
    token: Option<String>,
}

/// `{property_id}.ics`: a wrong or missing token, an unknown property, a
/// suspended agency and an agency with `ical_export` off are the same 404,
/// so the URL reveals nothing without its secret.
#[utoipa::path(get, path = "/ical/{file}", tag = "ical",
    params(("file" = String, Path, description = "<property_id>.ics"),
           ("token" = String, Query, description = "the property's export secret")),
    responses((status = 200, content_type = "text/calendar", body = String),
              (status = 404, body = crate::dto::ErrorBody)))]
pub async fn export_feed(
    State(state): State<AppState>, Path(file): Path<String>, Query(query): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    let property_id = ics_file(&file)?;
    exported(&state, property_id, query).await?;
    let ranges = export::ranges(&state.pool, property_id).await?;
    Ok(calendar(render::render(property_id, &ranges)))
}

/// `{property_id}/{room_type_id}.ics`: the room type's nights, each taken
/// only when no unit of it is free. Under the property's secret, with the
/// same 404 for anything that is not a room type of that property.
#[utoipa::path(get, path = "/ical/{property_id}/{file}", tag = "ical",
    params(("property_id" = Uuid, Path),
           ("file" = String, Path, description = "<room_type_id>.ics"),
           ("token" = String, Query, description = "the property's export secret")),
    responses((status = 200, content_type = "text/calendar", body = String),
              (status = 404, body = crate::dto::ErrorBody)))]
pub async fn export_room_type_feed(
    State(state): State<AppState>, Path((property_id, file)): Path<(String, String)>,
    Query(query): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    let property_id: Uuid = property_id.parse().map_err(|_| ApiError::NotFound)?;
    let room_type_id = ics_file(&file)?;
    let agency_id = exported(&state, property_id, query).await?;
    let mut tx = queries::begin(&state.pool, agency_id).await?;
    let units = queries::room_type_units(&mut tx, agency_id, property_id, room_type_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    let ranges = export::ranges(&state.pool, property_id).await?;
    let units = u32::try_from(units).unwrap_or(u32::MAX);
    Ok(calendar(render::render_room_type(
        property_id,
        room_type_id,
        units,
        &ranges,
    )))
}

/// The id of `<id>.ics`.
fn ics_file(file: &str) -> Result<Uuid, ApiError> {
    file.strip_suffix(".ics")
        .and_then(|id| id.parse().ok())
        .ok_or(ApiError::NotFound)
}

/// The property's agency, when `token` is its export secret and the agency
/// exports: else the one 404.
async fn exported(state: &AppState, property_id: Uuid, query: FeedQuery) -> Result<Uuid, ApiError> {
    let token = query
        .token
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::NotFound)?;
    if !ical::token_matches(&state.pool, property_id, &token).await? {
        return Err(ApiError::NotFound);
    }
    let agency_id = agencies::of_ical_export(&state.pool, property_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if !state.agencies.allows(agency_id, Feature::IcalExport) {
        return Err(ApiError::NotFound);
    }
    Ok(agency_id)
}

fn calendar(body: String) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(CALENDAR_CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IcalTokenView {
    pub property_id: Uuid,
    /// Shown once: only its hash is kept.
    pub token: String,
    /// The export URL to give the channel.
    pub url: String,
}

/// Creates or rotates the property's export secret (the old URL stops
/// working). Admin and manager: it is property management.
#[utoipa::path(post, path = "/api/v1/properties/{id}/ical-token", tag = "ical",
    responses((status = 201, body = IcalTokenView)))]
pub async fn rotate_token(
    State(state): State<AppState>, PathId(id): PathId, caller: Caller, headers: HeaderMap,
) -> Result<Response, ApiError> {
    visible_property(&state, &caller, id, Action::ManageProperty).await?;
    state
        .agencies
        .require(caller.0.agency_id, Feature::IcalExport)?;
    let token = ical::rotate_token(&state.pool, caller.0.agency_id, id, &caller.0.user_id).await?;
    let url = format!("{}/ical/{id}.ics?token={token}", base_url(&headers));
    let view = IcalTokenView {
        property_id: id,
        token,
        url,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedBody {
    /// An `http://` or `https://` URL of the channel's iCal export, whose
    /// host resolves to public addresses only (or is listed in
    /// `LEDGER_FEED_ALLOW_HOSTS`).
    pub url: String,
    /// 5 to 10080 (a week); 60 when left out.
    #[serde(default)]
    pub interval_minutes: Option<i32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeedList {
    pub items: Vec<FeedRow>,
}

/// Registers a feed to import (admin only: the service fetches the URL).
/// The first run is due at once.
#[utoipa::path(post, path = "/api/v1/properties/{id}/ical-feeds", tag = "ical",
    request_body = FeedBody,
    responses((status = 201, body = FeedRow)))]
pub async fn add_feed(
    State(state): State<AppState>, PathId(id): PathId, caller: Caller, Body(body): Body<FeedBody>,
) -> Result<Response, ApiError> {
    let agency_id = admin_property(&state, &caller, id).await?;
    state.agencies.require(agency_id, Feature::IcalImport)?;
    let url = checked_url(&state, &body.url).await?;
    let interval = body.interval_minutes.unwrap_or(DEFAULT_INTERVAL_MINUTES);
    if !(5..=10080).contains(&interval) {
        return Err(ApiError::validation(
            "interval_minutes must be from 5 to 10080",
        ));
    }
    let row = ical::add_feed(&state.pool, agency_id, id, &url, interval, state.now()).await?;
    Ok((StatusCode::CREATED, Json(row)).into_response())
}

#[utoipa::path(get, path = "/api/v1/properties/{id}/ical-feeds", tag = "ical",
    responses((status = 200, body = FeedList)))]
pub async fn list_feeds(
    State(state): State<AppState>, PathId(id): PathId, caller: Caller,
) -> Result<Response, ApiError> {
    let agency_id = admin_property(&state, &caller, id).await?;
    state.agencies.require(agency_id, Feature::IcalImport)?;
    let items = ical::list_feeds(&state.pool, id).await?;
    Ok(Json(FeedList { items }).into_response())
}

/// Stops importing a feed. The blocks it imported stay.
#[utoipa::path(delete, path = "/api/v1/properties/{id}/ical-feeds/{feed_id}", tag = "ical",
    responses((status = 200, body = FeedRow)))]
pub async fn delete_feed(
    State(state): State<AppState>, PathIds(id, feed_id): PathIds, caller: Caller,
) -> Result<Response, ApiError> {
    admin_property(&state, &caller, id).await?;
    let row = ical::delete_feed(&state.pool, id, feed_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(row).into_response())
}

/// Feeds are the admin's (`Action::ManageFeeds`). Returns the property's
/// agency.
async fn admin_property(state: &AppState, caller: &Caller, id: Uuid) -> Result<Uuid, ApiError> {
    visible_property(state, caller, id, Action::ManageFeeds).await?;
    Ok(caller.0.agency_id)
}

/// The URL as registered, or 400 naming `url`: only `http`/`https` URLs
/// whose host is allow-listed or resolves to public addresses only.
async fn checked_url(state: &AppState, raw: &str) -> Result<String, ApiError> {
    let rules = AddressRules::new(&state.config.feed_allow_hosts);
    match rules.check_registration(raw).await {
        Ok(_) => Ok(raw.trim().to_owned()),
        Err(refusal) => Err(ApiError::Validation {
            message: refusal.to_string(),
            details: json!({ "field": "url", "reason": refusal.to_string() }),
        }),
    }
}

/// The service's own address as the caller reached it.
fn base_url(headers: &HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("x-forwarded-host")
        .or_else(|| headers.get(HOST).and_then(|v| v.to_str().ok()))
        .unwrap_or("localhost");
    let scheme = match header("x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}
