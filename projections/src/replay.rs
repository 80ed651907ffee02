//! Rebuilding a projection from position 0 while the service keeps running.
//!
//! The rebuild goes into copies of the projection's tables in the
//! `ledger_replay` schema, under its own checkpoint `<name>@replay`, batch by
//! batch, while the live projection keeps serving and keeps up. Once the copy
//! is close to the head, one transaction takes the live projection's lock,
//! applies the last events to the copy, drops the live tables, moves the
//! copies into `public` and hands the copy's checkpoint to the live
//! projection. Readers wait only for that transaction.
//!
//! An event the copy cannot apply parks its property in the copy, as the
//! live runner does (`parking`): the rebuild goes on, and the swap hands the
//! copy's parked properties to the live projection in place of its own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runner::{self, StepError, Tables, BATCH};
use crate::{parking, tail, Projection};

/// Where a replay builds its copies (named in `runner::Tables::select` too).
pub const SHADOW_SCHEMA: &str = "ledger_replay";
/// A running replay whose heartbeat is older than this died with its process.
const STALE_AFTER_SECS: i64 = 30;
/// Swap once the copy is this close to the head.
const SWAP_WITHIN: i64 = BATCH;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Carries the id of the replay that is running.
    #[error("a replay of this projection is already running: {0}")]
    AlreadyRunning(Uuid),
    #[error(transparent)]
    Step(#[from] StepError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The progress of a replay, as ops see it.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub replay_id: Uuid,
    pub name: String,
    pub state: String,
    pub processed: i64,
    pub total: i64,
    /// Not stored: worked out from `processed` and the time taken.
    pub events_per_sec: f64,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

fn checkpoint(projection: Projection) -> String {
    format!("{}@replay", projection.name())
}

/// Registers a replay (refusing a second one of the same projection) and
/// prepares empty copies of its tables. Run it with [`run`].
pub async fn start(pool: &PgPool, projection: Projection) -> Result<Uuid, ReplayError> {
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "UPDATE projection_replays
            SET state = 'failed', error = 'abandoned: its process stopped', finished_at = now()
          WHERE name = $1 AND state IN ('running', 'swapping')
            AND heartbeat_at < now() - make_interval(secs => $2)",
        projection.name(),
        STALE_AFTER_SECS as f64,
    )
    .execute(&mut *tx)
    .await?;
    let inserted = sqlx::query!(
        "INSERT INTO projection_replays (id, name, state, total)
         VALUES ($1, $2, 'running', (SELECT coalesce(max(position), 0) FROM events))
         ON CONFLICT DO NOTHING",
        id,
        projection.name(),
    )
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        let running = sqlx::query_scalar!(
            "SELECT id FROM projection_replays WHERE name = $1 AND state IN ('running', 'swapping')",
            projection.name(),
        )
        .fetch_optional(&mut *tx)
        .await?;
        return match running {
            Some(running) => Err(ReplayError::AlreadyRunning(running)),
            // The replay that held the slot finished between the two
            // statements: the slot is free, so start afresh.
            None => {
                tx.rollback().await?;
                Box::pin(start(pool, projection)).await
            }
        };
    }
    for table in projection.tables() {
        execute_all(
            &mut tx,
            [
                format!("DROP TABLE IF EXISTS {SHADOW_SCHEMA}.{table}"),
                format!("CREATE TABLE {SHADOW_SCHEMA}.{table} (LIKE public.{table} INCLUDING ALL)"),
            ],
        )
        .await?;
        // Indexes that back no constraint are built in one pass once the
        // copy is full (`build_deferred_indexes`) rather than kept up to date
        // row by row through the whole rebuild (docs/benchmarks.md, P5).
        let deferred = sqlx::query_scalar!(
            r#"SELECT i.indexrelid::regclass::text AS "index!" FROM pg_index i
              WHERE i.indrelid = $1::text::regclass
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"#,
            format!("{SHADOW_SCHEMA}.{table}"),
        )
        .fetch_all(&mut *tx)
        .await?;
        execute_all(
            &mut tx,
            deferred
                .into_iter()
                .map(|index| format!("DROP INDEX {index}")),
        )
        .await?;
    }
    parking::forget(&mut tx, &checkpoint(projection)).await?;
    sqlx::query!(
        "INSERT INTO projection_checkpoints (name, position) VALUES ($1, 0)
         ON CONFLICT (name) DO UPDATE SET txid = 0, position = 0, status = 'running', last_error = NULL,
                                          updated_at = now()",
        checkpoint(projection),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

async fn record(pool: &PgPool, id: Uuid, state: &str, processed: i64, error: Option<String>) {
    let result = sqlx::query!(
        "UPDATE projection_replays
            SET state = $2, processed = $3, error = $4, heartbeat_at = now(),
                total = greatest(total, (SELECT coalesce(max(position), 0) FROM events)),
                finished_at = CASE WHEN $2 IN ('done', 'failed') THEN now() END
          WHERE id = $1",
        id,
        state,
        processed,
        error,
    )
    .execute(pool)
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, "could not record replay progress");
    }
}

