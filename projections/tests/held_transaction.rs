//! A transaction that took its position early but commits late must never be
//! skipped: projections stop below it until it commits, then apply it and
//! everything after it exactly once.
//!
//! (Its own test binary: the held transaction holds back `pg_snapshot_xmin`
//! for the whole server, which would stall tests running beside it.)

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ledger_domain::commands::BlockNights;
use ledger_domain::values::{BlockReason, ClaimKind};
use ledger_domain::CalendarCommand;
use ledger_infra::event_store::EventStore;
use ledger_projections::{runner, tail, Projection};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_open_transaction_is_never_skipped() {
    let (db, bus, agency, [held_property, other]) = agency_with_properties().await;
    let pool = &db.pool;
    reserve(&bus, agency, held_property, Uuid::new_v4(), 0, 3).await;
    let before = head(pool).await;
    catch_up_to(pool, before).await;

    // The held transaction appends a reservation the way the command bus
    // would, and stays open.
    let sequence = bus
        .read(held_property, |loaded| loaded.sequence)
        .await
        .expect("read the calendar");
    let held_booking = Uuid::new_v4();
    let mut held = pool.begin().await.expect("begin");
    let held_position = EventStore::append(
        &mut held,
        held_property,
        sequence,
        &[reserved_event(held_property, held_booking, 10, 14)],
        &metadata(agency),
    )
    .await
    .expect("append the held event")[0];
    EventStore::record_ref(
        &mut held,
        held_booking,
        ClaimKind::Booking,
        agency,
        held_property,
    )
    .await
    .expect("record the held booking");
    assert_eq!(held_position, before + 1);

    // Meanwhile other writers commit events after it.
    let later_booking = Uuid::new_v4();
    let later_block = Uuid::new_v4();
    reserve(&bus, agency, other, later_booking, 0, 5).await;
    exec(
        &bus,
        agency,
        other,
        at(2),
        CalendarCommand::BlockNights(BlockNights {
            block_id: later_block,
            start: day(6),
            end: day(9),
            reason: BlockReason::Maintenance,
            note: None,
            external_ref: None,
            room_type_id: None,
            units: None,
        }),
    )
    .await
    .expect("block nights");
    cancel(&bus, agency, other, later_booking, at(3)).await;
    let committed_head = head(pool).await;
    assert_eq!(committed_head, held_position + 3);

    for _ in 0..3 {
        for projection in Projection::ALL {
            runner::catch_up(pool, projection)
                .await
                .unwrap_or_else(|e| panic!("catch up {}: {e}", projection.name()));
            let at = cursor_position(pool, projection.name()).await;
            assert_eq!(
                at,
                before,
                "{} must stop below the held event at {held_position}",
                projection.name()
            );
        }
        let mut conn = pool.acquire().await.expect("a connection");
        let after = tail::load_checkpoint(&mut conn, "inventory")
            .await
            .expect("the inventory checkpoint");
        let batch = tail::read_batch(&mut conn, after, 100)
            .await
            .expect("read a batch");
        assert!(
            batch.is_empty(),
            "nothing past an open transaction is readable: {:?}",
            batch.iter().map(|e| e.position).collect::<Vec<_>>()
        );
        drop(conn);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Nothing after the held event took effect.
    let models = read_models(pool).await;
    assert!(models.audit.iter().all(|a| a.position <= before));
    let counted = "SELECT count(*) FROM events WHERE position <= $1";
    let committed_before: i64 = value_of(pool, counted, before).await.expect("a count");
    assert_eq!(models.audit.len() as i64, committed_before);
    assert!(models.inventory.iter().all(|r| r.property_id != other));
    assert!(models
        .bookings
        .iter()
        .all(|b| b.booking.property_id != other));
    assert!(models.inventory.iter().all(|r| r.ref_id != held_booking));

    held.commit().await.expect("commit the held transaction");
    catch_up_to(pool, committed_head).await;

    for projection in Projection::ALL {
        assert_eq!(checkpoint(pool, projection.name()).await, committed_head);
    }
    // Every event exactly once in the audit log, the held one included.
    let models = read_models(pool).await;
    let logged: Vec<(Uuid, i64)> = sqlx::query_as("SELECT event_id, position FROM events")
        .fetch_all(pool)
        .await
        .expect("read the log");
    assert_eq!(models.audit.len(), logged.len());
    let audited: BTreeSet<(Uuid, i64)> = models.audit.iter().map(|a| (a.id, a.position)).collect();
    assert_eq!(audited, logged.into_iter().collect::<BTreeSet<_>>());
    // The held claim is in the inventory, with its own position.
    let held_row = models
        .inventory
        .iter()
        .find(|r| r.ref_id == held_booking)
        .expect("the held booking holds its nights");
    assert_eq!(
        (held_row.start, held_row.end, held_row.position),
        (day(10), day(14), held_position)
    );
    assert!(models.bookings.iter().any(|b| b.booking_id == held_booking));
    // The later events took effect too: the cancelled booking holds nothing,
    // the block does.
    assert!(models.inventory.iter().all(|r| r.ref_id != later_booking));
    assert!(models.inventory.iter().any(|r| r.ref_id == later_block));
    assert_read_models_match_aggregates(pool).await;

    // A second catch-up applies nothing again.
    for projection in Projection::ALL {
        assert_eq!(
            runner::catch_up(pool, projection).await.expect("catch up"),
            0
        );
    }
    assert_eq!(read_models(pool).await, models);
}
