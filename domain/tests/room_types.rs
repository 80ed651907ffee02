//! Room types: a property with several identical units, booked by count
//! (docs/api.md "Room types"). Given these events, when this command, then
//! these events or this refusal; the last section is a property test of
//! invariant 1 counted per night, and of replay equal to live state.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use cqrs_es::test::TestFramework;
use ledger_domain::commands::{
    BlockNights, CreateRoomType, ModifyBooking, RegisterProperty, ReserveStay, UpdateRoomType,
};
use ledger_domain::values::{BlockReason, BookingStatus, Guest};
use ledger_domain::{
    Actor, CalendarCommand, CalendarError, CalendarEvent, Command, FullNight, PropertyCalendar,
    Role,
};
use proptest::prelude::*;
use proptest::sample::Index;
use uuid::Uuid;

mod common;
use common::{at, day, Session, AGENCY, PROPERTY};

const DOUBLE: Uuid = Uuid::from_u128(0xD0);
const SUITE: Uuid = Uuid::from_u128(0xD1);

fn manager() -> Actor {
    Actor {
        agency_id: AGENCY,
        user_id: "user-manager".into(),
        role: Role::Manager,
    }
}

fn command(now: DateTime<Utc>, action: CalendarCommand) -> Command {
    Command {
        actor: manager(),
        now,
        action,
        expected_version: None,
    }
}

fn reserve(id: Uuid, room_type: Option<Uuid>, from: u64, to: u64) -> ReserveStay {
    let guest = Guest {
        name: "Ada Lovelace".into(),
        email: None,
        phone: None,
    };
    ReserveStay {
        room_type_id: room_type,
        ..ReserveStay::new(id, day(from), day(to), guest)
    }
}

fn block(id: Uuid, room_type: Option<Uuid>, units: Option<u32>, from: u64, to: u64) -> BlockNights {
    BlockNights {
        block_id: id,
        start: day(from),
        end: day(to),
        reason: BlockReason::Maintenance,
        note: None,
        external_ref: None,
        room_type_id: room_type,
        units,
    }
}

fn create(id: Uuid, units: u32) -> CalendarCommand {
    CalendarCommand::CreateRoomType(CreateRoomType {
        room_type_id: id,
        name: "Double".into(),
        units,
        external_ref: None,
    })
}

fn set_units(id: Uuid, units: u32) -> CalendarCommand {
    CalendarCommand::UpdateRoomType(UpdateRoomType {
        room_type_id: id,
        units: Some(units),
        ..UpdateRoomType::default()
    })
}

/// A property whose commands a manager runs: with room types, or a single unit.
type Hotel = Session;

impl Hotel {
    /// A registered property with no room types yet.
    fn single_unit() -> Hotel {
        let mut hotel = Session::new(manager(), Vec::new());
        hotel
            .run(CalendarCommand::RegisterProperty(RegisterProperty {
                property_id: PROPERTY,
                name: "Hotel".into(),
                timezone: None,
                owner_id: None,
                external_ref: None,
            }))
            .expect("registered");
        hotel
    }

    fn with_room_types(types: &[(Uuid, u32)]) -> Hotel {
        let mut hotel = Hotel::single_unit();
        for (id, units) in types {
            hotel.run(create(*id, *units)).expect("a room type");
        }
        hotel
    }

    fn reserve(&mut self, room_type: Uuid, from: u64, to: u64) -> Result<Uuid, CalendarError> {
        let id = self.fresh_id();
        self.run(CalendarCommand::ReserveStay(reserve(
            id,
            Some(room_type),
            from,
            to,
        )))
        .map(|_| id)
    }

    /// Units held per night of a room type, counted from the records alone.
    fn held(&self, room_type: Uuid) -> BTreeMap<NaiveDate, u32> {
        let mut held = BTreeMap::new();
        let claims = self
            .calendar
            .bookings
            .values()
            .filter(|b| b.room_type_id == Some(room_type) && b.status.is_active())
            .map(|b| (b.nights, 1))
            .chain(
                self.calendar
                    .blocks
                    .values()
                    .filter(|b| b.room_type_id == Some(room_type) && !b.released)
                    .map(|b| (b.nights, b.units)),
            );
        for (nights, units) in claims {
            for date in nights.start.iter_days().take_while(|d| *d < nights.end) {
                *held.entry(date).or_default() += units;
            }
        }
        held
    }
}