/// Rebuilds into the copies, then swaps them in. Progress is written to
/// `projection_replays` as it goes.
pub async fn run(pool: &PgPool, projection: Projection, id: Uuid) -> Result<(), ReplayError> {
    let result = rebuild_and_swap(pool, projection, id).await;
    if let Err(error) = &result {
        tracing::error!(projection = projection.name(), %error, "replay failed");
        let processed = shadow_position(pool, projection).await.unwrap_or(0);
        record(pool, id, "failed", processed, Some(error.to_string())).await;
    }
    result
}

async fn shadow_position(pool: &PgPool, projection: Projection) -> Result<i64, sqlx::Error> {
    position_of(pool, &checkpoint(projection)).await
}

/// Where the checkpoint `name` (a live projection's or a copy's) stands.
async fn position_of(pool: &PgPool, name: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT position FROM projection_checkpoints WHERE name = $1",
        name
    )
    .fetch_one(pool)
    .await
}

async fn rebuild_and_swap(
    pool: &PgPool, projection: Projection, id: Uuid,
) -> Result<(), ReplayError> {
    let shadow = checkpoint(projection);
    loop {
        let applied = runner::step(pool, projection, Tables::Shadow, &shadow, BATCH).await?;
        let position = shadow_position(pool, projection).await?;
        record(pool, id, "running", position, None).await;
        if applied < BATCH as usize {
            let head = tail::head(&mut *pool.acquire().await?).await?;
            if head - position <= SWAP_WITHIN {
                break;
            }
            if applied == 0 {
                // Only events of still-open transactions are left: wait for them.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    build_deferred_indexes(pool, projection).await?;
    record(
        pool,
        id,
        "swapping",
        shadow_position(pool, projection).await?,
        None,
    )
    .await;
    swap(pool, projection).await?;
    let processed = position_of(pool, projection.name()).await?;
    record(pool, id, "done", processed, None).await;
    Ok(())
}

/// Gives the copies the live tables' indexes that `start` left out, under
/// the same names (the copies live in another schema until the swap).
async fn build_deferred_indexes(pool: &PgPool, projection: Projection) -> Result<(), ReplayError> {
    for table in projection.tables() {
        let definitions = sqlx::query_scalar!(
            r#"SELECT pg_get_indexdef(i.indexrelid) AS "definition!" FROM pg_index i
               JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indrelid = $1::text::regclass
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
                AND NOT EXISTS (SELECT 1 FROM pg_class sc
                                  JOIN pg_namespace n ON n.oid = sc.relnamespace
                                 WHERE n.nspname = $2 AND sc.relname = ic.relname)"#,
            format!("public.{table}"),
            SHADOW_SCHEMA,
        )
        .fetch_all(pool)
        .await?;
        for definition in definitions {
            let on_copy = definition.replacen(
                &format!(" ON public.{table} "),
                &format!(" ON {SHADOW_SCHEMA}.{table} "),
                1,
            );
            if on_copy == definition {
                return Err(ReplayError::Db(sqlx::Error::Protocol(format!(
                    "unexpected index definition on {table}: {definition}"
                ))));
            }
            sqlx::query(&on_copy).execute(pool).await?;
        }
    }
    Ok(())
}

/// The atomic part: with the live projection paused by its lock, finish the
/// copy and put it in place of the live tables.
///
/// A reader holds a share lock on one live table while it asks for the next
/// (a join, or two queries in its transaction), so taking the exclusive
/// locks could close a deadlock whose victim might be the reader. The swap
/// takes them with a `lock_timeout` shorter than the deadlock timeout and
/// starts over when it times out: it is always the swap that backs off, never
/// a read.
async fn swap(pool: &PgPool, projection: Projection) -> Result<(), ReplayError> {
    let mut attempt = 0u32;
    loop {
        match try_swap(pool, projection).await {
            Err(ReplayError::Db(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) && attempt < SWAP_ATTEMPTS =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt.min(20)))).await;
            }
            other => return other,
        }
    }
}

