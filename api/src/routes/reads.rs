//! The read routes of docs/api.md, served from the projections. Every read
//! accepts `?min_position=` (read-your-writes, at most 5 s of waiting) and
//! answers with `x-ledger-position`, the position the read models reached.

use std::convert::identity;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::Response;
use chrono::NaiveDate;
use ledger_domain::policy::{sees_property, Scope};
use ledger_domain::values::{self, BookingStatus};
use ledger_domain::{Action, CalendarError};
use ledger_projections::queries::{self, AuditEntry, AuditFilter, BookingFilter, FreeSearch};
use ledger_projections::views::PropertyRow;
use ledger_projections::Projection;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Postgres, Transaction};
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::{KnownFormat, Type};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{parse_cursor, read_reply, serde_urlencoded_query, Paging, Params, PathId};
use crate::auth::Caller;
use crate::dto::{BookingView, Page};
use crate::error::ApiError;
use crate::openapi::query_parameter;
use crate::state::AppState;

/// How long a read waits for `min_position`.
pub(super) const MIN_POSITION_WAIT: Duration = Duration::from_secs(5);
/// What the availability reads read: the properties (who may see which)
/// and the claims.
const AVAILABILITY: &[Projection] = &[Projection::Views, Projection::Inventory];
/// The widest date window a read accepts.
const MAX_WINDOW_DAYS: i64 = 3 * 366;

/// `?min_position=N` of every read.
pub struct MinPosition(pub i64);

#[derive(Deserialize)]
struct MinPositionQuery {
    min_position: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for MinPosition {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query: MinPositionQuery = serde_urlencoded_query(parts.uri.query().unwrap_or(""))?;
        match query.min_position {
            None => Ok(MinPosition(0)),
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|p| *p >= 0)
                .map(MinPosition)
                .ok_or_else(|| ApiError::validation("min_position must be a non-negative integer")),
        }
    }
}

/// `?min_position=` in the OpenAPI document: `params(MinPosition)`.
impl IntoParams for MinPosition {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![query_parameter(
            "min_position",
            Type::Integer,
            Some(KnownFormat::Int64),
        )]
    }
}

/// Waits for the read models `which` to reach `min`, then opens the
/// caller's agency-confined read transaction. Both on the read pool: on a
/// standby the checkpoints are the ones it has replayed, so the wait is
/// read-your-writes there too.
async fn settle(
    state: &AppState, which: &[Projection], MinPosition(min): MinPosition, caller: &Caller,
) -> Result<(i64, Transaction<'static, Postgres>), ApiError> {
    let reached = queries::wait_for(&state.read_pool, which, min, MIN_POSITION_WAIT)
        .await?
        .ok_or(ApiError::ProjectionLagging(min))?;
    let tx = queries::begin(&state.read_pool, caller.0.agency_id).await?;
    Ok((reached, tx))
}

/// The property `id` if the caller may see it (an owner sees only their
/// own), else 404.
pub(super) async fn visible_row(
    conn: &mut PgConnection, caller: &Caller, scope: Scope, id: Uuid,
) -> Result<PropertyRow, ApiError> {
    queries::property(conn, caller.0.agency_id, id)
        .await?
        .filter(|r| sees_property(&caller.0, scope, r.details.owner_id.as_deref()))
        .ok_or(ApiError::Calendar(CalendarError::PropertyNotFound))
}

fn owner_filter(caller: &Caller, scope: Scope) -> Option<String> {
    (scope == Scope::OwnProperties).then(|| caller.0.user_id.clone())
}

/// A 400 naming the query parameter it is about.
fn invalid(field: &'static str, reason: impl Into<String>) -> ApiError {
    CalendarError::invalid(field, reason).into()
}

fn parse_uuid(field: &'static str, raw: &Option<String>) -> Result<Option<Uuid>, ApiError> {
    raw.as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| invalid(field, "must be a UUID")))
        .transpose()
}

/// A date parameter: `YYYY-MM-DD`, within the dates the ledger holds.
pub(super) fn parse_date(
    field: &'static str, raw: &Option<String>,
) -> Result<Option<NaiveDate>, ApiError> {
    raw.as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let date = NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map_err(|_| invalid(field, "must be a date YYYY-MM-DD"))?;
            Ok(values::date(field, date)?)
        })
        .transpose()
}