fn full(from: u64, to: u64, units: u32, taken: u32) -> Vec<FullNight> {
    (from..to)
        .map(|n| FullNight {
            date: day(n),
            units,
            taken,
        })
        .collect()
}

#[test]
fn a_room_type_takes_as_many_overlapping_bookings_as_it_has_units_and_names_the_full_nights() {
    let mut hotel = Hotel::with_room_types(&[(DOUBLE, 3)]);
    for _ in 0..3 {
        hotel.reserve(DOUBLE, 0, 4).expect("a free unit");
    }
    // Nights 2 and 3 are full; night 4 is free.
    assert_eq!(
        hotel.reserve(DOUBLE, 2, 5),
        Err(CalendarError::NightsFull {
            nights: full(2, 4, 3, 3)
        })
    );
    hotel
        .reserve(DOUBLE, 4, 6)
        .expect("the check-out day is free");
}

#[test]
fn room_types_are_counted_apart() {
    let mut hotel = Hotel::with_room_types(&[(DOUBLE, 1), (SUITE, 1)]);
    hotel.reserve(DOUBLE, 0, 3).expect("the double");
    hotel
        .reserve(SUITE, 0, 3)
        .expect("the suite is another room type");
    assert!(matches!(
        hotel.reserve(DOUBLE, 1, 2),
        Err(CalendarError::NightsFull { .. })
    ));
}

#[test]
fn a_booking_on_a_property_with_room_types_names_one_and_only_there() {
    let mut single = Hotel::single_unit();
    let refused = single.run(CalendarCommand::ReserveStay(reserve(
        Uuid::from_u128(1),
        Some(DOUBLE),
        0,
        2,
    )));
    assert!(matches!(
        refused,
        Err(CalendarError::Invalid {
            field: "room_type_id",
            ..
        })
    ));
    let mut hotel = Hotel::with_room_types(&[(DOUBLE, 2)]);
    let refused = hotel.run(CalendarCommand::ReserveStay(reserve(
        Uuid::from_u128(1),
        None,
        0,
        2,
    )));
    assert!(matches!(
        refused,
        Err(CalendarError::Invalid {
            field: "room_type_id",
            ..
        })
    ));
    assert_eq!(
        hotel.reserve(SUITE, 0, 2),
        Err(CalendarError::RoomTypeNotFound)
    );
}

#[test]
fn a_property_with_active_single_unit_claims_cannot_get_room_types_until_they_end() {
    let mut hotel = Hotel::single_unit();
    hotel
        .run(CalendarCommand::ReserveStay(reserve(
            Uuid::from_u128(1),
            None,
            0,
            2,
        )))
        .expect("a single-unit booking");
    assert_eq!(
        hotel.run(create(DOUBLE, 2)),
        Err(CalendarError::PropertyHasSingleUnitClaims)
    );
    hotel
        .run(CalendarCommand::CancelBooking {
            booking_id: Uuid::from_u128(1),
            reason: None,
        })
        .expect("cancelled");
    hotel
        .run(create(DOUBLE, 2))
        .expect("history does not stand in the way");
}

#[test]
fn a_block_closes_several_units_and_no_more_than_the_room_type_has() {
    let mut hotel = Hotel::with_room_types(&[(DOUBLE, 3)]);
    let id = hotel.fresh_id();
    hotel
        .run(CalendarCommand::BlockNights(block(
            id,
            Some(DOUBLE),
            Some(2),
            0,
            3,
        )))
        .expect("two units closed");
    hotel.reserve(DOUBLE, 0, 3).expect("the third unit");
    assert!(matches!(
        hotel.reserve(DOUBLE, 2, 3),
        Err(CalendarError::NightsFull { .. })
    ));
    hotel
        .run(CalendarCommand::ReleaseBlock { block_id: id })
        .expect("released");
    hotel.reserve(DOUBLE, 2, 3).expect("a unit came back");
    let too_many = hotel.run(CalendarCommand::BlockNights(block(
        Uuid::from_u128(9),
        Some(DOUBLE),
        Some(4),
        10,
        11,
    )));
    assert!(matches!(
        too_many,
        Err(CalendarError::Invalid { field: "units", .. })
    ));
    let mut single = Hotel::single_unit();
    let units_on_single = single.run(CalendarCommand::BlockNights(block(
        Uuid::from_u128(9),
        None,
        Some(2),
        0,
        1,
    )));
    assert!(matches!(
        units_on_single,
        Err(CalendarError::Invalid { field: "units", .. })
    ));
}

