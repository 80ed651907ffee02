//! Least privilege in PostgreSQL: `ledger serve` started with DATABASE_URL
//! naming `ledger_app` and DATABASE_MIGRATE_URL naming the owner works end
//! to end, and `ledger_app` cannot change or remove an event, even once the
//! append-only triggers are gone: the grant stops it.

use crate::common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use common::{
    agency, create_database, created, eventually, ok, operator, server_url, spawn_app_on,
    with_status, TestApp,
};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

const SERVING_ROLE: &str = "ledger_app";
/// `insufficient_privilege`.
const PERMISSION_DENIED: &str = "42501";

/// A fresh database on the shared server; (owner URL, serving-role URL, name).
async fn database() -> (String, String, String) {
    let server = PgConnectOptions::from_str(&server_url()).expect("DATABASE_URL parses");
    let mut maintenance = server
        .clone()
        .database("postgres")
        .connect()
        .await
        .expect("PostgreSQL is reachable");
    let name = create_database(&mut maintenance, "ledger_test").await;
    let owner = server.clone().database(&name).to_url_lossy().to_string();
    let serving = server
        .username(SERVING_ROLE)
        .database(&name)
        .to_url_lossy()
        .to_string();
    (owner, serving, name)
}

/// `ledger serve` as ledger_app, migrated by the owner. `app.db()` is the owner.
async fn spawn_least_privileged() -> (TestApp, String) {
    let (owner, serving, name) = database().await;
    let app = spawn_app_on(
        &owner,
        &name,
        &[
            ("DATABASE_URL", serving.as_str()),
            ("DATABASE_MIGRATE_URL", owner.as_str()),
        ],
    )
    .await;
    (app, serving)
}

async fn sqlstate_of(conn: &mut PgConnection, statement: &str) -> Option<String> {
    match sqlx::query(statement).execute(&mut *conn).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => {
            assert!(
                e.message().contains("permission denied for table events")
                    || e.code().as_deref() != Some(PERMISSION_DENIED),
                "{statement}: {}",
                e.message()
            );
            e.code().map(|c| c.into_owned())
        }
        Err(other) => panic!("{statement}: {other}"),
    }
}

