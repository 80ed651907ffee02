//! The reads the API serves from the read models.
//!
//! Every read runs in a read-only transaction as `ledger_reader` with
//! `ledger.agency_id` set, so row-level security confines it to one agency
//! even if a query forgot its `agency_id` filter; the queries filter anyway.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use ledger_domain::values::ClaimKind;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
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
    pool: &PgPool,
    agency_id: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "SELECT set_config('transaction_read_only', 'on', true),
                set_config('role', 'ledger_reader', true),
                set_config('ledger.agency_id', $1, true),
                set_config('plan_cache_mode', 'force_custom_plan', true)",
    )
    .bind(agency_id.to_string())
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// Waits until every projection in `which` has applied the log up to
/// `min_position` (at most `timeout`); returns the position they have
/// reached, or `None` when the wait ran out.
pub async fn wait_for(
    pool: &PgPool,
    which: &[Projection],
    min_position: i64,
    timeout: Duration,
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
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LapsedHold {
    pub booking_id: Uuid,
    pub property_id: Uuid,
    pub agency_id: Uuid,
}

/// Holds lapsed by `now`, of every agency, the longest lapsed first (the
/// hold expiry job's work; not confined to an agency).
pub async fn lapsed_holds(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<LapsedHold>, sqlx::Error> {
    sqlx::query_as(
        "SELECT booking_id, property_id, agency_id FROM bookings_view
          WHERE status = 'tentative' AND hold_expires_at <= $1
          ORDER BY hold_expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// `owner` restricts to properties whose `owner_id` is that user.
pub async fn properties(
    conn: &mut PgConnection,
    agency_id: Uuid,
    owner: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<PropertyRow>, sqlx::Error> {
    let rows = sqlx::query_scalar(
        "SELECT to_jsonb(p) FROM properties_view p
          WHERE p.agency_id = $1
            AND ($2::text IS NULL OR p.owner_id = $2)
            AND ($3::uuid IS NULL OR p.property_id > $3)
          ORDER BY p.property_id
          LIMIT $4",
    )
    .bind(agency_id)
    .bind(owner)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    decode(rows)
}

pub async fn property(
    conn: &mut PgConnection,
    agency_id: Uuid,
    property_id: Uuid,
) -> Result<Option<PropertyRow>, sqlx::Error> {
    let row: Option<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(p) FROM properties_view p WHERE p.agency_id = $1 AND p.property_id = $2",
    )
    .bind(agency_id)
    .bind(property_id)
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
    conn: &mut PgConnection,
    agency_id: Uuid,
    filter: &BookingFilter,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<BookingRow>, sqlx::Error> {
    let rows = sqlx::query_scalar(
        "SELECT to_jsonb(b) FROM bookings_view b
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
          LIMIT $8",
    )
    .bind(agency_id)
    .bind(filter.property_id)
    .bind(filter.status.as_deref())
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.owner.as_deref())
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    decode(rows)
}

/// A booking with the owner of its property (for the owner-only rule).
pub async fn booking(
    conn: &mut PgConnection,
    agency_id: Uuid,
    booking_id: Uuid,
) -> Result<Option<(BookingRow, Option<String>)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT to_jsonb(b) AS booking, p.owner_id
           FROM bookings_view b
           LEFT JOIN properties_view p ON p.property_id = b.property_id
          WHERE b.agency_id = $1 AND b.booking_id = $2",
    )
    .bind(agency_id)
    .bind(booking_id)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let booking: Value = row.try_get("booking")?;
    let owner: Option<String> = row.try_get("owner_id")?;
    Ok(decode::<BookingRow>(vec![booking])?
        .pop()
        .map(|b| (b, owner)))
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
}

/// Active claims of a property overlapping `[from, to)`, in date order.
pub async fn ranges(
    conn: &mut PgConnection,
    agency_id: Uuid,
    property_id: Uuid,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<ClaimedRange>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT kind, ref_id, lower(during) AS start_night, upper(during) AS end_night, status,
                room_type_id
           FROM inventory_ranges
          WHERE agency_id = $1 AND property_id = $2 AND during && daterange($3, $4)
          ORDER BY lower(during)",
    )
    .bind(agency_id)
    .bind(property_id)
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(ClaimedRange {
                kind: row.try_get("kind")?,
                id: row.try_get("ref_id")?,
                start: row.try_get("start_night")?,
                end: row.try_get("end_night")?,
                status: row.try_get("status")?,
                room_type_id: row.try_get("room_type_id")?,
            })
        })
        .collect()
}

/// The nights of `[from, to)` no range covers, as maximal runs.
pub fn free_runs(
    ranges: &[ClaimedRange],
    from: NaiveDate,
    to: NaiveDate,
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

/// Unarchived properties with every night of `[from, to)` free.
pub async fn free_properties(
    conn: &mut PgConnection,
    agency_id: Uuid,
    owner: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.property_id, p.name FROM properties_view p
          WHERE p.agency_id = $1 AND NOT p.archived
            AND ($2::text IS NULL OR p.owner_id = $2)
            AND ($5::uuid IS NULL OR p.property_id > $5)
            AND NOT EXISTS (
                SELECT 1 FROM inventory_ranges r
                 WHERE r.agency_id = p.agency_id AND r.property_id = p.property_id
                   AND r.during && daterange($3, $4))
          ORDER BY p.property_id
          LIMIT $6",
    )
    .bind(agency_id)
    .bind(owner)
    .bind(from)
    .bind(to)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| Ok((row.try_get("property_id")?, row.try_get("name")?)))
        .collect()
}

/// One row of the audit log.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub resource_type: Option<String>,
    pub resource_id: Option<Uuid>,
    pub user_id: Option<String>,
    pub action: Option<String>,
}

pub async fn audit_log(
    conn: &mut PgConnection,
    agency_id: Uuid,
    filter: &AuditFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let rows = sqlx::query_scalar(
        "SELECT to_jsonb(a) FROM audit_log a
          WHERE a.agency_id = $1
            AND ($2::text IS NULL OR a.resource_type = $2)
            AND ($3::uuid IS NULL OR a.resource_id = $3)
            AND ($4::text IS NULL OR a.user_id = $4)
            AND ($5::text IS NULL OR a.action = $5)
            AND a.position > $6
          ORDER BY a.position
          LIMIT $7",
    )
    .bind(agency_id)
    .bind(filter.resource_type.as_deref())
    .bind(filter.resource_id)
    .bind(filter.user_id.as_deref())
    .bind(filter.action.as_deref())
    .bind(after)
    .bind(limit)
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