/// `lock_not_available`, what `lock_timeout` raises.
const LOCK_NOT_AVAILABLE: &str = "55P03";
const SWAP_ATTEMPTS: u32 = 200;

async fn try_swap(pool: &PgPool, projection: Projection) -> Result<(), ReplayError> {
    let shadow = checkpoint(projection);
    let mut tx = pool.begin().await?;
    runner::lock(&mut tx, projection.name()).await?;
    runner::lock(&mut tx, &shadow).await?;
    Tables::Shadow.select(&mut tx).await?;
    // Catch up before taking the table locks, so reads wait only for the
    // last few events and the rename.
    while runner::apply_next(&mut tx, projection, &shadow, BATCH).await? > 0 {}
    let live = projection
        .tables()
        .iter()
        .map(|table| format!("public.{table}"))
        .collect::<Vec<_>>()
        .join(", ");
    execute_all(
        &mut tx,
        [
            "SET LOCAL lock_timeout = '200ms'".to_owned(),
            format!("LOCK TABLE {live} IN ACCESS EXCLUSIVE MODE"),
            "SET LOCAL lock_timeout = 0".to_owned(),
        ],
    )
    .await?;
    while runner::apply_next(&mut tx, projection, &shadow, BATCH).await? > 0 {}
    for table in projection.tables() {
        // A runtime statement: the function returns `void`, a type the
        // query macros cannot describe.
        sqlx::query("SELECT ledger_secure_read_model($1::regclass)")
            .bind(format!("{SHADOW_SCHEMA}.{table}"))
            .execute(&mut *tx)
            .await?;
        execute_all(
            &mut tx,
            [
                format!("DROP TABLE public.{table}"),
                format!("ALTER TABLE {SHADOW_SCHEMA}.{table} SET SCHEMA public"),
            ],
        )
        .await?;
    }
    sqlx::query!(
        "UPDATE projection_checkpoints live
            SET txid = shadow.txid, position = shadow.position, status = 'running',
                last_error = NULL, updated_at = now()
           FROM projection_checkpoints shadow
          WHERE live.name = $1 AND shadow.name = $2",
        projection.name(),
        &shadow,
    )
    .execute(&mut *tx)
    .await?;
    // The copy's parked properties are the ones the new tables lack.
    parking::hand_over(&mut tx, projection.name(), &shadow).await?;
    sqlx::query!(
        "DELETE FROM projection_checkpoints WHERE name = $1",
        &shadow
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Runs statements built from table and index names (so not static text),
/// in order, in `conn`'s open transaction.
async fn execute_all(
    conn: &mut PgConnection, statements: impl IntoIterator<Item = String>,
) -> Result<(), sqlx::Error> {
    for statement in statements {
        sqlx::query(&statement).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The latest replay of a projection.
pub async fn progress(
    pool: &PgPool, projection: Projection,
) -> Result<Option<Progress>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT id, name, state, processed, total, error, started_at, finished_at,
                  extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8 AS "elapsed!"
             FROM projection_replays WHERE name = $1
            ORDER BY started_at DESC LIMIT 1"#,
        projection.name(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| Progress {
        replay_id: row.id,
        name: row.name,
        state: row.state,
        processed: row.processed,
        total: row.total,
        // Events per second over the time taken so far.
        events_per_sec: if row.elapsed > 0.0 {
            (row.processed as f64 / row.elapsed).round()
        } else {
            0.0
        },
        error: row.error,
        started_at: row.started_at,
        finished_at: row.finished_at,
    }))
}