async fn wait_for_replay(app: &TestApp, token: &str, name: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let progress = ok(app
            .get(&format!("/ops/projections/{name}/replay"), token)
            .await);
        if progress.body["replay_id"] == json!(id) {
            match progress.body["state"].as_str() {
                Some("done") => return,
                Some("failed") => panic!(
                    "replay of {name} failed: {}\n{}",
                    progress.body,
                    app.log_text()
                ),
                _ => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "replay of {name} not done in 60 s: {}",
            progress.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_as_the_serving_role_works_end_to_end_with_replays() {
    let (app, _) = spawn_least_privileged().await;
    let (_, admin) = agency();
    // Replays are the platform operators' (the agency admin may not run them).
    let operator = operator();

    // Once the owner's migration connection has gone, every connection of
    // the service is ledger_app's.
    eventually(Duration::from_secs(10), || async {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT usename::text FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'ledger'",
        )
        .fetch_all(&mut app.db().await)
        .await
        .expect("read pg_stat_activity");
        if users == [SERVING_ROLE] {
            Ok(())
        } else {
            Err(format!("the service connects as {users:?}"))
        }
    })
    .await;

    let property = app.property(&admin, None).await;
    let (booking, _) = app
        .booked(&admin, property, "2031-05-01", "2031-05-04")
        .await;
    created(
        app.block(&admin, property, "2031-05-04", "2031-05-06", "maintenance")
            .await,
    );
    let read = app
        .read_ok(&format!("/api/v1/bookings/{}", booking), &admin)
        .await;
    assert_eq!(read.body["check_in"], "2031-05-01");
    // A retry with the same key answers from idempotency_keys.
    let body = json!({"property_id": property, "check_in": "2031-06-01",
                      "check_out": "2031-06-03", "guest": {"name": "Bo"}});
    let key = [("Idempotency-Key", "k-1")];
    let first = app
        .post_with("/api/v1/bookings", &admin, body.clone(), &key)
        .await;
    let again = app
        .post_with("/api/v1/bookings", &admin, body.clone(), &key)
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert_eq!(again.body, first.body);

    for name in ["inventory", "views", "audit"] {
        let started = with_status(
            StatusCode::ACCEPTED,
            app.post(
                &format!("/ops/projections/{name}/replay"),
                &operator,
                json!({}),
            )
            .await,
        );
        let id = started.body["replay_id"]
            .as_str()
            .expect("a replay_id")
            .to_owned();
        wait_for_replay(&app, &operator, name, &id).await;
    }

    // The swapped-in tables stay the projector's, so the next replay can
    // drop them again, and reads of the rebuilt tables still work.
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT tableowner::text FROM pg_tables
          WHERE schemaname = 'public'
            AND tablename IN ('inventory_ranges', 'properties_view', 'bookings_view', 'audit_log')",
    )
    .fetch_all(&mut app.db().await)
    .await
    .expect("read table owners");
    assert_eq!(owners, vec!["ledger_projector".to_owned()]);
    let again = with_status(
        StatusCode::ACCEPTED,
        app.post("/ops/projections/inventory/replay", &operator, json!({}))
            .await,
    );
    let id = again.body["replay_id"].as_str().expect("a replay_id");
    wait_for_replay(&app, &operator, "inventory", id).await;

    let availability = app
        .read_ok(
            &format!("/api/v1/availability?property_id={property}&from=2031-04-01&to=2031-07-01"),
            &admin,
        )
        .await;
    let ranges = availability.body["ranges"].as_array().expect("ranges");
    assert_eq!(ranges.len(), 3, "{}", availability.body);
    let audit = app.read_ok("/api/v1/audit-log", &admin).await;
    assert_eq!(
        audit.body["items"].as_array().map(Vec::len),
        Some(4),
        "{}",
        audit.body
    );
    // An agency still sees only its own rows (row-level security as before).
    let (_, stranger) = agency();
    let theirs = app.read("/api/v1/bookings", &stranger).await;
    assert_eq!(theirs.body["items"], json!([]), "{}", theirs.body);
}

#[tokio::test]
async fn the_serving_role_cannot_change_or_remove_events_even_without_the_triggers() {
    let (app, serving) = spawn_least_privileged().await;
    let (_, admin) = agency();
    app.property(&admin, None).await;
    assert!(app.total_events().await > 0);

    let mut as_app = PgConnection::connect(&serving)
        .await
        .expect("log in as ledger_app");
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut as_app)
        .await
        .expect("current_user");
    assert_eq!(user, SERVING_ROLE);
    let attempts = [
        "UPDATE events SET metadata = '{}'",
        "DELETE FROM events",
        "TRUNCATE events",
    ];
    for statement in attempts {
        assert_eq!(
            sqlstate_of(&mut as_app, statement).await.as_deref(),
            Some(PERMISSION_DENIED),
            "{statement} with the triggers in place"
        );
    }

    // The owner removes the triggers: only the grant is left in the way.
    let mut owner = app.db().await;
    sqlx::raw_sql(
        "DROP TRIGGER events_append_only ON events;
         DROP TRIGGER events_no_truncate ON events",
    )
    .execute(&mut owner)
    .await
    .expect("the owner drops the append-only triggers");
    let owner_update = sqlx::query("UPDATE events SET metadata = metadata")
        .execute(&mut owner)
        .await
        .expect("without triggers, the owner may update");
    assert!(owner_update.rows_affected() > 0);

    for statement in attempts {
        assert_eq!(
            sqlstate_of(&mut as_app, statement).await.as_deref(),
            Some(PERMISSION_DENIED),
            "{statement} without the triggers"
        );
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut as_app)
        .await
        .expect("ledger_app reads the log");
    assert_eq!(left, app.total_events().await);
    assert!(left > 0);
}
