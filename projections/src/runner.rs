//! Runs projections: wakes on NOTIFY (polling as a fallback), applies a
//! batch and advances the checkpoint in one transaction, so each event takes
//! effect exactly once even when the process dies mid-batch.
//!
//! One runner at a time per projection across all processes: every batch
//! transaction first takes a transaction-scoped advisory lock for the
//! projection (`pg_try_advisory_xact_lock`), so whichever process gets it
//! next simply carries on from the checkpoint; a process that dies holds
//! nothing. No session locks, so it also works behind PgBouncer.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::parking::{self, Parked};
use crate::tail::{self, TailError};
use crate::Projection;

/// Moved to `ledger_infra::tail` (the publisher uses it too); kept here by name.
pub use ledger_infra::tail::LogSignal;

/// Which copy of a projection's tables a batch writes.
///
/// Projection SQL names its tables without a schema, so it is static text.
/// A replay builds copies in `ledger_replay` (`replay::SHADOW_SCHEMA`); its
/// transactions put that schema first on their `search_path`, and the same
/// statements then write the copies. (PostgreSQL plans a prepared statement
/// again when the `search_path` it was planned under changes.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tables {
    Live,
    Shadow,
}

impl Tables {
    /// Points the rest of `conn`'s open transaction at these tables.
    pub(crate) async fn select(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self == Tables::Shadow {
            sqlx::query!("SET LOCAL search_path = ledger_replay, public")
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}
pub const BATCH: i64 = 1000;
/// How often a runner looks for work when no notification arrives.
const POLL: Duration = Duration::from_millis(500);
/// How soon to look again when committed events wait behind an older
/// transaction still running (`tail::waiting`).
const BLOCKED_POLL: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Tail(#[from] TailError),
    #[error("applying the events after position {after} failed: {source}")]
    Apply {
        after: i64,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl StepError {
    /// A failure of the database connection, not of the projection.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StepError::Db(e)
            | StepError::Tail(TailError::Db(e))
            | StepError::Apply { source: e, .. } => ledger_infra::db::is_unavailable(e),
            StepError::Tail(TailError::Unreadable { .. }) => false,
        }
    }
}

/// The advisory lock key of a checkpoint name.
pub(crate) async fn try_lock(
    conn: &mut PgConnection, checkpoint: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock(hashtextextended('ledger.projection.' || $1, 0)) AS "locked!""#,
        checkpoint
    )
    .fetch_one(conn)
    .await
}

pub(crate) async fn lock(conn: &mut PgConnection, checkpoint: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('ledger.projection.' || $1, 0))",
        checkpoint
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies the next batch (at most `limit` events) inside `conn`'s open
/// transaction, parking the property of any event that cannot be applied
/// (see `parking`); returns how many events it took from the log. The
/// caller holds the lock.
pub(crate) async fn apply_next(
    conn: &mut PgConnection, projection: Projection, checkpoint: &str, limit: i64,
) -> Result<usize, StepError> {
    let after = tail::load_checkpoint(conn, checkpoint).await?;
    let events = tail::read_batch(conn, after, limit).await?;
    let Some(last) = events.last().map(|e| e.cursor()) else {
        return Ok(0);
    };
    // A parked property's events wait for a retry; the rest go on.
    let parked = parking::parked_properties(conn, checkpoint).await?;
    let count = events.len();
    let events = if parked.is_empty() {
        events
    } else {
        events
            .into_iter()
            .filter(|e| !parked.contains(&e.property_id))
            .collect()
    };
    parking::apply_or_park(conn, projection, checkpoint, &events).await?;
    tail::store_checkpoint(conn, checkpoint, last).await?;
    Ok(count)
}

/// One batch in its own transaction. `Ok(0)` also when another process is
/// running this projection right now.
pub async fn step(
    pool: &PgPool, projection: Projection, tables: Tables, checkpoint: &str, limit: i64,
) -> Result<usize, StepError> {
    let mut tx = pool.begin().await?;
    if !try_lock(&mut tx, checkpoint).await? {
        return Ok(0);
    }
    // A read model is derived: should a crash lose the last batches (at most
    // ~3 x wal_writer_delay), their rows and their checkpoint go together and
    // the batches are applied again. The events themselves commit durably.
    sqlx::query!("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    tables.select(&mut tx).await?;
    let applied = apply_next(&mut tx, projection, checkpoint, limit).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Applies everything available now; returns how many events it applied.
pub async fn catch_up(pool: &PgPool, projection: Projection) -> Result<usize, StepError> {
    let mut total = 0;
    loop {
        let applied = step(pool, projection, Tables::Live, projection.name(), BATCH).await?;
        total += applied;
        if applied < BATCH as usize {
            return Ok(total);
        }
    }
}

async fn record_failure(pool: &PgPool, checkpoint: &str, error: &StepError) {
    let result = sqlx::query!(
        "UPDATE projection_checkpoints SET status = 'failed', last_error = $2, updated_at = now()
          WHERE name = $1",
        checkpoint,
        error.to_string(),
    )
    .execute(pool)
    .await;
    if let Err(e) = result {
        tracing::warn!(checkpoint, error = %e, "could not record a projection failure");
    }
}

/// Keeps a projection up to date until the process ends.
pub async fn run(pool: PgPool, projection: Projection, mut signal: LogSignal) {
    let name = projection.name();
    let mut backoff = Duration::from_millis(100);
    loop {
        match step(&pool, projection, Tables::Live, name, BATCH).await {
            Ok(applied) => {
                backoff = Duration::from_millis(100);
                if applied < BATCH as usize {
                    let blocked = matches!(tail::waiting(&pool, name).await, Ok(true));
                    signal.wait(if blocked { BLOCKED_POLL } else { POLL }).await;
                }
            }
            Err(error) => {
                if error.is_unavailable() {
                    tracing::warn!(projection = name, %error, "database unavailable; retrying");
                } else {
                    // Stop at this event, keep the last good state, say why.
                    tracing::error!(projection = name, %error, "projection failed; retrying");
                    record_failure(&pool, name, &error).await;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Where a projection stands against the head of the log: what readiness
/// shows anyone, and the start of what ops sees.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Checkpoint {
    pub name: String,
    pub position: i64,
    pub head_position: i64,
    /// How far `position` is behind `head_position`.
    // Not stored: worked out when read.
    pub lag: i64,
    /// `running`, `degraded` (some properties parked) or `failed`.
    pub status: String,
}

/// A projection's progress, for ops and readiness.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Not stored here: read from `projection_parked`.
    pub parked: Vec<Parked>,
}

pub async fn statuses(pool: &PgPool) -> Result<Vec<Status>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT c.name, ledger_watermark(c.txid, c.position) AS "position!", c.status,
                c.last_error, c.updated_at,
                (SELECT coalesce(max(position), 0) FROM events) AS "head_position!"
           FROM projection_checkpoints c
          WHERE c.name = ANY($1)
          ORDER BY c.name"#,
        &status_names() as &[&str],
    )
    .fetch_all(pool)
    .await?;
    let mut parked = parking::parked(pool, &status_names()).await?;
    let mut statuses = Vec::with_capacity(rows.len());
    for row in rows {
        let mut status = Status {
            checkpoint: Checkpoint {
                lag: (row.head_position - row.position).max(0),
                name: row.name,
                position: row.position,
                head_position: row.head_position,
                status: row.status,
            },
            last_error: row.last_error,
            updated_at: row.updated_at,
            parked: Vec::new(),
        };
        let (mine, others): (Vec<_>, Vec<_>) = parked
            .drain(..)
            .partition(|(of, _)| *of == status.checkpoint.name);
        parked = others;
        status.parked = mine.into_iter().map(|(_, p)| p).collect();
        if status.checkpoint.status == "running" && !status.parked.is_empty() {
            status.checkpoint.status = "degraded".to_owned();
        }
        statuses.push(status);
    }
    Ok(statuses)
}

/// The checkpoints ops see: every projection, and the NATS publisher.
fn status_names() -> Vec<&'static str> {
    let mut names = Projection::ALL.map(|p| p.name()).to_vec();
    names.push(ledger_infra::publisher::CHECKPOINT);
    names
}

/// The position every projection in `which` has reached: every event at
/// or below it has been applied.
pub async fn reached(pool: &PgPool, which: &[Projection]) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT coalesce(min(ledger_watermark(txid, position)), 0) AS "reached!"
           FROM projection_checkpoints WHERE name = ANY($1)"#,
        &which.iter().map(|p| p.name()).collect::<Vec<_>>() as &[&str],
    )
    .fetch_one(pool)
    .await
}