/// A free-text filter: one line of at most 255 characters, as the values it
/// is compared with.
fn parse_text(field: &'static str, raw: Option<String>) -> Result<Option<String>, ApiError> {
    let text = raw.filter(|s| !s.is_empty());
    values::optional_text(field, text.as_deref(), 255)?;
    Ok(text)
}

/// The required `[from, to)` window of the availability reads.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WindowQuery {
    /// A date from 1900-01-01 to 2199-12-31.
    #[param(
        required = true,
        pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$"
    )]
    from: Option<String>,
    /// A date from 1900-01-01 to 2199-12-31, after `from`.
    #[param(
        required = true,
        pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$"
    )]
    to: Option<String>,
}

impl WindowQuery {
    /// from < to, at most three years.
    fn parse(&self) -> Result<(NaiveDate, NaiveDate), ApiError> {
        let from = parse_date("from", &self.from)?.ok_or_else(|| invalid("from", "is required"))?;
        let to = parse_date("to", &self.to)?.ok_or_else(|| invalid("to", "is required"))?;
        check_window(from, to)?;
        Ok((from, to))
    }
}

fn check_window(from: NaiveDate, to: NaiveDate) -> Result<(), ApiError> {
    if to <= from {
        return Err(invalid("to", "must be after from"));
    }
    if (to - from).num_days() > MAX_WINDOW_DAYS {
        return Err(invalid(
            "to",
            format!("the window from..to may span at most {MAX_WINDOW_DAYS} days"),
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/properties", tag = "properties",
    params(Paging, MinPosition),
    responses((status = 200, body = Page<PropertyRow>)))]
pub async fn list_properties(
    State(state): State<AppState>, caller: Caller, page: Paging, min: MinPosition,
) -> Result<Response, ApiError> {
    let scope = caller.require(Action::ReadCalendar)?;
    let after = page.after_id()?;
    let (position, mut tx) = settle(&state, &[Projection::Views], min, &caller).await?;
    let owner = owner_filter(&caller, scope);
    let rows = queries::properties(
        &mut tx,
        caller.0.agency_id,
        owner.as_deref(),
        after,
        page.fetch(),
    )
    .await?;
    let properties = page.page(rows, |r| r.property_id.to_string(), identity);
    Ok(read_reply(position, properties))
}

#[utoipa::path(get, path = "/api/v1/properties/{id}", tag = "properties",
    params(MinPosition),
    responses((status = 200, body = PropertyRow)))]
pub async fn get_property(
    State(state): State<AppState>, PathId(id): PathId, caller: Caller, min: MinPosition,
) -> Result<Response, ApiError> {
    let scope = caller.require(Action::ReadCalendar)?;
    let (position, mut tx) = settle(&state, &[Projection::Views], min, &caller).await?;
    let row = visible_row(&mut tx, &caller, scope, id).await?;
    Ok(read_reply(position, row))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BookingQuery {
    property_id: Option<String>,
    status: Option<String>,
    /// A date from 1900-01-01 to 2199-12-31.
    #[param(pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    from: Option<String>,
    /// A date from 1900-01-01 to 2199-12-31, after `from`.
    #[param(pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    to: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/bookings", tag = "bookings",
    params(BookingQuery, Paging, MinPosition),
    responses((status = 200, body = Page<BookingView>)))]
pub async fn list_bookings(
    State(state): State<AppState>, caller: Caller, page: Paging, min: MinPosition,
    Params(query): Params<BookingQuery>,
) -> Result<Response, ApiError> {
    let scope = caller.require(Action::ReadCalendar)?;
    let status = query.status.filter(|s| !s.is_empty());
    if let Some(status) = &status {
        let names = BookingStatus::ALL.map(BookingStatus::as_str);
        if !names.contains(&status.as_str()) {
            return Err(invalid(
                "status",
                format!("must be one of {}", names.join(", ")),
            ));
        }
    }
    let filter = BookingFilter {
        property_id: parse_uuid("property_id", &query.property_id)?,
        status,
        from: parse_date("from", &query.from)?,
        to: parse_date("to", &query.to)?,
        owner: owner_filter(&caller, scope),
    };
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        if to <= from {
            return Err(invalid("to", "must be after from"));
        }
    }
    let after = page.after_id()?;
    let (position, mut tx) = settle(&state, &[Projection::Views], min, &caller).await?;
    let rows = queries::bookings(&mut tx, caller.0.agency_id, &filter, after, page.fetch()).await?;
    let bookings = page.page(
        rows,
        |r| r.booking_id.to_string(),
        |r| BookingView::from(&r),
    );
    Ok(read_reply(position, bookings))
}

