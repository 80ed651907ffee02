use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

/// The shared server's URL: `DATABASE_URL` when set (only its server is
/// used: every test makes a database of its own there).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/ledger".to_owned())
}

fn options(database: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(&server_url())
        .expect("DATABASE_URL parses")
        .database(database)
        .disable_statement_logging()
}

/// A connection to the server's maintenance database, to create and drop test databases.
async fn maintenance() -> PgConnection {
    PgConnection::connect_with(&options("postgres"))
        .await
        .expect("PostgreSQL is reachable (run scripts/test.sh, which starts it)")
}

/// Creates an empty database named `{prefix}_{uuid}` through `maintenance`
/// (a connection to a server's `postgres` database) and returns its name.
pub async fn create_database(maintenance: &mut PgConnection, prefix: &str) -> String {
    let name = format!("{prefix}_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(maintenance)
        .await
        .expect("create the test database");
    name
}

/// An empty database of one test's own on the shared server, dropped (with
/// whatever still holds a connection to it) when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let mut conn = maintenance().await;
        let name = create_database(&mut conn, "ledger_test").await;
        let _ = conn.close().await;
        let url = options(&name).to_url_lossy().to_string();
        TestDb { name, url }
    }

    /// A connection of its own.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect_with(&options(&self.name))
            .await
            .expect("connect to the test database")
    }

    /// A pool on the database, migrated as `ledger migrate` would.
    pub async fn migrated_pool(&self) -> PgPool {
        let pool = PgPoolOptions::new()
            .max_connections(24)
            .acquire_timeout(Duration::from_secs(20))
            .connect_with(options(&self.name))
            .await
            .expect("connect to the test database");
        ledger_infra::migrate(&pool)
            .await
            .expect("migrate the test database");
        pool
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await: drop the database from a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let mut conn = maintenance().await;
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            });
        })
        .join();
    }
}

/// Every property of the log (its aggregates), in id order.
pub async fn properties_in_log(pool: &PgPool) -> Vec<Uuid> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT aggregate_id FROM events ORDER BY aggregate_id")
            .fetch_all(pool)
            .await
            .expect("list the properties");
    ids.iter()
        .map(|id| id.parse().expect("aggregate ids are UUIDs"))
        .collect()
}
