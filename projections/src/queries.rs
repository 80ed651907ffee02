//! The reads the API serves from the read models.
//!
//! Every read runs in a read-only transaction as `ledger_reader` with
//! `ledger.agency_id` set, so row-level security confines it to one agency
//! even if a query forgot its `agency_id` filter; the queries filter anyway.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use ledger_domain::checksum::ChannelRange;
use ledger_domain::values::ClaimKind;
use ledger_infra::agencies::HistoryEntry;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::views::{BookingRow, PropertyRow};
use crate::Projection;

/// A read-only transaction confined to `agency_id` by row-level security.
///
/// Plans are always made for the actual values: the queries have optional
/// filters (`$n IS NULL OR ...`) and date windows, and the generic plan a
/// prepared statement switches to after five runs cannot use the indexes
/// for them (the free search went from ~20 ms to ~250 ms).
pub async fn begin(
    pool: &PgPool, agency_id: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Named columns: the query macro makes a field of each (and has no
    // `execute` once it has columns: the one row is read and dropped).
    sqlx::query!(
        "SELECT set_config('transaction_read_only', 'on', true) AS read_only,
                set_config('role', 'ledger_reader', true) AS role,
                set_config('ledger.agency_id', $1, true) AS agency,
                set_config('plan_cache_mode', 'force_custom_plan', true) AS plan_cache_mode",
        agency_id.to_string(),
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(tx)
}

/// Waits until every projection in `which` has applied the log up to
/// `min_position` (at most `timeout`); returns the position they have
/// reached, or `None` when the wait ran out.
pub async fn wait_for(
    pool: &PgPool, which: &[Projection], min_position: i64, timeout: Duration,
) -> Result<Option<i64>, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        let reached = crate::runner::reached(pool, which).await?;
        if reached >= min_position {
            return Ok(Some(reached));
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Ok(None);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn decode<T: for<'de> serde::Deserialize<'de>>(rows: Vec<Value>) -> Result<Vec<T>, sqlx::Error> {
    rows.into_iter()
        .map(|row| serde_json::from_value(row).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .collect()
}

/// A tentative booking whose hold has lapsed.
#[derive(Debug, Clone)]
pub struct LapsedHold {
    pub booking_id: Uuid,
    pub property_id: Uuid,
    pub agency_id: Uuid,
}

/// Holds lapsed by `now`, of every agency, the longest lapsed first (the
/// hold expiry job's work; not confined to an agency).
pub async fn lapsed_holds(
    pool: &PgPool, now: DateTime<Utc>, limit: i64,
) -> Result<Vec<LapsedHold>, sqlx::Error> {
    sqlx::query_as!(
        LapsedHold,
        "SELECT booking_id, property_id, agency_id FROM bookings_view
          WHERE status = 'tentative' AND hold_expires_at <= $1
          ORDER BY hold_expires_at LIMIT $2",
        now,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// `owner` restricts to properties whose `owner_id` is that user.
pub async fn properties(
    conn: &mut PgConnection, agency_id: Uuid, owner: Option<&str>, after: Option<Uuid>, limit: i64,
) -> Result<Vec<PropertyRow>, sqlx::Error> {
    let rows = sqlx::query_scalar!(
        r#"SELECT to_jsonb(p) AS "row!" FROM properties_view p
          WHERE p.agency_id = $1
            AND ($2::text IS NULL OR p.owner_id = $2)
            AND ($3::uuid IS NULL OR p.property_id > $3)
          ORDER BY p.property_id
          LIMIT $4"#,
        agency_id,
        owner,
        after,
        limit,
    )
    .fetch_all(conn)
    .await?;
    decode(rows)
}

pub async fn property(
    conn: &mut PgConnection, agency_id: Uuid, property_id: Uuid,
) -> Result<Option<PropertyRow>, sqlx::Error> {
    let row = sqlx::query_scalar!(
        r#"SELECT to_jsonb(p) AS "row!" FROM properties_view p
            WHERE p.agency_id = $1 AND p.property_id = $2"#,
        agency_id,
        property_id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(decode(row.into_iter().collect())?.pop())
}

/// Filters of the bookings list; `from`/`to` select stays overlapping `[from, to)`.
#[derive(Debug, Clone, Default)]
pub struct BookingFilter {
    pub property_id: Option<Uuid>,
    pub status: Option<String>,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub owner: Option<String>,
}

pub async fn bookings(
    conn: &mut PgConnection, agency_id: Uuid, filter: &BookingFilter, after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<BookingRow>, sqlx::Error> {
    let rows = sqlx::query_scalar!(
        r#"SELECT to_jsonb(b) AS "row!" FROM bookings_view b
          WHERE b.agency_id = $1
            AND ($2::uuid IS NULL OR b.property_id = $2)
            AND ($3::text IS NULL OR b.status = $3)
            AND ($4::date IS NULL OR b.check_out > $4)
            AND ($5::date IS NULL OR b.check_in < $5)
            AND ($6::text IS NULL OR EXISTS (
                  SELECT 1 FROM properties_view p
                   WHERE p.property_id = b.property_id AND p.owner_id = $6))
            AND ($7::uuid IS NULL OR b.booking_id > $7)
          ORDER BY b.booking_id
          LIMIT $8"#,
        agency_id,
        filter.property_id,
        filter.status.as_deref(),
        filter.from,
        filter.to,
        filter.owner.as_deref(),
        after,
        limit,
    )
    .fetch_all(conn)
    .await?;
    decode(rows)
}

/// A booking with the owner of its property (for the owner-only rule).
pub async fn booking(
    conn: &mut PgConnection, agency_id: Uuid, booking_id: Uuid,
) -> Result<Option<(BookingRow, Option<String>)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT to_jsonb(b) AS "booking!", p.owner_id AS "owner_id?"
           FROM bookings_view b
           LEFT JOIN properties_view p ON p.property_id = b.property_id
          WHERE b.agency_id = $1 AND b.booking_id = $2"#,
        agency_id,
        booking_id,
    )
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(decode::<BookingRow>(vec![row.booking])?
        .pop()
        .map(|b| (b, row.owner_id)))
}

/// One active claim on a property's nights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimedRange {
    pub kind: ClaimKind,
    pub id: Uuid,
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub status: String,
    /// The room type the claim holds units of; `None` on a single unit.
    pub room_type_id: Option<Uuid>,
    /// The units of the room type it holds (1 on a single unit).
    pub units: i32,
}

/// The claim as channels see it (snapshots and checksums).
impl From<ClaimedRange> for ChannelRange {
    fn from(r: ClaimedRange) -> Self {
        ChannelRange {
            room_type_id: r.room_type_id,
            units: r.room_type_id.map(|_| u32::try_from(r.units).unwrap_or(1)),
            ..ChannelRange::single(r.kind, r.id, r.start, r.end, r.status)
        }
    }
}

/// Active claims of a property overlapping `[from, to)`, in date order.
pub async fn ranges(
    conn: &mut PgConnection, agency_id: Uuid, property_id: Uuid, from: NaiveDate, to: NaiveDate,
) -> Result<Vec<ClaimedRange>, sqlx::Error> {
    sqlx::query_as!(
        ClaimedRange,
        r#"SELECT kind AS "kind: ClaimKind", ref_id AS id, lower(during) AS "start!",
                upper(during) AS "end!", status, room_type_id, units
           FROM inventory_ranges
          WHERE agency_id = $1 AND property_id = $2 AND during && daterange($3, $4)
          ORDER BY lower(during)"#,
        agency_id,
        property_id,
        from,
        to,
    )
    .fetch_all(conn)
    .await
}

/// The nights of `[from, to)` no range covers, as maximal runs.
pub fn free_runs(
    ranges: &[ClaimedRange], from: NaiveDate, to: NaiveDate,
) -> Vec<(NaiveDate, NaiveDate)> {
    let mut free = Vec::new();
    let mut cursor = from;
    for range in ranges {
        if range.start > cursor {
            free.push((cursor, range.start.min(to)));
        }
        cursor = cursor.max(range.end);
        if cursor >= to {
            return free;
        }
    }
    if cursor < to {
        free.push((cursor, to));
    }
    free
}

/// A room type's free units on each night of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomTypeNights {
    pub id: Uuid,
    pub name: String,
    pub units: i32,
    /// `(night, free)` for every night of the window, in date order.
    pub nights: Vec<(NaiveDate, i32)>,
}

/// The room types of a property (by id, as `GET .../room-types` lists
/// them) with their free units on every night of `[from, to)`; empty for a
/// single-unit property. A night no claim holds has no `inventory_nights`
/// row: all its units are free.
pub async fn room_type_nights(
    conn: &mut PgConnection, agency_id: Uuid, property_id: Uuid, from: NaiveDate, to: NaiveDate,
) -> Result<Vec<RoomTypeNights>, sqlx::Error> {
    let types = sqlx::query!(
        "SELECT room_type_id, name, units FROM inventory_room_types
          WHERE agency_id = $1 AND property_id = $2
          ORDER BY room_type_id",
        agency_id,
        property_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    if types.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = types.iter().map(|t| t.room_type_id).collect();
    let taken: HashMap<(Uuid, NaiveDate), i32> = sqlx::query!(
        "SELECT room_type_id, night, taken FROM inventory_nights
          WHERE agency_id = $1 AND room_type_id = ANY($2) AND night >= $3 AND night < $4",
        agency_id,
        &ids,
        from,
        to,
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| ((row.room_type_id, row.night), row.taken))
    .collect();
    Ok(types
        .into_iter()
        .map(|t| {
            let (id, name, units) = (t.room_type_id, t.name, t.units);
            let nights = from
                .iter_days()
                .take_while(|night| *night < to)
                .map(|night| {
                    let taken = taken.get(&(id, night)).copied().unwrap_or(0);
                    (night, units - taken)
                })
                .collect();
            RoomTypeNights {
                id,
                name,
                units,
                nights,
            }
        })
        .collect())
}

/// The units of a room type of the property, if it has that room type.
pub async fn room_type_units(
    conn: &mut PgConnection, agency_id: Uuid, property_id: Uuid, room_type_id: Uuid,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT units FROM inventory_room_types
          WHERE agency_id = $1 AND property_id = $2 AND room_type_id = $3",
        agency_id,
        property_id,
        room_type_id,
    )
    .fetch_optional(conn)
    .await
}

/// What the availability search looks for.
#[derive(Debug, Clone)]
pub struct FreeSearch<'a> {
    pub owner: Option<&'a str>,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Units wanted on every night: a single-unit property matches only 1.
    pub units: i32,
    /// The last hit of the previous page: `(property_id, room_type_id)`.
    pub after: Option<(Uuid, Option<Uuid>)>,
    pub limit: i64,
}

/// One hit of the availability search: a single-unit property
/// (`room_type_id` `None`) or one room type of a property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeUnit {
    pub property_id: Uuid,
    pub name: String,
    pub room_type_id: Option<Uuid>,
}

/// The units search, with the test that leaves a room type's night out (see
/// [`free_units`]), run on `$conn`; `$key` is the paging key. A macro, not a
/// `format!`, so that the SQL stays static text the query macro checks. The
/// first arm names the output columns; the overrides (`"property_id!"`) are
/// their names, so the final ORDER BY quotes them.
macro_rules! free_units_query {
    ($short_night:literal, $conn:expr, $agency_id:expr, $search:expr, $key:expr) => {
        sqlx::query_as!(
            FreeUnit,
            r#"(SELECT p.property_id AS "property_id!", p.name AS "name!",
                    NULL::uuid AS "room_type_id?"
            FROM properties_view p
           WHERE $7 = 1 AND p.agency_id = $1 AND NOT p.archived
             AND ($2::text IS NULL OR p.owner_id = $2)
             AND ($5::uuid IS NULL OR p.property_id > $5)
             AND NOT EXISTS (
                 SELECT 1 FROM inventory_ranges r
                  WHERE r.agency_id = p.agency_id AND r.property_id = p.property_id
                    AND r.during && daterange($3, $4))
             AND NOT EXISTS (
                 SELECT 1 FROM inventory_room_types t
                  WHERE t.agency_id = p.agency_id AND t.property_id = p.property_id)
           ORDER BY p.property_id
           LIMIT $8)
         UNION ALL
         (SELECT p.property_id, p.name, rt.room_type_id
            FROM inventory_room_types rt
            JOIN properties_view p ON p.property_id = rt.property_id
           WHERE rt.agency_id = $1 AND p.agency_id = $1 AND NOT p.archived
             AND ($2::text IS NULL OR p.owner_id = $2)
             AND ($5::uuid IS NULL OR (rt.property_id, rt.room_type_id) > ($5, $6))
             AND rt.units >= $7
             AND rt.room_type_id NOT IN (
                 SELECT n.room_type_id FROM inventory_nights n
                  WHERE n.agency_id = $1 AND n.night >= $3 AND n.night < $4
                    AND "#
                + $short_night
                + r#")
           ORDER BY rt.property_id, rt.room_type_id
           LIMIT $8)
         ORDER BY "property_id!", "room_type_id?" NULLS FIRST
         LIMIT $8"#,
            $agency_id,
            $search.owner,
            $search.from,
            $search.to,
            $key.0,
            $key.1,
            $search.units,
            $search.limit,
        )
        .fetch_all($conn)
        .await
    };
}

/// Unarchived single-unit properties with every night of `[from, to)` free
/// (only when one unit is wanted), and room types with at least `units`
/// free on every night of it, ordered by property and then room type (the
/// single unit, having none, first).
pub async fn free_units(
    conn: &mut PgConnection, agency_id: Uuid, search: &FreeSearch<'_>,
) -> Result<Vec<FreeUnit>, sqlx::Error> {
    // The nil UUID stands for "no room type" in the paging key, so that a
    // single unit's key sorts before any room type's.
    let key = match search.after {
        Some((property, room_type)) => (Some(property), room_type.unwrap_or(Uuid::nil())),
        None => (None, Uuid::nil()),
    };
    // Two searches, each ordered and cut at the page, merged. A room type is
    // excluded when any night of the window lacks the units: the set of
    // such room types is built once from the window's rows of
    // inventory_nights and hashed, which is several times cheaper than
    // probing the nights of each room type when few match (a search for
    // many units). For one unit, those are the full nights, spelled as the
    // partial index `inventory_nights_full` (migration 0016) is defined, so
    // the planner reads the full nights alone (P7 with room types,
    // docs/benchmarks.md). Two statements rather than one with both tests:
    // with both arms in one NOT IN, the planner set up a parallel scan for
    // the arm that could not match.
    if search.units == 1 {
        free_units_query!("n.taken >= n.units", conn, agency_id, search, key)
    } else {
        free_units_query!("n.taken > n.units - $7", conn, agency_id, search, key)
    }
}

/// An entry of an audit log: the agency's (`/api/v1/audit-log`) or the
/// agencies' history (`/ops/audit-log`), which has the same shape.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = AuditEntryView))]
pub struct AuditEntry {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub user_id: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Uuid,
    pub details: Value,
    pub created_at: DateTime<Utc>,
    pub position: i64,
}

impl From<HistoryEntry> for AuditEntry {
    fn from(e: HistoryEntry) -> Self {
        AuditEntry {
            id: e.id,
            agency_id: e.agency_id,
            user_id: e.user_id,
            action: e.action,
            resource_type: e.resource_type.to_owned(),
            resource_id: e.resource_id,
            details: e.details,
            created_at: e.created_at,
            position: e.position,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub resource_type: Option<String>,
    pub resource_id: Option<Uuid>,
    pub user_id: Option<String>,
    pub action: Option<String>,
}

pub async fn audit_log(
    conn: &mut PgConnection, agency_id: Uuid, filter: &AuditFilter, after: i64, limit: i64,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let rows = sqlx::query_scalar!(
        r#"SELECT to_jsonb(a) AS "row!" FROM audit_log a
          WHERE a.agency_id = $1
            AND ($2::text IS NULL OR a.resource_type = $2)
            AND ($3::uuid IS NULL OR a.resource_id = $3)
            AND ($4::text IS NULL OR a.user_id = $4)
            AND ($5::text IS NULL OR a.action = $5)
            AND a.position > $6
          ORDER BY a.position
          LIMIT $7"#,
        agency_id,
        filter.resource_type.as_deref(),
        filter.resource_id,
        filter.user_id.as_deref(),
        filter.action.as_deref(),
        after,
        limit,
    )
    .fetch_all(conn)
    .await?;
    decode(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, 1, day).unwrap()
    }

    fn range(start: u32, end: u32) -> ClaimedRange {
        ClaimedRange {
            kind: ClaimKind::Booking,
            id: Uuid::nil(),
            start: d(start),
            end: d(end),
            status: "confirmed".into(),
            room_type_id: None,
            units: 1,
        }
    }

    #[test]
    fn free_runs_are_the_gaps_between_claims() {
        let ranges = [range(1, 3), range(5, 7), range(7, 9)];
        assert_eq!(
            free_runs(&ranges, d(2), d(12)),
            vec![(d(3), d(5)), (d(9), d(12))]
        );
        assert_eq!(free_runs(&[], d(2), d(4)), vec![(d(2), d(4))]);
        assert_eq!(free_runs(&[range(1, 20)], d(2), d(4)), vec![]);
        assert_eq!(free_runs(&[range(3, 20)], d(1), d(4)), vec![(d(1), d(3))]);
    }
}
