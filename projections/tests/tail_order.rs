//! Transaction ids and positions are not handed out in the same order: a
//! transaction can get its xid before another one and its position after
//! it. A tail that filtered by `txid < pg_snapshot_xmin` but walked by
//! position would read the older transaction's row while a lower position
//! is still in flight, pass it, and skip that event for good. The tail
//! walks `(txid, position)` instead; this test is the regression guard.
//!
//! Own test binary: it holds a transaction open.

use crate::common;

use common::*;
use ledger_infra::event_store::EventStore;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_xid_with_a_newer_position_does_not_skip_an_in_flight_event() {
    let (db, _bus, agency, [first, second]) = agency_with_properties().await;
    let pool = &db.pool;
    catch_up_all(pool).await;

    // A takes its transaction id first (as a writer does that writes
    // anything before its events, or that loses the race between the
    // `position` and `txid` defaults of its first row)...
    let mut a = pool.begin().await.expect("begin A");
    let xid_a: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *a)
        .await
        .expect("A's xid");
    // ...B takes a later xid and the lower position, and stays open...
    let mut b = pool.begin().await.expect("begin B");
    let b_booking = Uuid::new_v4();
    let b_position = EventStore::append(
        &mut b,
        first,
        1,
        &[reserved_event(first, b_booking, 0, 3)],
        &metadata(agency),
    )
    .await
    .expect("B appends")[0];
    let xid_b: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *b)
        .await
        .expect("B's xid");
    // ...A appends the higher position and commits first.
    let a_position = EventStore::append(
        &mut a,
        second,
        1,
        &[reserved_event(second, Uuid::new_v4(), 0, 3)],
        &metadata(agency),
    )
    .await
    .expect("A appends")[0];
    a.commit().await.expect("commit A");
    assert!(xid_a < xid_b && b_position < a_position);

    // While B is open, A's event (older xid) may be applied; B's cannot be.
    catch_up_all(pool).await;
    let audited: Vec<i64> = audit_rows(pool).await.iter().map(|a| a.position).collect();
    assert!(
        !audited.contains(&b_position),
        "an uncommitted event was applied"
    );

    b.commit().await.expect("commit B");
    catch_up_all(pool).await;
    let audited: Vec<i64> = audit_rows(pool).await.iter().map(|a| a.position).collect();
    assert!(
        audited.contains(&b_position) && audited.contains(&a_position),
        "after B committed, its event at {b_position} must be applied (audited positions {audited:?})"
    );
    assert_read_models_match_aggregates(pool).await;
}
