//! The connection pool, the embedded migrations, and the one place that
//! classifies database errors.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgExecutor, PgPool};

/// A database failure, classified for the caller.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// PostgreSQL cannot be reached (connection refused or lost, pool timeout).
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug or a broken invariant, never caused by a client.
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            DbError::Unavailable(error)
        } else {
            DbError::Other(error)
        }
    }
}

pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        // 08xxx connection exceptions, 57P0x shutdown / cannot connect now.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// The name of the constraint a unique violation (23505) broke, if it was one.
pub fn unique_violation(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => db.constraint(),
        _ => None,
    }
}

/// Whether PostgreSQL answers a query on `pool` within `within`.
pub async fn answers(pool: &PgPool, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, select_one(pool)).await,
        Ok(Ok(1))
    )
}

/// The query that shows the server answers.
async fn select_one(conn: impl PgExecutor<'_>) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT 1 AS "one!""#)
        .fetch_one(conn)
        .await
}

/// A lazily connecting pool: the process starts and keeps running while the
/// database is down, and a request fails fast (1 s) instead of hanging.
pub fn connect(database_url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = database_url.parse().map_err(DbError::Other)?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(1))
        .test_before_acquire(false)
        .connect_lazy_with(options.application_name("ledger"));
    Ok(pool)
}

/// Applies the migrations embedded in the binary; applying them twice is a no-op.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations").run(pool).await
}

/// Whether PostgreSQL answered lately, from a probe on a connection of its
/// own: one query every [`DatabaseWatch::EVERY`] however many requests ask,
/// and never stuck behind a pool that busy requests hold.
pub struct DatabaseWatch {
    options: PgConnectOptions,
    started: std::time::Instant,
    /// Milliseconds after `started` of the last answer (0: none yet).
    last_answer_ms: std::sync::atomic::AtomicU64,
}

impl DatabaseWatch {
    pub const EVERY: Duration = Duration::from_millis(200);
    /// How long one probe may take before the server counts as not answering.
    const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
    /// Without an answer for this long, the database is not answering.
    const STALE: Duration = Duration::from_millis(1200);

    pub fn new(database_url: &str) -> Result<Self, DbError> {
        let options: PgConnectOptions = database_url.parse().map_err(DbError::Other)?;
        Ok(Self {
            options: options.application_name("ledger-watch"),
            started: std::time::Instant::now(),
            last_answer_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Whether the last answer is recent (the first `STALE` after start counts as answering).
    pub fn answered_lately(&self) -> bool {
        let last = Duration::from_millis(
            self.last_answer_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        self.started.elapsed().saturating_sub(last) < Self::STALE
    }

    /// Probes until the process ends.
    pub async fn run(self: std::sync::Arc<Self>) {
        use sqlx::{ConnectOptions, Connection};
        let mut connection: Option<sqlx::PgConnection> = None;
        loop {
            let probe = async {
                let conn = match connection.as_mut() {
                    Some(conn) => conn,
                    None => connection.insert(self.options.connect().await?),
                };
                select_one(&mut *conn).await
            };
            match tokio::time::timeout(Self::PROBE_TIMEOUT, probe).await {
                Ok(Ok(_)) => {
                    let now = self.started.elapsed().as_millis() as u64;
                    self.last_answer_ms
                        .store(now.max(1), std::sync::atomic::Ordering::Relaxed);
                }
                // A connection that failed or hung is dropped, not reused.
                _ => {
                    if let Some(conn) = connection.take() {
                        drop(conn.close_hard());
                    }
                }
            }
            tokio::time::sleep(Self::EVERY).await;
        }
    }
}
