//! docs/product.md invariant 7 at the command bus: a caller that goes away in the
//! middle of a command (an HTTP client hanging up drops the request's future)
//! leaves the ledger as if the command had completed or never been sent, and
//! the bus's cached calendars never run ahead of the log.

use crate::common;

use std::time::Duration;

use common::{at, eventually, exec, register, reserve, reserve_stay, TestDb};
use ledger_domain::values::BookingStatus;
use ledger_domain::CalendarCommand;
use ledger_infra::event_store::EventStore;
use ledger_infra::CommandBus;
use uuid::Uuid;

const ROUNDS: u64 = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_mid_command_never_double_books() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = CommandBus::new(store.clone());
    let agency = Uuid::new_v4();
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let property = Uuid::now_v7();
        register(&bus, agency, property).await;
        let first = Uuid::now_v7();
        reserve(&bus, agency, property, first, 0, 3).await;
        let cancel = exec(
            &bus,
            agency,
            property,
            at(2),
            CalendarCommand::CancelBooking {
                booking_id: first,
                reason: None,
            },
        );
        // The caller gives up at some moment of the command: its future is dropped.
        let patience = Duration::from_micros(round * 97 % 4000);
        let _ = tokio::time::timeout(patience, cancel).await;
        let second = exec(
            &bus,
            agency,
            property,
            at(3),
            CalendarCommand::ReserveStay(reserve_stay(Uuid::now_v7(), 1, 2)),
        )
        .await;
        rounds.push((property, second.is_ok()));
    }

    for (property, second_taken) in rounds {
        let logged = store.load(property).await.expect("the log reads back");
        let active: Vec<_> = logged
            .calendar
            .bookings
            .values()
            .filter(|b| b.status.is_active())
            .collect();
        for (i, a) in active.iter().enumerate() {
            for b in &active[i + 1..] {
                assert!(
                    !a.nights.overlaps(&b.nights),
                    "property {property}: bookings {} and {} share nights in the log",
                    a.id,
                    b.id
                );
            }
        }
        let cancelled = logged
            .calendar
            .bookings
            .values()
            .any(|b| b.status == BookingStatus::Cancelled);
        assert!(
            !second_taken || cancelled,
            "property {property}: the second reserve was accepted without the cancel in the log"
        );
        // Sequences run 1..=n with no gap.
        let sequences: Vec<i64> = sqlx::query_scalar(
            "SELECT sequence FROM events WHERE aggregate_id = $1 ORDER BY sequence",
        )
        .bind(property.to_string())
        .fetch_all(&db.pool)
        .await
        .expect("read the sequences");
        assert_eq!(
            sequences,
            (1..=sequences.len() as i64).collect::<Vec<_>>(),
            "property {property}: a gap in the sequences"
        );
        // The cache equals the log once the abandoned command has ended (it
        // runs to its end on its own).
        eventually(Duration::from_secs(5), || async {
            let logged = store.load(property).await.expect("the log reads back");
            let cached = bus
                .read(property, |l| (l.sequence, l.calendar.clone()))
                .await
                .expect("read through the bus");
            if cached == (logged.sequence, logged.calendar.clone()) {
                Ok(())
            } else {
                Err(format!(
                    "property {property}: the cached calendar is not the log's \
                     (cached sequence {}, logged {})",
                    cached.0, logged.sequence
                ))
            }
        })
        .await;
    }
}
