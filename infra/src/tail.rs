//! Reading the log in global order without ever skipping an event.
//!
//! Positions are taken when a row is inserted, not when its transaction
//! commits, so position 7 can become visible after position 8. A reader that
//! advanced its checkpoint past 8 would skip 7 forever. The reader therefore
//! only takes rows whose transaction id is below the oldest transaction
//! still running (`pg_snapshot_xmin`): every such transaction has finished.
//!
//! That alone is not enough when ordering by position: transaction ids and
//! positions are not handed out in the same order (a transaction can take
//! its id before another and its position after it), so a row with a lower
//! position can still belong to a running transaction with a *higher* id.
//! Tailers therefore walk the log in `(txid, position)` order and checkpoint
//! that pair ([`Cursor`]): every transaction below `pg_snapshot_xmin` has
//! finished, and every later one has a higher id, so nothing can ever appear
//! behind the cursor. Within one property, this order is the sequence order:
//! an append that follows another on the same property can only succeed
//! after the first has committed, so its transaction id is higher.
//!
//! Every tailer uses this reader: the projections (`ledger-projections`)
//! and the NATS publisher (`crate::publisher`). `LogSignal` wakes them when
//! the log grows.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger_domain::CalendarEvent;
use serde::Deserialize;
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgExecutor, PgPool};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

/// Where a tailer is in the log: the last event it took, in `(txid, position)` order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub txid: i64,
    pub position: i64,
}

/// One event as tailers see it.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub txid: i64,
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

impl Envelope {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            txid: self.txid,
            position: self.position,
        }
    }
}

/// A row of `events` as `decode_row` takes it.
struct EventRow {
    txid: i64,
    position: i64,
    aggregate_id: String,
    sequence: i64,
    event_id: Uuid,
    event_type: String,
    event_version: String,
    payload: Value,
    metadata: Value,
    recorded_at: DateTime<Utc>,
}

/// A read of [`EventRow`]s: the columns, then the read's own `WHERE ...`
/// and its arguments. A macro, not a `format!`, so that the SQL stays static
/// text the query macro checks.
macro_rules! select_envelopes {
    ($rest:literal, $($arg:expr),+ $(,)?) => {
        sqlx::query_as!(
            EventRow,
            r#"SELECT txid::text::bigint AS "txid!", position, aggregate_id, sequence, event_id,
                    event_type, event_version, payload, metadata, recorded_at
               FROM events
              "# + $rest,
            $($arg),+
        )
    };
}

/// Up to `limit` events after `after`, in `(txid, position)` order, none of
/// which a still-running transaction could precede.
pub async fn read_batch(
    conn: &mut PgConnection, after: Cursor, limit: i64,
) -> Result<Vec<Envelope>, TailError> {
    let rows = select_envelopes!(
        "WHERE (txid, position) > ($1::text::xid8, $2)
            AND txid < pg_snapshot_xmin(pg_current_snapshot())
          -- events.txid, the xid8 column, not the bigint output: the
          -- index gives this order without sorting the rest of the log.
          ORDER BY events.txid, events.position
          LIMIT $3",
        after.txid.to_string(),
        after.position,
        limit,
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(decode_row).collect()
}

/// The events of one property from `from_position` on that lie at or behind
/// the cursor `upto`, in order: what a projection skipped while the property
/// was parked.
pub async fn read_property(
    conn: &mut PgConnection, property_id: Uuid, from_position: i64, upto: Cursor,
) -> Result<Vec<Envelope>, TailError> {
    let rows = select_envelopes!(
        "WHERE aggregate_type = $1 AND aggregate_id = $2 AND position >= $3
            AND (txid, position) <= ($4::text::xid8, $5)
          ORDER BY sequence",
        <ledger_domain::PropertyCalendar as cqrs_es::Aggregate>::TYPE,
        property_id.to_string(),
        from_position,
        upto.txid.to_string(),
        upto.position,
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(decode_row).collect()
}

/// A tailer's checkpoint (a row of `projection_checkpoints`), locked for
/// the rest of the transaction.
pub async fn load_checkpoint(conn: &mut PgConnection, name: &str) -> Result<Cursor, sqlx::Error> {
    sqlx::query_as!(
        Cursor,
        "SELECT txid, position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
        name
    )
    .fetch_one(conn)
    .await
}

/// Moves a checkpoint forward to `to` (never back) and marks it running.
pub async fn store_checkpoint(
    conn: &mut PgConnection, name: &str, to: Cursor,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE projection_checkpoints
            SET txid = $2, position = $3, status = 'running', last_error = NULL, updated_at = now()
          WHERE name = $1 AND (txid, position) <= ($2, $3)",
        name,
        to.txid,
        to.position,
    )
    .execute(conn)
    .await?;
    Ok(())
}

fn decode_row(row: EventRow) -> Result<Envelope, TailError> {
    let position = row.position;
    let unreadable = |reason: String| TailError::Unreadable { position, reason };
    let aggregate_id = row.aggregate_id;
    let event = crate::event_store::decode(row.event_type, row.event_version, row.payload)
        .map_err(unreadable)?;
    let meta: Meta =
        serde_json::from_value(row.metadata).map_err(|e| unreadable(format!("metadata: {e}")))?;
    Ok(Envelope {
        txid: row.txid,
        position,
        property_id: aggregate_id
            .parse()
            .map_err(|_| unreadable(format!("aggregate id {aggregate_id:?} is not a UUID")))?,
        sequence: row.sequence,
        event_id: row.event_id,
        event,
        meta,
        recorded_at: row.recorded_at,
    })
}

/// The ORDER BY ... LIMIT 1 makes the planner walk events_txid_position
/// from the cursor; a bare EXISTS scanned the whole log (migration 0012).
/// Public for the test that checks its plan.
pub const WAITING: &str = "SELECT EXISTS (SELECT 1 FROM projection_checkpoints c
                  CROSS JOIN LATERAL (
                        SELECT 1 FROM events e
                         WHERE (e.txid, e.position) > (c.txid::text::xid8, c.position)
                         ORDER BY e.txid, e.position
                         LIMIT 1) AS next
                 WHERE c.name = $1)";

