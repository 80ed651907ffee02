//! A failure stays with its property: an event a projection cannot apply
//! parks its property, that property's later events wait in order, every
//! other property (of every agency) goes on, and once the cause is removed
//! a retry applies the waiting events and the projection runs clean again.

use crate::common;

use std::time::Duration;

use common::*;
use ledger_projections::parking::{self, Parked};
use ledger_projections::runner::{self, LogSignal, Status};
use ledger_projections::{replay, Projection};
use sqlx::PgPool;
use uuid::Uuid;

async fn status(pool: &PgPool, name: &str) -> Status {
    runner::statuses(pool)
        .await
        .expect("read the statuses")
        .into_iter()
        .find(|s| s.checkpoint.name == name)
        .unwrap_or_else(|| panic!("no status for {name}"))
}

/// Polls a projection's status until `done` says so (at most 15 s).
async fn wait_for_status(
    pool: &PgPool, name: &str, what: &str, done: impl Fn(&Status) -> bool,
) -> Status {
    eventually(Duration::from_secs(15), || async {
        let status = status(pool, name).await;
        if done(&status) {
            Ok(status)
        } else {
            Err(format!("{name} is not {what}: {status:?}"))
        }
    })
    .await
}

async fn parked(pool: &PgPool, checkpoint: &str) -> Vec<Parked> {
    parking::parked(pool, &[checkpoint])
        .await
        .expect("read the parked properties")
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

async fn booking_ids(pool: &PgPool) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT booking_id FROM bookings_view ORDER BY booking_id")
        .fetch_all(pool)
        .await
        .expect("read bookings_view")
}

async fn booking_status(pool: &PgPool, booking: Uuid) -> Option<String> {
    let sql = "SELECT status FROM bookings_view WHERE booking_id = $1";
    value_of(pool, sql, booking).await
}

/// A trigger on `table` that refuses every row of `property`.
async fn refuse_rows_of(pool: &PgPool, table: &str, property: Uuid) {
    sqlx::query(&format!(
        "CREATE OR REPLACE FUNCTION refuse_property() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.property_id = '{property}'::uuid THEN
                 RAISE EXCEPTION 'refused on purpose for property %', NEW.property_id;
             END IF;
             RETURN NEW;
         END $$"
    ))
    .execute(pool)
    .await
    .expect("create the refusing function");
    sqlx::query(&format!(
        "CREATE TRIGGER refuse_property BEFORE INSERT OR UPDATE ON {table}
         FOR EACH ROW EXECUTE FUNCTION refuse_property()"
    ))
    .execute(pool)
    .await
    .expect("create the refusing trigger");
}