#[utoipa::path(get, path = "/api/v1/bookings/{id}", tag = "bookings",
    params(MinPosition),
    responses((status = 200, body = BookingView)))]
pub async fn get_booking(
    State(state): State<AppState>, PathId(id): PathId, caller: Caller, min: MinPosition,
) -> Result<Response, ApiError> {
    let scope = caller.require(Action::ReadCalendar)?;
    let (position, mut tx) = settle(&state, &[Projection::Views], min, &caller).await?;
    let (row, _owner) = queries::booking(&mut tx, caller.0.agency_id, id)
        .await?
        .filter(|(_, owner)| sees_property(&caller.0, scope, owner.as_deref()))
        .ok_or(ApiError::Calendar(CalendarError::BookingNotFound))?;
    Ok(read_reply(position, BookingView::from(&row)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AvailabilityQuery {
    #[param(required = true)]
    property_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RangeView {
    /// `booking` or `block`
    pub kind: String,
    pub id: Uuid,
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct FreeRun {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

#[derive(Serialize, ToSchema)]
pub struct AvailabilityView {
    pub property_id: Uuid,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub ranges: Vec<RangeView>,
    pub free: Vec<FreeRun>,
}

#[derive(Serialize, ToSchema)]
pub struct FreeNight {
    pub date: NaiveDate,
    /// Units of the room type no claim holds on this night.
    pub free: i32,
}

#[derive(Serialize, ToSchema)]
pub struct RoomTypeNightsView {
    pub id: Uuid,
    pub name: String,
    pub units: i32,
    /// Every night of `[from, to)`, in date order.
    pub nights: Vec<FreeNight>,
}

/// The availability of a property with room types: free units per night.
#[derive(Serialize, ToSchema)]
pub struct RoomTypeAvailabilityView {
    pub property_id: Uuid,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub room_types: Vec<RoomTypeNightsView>,
}

/// A single unit's claims and free runs, or a hotel's free units per room
/// type and night.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum AvailabilityReply {
    SingleUnit(AvailabilityView),
    RoomTypes(RoomTypeAvailabilityView),
}

#[utoipa::path(get, path = "/api/v1/availability", tag = "availability",
    params(AvailabilityQuery, WindowQuery, MinPosition),
    responses((status = 200, body = AvailabilityReply)))]
pub async fn availability(
    State(state): State<AppState>, caller: Caller, min: MinPosition,
    Params(query): Params<AvailabilityQuery>, Params(window): Params<WindowQuery>,
) -> Result<Response, ApiError> {
    let scope = caller.require(Action::ReadCalendar)?;
    let property_id = parse_uuid("property_id", &query.property_id)?
        .ok_or_else(|| ApiError::validation("property_id is required"))?;
    let (from, to) = window.parse()?;
    let (position, mut tx) = settle(&state, AVAILABILITY, min, &caller).await?;
    visible_row(&mut tx, &caller, scope, property_id).await?;
    let room_types =
        queries::room_type_nights(&mut tx, caller.0.agency_id, property_id, from, to).await?;
    if !room_types.is_empty() {
        let room_types = room_types
            .into_iter()
            .map(|t| RoomTypeNightsView {
                id: t.id,
                name: t.name,
                units: t.units,
                nights: t
                    .nights
                    .into_iter()
                    .map(|(date, free)| FreeNight { date, free })
                    .collect(),
            })
            .collect();
        return Ok(read_reply(
            position,
            AvailabilityReply::RoomTypes(RoomTypeAvailabilityView {
                property_id,
                from,
                to,
                room_types,
            }),
        ));
    }
    let ranges = queries::ranges(&mut tx, caller.0.agency_id, property_id, from, to).await?;
    let free = queries::free_runs(&ranges, from, to)
        .into_iter()
        .map(|(start, end)| FreeRun { start, end })
        .collect();
    let ranges = ranges
        .into_iter()
        .map(|r| RangeView {
            kind: r.kind.as_str().into(),
            id: r.id,
            start: r.start,
            end: r.end,
            status: r.status,
        })
        .collect();
    Ok(read_reply(
        position,
        AvailabilityReply::SingleUnit(AvailabilityView {
            property_id,
            from,
            to,
            ranges,
            free,
        }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Units wanted on every night, 1 to 1000 (default 1). A single-unit
    /// property matches only 1.
    units: Option<String>,
}

/// The most units a search asks for: the most a room type can have.
const MAX_UNITS: i32 = 1000;

#[derive(Serialize, ToSchema)]
pub struct FreeProperty {
    pub property_id: Uuid,
    pub name: String,
    /// The room type with the units free; `null` for a single-unit property.
    pub room_type_id: Option<Uuid>,
}

/// The cursor of the search: `property_id`, or `property_id.room_type_id`
/// after a room type.
fn search_cursor(page: &Paging) -> Result<Option<(Uuid, Option<Uuid>)>, ApiError> {
    let Some(cursor) = page.cursor.as_deref() else {
        return Ok(None);
    };
    Ok(Some(match cursor.split_once('.') {
        Some((property, room_type)) => (parse_cursor(property)?, Some(parse_cursor(room_type)?)),
        None => (parse_cursor(cursor)?, None),
    }))
}

#[utoipa::path(get, path = "/api/v1/availability/search", tag = "availability",
    params(WindowQuery, SearchQuery, Paging, MinPosition),
    responses((status = 200, body = Page<FreeProperty>)))]
pub async fn search(
    State(state): State<AppState>, caller: Caller, page: Paging, min: MinPosition,
    Params(window): Params<WindowQuery>, Params(query): Params<SearchQuery>,
) -> Result<Response, ApiError> {
    let scope = caller.require(Action::ReadCalendar)?;
    let (from, to) = window.parse()?;
    let units = match query.units.as_deref().filter(|u| !u.is_empty()) {
        None => 1,
        Some(raw) => raw
            .parse::<i32>()
            .ok()
            .filter(|u| (1..=MAX_UNITS).contains(u))
            .ok_or_else(|| invalid("units", format!("must be an integer from 1 to {MAX_UNITS}")))?,
    };
    let after = search_cursor(&page)?;
    let (position, mut tx) = settle(&state, AVAILABILITY, min, &caller).await?;
    let owner = owner_filter(&caller, scope);
    let search = FreeSearch {
        owner: owner.as_deref(),
        from,
        to,
        units,
        after,
        limit: page.fetch(),
    };
    let rows = queries::free_units(&mut tx, caller.0.agency_id, &search).await?;
    let free = page.page(
        rows,
        |hit| match hit.room_type_id {
            Some(room_type) => format!("{}.{room_type}", hit.property_id),
            None => hit.property_id.to_string(),
        },
        |hit| FreeProperty {
            property_id: hit.property_id,
            name: hit.name,
            room_type_id: hit.room_type_id,
        },
    );
    Ok(read_reply(position, free))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    #[param(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    resource_type: Option<String>,
    resource_id: Option<String>,
    #[param(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    user_id: Option<String>,
    #[param(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    action: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit-log", tag = "audit",
    params(AuditQuery, Paging, MinPosition),
    responses((status = 200, body = Page<AuditEntry>)))]
pub async fn audit_log(
    State(state): State<AppState>, caller: Caller, page: Paging, min: MinPosition,
    Params(query): Params<AuditQuery>,
) -> Result<Response, ApiError> {
    caller.require(Action::ReadAuditLog)?;
    let filter = AuditFilter {
        resource_id: parse_uuid("resource_id", &query.resource_id)?,
        resource_type: parse_text("resource_type", query.resource_type)?,
        user_id: parse_text("user_id", query.user_id)?,
        action: parse_text("action", query.action)?,
    };
    let after = page.after_number()?;
    let (position, mut tx) = settle(&state, &[Projection::Audit], min, &caller).await?;
    let rows =
        queries::audit_log(&mut tx, caller.0.agency_id, &filter, after, page.fetch()).await?;
    let entries = page.page(rows, |r| r.position.to_string(), identity);
    Ok(read_reply(position, entries))
}
