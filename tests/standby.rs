//! Reads from a PostgreSQL hot standby (DATABASE_READ_URL): writes go to the
//! primary, the read routes query the standby, and `min_position` still
//! reads one's own writes because the wait polls the read models'
//! checkpoints as the standby has replayed them.
//!
//! The test runs a private primary and a streaming standby made from it with
//! `pg_basebackup -R` (tests/common/pg.rs), and pauses the standby's replay
//! to make it lag on purpose: a read then shows the standby's (stale) state
//! and a `min_position` read waits for it, whatever the primary holds.

use crate::common;

use std::time::Duration;

use common::pg::PgServer;
use common::{agency, assert_error, create_database, eventually, ok, spawn_app_on, Reply, TestApp};
use reqwest::StatusCode;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// Connects to `url`, retrying until `timeout` (a database created on the
/// primary appears on the standby once replayed).
async fn connect(url: &str, timeout: Duration) -> PgConnection {
    eventually(timeout, || async {
        PgConnection::connect(url)
            .await
            .map_err(|error| format!("connect to {url}: {error}"))
    })
    .await
}

async fn get_booking(app: &TestApp, token: &str, id: Uuid, min_position: Option<i64>) -> Reply {
    let query = min_position.map_or(String::new(), |p| format!("?min_position={p}"));
    app.get(&format!("/api/v1/bookings/{id}{query}"), token)
        .await
}

#[tokio::test]
async fn a_write_is_read_back_through_the_standby_with_min_position() {
    let primary = PgServer::start();
    let mut primary_db = connect(&primary.url("postgres"), Duration::from_secs(5)).await;
    let db_name = create_database(&mut primary_db, "ledger_standby").await;
    let standby = PgServer::standby_of(&primary);
    let mut standby_db = connect(&standby.url(&db_name), Duration::from_secs(20)).await;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut standby_db)
        .await
        .expect("ask the standby");
    assert!(in_recovery, "the standby is a standby");

    let app = spawn_app_on(
        &primary.url(&db_name),
        &db_name,
        &[("DATABASE_READ_URL", &standby.url(&db_name))],
    )
    .await;
    let (_, admin) = agency();
    let property = app.property(&admin, None).await;
    let (first, _) = app
        .booked(&admin, property, "2031-03-01", "2031-03-04")
        .await;
    let head = app.head().await;
    ok(get_booking(&app, &admin, first, Some(head)).await);

    // The standby stops replaying: it keeps receiving WAL but its tables,
    // checkpoints included, stay where they are.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut standby_db)
        .await
        .expect("pause the standby's replay");
    let (second, _) = app
        .booked(&admin, property, "2031-04-01", "2031-04-03")
        .await;
    let head = app.head().await;
    // The primary's read model of bookings has it (the projection runs there).
    eventually(Duration::from_secs(10), || async {
        let applied: i64 =
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = 'views'")
                .fetch_one(&mut app.db().await)
                .await
                .expect("read the primary's checkpoints");
        if applied >= head {
            Ok(())
        } else {
            Err(format!("the primary's projections stay at {applied}"))
        }
    })
    .await;

    let stale = get_booking(&app, &admin, second, None).await;
    assert_error(&stale, StatusCode::NOT_FOUND, "BOOKING_NOT_FOUND");
    let waited = get_booking(&app, &admin, second, Some(head)).await;
    assert_error(
        &waited,
        StatusCode::SERVICE_UNAVAILABLE,
        "PROJECTION_LAGGING",
    );

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut standby_db)
        .await
        .expect("resume the standby's replay");
    let fresh = ok(get_booking(&app, &admin, second, Some(head)).await);
    assert_eq!(fresh.body["check_in"], "2031-04-01");
    let position: i64 = fresh.headers["x-ledger-position"]
        .to_str()
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("an x-ledger-position header");
    assert!(position >= head, "read at {position}, wrote at {head}");
}
