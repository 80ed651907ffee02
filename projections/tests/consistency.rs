//! Property test: whatever commands ran, by however many concurrent writers
//! (each with its own command bus, as separate processes would be), and
//! however the projections interleaved with them, once caught up the read
//! models equal (a) what the aggregates themselves hold and (b) a full
//! rebuild from position 0.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use ledger_domain::commands::{BlockNights, ModifyBooking, UpdateProperty};
use ledger_domain::values::{BlockReason, BookingStatus, Price};
use ledger_domain::CalendarCommand;
use ledger_infra::event_store::EventStore;
use ledger_infra::{CommandBus, ExecuteError};
use ledger_projections::{replay, runner, Projection};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        start: u64,
        len: u64,
        tentative: bool,
        hold_hours: Option<i64>,
    },
    Modify {
        target: Index,
        start: u64,
        len: u64,
        adults: u32,
    },
    Confirm(Index),
    Cancel(Index),
    CheckIn(Index),
    ExpireHold(Index),
    Block {
        start: u64,
        len: u64,
    },
    Release(Index),
    Rename(u8),
}

#[derive(Debug, Clone)]
struct PropertyPlan {
    /// The commands of each concurrent writer, in order.
    writers: Vec<Vec<Op>>,
    /// Archive the property once the writers are done.
    archive: bool,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u64..30, 1u64..6, any::<bool>(), prop::option::of(1i64..6)).prop_map(
            |(start, len, tentative, hold_hours)| Op::Reserve {
                start,
                len,
                tentative,
                hold_hours: hold_hours.filter(|_| tentative),
            }
        ),
        2 => (any::<Index>(), 0u64..30, 1u64..6, 1u32..4).prop_map(|(target, start, len, adults)| {
            Op::Modify {
                target,
                start,
                len,
                adults,
            }
        }),
        2 => any::<Index>().prop_map(Op::Confirm),
        2 => any::<Index>().prop_map(Op::Cancel),
        1 => any::<Index>().prop_map(Op::CheckIn),
        1 => any::<Index>().prop_map(Op::ExpireHold),
        2 => (0u64..30, 1u64..5).prop_map(|(start, len)| Op::Block { start, len }),
        1 => any::<Index>().prop_map(Op::Release),
        1 => any::<u8>().prop_map(Op::Rename),
    ]
}

/// The properties' plans, and whether to rebuild every projection while the
/// writers write.
fn plan() -> impl Strategy<Value = (Vec<PropertyPlan>, bool)> {
    let property = (
        prop::collection::vec(prop::collection::vec(op(), 0..10), 1..=3),
        prop::bool::weighted(0.25),
    )
        .prop_map(|(writers, archive)| PropertyPlan { writers, archive });
    (prop::collection::vec(property, 1..=3), any::<bool>())
}

const WRITERS: usize = 3;

/// One property of a case: its id, agency, and the ids its ops refer to.
struct Subject {
    property: Uuid,
    agency: Uuid,
    bookings: Vec<Uuid>,
    blocks: Vec<Uuid>,
}

fn pick(ids: &[Uuid], index: &Index) -> Option<Uuid> {
    (!ids.is_empty()).then(|| *index.get(ids))
}

/// The command an op stands for (`None`: it refers to nothing yet).
fn command(
    op: &Op, subject: &Subject, next_booking: &mut impl Iterator<Item = Uuid>,
    next_block: &mut impl Iterator<Item = Uuid>, now: chrono::DateTime<chrono::Utc>,
) -> Option<CalendarCommand> {
    let booking = |index: &Index| pick(&subject.bookings, index);
    Some(match op {
        Op::Reserve {
            start,
            len,
            tentative,
            hold_hours,
        } => {
            let mut stay = reserve_stay(next_booking.next()?, *start, start + len);
            stay.status = tentative.then_some(BookingStatus::Tentative);
            stay.hold_expires_at = hold_hours.map(|h| now + TimeDelta::hours(h));
            stay.details.price = Some(Price {
                amount_minor: (*len as i64) * 12_050,
                currency: "EUR".into(),
            });
            CalendarCommand::ReserveStay(stay)
        }
        Op::Modify {
            target,
            start,
            len,
            adults,
        } => CalendarCommand::ModifyBooking(ModifyBooking {
            booking_id: booking(target)?,
            check_in: Some(day(*start)),
            check_out: Some(day(start + len)),
            adults: Some(*adults),
            notes: Some(Some(format!("moved to night {start}"))),
            ..ModifyBooking::default()
        }),
        Op::Confirm(target) => CalendarCommand::ConfirmBooking {
            booking_id: booking(target)?,
        },
        Op::Cancel(target) => CalendarCommand::CancelBooking {
            booking_id: booking(target)?,
            reason: Some("guest cancelled".into()),
        },
        Op::CheckIn(target) => CalendarCommand::CheckIn {
            booking_id: booking(target)?,
        },
        Op::ExpireHold(target) => CalendarCommand::ExpireHold {
            booking_id: booking(target)?,
        },
        Op::Block { start, len } => CalendarCommand::BlockNights(BlockNights {
            block_id: next_block.next()?,
            start: day(*start),
            end: day(start + len),
            reason: if start % 2 == 0 {
                BlockReason::Maintenance
            } else {
                BlockReason::OwnerStay
            },
            note: Some("painting".into()),
            external_ref: None,
            room_type_id: None,
            units: None,
        }),
        Op::Release(target) => CalendarCommand::ReleaseBlock {
            block_id: pick(&subject.blocks, target)?,
        },
        Op::Rename(n) => CalendarCommand::UpdateProperty(UpdateProperty {
            name: Some(format!("Villa {n}")),
            ..UpdateProperty::default()
        }),
    })
}

