//! Calendar snapshots (migration 0014): a property with a long history is
//! loaded from its snapshot and the events after it, the snapshot is written
//! by the load that folded the history, and a snapshot is only ever a cache:
//! one of another version is ignored, and loading through one gives the
//! same calendar as replaying the whole history.

use crate::common;

use std::time::Duration;

use common::*;
use ledger_infra::event_store::{EventStore, SNAPSHOT_EVERY, SNAPSHOT_VERSION};
use ledger_infra::CommandBus;
use ledger_test_support::write_history;
use sqlx::PgPool;
use uuid::Uuid;

/// The property's name as a fresh bus (nothing cached) loads it.
async fn name_after_restart(store: &EventStore, property: Uuid) -> String {
    CommandBus::new(store.clone())
        .read(property, |loaded| {
            loaded
                .calendar
                .property
                .as_ref()
                .map(|p| p.details.name.clone())
                .unwrap_or_default()
        })
        .await
        .expect("load the calendar")
}

async fn snapshot_sequence(pool: &PgPool, property: Uuid) -> Option<i64> {
    let sql = "SELECT sequence FROM calendar_snapshots WHERE property_id = $1";
    value_of(pool, sql, property).await
}

#[tokio::test]
async fn long_histories_load_from_a_snapshot_that_is_only_a_cache() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let store = EventStore::new(pool.clone());
    let agency = Uuid::new_v4();
    let property = Uuid::new_v4();
    register(&CommandBus::new(store.clone()), agency, property).await;
    let history = SNAPSHOT_EVERY + 200;
    write_history(pool, property, history)
        .await
        .expect("write the history");
    let head = history + 1;

    // The first load folds the whole history and writes a snapshot of it.
    assert_eq!(
        name_after_restart(&store, property).await,
        format!("History {head}")
    );
    let written = eventually(Duration::from_secs(5), || async {
        snapshot_sequence(pool, property)
            .await
            .ok_or("no snapshot written yet")
    })
    .await;
    assert_eq!(written, head, "a snapshot of the whole history");

    // Later loads start from it: a snapshot whose state says otherwise is
    // believed (which is how this test sees that it is read at all)...
    let genuine: serde_json::Value =
        sqlx::query_scalar("SELECT state FROM calendar_snapshots WHERE property_id = $1")
            .bind(property)
            .fetch_one(pool)
            .await
            .expect("the snapshot");
    let mut planted = genuine.clone();
    planted["property"]["name"] = "Planted".into();
    sqlx::query("UPDATE calendar_snapshots SET state = $2 WHERE property_id = $1")
        .bind(property)
        .bind(&planted)
        .execute(pool)
        .await
        .expect("plant a state");
    assert_eq!(name_after_restart(&store, property).await, "Planted");

    // ...unless it is of another version: then the history is read.
    sqlx::query("UPDATE calendar_snapshots SET version = $2 WHERE property_id = $1")
        .bind(property)
        .bind(SNAPSHOT_VERSION + 1)
        .execute(pool)
        .await
        .expect("age the snapshot");
    assert_eq!(
        name_after_restart(&store, property).await,
        format!("History {head}")
    );

    // Through the genuine snapshot and the events after it, the calendar is
    // the one the whole history gives.
    sqlx::query("UPDATE calendar_snapshots SET version = $2, state = $3 WHERE property_id = $1")
        .bind(property)
        .bind(SNAPSHOT_VERSION)
        .bind(&genuine)
        .execute(pool)
        .await
        .expect("restore the snapshot");
    write_history(pool, property, 5)
        .await
        .expect("write the history");
    let bus = CommandBus::new(store.clone());
    let through_snapshot = bus
        .read(property, |loaded| {
            (loaded.sequence, loaded.calendar.clone())
        })
        .await
        .expect("load through the snapshot");
    let replayed = store.load(property).await.expect("replay the history");
    assert_eq!(through_snapshot.0, head + 5);
    assert_eq!(through_snapshot.1, replayed.calendar);
}