#[test]
fn lowering_units_below_what_a_night_holds_is_refused_with_those_nights() {
    let mut hotel = Hotel::with_room_types(&[(DOUBLE, 3)]);
    hotel.reserve(DOUBLE, 0, 2).expect("one");
    hotel.reserve(DOUBLE, 1, 3).expect("two");
    assert_eq!(
        hotel.run(set_units(DOUBLE, 1)),
        Err(CalendarError::CapacityExceeded {
            nights: vec![FullNight {
                date: day(1),
                units: 1,
                taken: 2
            }]
        })
    );
    let events = hotel
        .run(set_units(DOUBLE, 2))
        .expect("down to what is held");
    assert!(matches!(
        events.as_slice(),
        [CalendarEvent::RoomTypeUpdated { units: 2, changed, .. }] if changed == &["units"]
    ));
    assert_eq!(hotel.calendar.room_types[&DOUBLE].version, 2);
    assert_eq!(
        hotel.run(set_units(SUITE, 2)),
        Err(CalendarError::RoomTypeNotFound)
    );
}

#[test]
fn moving_a_booking_counts_its_own_nights_once() {
    let mut hotel = Hotel::with_room_types(&[(DOUBLE, 1)]);
    let id = hotel.reserve(DOUBLE, 0, 3).expect("the only unit");
    hotel
        .run(CalendarCommand::ModifyBooking(ModifyBooking {
            booking_id: id,
            check_in: Some(day(1)),
            check_out: Some(day(5)),
            ..ModifyBooking::default()
        }))
        .expect("its own nights do not stand in its way");
    hotel.reserve(DOUBLE, 0, 1).expect("the night it left");
    let other = hotel.reserve(DOUBLE, 5, 6).expect("after it");
    assert_eq!(
        hotel.run(CalendarCommand::ModifyBooking(ModifyBooking {
            booking_id: other,
            check_in: Some(day(4)),
            ..ModifyBooking::default()
        })),
        Err(CalendarError::NightsFull {
            nights: full(4, 5, 1, 1)
        })
    );
}

#[test]
fn a_lapsed_hold_on_a_full_night_is_expired_by_the_booking_that_needs_its_unit() {
    let mut hotel = Hotel::with_room_types(&[(DOUBLE, 1)]);
    let hold = hotel.fresh_id();
    hotel
        .run(CalendarCommand::ReserveStay(ReserveStay {
            status: Some(BookingStatus::Tentative),
            hold_expires_at: Some(at(1)),
            ..reserve(hold, Some(DOUBLE), 0, 2)
        }))
        .expect("a hold");
    assert!(hotel.reserve(DOUBLE, 1, 2).is_err(), "the hold stands");
    hotel.now = at(2);
    assert_eq!(
        hotel.run(CalendarCommand::ConfirmBooking { booking_id: hold }),
        Err(CalendarError::HoldExpired)
    );
    let id = hotel.fresh_id();
    let events = hotel
        .run(CalendarCommand::ReserveStay(reserve(
            id,
            Some(DOUBLE),
            1,
            2,
        )))
        .expect("the lapsed hold gives its unit back");
    assert!(matches!(
        events.as_slice(),
        [CalendarEvent::BookingHoldExpired { booking_id, .. }, CalendarEvent::BookingReserved { .. }]
            if *booking_id == hold
    ));
}

