//! Reading the log in global order without ever skipping an event.
//!
//! Positions are taken when a row is inserted, not when its transaction
//! commits, so position 7 can become visible after position 8. A reader that
//! advanced its checkpoint past 8 would skip 7 forever. The reader therefore
//! only takes rows whose transaction id is below the oldest transaction
//! still running (`pg_snapshot_xmin`): every such transaction has finished,
//! so no lower position can still appear.

use chrono::{DateTime, Utc};
use ledger_domain::CalendarEvent;
use serde::Deserialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// One event as tailers see it.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub position: i64,
    pub property_id: Uuid,
    pub sequence: i64,
    pub event_id: Uuid,
    pub event: CalendarEvent,
    pub meta: Meta,
    pub recorded_at: DateTime<Utc>,
}

/// The parts of an event's metadata read models use.
#[derive(Debug, Clone, Deserialize)]
pub struct Meta {
    pub agency_id: Uuid,
    pub user_id: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub request_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("event at position {position} cannot be read: {reason}")]
    Unreadable { position: i64, reason: String },
}

/// Up to `limit` events after `after`, in position order, none of which a
/// still-running transaction could precede.
pub async fn read_batch(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<Envelope>, TailError> {
    let rows = sqlx::query(
        "SELECT position, aggregate_id, sequence, event_id, event_type, event_version,
                payload, metadata, recorded_at
           FROM events
          WHERE position > $1
            AND txid < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY position
          LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(decode_row).collect()
}

fn decode_row(row: sqlx::postgres::PgRow) -> Result<Envelope, TailError> {
    let position: i64 = row.try_get("position")?;
    let unreadable = |reason: String| TailError::Unreadable { position, reason };
    let aggregate_id: String = row.try_get("aggregate_id")?;
    let event = ledger_infra::event_store::decode(
        row.try_get("event_type")?,
        row.try_get("event_version")?,
        row.try_get("payload")?,
    )
    .map_err(unreadable)?;
    let meta: Meta = serde_json::from_value(row.try_get("metadata")?)
        .map_err(|e| unreadable(format!("metadata: {e}")))?;
    Ok(Envelope {
        position,
        property_id: aggregate_id
            .parse()
            .map_err(|_| unreadable(format!("aggregate id {aggregate_id:?} is not a UUID")))?,
        sequence: row.try_get("sequence")?,
        event_id: row.try_get("event_id")?,
        event,
        meta,
        recorded_at: row.try_get("recorded_at")?,
    })
}

/// The position of the newest event in the log (0 when empty).
pub async fn head(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(conn)
        .await
}
