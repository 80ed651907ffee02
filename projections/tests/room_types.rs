//! Room types on the read side (migration 0013): `inventory_nights` holds
//! what the aggregate counts per night, a replay rebuilds it equal, and its
//! CHECK (taken <= units) parks a property the way the EXCLUSION constraint
//! does.

use crate::common;

use std::collections::BTreeMap;

use chrono::NaiveDate;
use common::*;
use ledger_domain::commands::{BlockNights, CreateRoomType, ModifyBooking, UpdateRoomType};
use ledger_domain::values::BlockReason;
use ledger_domain::CalendarCommand;
use ledger_infra::CommandBus;
use ledger_projections::{replay, Projection};
use sqlx::PgPool;
use uuid::Uuid;

/// `(room type, night) -> (units, taken)` as the read model has it.
async fn nights(pool: &PgPool) -> BTreeMap<(Uuid, NaiveDate), (i32, i32)> {
    let rows: Vec<(Uuid, NaiveDate, i32, i32)> =
        sqlx::query_as("SELECT room_type_id, night, units, taken FROM inventory_nights")
            .fetch_all(pool)
            .await
            .expect("read inventory_nights");
    rows.into_iter()
        .map(|(t, n, units, taken)| ((t, n), (units, taken)))
        .collect()
}

/// The same, counted by the aggregate from its own records.
async fn expected_nights(
    bus: &CommandBus, property: Uuid,
) -> BTreeMap<(Uuid, NaiveDate), (i32, i32)> {
    bus.read(property, |loaded| {
        let calendar = &loaded.calendar;
        let mut nights = BTreeMap::new();
        let claims = calendar
            .bookings
            .values()
            .filter(|b| b.status.is_active())
            .filter_map(|b| Some((b.room_type_id?, b.nights, 1)))
            .chain(
                calendar
                    .blocks
                    .values()
                    .filter(|b| !b.released)
                    .filter_map(|b| Some((b.room_type_id?, b.nights, b.units))),
            );
        for (room_type, stay, units) in claims {
            let capacity = calendar.room_types[&room_type].units as i32;
            for night in stay.start.iter_days().take_while(|d| *d < stay.end) {
                let entry = nights.entry((room_type, night)).or_insert((capacity, 0));
                entry.1 += units as i32;
            }
        }
        nights
    })
    .await
    .expect("read the calendar")
}

fn create(room_type: Uuid, units: u32) -> CalendarCommand {
    CalendarCommand::CreateRoomType(CreateRoomType {
        room_type_id: room_type,
        name: "Double".into(),
        units,
        external_ref: None,
    })
}

fn reserve_unit(booking: Uuid, room_type: Uuid, start: u64, end: u64) -> CalendarCommand {
    CalendarCommand::ReserveStay(ledger_domain::commands::ReserveStay {
        room_type_id: Some(room_type),
        ..reserve_stay(booking, start, end)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nights_count_what_the_aggregate_counts_and_a_replay_rebuilds_them() {
    let (db, bus, agency, [property]) = agency_with_properties().await;
    let pool = &db.pool;
    let (double, suite) = (Uuid::new_v4(), Uuid::new_v4());
    let run = |action| exec(&bus, agency, property, at(1), action);
    run(create(double, 3)).await.expect("a double");
    run(create(suite, 1)).await.expect("a suite");
    let mut bookings = Vec::new();
    for (start, end) in [(0, 4), (1, 3), (2, 6)] {
        let id = Uuid::new_v4();
        run(reserve_unit(id, double, start, end))
            .await
            .expect("a unit");
        bookings.push(id);
    }
    run(reserve_unit(Uuid::new_v4(), suite, 0, 2))
        .await
        .expect("the suite");
    let block = Uuid::new_v4();
    run(CalendarCommand::BlockNights(BlockNights {
        block_id: block,
        start: day(8),
        end: day(10),
        reason: BlockReason::Maintenance,
        note: None,
        external_ref: None,
        room_type_id: Some(double),
        units: Some(3),
    }))
    .await
    .expect("the double closed");
    catch_up_all(pool).await;
    assert_eq!(nights(pool).await, expected_nights(&bus, property).await);
    assert_eq!(nights(pool).await[&(double, day(2))], (3, 3));

    // Moves, frees and a lower capacity, in one batch of the projection.
    run(CalendarCommand::ModifyBooking(ModifyBooking {
        booking_id: bookings[0],
        check_in: Some(day(4)),
        check_out: Some(day(6)),
        ..ModifyBooking::default()
    }))
    .await
    .expect("moved");
    run(CalendarCommand::CancelBooking {
        booking_id: bookings[1],
        reason: None,
    })
    .await
    .expect("cancelled");
    run(CalendarCommand::ReleaseBlock { block_id: block })
        .await
        .expect("released");
    run(CalendarCommand::UpdateRoomType(UpdateRoomType {
        room_type_id: double,
        units: Some(2),
        ..UpdateRoomType::default()
    }))
    .await
    .expect("down to two units");
    catch_up_all(pool).await;
    let parked: Vec<(String,)> = sqlx::query_as("SELECT error FROM projection_parked")
        .fetch_all(pool)
        .await
        .expect("parked properties");
    assert_eq!(parked, vec![]);
    let live = nights(pool).await;
    assert_eq!(live, expected_nights(&bus, property).await);
    assert_eq!(live[&(double, day(4))], (2, 2));
    assert!(
        !live.contains_key(&(double, day(0))),
        "a free night has no row"
    );
    let types: Vec<(Uuid, i32, i64)> = sqlx::query_as(
        "SELECT room_type_id, units, version FROM inventory_room_types ORDER BY units",
    )
    .fetch_all(pool)
    .await
    .expect("room types");
    assert_eq!(types, vec![(suite, 1, 1), (double, 2, 2)]);

    let id = replay::start(pool, Projection::Inventory)
        .await
        .expect("start a replay");
    replay::run(pool, Projection::Inventory, id)
        .await
        .expect("replay the inventory");
    assert_eq!(nights(pool).await, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_night_over_its_units_parks_the_property_loudly() {
    let (db, bus, agency, [property, other]) = agency_with_properties().await;
    let pool = &db.pool;
    let double = Uuid::new_v4();
    let run = |action| exec(&bus, agency, property, at(1), action);
    run(create(double, 2)).await.expect("a double");
    run(reserve_unit(Uuid::new_v4(), double, 0, 2))
        .await
        .expect("a unit");
    catch_up_all(pool).await;
    // Someone wrote into the read model: the nights now say they are full.
    sqlx::query("UPDATE inventory_nights SET taken = units")
        .execute(pool)
        .await
        .expect("corrupt the read model");
    let (_, before) = ledger_projections::parking::parkings(Projection::Inventory);
    run(reserve_unit(Uuid::new_v4(), double, 1, 3))
        .await
        .expect("the aggregate has room");
    reserve(&bus, agency, other, Uuid::new_v4(), 0, 2).await;
    catch_up_all(pool).await;
    let parked: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT property_id, error FROM projection_parked WHERE projection = 'inventory'",
    )
    .fetch_all(pool)
    .await
    .expect("parked properties");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].0, property);
    assert!(
        parked[0].1.contains("inventory_nights_capacity"),
        "{}",
        parked[0].1
    );
    let (_, after) = ledger_projections::parking::parkings(Projection::Inventory);
    assert_eq!(after, before + 1, "counted as invariant 1's backstop");
    let counted = "SELECT count(*) FROM inventory_ranges WHERE property_id = $1";
    let others: i64 = value_of(pool, counted, other).await.expect("a count");
    assert_eq!(others, 1, "the other property goes on");
}