/// Takes bookings and a block through every event they can have: reserved,
/// modified, confirmed, checked in and out, cancelled, no-show, hold
/// expired, blocked and released.
fn every_claim_event(hotel: &mut Hotel, room_type: Option<Uuid>) {
    let [stay, cancelled, no_show, hold, closed] = [1, 2, 3, 4, 5].map(Uuid::from_u128);
    for (id, from) in [(stay, 0), (cancelled, 2), (no_show, 4)] {
        hotel
            .run(CalendarCommand::ReserveStay(reserve(
                id,
                room_type,
                from,
                from + 1,
            )))
            .expect("a booking");
    }
    hotel
        .run(CalendarCommand::ReserveStay(ReserveStay {
            status: Some(BookingStatus::Tentative),
            hold_expires_at: Some(at(1)),
            ..reserve(hold, room_type, 6, 7)
        }))
        .expect("a hold");
    hotel
        .run(CalendarCommand::BlockNights(block(
            closed, room_type, None, 8, 9,
        )))
        .expect("a block");
    let commands = [
        CalendarCommand::ModifyBooking(ModifyBooking {
            booking_id: stay,
            check_out: Some(day(2)),
            ..ModifyBooking::default()
        }),
        CalendarCommand::CheckIn { booking_id: stay },
        CalendarCommand::CheckOut { booking_id: stay },
        CalendarCommand::CancelBooking {
            booking_id: cancelled,
            reason: None,
        },
        CalendarCommand::MarkNoShow {
            booking_id: no_show,
        },
        CalendarCommand::ReleaseBlock { block_id: closed },
    ];
    for action in commands {
        hotel.run(action).expect("a step of the life cycle");
    }
    hotel.now = at(2);
    hotel
        .run(CalendarCommand::ExpireHold { booking_id: hold })
        .expect("the hold lapsed");
}

/// The kinds of events [`every_claim_event`] wrote, in order.
fn kinds(hotel: &Hotel) -> Vec<&'static str> {
    hotel.log.iter().map(CalendarEvent::kind).collect()
}

#[test]
fn every_booking_and_block_event_on_a_room_type_names_it() {
    let mut hotel = Hotel::with_room_types(&[(DOUBLE, 2)]);
    every_claim_event(&mut hotel, Some(DOUBLE));
    let claims: Vec<_> = hotel
        .log
        .iter()
        .filter(|e| !e.kind().starts_with("property.") && !e.kind().starts_with("room_type."))
        .collect();
    assert_eq!(claims.len(), 12, "{:?}", kinds(&hotel));
    for event in claims {
        let payload = event.payload();
        assert_eq!(
            payload["room_type_id"],
            serde_json::json!(DOUBLE),
            "{payload}"
        );
    }
}

#[test]
fn a_status_event_names_the_room_type_the_aggregate_knows_for_the_booking() {
    let mut hotel = Hotel::with_room_types(&[(DOUBLE, 2)]);
    let booking = Uuid::from_u128(1);
    hotel
        .run(CalendarCommand::ReserveStay(reserve(
            booking,
            Some(DOUBLE),
            0,
            2,
        )))
        .expect("a booking");
    TestFramework::<PropertyCalendar>::with(())
        .given(hotel.log)
        .when(command(
            at(1),
            CalendarCommand::CancelBooking {
                booking_id: booking,
                reason: None,
            },
        ))
        .then_expect_events(vec![CalendarEvent::BookingCancelled {
            booking_id: booking,
            property_id: PROPERTY,
            check_in: day(0),
            check_out: day(2),
            previous_status: BookingStatus::Confirmed,
            reason: None,
            room_type_id: Some(DOUBLE),
            at: at(1),
        }]);
}

#[test]
fn single_unit_events_are_written_as_before_room_types() {
    let mut hotel = Hotel::single_unit();
    every_claim_event(&mut hotel, None);
    assert_eq!(hotel.log.len(), 13, "{:?}", kinds(&hotel));
    for event in &hotel.log {
        let payload = event.payload();
        assert!(payload.get("room_type_id").is_none(), "{payload}");
        assert!(payload.get("units").is_none(), "{payload}");
    }
}

#[test]
fn stored_events_from_before_room_types_still_decode() {
    let payload = serde_json::json!({
        "booking_id": Uuid::from_u128(1),
        "property_id": PROPERTY,
        "check_in": "2025-07-01",
        "check_out": "2025-07-03",
        "previous_status": "confirmed",
        "reason": null,
        "at": "2025-06-01T09:00:00Z",
    });
    let event = CalendarEvent::from_stored("booking.cancelled", payload.clone()).expect("decodes");
    assert!(matches!(
        event,
        CalendarEvent::BookingCancelled {
            room_type_id: None,
            ..
        }
    ));
    assert_eq!(event.payload(), payload, "written back byte for byte");
}

// ------------------------------------------------- property-based testing