async fn stop_refusing(pool: &PgPool, table: &str) {
    sqlx::query(&format!("DROP TRIGGER refuse_property ON {table}"))
        .execute(pool)
        .await
        .expect("drop the refusing trigger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exclusion_violation_parks_only_its_property() {
    let (db, bus, agency, [property, other]) = agency_with_properties().await;
    let pool = &db.pool;
    let (other_agency, elsewhere) = (Uuid::new_v4(), Uuid::new_v4());
    register(&bus, other_agency, elsewhere).await;
    catch_up_all(pool).await;

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
    let (_, exclusions_before) = parking::parkings(Projection::Inventory);

    let (good, bad, after_bad, theirs) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    reserve(&bus, agency, other, good, 0, 3).await;
    let bad_position = reserve(&bus, agency, property, bad, 11, 13).await;
    // Does not overlap the intruder, but comes after the bad event: it waits.
    reserve(&bus, agency, property, after_bad, 20, 22).await;
    reserve(&bus, other_agency, elsewhere, theirs, 11, 13).await;

    // The projection goes on past the property's events.
    catch_up_all(pool).await;
    let parked_now = parked(pool, "inventory").await;
    assert_eq!(parked_now.len(), 1, "{parked_now:?}");
    assert_eq!(
        (
            parked_now[0].agency_id,
            parked_now[0].property_id,
            parked_now[0].position
        ),
        (agency, property, bad_position)
    );
    assert!(
        parked_now[0].error.contains("exclusion"),
        "{}",
        parked_now[0].error
    );
    let (_, exclusions_after) = parking::parkings(Projection::Inventory);
    assert!(
        exclusions_after > exclusions_before,
        "the parking is counted"
    );
    let inventory = inventory_rows(pool).await;
    let refs: Vec<Uuid> = inventory.iter().map(|r| r.ref_id).collect();
    assert!(
        refs.contains(&good) && refs.contains(&theirs),
        "{inventory:?}"
    );
    assert!(!refs.contains(&bad) && !refs.contains(&after_bad));

    let inventory_status = status(pool, "inventory").await;
    assert_eq!(inventory_status.checkpoint.status, "degraded");
    assert_eq!(inventory_status.parked, parked_now);
    assert_eq!(inventory_status.checkpoint.lag, 0);
    for name in ["views", "audit"] {
        let other = status(pool, name).await;
        assert_eq!(
            (other.checkpoint.status.as_str(), other.parked.len()),
            ("running", 0),
            "{other:?}"
        );
    }

    // Later events of the property keep waiting; the parking stays where it was.
    let later = Uuid::new_v4();
    reserve(&bus, agency, property, later, 30, 32).await;
    catch_up_all(pool).await;
    assert_eq!(parked(pool, "inventory").await[0].position, bad_position);
    assert!(inventory_rows(pool).await.iter().all(|r| r.ref_id != later));

    // A retry before the fix changes nothing and keeps the property parked.
    let retried = parking::retry(pool, Projection::Inventory)
        .await
        .expect("retry");
    assert_eq!(
        (retried.released.len(), retried.still_parked.as_slice()),
        (0, [property].as_slice())
    );
    assert_eq!(
        status(pool, "inventory").await.checkpoint.status,
        "degraded"
    );

    // Once the intruder is gone, a retry applies the waiting events.
    sqlx::query("DELETE FROM inventory_ranges WHERE ref_id = $1")
        .bind(intruder)
        .execute(pool)
        .await
        .expect("remove the conflicting claim");
    let retried = parking::retry(pool, Projection::Inventory)
        .await
        .expect("retry");
    assert_eq!(retried.released, vec![property]);
    assert!(retried.still_parked.is_empty());
    let recovered = status(pool, "inventory").await;
    assert_eq!(
        (recovered.checkpoint.status.as_str(), recovered.parked.len()),
        ("running", 0)
    );
    let bad_row = inventory_rows(pool)
        .await
        .into_iter()
        .find(|r| r.ref_id == bad)
        .expect("the booking holds its nights now");
    assert_eq!((bad_row.start, bad_row.end), (day(11), day(13)));
    assert_nothing_lost(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_row_parks_its_property_and_a_retry_applies_its_events_in_order() {
    let (db, bus, agency, [property]) = agency_with_properties().await;
    let pool = &db.pool;
    let (other_agency, elsewhere) = (Uuid::new_v4(), Uuid::new_v4());
    register(&bus, other_agency, elsewhere).await;
    catch_up_all(pool).await;
    refuse_rows_of(pool, "bookings_view", property).await;

    let runner_task = tokio::spawn(runner::run(
        pool.clone(),
        Projection::Views,
        LogSignal::listen(bus.waker()),
    ));
    let (refused, theirs) = (Uuid::new_v4(), Uuid::new_v4());
    let refused_position = reserve(&bus, agency, property, refused, 1, 4).await;
    // The cancel comes after: applied alone it would find no row to change.
    cancel(&bus, agency, property, refused, at(2)).await;
    let theirs_position = reserve(&bus, other_agency, elsewhere, theirs, 1, 4).await;

    let degraded = wait_for_status(pool, "views", "degraded", |s| {
        s.checkpoint.status == "degraded" && s.checkpoint.position >= theirs_position
    })
    .await;
    assert_eq!(degraded.parked.len(), 1, "{degraded:?}");
    assert_eq!(
        (degraded.parked[0].property_id, degraded.parked[0].position),
        (property, refused_position)
    );
    assert!(
        degraded.parked[0].error.contains("refused on purpose"),
        "{:?}",
        degraded.parked[0]
    );
    assert_eq!(degraded.last_error, None, "a parking is not a failure");
    assert_eq!(
        booking_status(pool, theirs).await.as_deref(),
        Some("confirmed")
    );
    assert_eq!(booking_status(pool, refused).await, None);

    stop_refusing(pool, "bookings_view").await;
    let retried = parking::retry(pool, Projection::Views)
        .await
        .expect("retry");
    assert_eq!(retried.released, vec![property]);
    // Both waiting events applied, in order: reserved, then cancelled.
    assert_eq!(
        booking_status(pool, refused).await.as_deref(),
        Some("cancelled")
    );
    let running = wait_for_status(pool, "views", "running", |s| {
        s.checkpoint.status == "running"
    })
    .await;
    assert!(running.parked.is_empty());

    // New events of the released property apply as usual again.
    let next = Uuid::new_v4();
    let next_position = reserve(&bus, agency, property, next, 10, 12).await;
    wait_for_status(pool, "views", "caught up", |s| {
        s.checkpoint.position >= next_position
    })
    .await;
    runner_task.abort();
    let _ = runner_task.await;
    assert!(booking_ids(pool).await.contains(&next));
    assert_nothing_lost(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_that_meets_an_unappliable_event_parks_it_and_still_swaps() {
    let (db, bus, agency, [property, other]) = agency_with_properties().await;
    let pool = &db.pool;
    let (refused, fine) = (Uuid::new_v4(), Uuid::new_v4());
    let refused_position = reserve(&bus, agency, property, refused, 1, 4).await;
    reserve(&bus, agency, other, fine, 1, 4).await;
    catch_up_all(pool).await;

    let id = replay::start(pool, Projection::Views)
        .await
        .expect("start a replay");
    refuse_rows_of(pool, "ledger_replay.bookings_view", property).await;
    replay::run(pool, Projection::Views, id)
        .await
        .expect("the replay finishes");
    let progress = replay::progress(pool, Projection::Views)
        .await
        .expect("read the progress")
        .expect("a replay");
    assert_eq!(progress.state, "done");

    // The copy is live now, and so are its parked properties.
    assert!(parked(pool, "views@replay").await.is_empty());
    let parked_now = parked(pool, "views").await;
    assert_eq!(
        parked_now
            .iter()
            .map(|p| (p.property_id, p.position))
            .collect::<Vec<_>>(),
        vec![(property, refused_position)]
    );
    let ids = booking_ids(pool).await;
    assert!(ids.contains(&fine) && !ids.contains(&refused), "{ids:?}");
    assert_eq!(status(pool, "views").await.checkpoint.status, "degraded");

    // The trigger moved with the table; without it the retry applies.
    stop_refusing(pool, "public.bookings_view").await;
    let retried = parking::retry(pool, Projection::Views)
        .await
        .expect("retry");
    assert_eq!(retried.released, vec![property]);
    assert_eq!(status(pool, "views").await.checkpoint.status, "running");
    assert_nothing_lost(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_of_the_database_parks_nothing() {
    let (db, bus, agency, [property, other]) = agency_with_properties().await;
    let pool = &db.pool;
    catch_up_all(pool).await;
    let start = checkpoint(pool, "views").await;
    // The connection "fails" (SQLSTATE 08006) whenever the property's row is written.
    sqlx::query(&format!(
        "CREATE FUNCTION fail_connection() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.property_id = '{property}'::uuid THEN
                 RAISE EXCEPTION 'connection lost' USING ERRCODE = 'connection_failure';
             END IF;
             RETURN NEW;
         END $$"
    ))
    .execute(pool)
    .await
    .expect("create the failing function");
    sqlx::query(
        "CREATE TRIGGER fail_connection BEFORE INSERT ON bookings_view
         FOR EACH ROW EXECUTE FUNCTION fail_connection()",
    )
    .execute(pool)
    .await
    .expect("create the failing trigger");
    let (theirs, fine) = (Uuid::new_v4(), Uuid::new_v4());
    reserve(&bus, agency, property, theirs, 1, 3).await;
    reserve(&bus, agency, other, fine, 1, 3).await;

    let error = eventually(Duration::from_secs(10), || async {
        let step = runner::step(
            pool,
            Projection::Views,
            runner::Tables::Live,
            "views",
            runner::BATCH,
        );
        match step.await {
            Err(error) => Ok(error),
            // Nothing readable yet: a transaction elsewhere holds back the snapshot.
            Ok(0) => Err("the batch read nothing"),
            Ok(n) => panic!("the batch applied {n} events past a database failure"),
        }
    })
    .await;
    assert!(error.is_unavailable(), "{error}");
    assert!(parked(pool, "views").await.is_empty());
    assert_eq!(
        checkpoint(pool, "views").await,
        start,
        "the batch rolled back whole"
    );
    assert_eq!(booking_status(pool, fine).await, None);

    sqlx::query("DROP TRIGGER fail_connection ON bookings_view")
        .execute(pool)
        .await
        .expect("drop the failing trigger");
    catch_up_all(pool).await;
    assert_eq!(
        booking_status(pool, theirs).await.as_deref(),
        Some("confirmed")
    );
    assert!(parked(pool, "views").await.is_empty());
    assert_read_models_match_aggregates(pool).await;
}
