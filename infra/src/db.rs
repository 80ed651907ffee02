//! The connection pool, the embedded migrations, and the one place that
//! classifies database errors.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

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
