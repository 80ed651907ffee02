//! A projection that cannot apply an event stops at it: the checkpoint stays
//! before it, the runner records the failure in its status, and once the
//! cause is removed it carries on from where it stopped.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ledger_infra::event_store::EventStore;
use ledger_infra::CommandBus;
use ledger_projections::runner::{self, LogSignal, Status, StepError, LIVE_SCHEMA};
use ledger_projections::Projection;
use sqlx::PgPool;
use uuid::Uuid;

async fn status(pool: &PgPool, name: &str) -> Status {
    runner::statuses(pool)
        .await
        .expect("read the statuses")
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no status for {name}"))
}

/// Polls the inventory status until `done` says so (at most 15 s).
async fn wait_for_status(pool: &PgPool, what: &str, done: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = status(pool, "inventory").await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "inventory never became {what}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One inventory step; retried while it finds nothing to read, since a
/// transaction elsewhere on the server may hold `pg_snapshot_xmin` back.
async fn step_when_readable(pool: &PgPool, limit: i64) -> Result<usize, StepError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match runner::step(pool, Projection::Inventory, LIVE_SCHEMA, "inventory", limit).await {
            Ok(0) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projection_failure_stops_at_the_event() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let bus = CommandBus::new(EventStore::new(pool.clone()));
    let agency = Uuid::new_v4();
    let (property, other) = (Uuid::new_v4(), Uuid::new_v4());
    register(&bus, agency, property).await;
    register(&bus, agency, other).await;
    catch_up_all(pool).await;
    let start = checkpoint(pool, "inventory").await;

    // A claim the aggregate knows nothing about, written by hand.
    let intruder = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO inventory_ranges (ref_id, agency_id, property_id, kind, during, status, position)
         VALUES ($1, $2, $3, 'block', daterange($4, $5), 'blocked', 0)",
    )
    .bind(intruder)
    .bind(agency)
    .bind(property)
    .bind(day(10))
    .bind(day(15))
    .execute(pool)
    .await
    .expect("insert a conflicting claim");

    let good = Uuid::new_v4();
    let bad = Uuid::new_v4();
    let after_bad = Uuid::new_v4();
    let good_position = reserve(&bus, agency, other, good, 0, 3).await;
    let bad_position = reserve(&bus, agency, property, bad, 11, 13).await;
    let after_bad_position = reserve(&bus, agency, other, after_bad, 5, 7).await;
    assert!(start < good_position && good_position < bad_position);
    assert!(bad_position < after_bad_position);

    // The event before the bad one applies on its own.
    let applied = step_when_readable(pool, 1)
        .await
        .expect("the good event applies");
    assert_eq!(applied, 1);
    assert_eq!(checkpoint(pool, "inventory").await, good_position);

    // The bad one fails, every time, and the checkpoint stays before it.
    for _ in 0..2 {
        let error = step_when_readable(pool, runner::BATCH)
            .await
            .expect_err("the conflicting claim cannot be applied");
        match &error {
            StepError::Apply {
                after,
                source: sqlx::Error::Database(db_error),
            } => {
                assert_eq!(*after, good_position);
                assert_eq!(db_error.code().as_deref(), Some("23P01"), "{db_error}");
            }
            other => panic!("expected an exclusion violation, got {other:?}"),
        }
        assert!(!error.is_unavailable());
        assert_eq!(checkpoint(pool, "inventory").await, good_position);
        let inventory = inventory_rows(pool).await;
        assert!(inventory.iter().all(|r| r.ref_id != bad));
        assert!(inventory.iter().all(|r| r.ref_id != after_bad));
    }
    // catch_up reports the failure as well.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match runner::catch_up(pool, Projection::Inventory).await {
            Err(_) => break,
            Ok(0) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(n) => panic!("catch_up applied {n} events past a failing one"),
        }
    }
    assert_eq!(checkpoint(pool, "inventory").await, good_position);

    // The other projections are not held up.
    let head = head(pool).await;
    for projection in [Projection::Views, Projection::Audit] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while checkpoint(pool, projection.name()).await < head {
            runner::catch_up(pool, projection)
                .await
                .expect("other projections carry on");
            assert!(Instant::now() < deadline, "{} is stuck", projection.name());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(checkpoint(pool, projection.name()).await, head);
    }

    // The runner records the failure and keeps the last good state.
    let runner_task = tokio::spawn(runner::run(
        pool.clone(),
        Projection::Inventory,
        LogSignal::listen(pool.clone()),
    ));
    let failed = wait_for_status(pool, "failed", |s| s.status == "failed").await;
    assert_eq!(failed.position, good_position);
    assert_eq!(failed.head_position, head);
    assert_eq!(failed.lag, head - good_position);
    let last_error = failed.last_error.clone().expect("the failure says why");
    assert!(
        last_error.contains(&format!("after position {good_position}"))
            && last_error.contains("exclusion"),
        "{last_error}"
    );
    let others = runner::statuses(pool).await.expect("statuses");
    for other in others
        .iter()
        .filter(|s| ["views", "audit"].contains(&s.name.as_str()))
    {
        assert_eq!(other.status, "running", "{other:?}");
        assert_eq!(other.last_error, None);
    }
    assert_eq!(checkpoint(pool, "inventory").await, good_position);

    // Once the intruder is gone, the runner carries on from the bad event.
    sqlx::query("DELETE FROM inventory_ranges WHERE ref_id = $1")
        .bind(intruder)
        .execute(pool)
        .await
        .expect("remove the conflicting claim");
    let recovered = wait_for_status(pool, "caught up", |s| {
        s.status == "running" && s.position == head
    })
    .await;
    runner_task.abort();
    let _ = runner_task.await;
    assert_eq!(recovered.last_error, None);
    assert_eq!(recovered.lag, 0);
    let inventory = inventory_rows(pool).await;
    let bad_row = inventory
        .iter()
        .find(|r| r.ref_id == bad)
        .expect("the booking holds its nights now");
    assert_eq!(
        (bad_row.start, bad_row.end, bad_row.position),
        (day(11), day(13), bad_position)
    );
    assert!(inventory.iter().any(|r| r.ref_id == after_bad));
    assert_read_models_match_aggregates(pool).await;
}