/// Rebuilds every projection, one after the other.
async fn rebuild_all(pool: &sqlx::PgPool) {
    for projection in Projection::ALL {
        let id = replay::start(pool, projection)
            .await
            .expect("start a replay");
        replay::run(pool, projection, id)
            .await
            .expect("run the replay");
        let progress = replay::progress(pool, projection)
            .await
            .expect("replay progress")
            .expect("a replay is recorded");
        assert_eq!((progress.replay_id, progress.state.as_str()), (id, "done"));
    }
}

async fn run_case(plan: Vec<PropertyPlan>, replay_during_writes: bool) {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let buses: Vec<Arc<CommandBus>> = (0..WRITERS)
        .map(|_| Arc::new(CommandBus::new(EventStore::new(pool.clone()))))
        .collect();
    let agencies = [Uuid::new_v4(), Uuid::new_v4()];

    let mut subjects = Vec::new();
    for (i, property_plan) in plan.iter().enumerate() {
        let ops = property_plan.writers.iter().flatten();
        let reserves = ops
            .clone()
            .filter(|op| matches!(op, Op::Reserve { .. }))
            .count();
        let blocks = ops.filter(|op| matches!(op, Op::Block { .. })).count();
        let subject = Subject {
            property: Uuid::new_v4(),
            agency: agencies[i % 2],
            bookings: (0..reserves).map(|_| Uuid::new_v4()).collect(),
            blocks: (0..blocks).map(|_| Uuid::new_v4()).collect(),
        };
        register(&buses[0], subject.agency, subject.property).await;
        subjects.push(Arc::new(subject));
    }

    // The projections keep catching up while the writers write.
    let writing = Arc::new(AtomicBool::new(true));
    let projector = {
        let (pool, writing) = (pool.clone(), writing.clone());
        tokio::spawn(async move {
            while writing.load(Ordering::Relaxed) {
                for projection in Projection::ALL {
                    runner::catch_up(&pool, projection)
                        .await
                        .unwrap_or_else(|e| panic!("catch up {}: {e}", projection.name()));
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };

    // Optionally a rebuild runs beside the writers and the live projections.
    let rebuilder = replay_during_writes.then(|| {
        let pool = pool.clone();
        tokio::spawn(async move { rebuild_all(&pool).await })
    });

    let accepted = Arc::new(AtomicUsize::new(0));
    let mut writers = JoinSet::new();
    for (property_plan, subject) in plan.iter().zip(&subjects) {
        // Ids are handed out in plan order, writer by writer.
        let mut bookings = subject.bookings.clone().into_iter();
        let mut blocks = subject.blocks.clone().into_iter();
        for (w, ops) in property_plan.writers.iter().enumerate() {
            let commands: Vec<_> = ops
                .iter()
                .enumerate()
                .map(|(k, op)| {
                    let now = at(1 + k as i64);
                    (now, command(op, subject, &mut bookings, &mut blocks, now))
                })
                .collect();
            let bus = buses[w % WRITERS].clone();
            let (subject, accepted) = (subject.clone(), accepted.clone());
            writers.spawn(async move {
                for (now, action) in commands {
                    let Some(action) = action else { continue };
                    match exec(&bus, subject.agency, subject.property, now, action).await {
                        Ok(_) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ExecuteError::Domain(_) | ExecuteError::Busy) => {}
                        Err(other) => panic!("a command failed: {other}"),
                    }
                }
            });
        }
    }
    while let Some(result) = writers.join_next().await {
        result.expect("a writer panicked");
    }
    if let Some(rebuilder) = rebuilder {
        rebuilder
            .await
            .expect("the rebuild beside the writers panicked");
    }
    writing.store(false, Ordering::Relaxed);
    projector.await.expect("the projector panicked");

    for (property_plan, subject) in plan.iter().zip(&subjects) {
        if property_plan.archive {
            exec(
                &buses[0],
                subject.agency,
                subject.property,
                at(20),
                CalendarCommand::ArchiveProperty,
            )
            .await
            .expect("archive");
        }
    }

    catch_up_all(&pool).await;
    // (a) The read models are what the aggregates hold.
    assert_read_models_match_aggregates(&pool).await;
    // Every bus's cached calendar agrees with the log.
    let store = EventStore::new(pool.clone());
    for subject in &subjects {
        let stored = store.load(subject.property).await.expect("load").calendar;
        for bus in &buses {
            let cached = bus
                .read(subject.property, |loaded| loaded.calendar.clone())
                .await
                .expect("read");
            assert_eq!(cached, stored);
        }
    }
    let head = head(&pool).await;
    let statuses = runner::statuses(&pool).await.expect("statuses");
    for projection in Projection::ALL {
        let status = statuses
            .iter()
            .map(|s| &s.checkpoint)
            .find(|s| s.name == projection.name())
            .expect("every projection has a status");
        assert_eq!(
            (status.status.as_str(), status.position, status.lag),
            ("running", head, 0),
            "{status:?}"
        );
    }

    // (b) A full rebuild gives the same tables.
    let before = snapshot(&pool).await;
    rebuild_all(&pool).await;
    catch_up_all(&pool).await;
    let after = snapshot(&pool).await;
    for ((table, before), (_, after)) in before.iter().zip(&after) {
        assert_eq!(before, after, "{table} after a rebuild");
    }
    assert_read_models_match_aggregates(&pool).await;
    pool.close().await;
}

proptest! {
    #![proptest_config(Config {
        cases: 8,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn read_models_equal_aggregates_and_a_rebuild((plan, replay_during_writes) in plan()) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(run_case(plan, replay_during_writes));
    }
}