/// Whether committed events lie beyond a tailer's checkpoint (a row of
/// `projection_checkpoints`) that `read_batch` could not take yet because
/// an older transaction is still open. That transaction may write no event
/// (a projection's own batch, say), and then its commit sends no NOTIFY:
/// a tailer that sees this looks again soon instead of waiting for one.
///
/// Not a query macro: those take a literal only, and the plan test needs
/// the text ([`WAITING`]); that test and every runner run it, so a renamed
/// column still fails the tests.
pub async fn waiting(conn: impl PgExecutor<'_>, checkpoint: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(WAITING)
        .bind(checkpoint)
        .fetch_one(conn)
        .await
}

/// The position of the newest event in the log (0 when empty).
pub async fn head(conn: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT coalesce(max(position), 0) AS "head!" FROM events"#)
        .fetch_one(conn)
        .await
}

/// The last event no running transaction can precede: every event at or
/// behind it is visible already.
pub async fn horizon(pool: &PgPool) -> Result<Cursor, sqlx::Error> {
    let cursor = sqlx::query_as!(
        Cursor,
        r#"SELECT txid::text::bigint AS "txid!", position FROM events
          WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY events.txid DESC, events.position DESC
          LIMIT 1"#,
    )
    .fetch_optional(pool)
    .await?;
    Ok(cursor.unwrap_or_default())
}

/// The cursor of the event at `position` (the empty cursor for 0); `None`
/// when there is no such event.
pub async fn cursor_of(pool: &PgPool, position: i64) -> Result<Option<Cursor>, sqlx::Error> {
    if position == 0 {
        return Ok(Some(Cursor::default()));
    }
    let txid = sqlx::query_scalar!(
        r#"SELECT txid::text::bigint AS "txid!" FROM events WHERE position = $1"#,
        position
    )
    .fetch_optional(pool)
    .await?;
    Ok(txid.map(|txid| Cursor { txid, position }))
}

/// Ticks every time the log may have grown (a NOTIFY on `ledger_events`).
#[derive(Clone)]
pub struct LogSignal(watch::Receiver<u64>);

/// Tells tailers that the log grew. Appends do not NOTIFY inside their own
/// transactions: PostgreSQL serialises the commits of notifying
/// transactions on one cluster-wide lock, which would defeat its group
/// commit. Instead a writer calls [`LogWaker::appended`] after each commit:
/// tailers of its own process wake at once, and one `NOTIFY ledger_events`,
/// sent on a statement of its own, wakes other processes for every burst of
/// appends (appends made while one is in flight share the next).
#[derive(Clone)]
pub struct LogWaker {
    ticks: Arc<watch::Sender<u64>>,
    pending: Arc<Notify>,
    notifier: Arc<OnceLock<()>>,
    pool: PgPool,
}

impl LogWaker {
    pub fn new(pool: PgPool) -> LogWaker {
        LogWaker {
            ticks: Arc::new(watch::channel(0u64).0),
            pending: Arc::new(Notify::new()),
            notifier: Arc::new(OnceLock::new()),
            pool,
        }
    }

    /// Events were committed.
    pub fn appended(&self) {
        self.tick();
        self.notifier.get_or_init(|| {
            let pending = self.pending.clone();
            let pool = self.pool.clone();
            tokio::spawn(async move {
                loop {
                    pending.notified().await;
                    let sent = sqlx::query!("SELECT pg_notify('ledger_events', '')")
                        .execute(&pool)
                        .await;
                    if let Err(error) = sent {
                        tracing::debug!(%error, "could not NOTIFY other processes");
                    }
                }
            });
        });
        self.pending.notify_one();
    }

    fn tick(&self) {
        self.ticks.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl LogSignal {
    /// Wakes on this process's appends (through `waker`) and, by LISTEN on a
    /// connection of its own (re-connecting when it drops), on other
    /// processes'.
    pub fn listen(waker: &LogWaker) -> LogSignal {
        let pool = waker.pool.clone();
        let remote = waker.clone();
        let signal = LogSignal(waker.ticks.subscribe());
        tokio::spawn(async move {
            loop {
                match PgListener::connect_with(&pool).await {
                    Ok(mut listener) => {
                        if listener.listen("ledger_events").await.is_ok() {
                            // Anything committed while not listening is picked up by this tick.
                            remote.tick();
                            while listener.recv().await.is_ok() {
                                remote.tick();
                            }
                        }
                    }
                    Err(error) => tracing::debug!(%error, "cannot LISTEN yet"),
                }
                if remote.ticks.receiver_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        signal
    }

    /// Waits for the next tick, or `timeout`.
    pub async fn wait(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.0.changed()).await;
    }
}