#[derive(Debug, Clone)]
enum Step {
    Reserve {
        double: bool,
        start: u64,
        nights: u64,
        hold_hours: Option<i64>,
    },
    Block {
        double: bool,
        start: u64,
        nights: u64,
        units: u32,
    },
    Modify {
        pick: Index,
        start: u64,
        nights: u64,
    },
    Cancel {
        pick: Index,
    },
    Confirm {
        pick: Index,
    },
    Release {
        pick: Index,
    },
    SetUnits {
        double: bool,
        units: u32,
    },
    Wait {
        hours: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (any::<bool>(), 0..20u64, 1..6u64, proptest::option::of(1..6i64)).prop_map(
            |(double, start, nights, hold_hours)| Step::Reserve { double, start, nights, hold_hours }
        ),
        1 => (any::<bool>(), 0..20u64, 1..6u64, 1..4u32)
            .prop_map(|(double, start, nights, units)| Step::Block { double, start, nights, units }),
        2 => (any::<Index>(), 0..20u64, 1..6u64)
            .prop_map(|(pick, start, nights)| Step::Modify { pick, start, nights }),
        1 => any::<Index>().prop_map(|pick| Step::Cancel { pick }),
        1 => any::<Index>().prop_map(|pick| Step::Confirm { pick }),
        1 => any::<Index>().prop_map(|pick| Step::Release { pick }),
        1 => (any::<bool>(), 1..5u32).prop_map(|(double, units)| Step::SetUnits { double, units }),
        1 => (1..4i64).prop_map(|hours| Step::Wait { hours }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_commands_never_overfill_a_night_and_replay_equals_live_state(
        steps in proptest::collection::vec(step(), 1..80)
    ) {
        let mut hotel = Hotel::with_room_types(&[(DOUBLE, 3), (SUITE, 1)]);
        let type_of = |double: bool| if double { DOUBLE } else { SUITE };
        for step in steps {
            let action = match step {
                Step::Reserve { double, start, nights, hold_hours } => {
                    let id = hotel.fresh_id();
                    let mut stay = reserve(id, Some(type_of(double)), start, start + nights);
                    if let Some(hours) = hold_hours {
                        stay.status = Some(BookingStatus::Tentative);
                        stay.hold_expires_at = Some(hotel.now + TimeDelta::hours(hours));
                    }
                    CalendarCommand::ReserveStay(stay)
                }
                Step::Block { double, start, nights, units } => {
                    let id = hotel.fresh_id();
                    CalendarCommand::BlockNights(block(id, Some(type_of(double)), Some(units), start, start + nights))
                }
                Step::Modify { pick, start, nights } => {
                    let Some(booking_id) = hotel.pick_booking(&pick) else { continue };
                    CalendarCommand::ModifyBooking(ModifyBooking {
                        booking_id,
                        check_in: Some(day(start)),
                        check_out: Some(day(start + nights)),
                        ..ModifyBooking::default()
                    })
                }
                Step::Cancel { pick } => {
                    let Some(booking_id) = hotel.pick_booking(&pick) else { continue };
                    CalendarCommand::CancelBooking { booking_id, reason: None }
                }
                Step::Confirm { pick } => {
                    let Some(booking_id) = hotel.pick_booking(&pick) else { continue };
                    CalendarCommand::ConfirmBooking { booking_id }
                }
                Step::Release { pick } => {
                    let Some(block_id) = hotel.pick_block(&pick) else { continue };
                    CalendarCommand::ReleaseBlock { block_id }
                }
                Step::SetUnits { double, units } => set_units(type_of(double), units),
                Step::Wait { hours } => {
                    hotel.now += TimeDelta::hours(hours);
                    continue;
                }
            };
            let before = hotel.calendar.clone();
            if hotel.run(action).is_err() {
                prop_assert_eq!(&hotel.calendar, &before, "a refusal changed the state");
            }
            for (id, room_type) in &hotel.calendar.room_types {
                for (date, held) in hotel.held(*id) {
                    prop_assert!(
                        held <= room_type.units,
                        "{} holds {held} of {} units on {date}", room_type.name, room_type.units
                    );
                }
            }
        }
        let replayed = PropertyCalendar::replay(hotel.log.clone());
        prop_assert_eq!(&replayed, &hotel.calendar);
        let parts = PropertyCalendar::from_parts(
            hotel.calendar.property.clone(),
            hotel.calendar.bookings.clone(),
            hotel.calendar.blocks.clone(),
        );
        // The index rebuilt from the records equals the folded one.
        let mut rebuilt = parts;
        rebuilt.room_types = hotel.calendar.room_types.clone();
        prop_assert_eq!(&rebuilt, &hotel.calendar);
    }
}
