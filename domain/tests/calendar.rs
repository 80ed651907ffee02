//! Unit tests of the property calendar: given these events, when this
//! command, then these events (or this refusal). The last section is a
//! property test of invariant 1 over random command sequences.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use cqrs_es::test::{AggregateTestExecutor, TestFramework};
use ledger_domain::calendar::{BookingDetails, PropertyDetails};
use ledger_domain::commands::{
    BlockNights, ModifyBooking, RegisterProperty, ReserveStay, UpdateProperty,
};
use ledger_domain::values::{BlockReason, BookingStatus, Channel, ClaimKind, Guest, Nights, Price};
use ledger_domain::{
    Actor, CalendarCommand, CalendarError, CalendarEvent, Command, Conflict, Current,
    PropertyCalendar, Role,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;
use uuid::Uuid;

mod common;
use common::{at, day, Session, AGENCY, PROPERTY};

const OTHER_AGENCY: Uuid = Uuid::from_u128(0xA6E1);
const OWNER: &str = "owner-1";
const B1: Uuid = Uuid::from_u128(0xB1);
const B2: Uuid = Uuid::from_u128(0xB2);
const B3: Uuid = Uuid::from_u128(0xB3);
const K1: Uuid = Uuid::from_u128(0xC1);
const K2: Uuid = Uuid::from_u128(0xC2);

// ---------------------------------------------------------------- helpers

fn actor(role: Role) -> Actor {
    Actor {
        agency_id: AGENCY,
        user_id: format!("user-{}", role.as_str()),
        role,
    }
}

fn owner() -> Actor {
    Actor {
        agency_id: AGENCY,
        user_id: OWNER.into(),
        role: Role::Owner,
    }
}

fn by(actor: Actor, now: DateTime<Utc>, action: CalendarCommand) -> Command {
    Command {
        actor,
        now,
        action,
        expected_version: None,
    }
}

/// A command by staff (who may run every booking and block command) at `now`.
fn staff_at(now: DateTime<Utc>, action: CalendarCommand) -> Command {
    by(actor(Role::Staff), now, action)
}

/// A command by staff at `at(0)`.
fn staff(action: CalendarCommand) -> Command {
    staff_at(at(0), action)
}

fn manager(action: CalendarCommand) -> Command {
    by(actor(Role::Manager), at(0), action)
}

fn given(events: Vec<CalendarEvent>) -> AggregateTestExecutor<PropertyCalendar> {
    TestFramework::<PropertyCalendar>::with(()).given(events)
}

fn refusal(events: Vec<CalendarEvent>, command: Command) -> CalendarError {
    given(events)
        .when(command)
        .inspect_result()
        .expect_err("the command should be refused")
}

/// Decides `command` on the calendar `history` folds into.
fn decided(
    history: Vec<CalendarEvent>, command: Command,
) -> Result<Vec<CalendarEvent>, CalendarError> {
    given(history).when(command).inspect_result()
}

fn guest() -> Guest {
    Guest {
        name: "Ada Lovelace".into(),
        email: Some("ada@example.com".into()),
        phone: None,
    }
}

fn price() -> Price {
    Price {
        amount_minor: 42_000,
        currency: "EUR".into(),
    }
}

/// Casa Azul in Lisbon, owned by [`OWNER`].
fn casa_azul() -> PropertyDetails {
    PropertyDetails {
        name: "Casa Azul".into(),
        timezone: "Europe/Lisbon".into(),
        owner_id: Some(OWNER.into()),
        external_ref: None,
    }
}

fn registered() -> CalendarEvent {
    CalendarEvent::PropertyRegistered {
        property_id: PROPERTY,
        agency_id: AGENCY,
        details: casa_azul(),
        at: at(0),
    }
}

fn archived() -> CalendarEvent {
    CalendarEvent::PropertyArchived {
        property_id: PROPERTY,
        at: at(0),
    }
}

/// Two adults at [`price`], no children, booked direct.
fn details() -> BookingDetails {
    BookingDetails {
        adults: 2,
        price: Some(price()),
        ..BookingDetails::new(guest())
    }
}

/// A reserve command with [`details`], leaving the status to its default.
fn reserve(booking_id: Uuid, check_in: NaiveDate, check_out: NaiveDate) -> ReserveStay {
    ReserveStay {
        details: details(),
        ..ReserveStay::new(booking_id, check_in, check_out, guest())
    }
}

fn hold(
    booking_id: Uuid, check_in: NaiveDate, check_out: NaiveDate, expires: DateTime<Utc>,
) -> ReserveStay {
    ReserveStay {
        status: Some(BookingStatus::Tentative),
        hold_expires_at: Some(expires),
        ..reserve(booking_id, check_in, check_out)
    }
}

fn reserve_cmd(booking_id: Uuid, check_in: NaiveDate, check_out: NaiveDate) -> Command {
    reserve_at(at(0), booking_id, check_in, check_out)
}

/// [`reserve`] by staff at `now`.
fn reserve_at(
    now: DateTime<Utc>, booking_id: Uuid, check_in: NaiveDate, check_out: NaiveDate,
) -> Command {
    staff_at(
        now,
        CalendarCommand::ReserveStay(reserve(booking_id, check_in, check_out)),
    )
}

/// The event [`reserve`] produces at `at(0)`: confirmed, one party of two
/// adults and no children, booked direct.
fn reserved(booking_id: Uuid, check_in: NaiveDate, check_out: NaiveDate) -> CalendarEvent {
    reserved_as(
        booking_id,
        (check_in, check_out),
        BookingStatus::Confirmed,
        None,
    )
}

/// The event [`hold`] produces at `at(0)`.
fn held(
    booking_id: Uuid, check_in: NaiveDate, check_out: NaiveDate, expires: DateTime<Utc>,
) -> CalendarEvent {
    reserved_as(
        booking_id,
        (check_in, check_out),
        BookingStatus::Tentative,
        Some(expires),
    )
}

fn reserved_as(
    booking_id: Uuid, (check_in, check_out): (NaiveDate, NaiveDate), status: BookingStatus,
    hold_expires_at: Option<DateTime<Utc>>,
) -> CalendarEvent {
    CalendarEvent::BookingReserved {
        booking_id,
        property_id: PROPERTY,
        status,
        check_in,
        check_out,
        details: details(),
        hold_expires_at,
        at: at(0),
        room_type_id: None,
    }
}

fn hold_expired(
    booking_id: Uuid, check_in: NaiveDate, check_out: NaiveDate, expires: DateTime<Utc>,
    now: DateTime<Utc>,
) -> CalendarEvent {
    CalendarEvent::BookingHoldExpired {
        booking_id,
        property_id: PROPERTY,
        check_in,
        check_out,
        hold_expires_at: expires,
        room_type_id: None,
        at: now,
    }
}

/// The event that moves B1, booked for nights 1 to 4, from `from` to `to`
/// at `at(0)`; a cancellation also records the status it left and the
/// guest's reason.
fn moved(from: BookingStatus, to: BookingStatus) -> CalendarEvent {
    let mut payload = json!({
        "booking_id": B1,
        "property_id": PROPERTY,
        "check_in": day(1),
        "check_out": day(4),
        "at": at(0),
    });
    if to == BookingStatus::Cancelled {
        payload["previous_status"] = json!(from);
        payload["reason"] = json!("guest asked");
    }
    CalendarEvent::from_stored(&format!("booking.{}", to.as_str()), payload)
        .expect("a booking event")
}

/// B1, booked for nights 1 to 4 (a hold expiring at `at(24)` when
/// tentative), taken to `status` the shortest way.
fn booking_in(status: BookingStatus) -> Vec<CalendarEvent> {
    use BookingStatus::*;
    let mut history = vec![registered()];
    if status == Tentative {
        history.push(held(B1, day(1), day(4), at(24)));
        return history;
    }
    history.push(reserved(B1, day(1), day(4)));
    let path: &[(BookingStatus, BookingStatus)] = match status {
        Tentative | Confirmed => &[],
        Cancelled | CheckedIn | NoShow => &[(Confirmed, status)],
        CheckedOut => &[(Confirmed, CheckedIn), (CheckedIn, CheckedOut)],
    };
    history.extend(path.iter().map(|(from, to)| moved(*from, *to)));
    history
}

const EVERY_STATUS: [BookingStatus; 6] = [
    BookingStatus::Tentative,
    BookingStatus::Confirmed,
    BookingStatus::Cancelled,
    BookingStatus::CheckedIn,
    BookingStatus::CheckedOut,
    BookingStatus::NoShow,
];

fn block(block_id: Uuid, start: NaiveDate, end: NaiveDate, reason: BlockReason) -> CalendarCommand {
    CalendarCommand::BlockNights(BlockNights {
        block_id,
        start,
        end,
        reason,
        note: None,
        external_ref: None,
        room_type_id: None,
        units: None,
    })
}

fn blocked(block_id: Uuid, start: NaiveDate, end: NaiveDate, reason: BlockReason) -> CalendarEvent {
    CalendarEvent::AvailabilityBlocked {
        block_id,
        property_id: PROPERTY,
        start,
        end,
        reason,
        note: None,
        external_ref: None,
        at: at(0),
        room_type_id: None,
        units: 1,
    }
}

fn released(
    block_id: Uuid, start: NaiveDate, end: NaiveDate, reason: BlockReason,
) -> CalendarEvent {
    CalendarEvent::AvailabilityReleased {
        block_id,
        property_id: PROPERTY,
        start,
        end,
        reason,
        room_type_id: None,
        at: at(0),
    }
}

fn booking_conflict(id: Uuid, start: NaiveDate, end: NaiveDate) -> Conflict {
    Conflict {
        kind: ClaimKind::Booking,
        id,
        start,
        end,
    }
}

fn block_conflict(id: Uuid, start: NaiveDate, end: NaiveDate) -> Conflict {
    Conflict {
        kind: ClaimKind::Block,
        id,
        start,
        end,
    }
}

fn modify_stay(booking_id: Uuid, check_in: NaiveDate, check_out: NaiveDate) -> Command {
    staff(CalendarCommand::ModifyBooking(ModifyBooking {
        booking_id,
        check_in: Some(check_in),
        check_out: Some(check_out),
        ..ModifyBooking::default()
    }))
}

fn modified(
    booking_id: Uuid, (check_in, check_out): (NaiveDate, NaiveDate),
    (previous_check_in, previous_check_out): (NaiveDate, NaiveDate), changed: &[&str],
) -> CalendarEvent {
    CalendarEvent::BookingModified {
        booking_id,
        property_id: PROPERTY,
        check_in,
        check_out,
        previous_check_in,
        previous_check_out,
        guest: guest(),
        adults: 2,
        children: 0,
        price: Some(price()),
        notes: None,
        changed: changed.iter().map(|c| c.to_string()).collect(),
        room_type_id: None,
        at: at(0),
    }
}

/// The field a validation refusal names; any other refusal fails the test.
fn field_of(error: CalendarError) -> &'static str {
    match error {
        CalendarError::Invalid { field, .. } => field,
        other => panic!("not a validation refusal: {other:?}"),
    }
}

fn calendar_after(events: Vec<CalendarEvent>) -> PropertyCalendar {
    PropertyCalendar::replay(events)
}

// ---------------------------------------------------------------- property

#[test]
fn register_property_records_it_under_the_actors_agency() {
    given(vec![])
        .when(manager(CalendarCommand::RegisterProperty(
            RegisterProperty {
                property_id: PROPERTY,
                name: "Casa Azul".into(),
                timezone: Some("Europe/Lisbon".into()),
                owner_id: Some(OWNER.into()),
                external_ref: None,
            },
        )))
        .then_expect_events(vec![registered()]);
}

#[test]
fn register_property_without_a_timezone_defaults_to_utc() {
    let events = given(vec![])
        .when(manager(CalendarCommand::RegisterProperty(
            RegisterProperty {
                property_id: PROPERTY,
                name: "Casa Azul".into(),
                timezone: None,
                owner_id: None,
                external_ref: None,
            },
        )))
        .inspect_result()
        .unwrap();
    assert!(matches!(
        events.as_slice(),
        [CalendarEvent::PropertyRegistered { details, .. }] if details.timezone == "UTC"
    ));
}

#[test]
fn register_property_with_an_unknown_timezone_is_invalid() {
    let error = refusal(
        vec![],
        manager(CalendarCommand::RegisterProperty(RegisterProperty {
            property_id: PROPERTY,
            name: "Casa Azul".into(),
            timezone: Some("Mars/Olympus_Mons".into()),
            owner_id: None,
            external_ref: None,
        })),
    );
    assert_eq!(field_of(error), "timezone");
}

#[test]
fn register_property_twice_is_refused() {
    given(vec![registered()])
        .when(manager(CalendarCommand::RegisterProperty(
            RegisterProperty {
                property_id: PROPERTY,
                name: "Casa Verde".into(),
                timezone: None,
                owner_id: None,
                external_ref: None,
            },
        )))
        .then_expect_error(CalendarError::PropertyAlreadyRegistered);
}

#[test]
fn update_property_records_the_new_state_and_the_changed_fields() {
    given(vec![registered()])
        .when(manager(CalendarCommand::UpdateProperty(UpdateProperty {
            name: Some("Casa Verde".into()),
            owner_id: Some(None),
            ..UpdateProperty::default()
        })))
        .then_expect_events(vec![CalendarEvent::PropertyUpdated {
            property_id: PROPERTY,
            details: PropertyDetails {
                name: "Casa Verde".into(),
                owner_id: None,
                ..casa_azul()
            },
            changed: vec!["name".into(), "owner_id".into()],
            at: at(0),
        }]);
}

#[test]
fn update_property_that_changes_nothing_records_nothing() {
    given(vec![registered()])
        .when(manager(CalendarCommand::UpdateProperty(UpdateProperty {
            name: Some("Casa Azul".into()),
            ..UpdateProperty::default()
        })))
        .then_expect_events(vec![]);
}

#[test]
fn archive_property_records_the_archival() {
    given(vec![registered()])
        .when(manager(CalendarCommand::ArchiveProperty))
        .then_expect_events(vec![archived()]);
}

#[test]
fn every_command_on_an_archived_property_is_refused() {
    let history = vec![
        registered(),
        reserved(B1, day(1), day(4)),
        blocked(K1, day(10), day(12), BlockReason::Maintenance),
        archived(),
    ];
    let commands = vec![
        manager(CalendarCommand::UpdateProperty(UpdateProperty {
            name: Some("Casa Verde".into()),
            ..UpdateProperty::default()
        })),
        manager(CalendarCommand::ArchiveProperty),
        reserve_cmd(B2, day(20), day(22)),
        modify_stay(B1, day(1), day(5)),
        staff(CalendarCommand::ConfirmBooking { booking_id: B1 }),
        staff(CalendarCommand::CancelBooking {
            booking_id: B1,
            reason: None,
        }),
        staff(CalendarCommand::CheckIn { booking_id: B1 }),
        staff(CalendarCommand::CheckOut { booking_id: B1 }),
        staff(CalendarCommand::MarkNoShow { booking_id: B1 }),
        staff(CalendarCommand::ExpireHold { booking_id: B1 }),
        staff(block(K2, day(30), day(31), BlockReason::Other)),
        staff(CalendarCommand::ReleaseBlock { block_id: K1 }),
    ];
    for command in commands {
        let error = refusal(history.clone(), command.clone());
        assert_eq!(
            error,
            CalendarError::PropertyArchived,
            "{:?}",
            command.action
        );
    }
}

#[test]
fn commands_on_an_unregistered_property_are_not_found() {
    given(vec![])
        .when(reserve_cmd(B1, day(1), day(3)))
        .then_expect_error(CalendarError::PropertyNotFound);
}

#[test]
fn another_agencys_property_is_not_found() {
    let stranger = Actor {
        agency_id: OTHER_AGENCY,
        user_id: "intruder".into(),
        role: Role::Admin,
    };
    for action in [
        CalendarCommand::ReserveStay(reserve(B2, day(20), day(22))),
        CalendarCommand::CancelBooking {
            booking_id: B1,
            reason: None,
        },
        CalendarCommand::ArchiveProperty,
    ] {
        given(vec![registered(), reserved(B1, day(1), day(4))])
            .when(by(stranger.clone(), at(0), action))
            .then_expect_error(CalendarError::PropertyNotFound);
    }
}

// ---------------------------------------------------------------- reserve

#[test]
fn reserve_stay_on_free_nights_records_a_confirmed_booking_with_defaults() {
    // Up to the longest stay there is: 366 nights.
    for (check_in, check_out) in [(day(1), day(4)), (day(0), day(366))] {
        given(vec![registered()])
            .when(reserve_cmd(B1, check_in, check_out))
            .then_expect_events(vec![reserved(B1, check_in, check_out)]);
    }
}

#[test]
fn reserve_stay_as_a_tentative_hold_records_its_expiry() {
    given(vec![registered()])
        .when(staff(CalendarCommand::ReserveStay(hold(
            B1,
            day(1),
            day(4),
            at(24),
        ))))
        .then_expect_events(vec![held(B1, day(1), day(4), at(24))]);
}

fn from_airbnb(booking_id: Uuid, check_in: NaiveDate, check_out: NaiveDate) -> ReserveStay {
    let mut stay = reserve(booking_id, check_in, check_out);
    stay.details.channel = Channel::Airbnb;
    stay.details.external_ref = Some("HM-123".into());
    stay
}

#[test]
fn an_inbound_booking_sent_twice_records_nothing_the_second_time() {
    let mut first = reserved(B1, day(1), day(4));
    if let CalendarEvent::BookingReserved { details, .. } = &mut first {
        details.channel = Channel::Airbnb;
        details.external_ref = Some("HM-123".into());
    }
    let calendar = calendar_after(vec![registered(), first.clone()]);
    assert_eq!(
        calendar
            .booking_from_channel(Channel::Airbnb, "HM-123")
            .map(|b| b.id),
        Some(B1)
    );
    // Same channel and ref: no event, whatever the dates say (even a cancelled
    // first booking is the answer, not a new one).
    given(vec![registered(), first.clone()])
        .when(staff(CalendarCommand::ReserveStay(from_airbnb(
            B2,
            day(1),
            day(4),
        ))))
        .then_expect_events(vec![]);
    given(vec![
        registered(),
        first.clone(),
        moved(BookingStatus::Confirmed, BookingStatus::Cancelled),
    ])
    .when(staff(CalendarCommand::ReserveStay(from_airbnb(
        B2,
        day(10),
        day(12),
    ))))
    .then_expect_events(vec![]);
    // Another channel with the same ref is another booking: a real overlap.
    let mut from_vrbo = from_airbnb(B2, day(3), day(5));
    from_vrbo.details.channel = Channel::Vrbo;
    given(vec![registered(), first])
        .when(staff(CalendarCommand::ReserveStay(from_vrbo)))
        .then_expect_error(CalendarError::NightsTaken {
            conflicts: vec![booking_conflict(B1, day(1), day(4))],
        });
}

// ---------------------------------------------------------------- invariant 1: held, touching and freed nights

/// Invariant 1: a claim on a night an active claim holds is refused, naming
/// every claim in its way in night order, and none that is not.
#[test]
fn a_claim_on_a_held_night_is_refused_naming_every_claim_in_its_way() {
    let b1 = || vec![booking_conflict(B1, day(1), day(4))];
    let k1 = || vec![block_conflict(K1, day(3), day(8))];
    // B1, confirmed for nights 1 to 4.
    let booked = || booking_in(BookingStatus::Confirmed);
    let maintenance = |id, from, to| blocked(id, day(from), day(to), BlockReason::Maintenance);
    let cases = [
        // B1 holds the nights of the 1st, 2nd and 3rd; B2 wants the 3rd and 4th.
        (
            "a stay overlapping a single night",
            booked(),
            reserve_cmd(B2, day(3), day(5)),
            b1(),
        ),
        (
            "a stay ending on a taken first night",
            vec![registered(), reserved(B1, day(5), day(8))],
            reserve_cmd(B2, day(2), day(6)),
            vec![booking_conflict(B1, day(5), day(8))],
        ),
        (
            "a stay spanning several claims",
            vec![
                registered(),
                reserved(B1, day(1), day(3)),
                maintenance(K1, 4, 6),
                reserved(B2, day(7), day(9)),
                reserved(B3, day(20), day(22)),
            ],
            reserve_cmd(Uuid::from_u128(0xB9), day(2), day(8)),
            vec![
                booking_conflict(B1, day(1), day(3)),
                block_conflict(K1, day(4), day(6)),
                booking_conflict(B2, day(7), day(9)),
            ],
        ),
        (
            "a stay over a blocked night",
            vec![registered(), maintenance(K1, 3, 8)],
            reserve_cmd(B1, day(1), day(4)),
            k1(),
        ),
        (
            "a block over a booked night",
            booked(),
            staff(block(K1, day(3), day(8), BlockReason::Maintenance)),
            b1(),
        ),
        (
            "a block over another block",
            vec![registered(), maintenance(K1, 3, 8)],
            staff(block(K2, day(7), day(9), BlockReason::OwnerStay)),
            k1(),
        ),
        (
            "a stay over a checked-in booking",
            booking_in(BookingStatus::CheckedIn),
            reserve_cmd(B2, day(3), day(5)),
            b1(),
        ),
        (
            "a booking moved onto one night of another booking",
            [booked(), vec![reserved(B2, day(4), day(7))]].concat(),
            modify_stay(B1, day(1), day(5)),
            vec![booking_conflict(B2, day(4), day(7))],
        ),
        (
            "a booking moved onto a block",
            [booked(), vec![maintenance(K1, 5, 8)]].concat(),
            modify_stay(B1, day(1), day(6)),
            vec![block_conflict(K1, day(5), day(8))],
        ),
    ];
    for (case, history, command, conflicts) in cases {
        assert_eq!(
            decided(history, command),
            Err(CalendarError::NightsTaken { conflicts }),
            "{case}"
        );
    }
}

/// Stays are half-open: a claim may start on the night another one ends
/// (its check-out day) and end where the next one starts.
#[test]
fn a_claim_that_only_touches_others_is_taken() {
    let between = || {
        vec![
            registered(),
            reserved(B1, day(1), day(4)),
            reserved(B2, day(6), day(9)),
        ]
    };
    let cases = [
        (
            "a stay arriving on the previous guest's check-out day",
            vec![registered(), reserved(B1, day(1), day(4))],
            reserve_cmd(B2, day(4), day(6)),
            reserved(B2, day(4), day(6)),
        ),
        (
            "a stay leaving on the next guest's check-in day",
            vec![registered(), reserved(B1, day(4), day(6))],
            reserve_cmd(B2, day(1), day(4)),
            reserved(B2, day(1), day(4)),
        ),
        (
            "a stay filling the gap between two stays exactly",
            between(),
            reserve_cmd(B3, day(4), day(6)),
            reserved(B3, day(4), day(6)),
        ),
        (
            "a block back to back with bookings",
            between(),
            staff(block(K1, day(4), day(6), BlockReason::Maintenance)),
            blocked(K1, day(4), day(6), BlockReason::Maintenance),
        ),
        (
            "a booking moved up to the next guest's arrival",
            between(),
            modify_stay(B1, day(1), day(6)),
            modified(B1, (day(1), day(6)), (day(1), day(4)), &["check_out"]),
        ),
        // Shift by one night and extend: every old night but the first is reused.
        (
            "a booking moved over its own nights",
            vec![registered(), reserved(B1, day(1), day(4))],
            modify_stay(B1, day(2), day(6)),
            modified(
                B1,
                (day(2), day(6)),
                (day(1), day(4)),
                &["check_in", "check_out"],
            ),
        ),
    ];
    for (case, history, command, event) in cases {
        assert_eq!(decided(history, command), Ok(vec![event]), "{case}");
    }
}

/// A booking that is no longer active, and a released block, hold no
/// night: a new stay or block may take them at once.
#[test]
fn a_claim_that_ended_frees_its_nights() {
    // The claim that takes the freed nights, and what it records.
    let stay = || {
        (
            reserve_cmd(B2, day(1), day(4)),
            reserved(B2, day(1), day(4)),
        )
    };
    let cases = [
        ("cancelled", booking_in(BookingStatus::Cancelled), stay()),
        (
            "cancelled, for a block",
            booking_in(BookingStatus::Cancelled),
            (
                staff(block(K2, day(1), day(4), BlockReason::Maintenance)),
                blocked(K2, day(1), day(4), BlockReason::Maintenance),
            ),
        ),
        ("checked out", booking_in(BookingStatus::CheckedOut), stay()),
        ("a no-show", booking_in(BookingStatus::NoShow), stay()),
        (
            "an expired hold",
            vec![
                registered(),
                held(B1, day(1), day(4), at(24)),
                hold_expired(B1, day(1), day(4), at(24), at(25)),
            ],
            stay(),
        ),
        (
            "a released block",
            vec![
                registered(),
                blocked(K1, day(1), day(4), BlockReason::Maintenance),
                released(K1, day(1), day(4), BlockReason::Maintenance),
            ],
            stay(),
        ),
    ];
    for (case, history, (command, event)) in cases {
        let calendar = calendar_after(history.clone());
        assert_eq!(calendar.active_claims().count(), 0, "{case}");
        assert_eq!(decided(history, command), Ok(vec![event]), "{case}");
    }
}

// ---------------------------------------------------------------- modify

#[test]
fn modify_booking_records_the_new_stay_and_the_previous_one() {
    given(vec![registered(), reserved(B1, day(1), day(4))])
        .when(modify_stay(B1, day(10), day(12)))
        .then_expect_events(vec![modified(
            B1,
            (day(10), day(12)),
            (day(1), day(4)),
            &["check_in", "check_out"],
        )]);
}

#[test]
fn modify_booking_of_guest_details_only_records_just_those_fields() {
    let new_guest = Guest {
        name: "Grace Hopper".into(),
        email: None,
        phone: Some("+351 900 000 000".into()),
    };
    let events = given(vec![registered(), reserved(B1, day(1), day(4))])
        .when(staff(CalendarCommand::ModifyBooking(ModifyBooking {
            booking_id: B1,
            guest: Some(new_guest.clone()),
            notes: Some(Some("late arrival".into())),
            ..ModifyBooking::default()
        })))
        .inspect_result()
        .unwrap();
    assert_eq!(
        events,
        vec![CalendarEvent::BookingModified {
            booking_id: B1,
            property_id: PROPERTY,
            check_in: day(1),
            check_out: day(4),
            previous_check_in: day(1),
            previous_check_out: day(4),
            guest: new_guest,
            adults: 2,
            children: 0,
            price: Some(price()),
            notes: Some("late arrival".into()),
            changed: vec!["guest".into(), "notes".into()],
            room_type_id: None,
            at: at(0),
        }]
    );
}

#[test]
fn modify_booking_that_changes_nothing_records_nothing() {
    given(vec![registered(), reserved(B1, day(1), day(4))])
        .when(modify_stay(B1, day(1), day(4)))
        .then_expect_events(vec![]);
}

#[test]
fn modify_unknown_booking_is_not_found() {
    given(vec![registered()])
        .when(modify_stay(B1, day(1), day(4)))
        .then_expect_error(CalendarError::BookingNotFound);
}

#[test]
fn modified_booking_frees_its_old_nights_and_holds_the_new_ones() {
    let mut history = vec![registered(), reserved(B1, day(1), day(4))];
    history.extend(
        given(history.clone())
            .when(modify_stay(B1, day(10), day(12)))
            .inspect_result()
            .unwrap(),
    );
    given(history.clone())
        .when(reserve_cmd(B2, day(1), day(4)))
        .then_expect_events(vec![reserved(B2, day(1), day(4))]);
    given(history)
        .when(reserve_cmd(B2, day(11), day(13)))
        .then_expect_error(CalendarError::NightsTaken {
            conflicts: vec![booking_conflict(B1, day(10), day(12))],
        });
}

// ---------------------------------------------------------------- the booking life cycle

#[test]
fn confirmed_hold_no_longer_expires() {
    let calendar = calendar_after(vec![
        registered(),
        held(B1, day(1), day(4), at(24)),
        moved(BookingStatus::Tentative, BookingStatus::Confirmed),
    ]);
    assert_eq!(calendar.bookings[&B1].hold_expires_at, None);
}

#[test]
fn confirm_unknown_booking_is_not_found() {
    given(vec![registered()])
        .when(staff(CalendarCommand::ConfirmBooking { booking_id: B1 }))
        .then_expect_error(CalendarError::BookingNotFound);
}

/// The booking life cycle (docs/product.md, invariant 3), move by move: each
/// command takes a booking to one status from the statuses listed, records
/// the move, and is refused from every other status, naming both.
#[test]
fn the_life_cycle_allows_exactly_its_moves() {
    use BookingStatus::*;
    let moves: [(CalendarCommand, BookingStatus, &[BookingStatus]); 5] = [
        (
            CalendarCommand::ConfirmBooking { booking_id: B1 },
            Confirmed,
            &[Tentative],
        ),
        (
            CalendarCommand::CancelBooking {
                booking_id: B1,
                reason: Some("guest asked".into()),
            },
            Cancelled,
            &[Tentative, Confirmed],
        ),
        (
            CalendarCommand::CheckIn { booking_id: B1 },
            CheckedIn,
            &[Confirmed],
        ),
        (
            CalendarCommand::CheckOut { booking_id: B1 },
            CheckedOut,
            &[CheckedIn],
        ),
        (
            CalendarCommand::MarkNoShow { booking_id: B1 },
            NoShow,
            &[Confirmed],
        ),
    ];
    for from in EVERY_STATUS {
        for (action, to, allowed_from) in &moves {
            let outcome = given(booking_in(from))
                .when(staff(action.clone()))
                .inspect_result();
            let expected = if allowed_from.contains(&from) {
                Ok(vec![moved(from, *to)])
            } else {
                Err(CalendarError::InvalidTransition {
                    from: from.as_str(),
                    to: to.as_str(),
                })
            };
            assert_eq!(outcome, expected, "{from:?} to {to:?}");
        }
    }
}

#[test]
fn a_booking_that_holds_no_nights_any_more_is_neither_modified_nor_expired() {
    for from in [
        BookingStatus::Cancelled,
        BookingStatus::CheckedOut,
        BookingStatus::NoShow,
    ] {
        let cases = [
            (
                CalendarCommand::ModifyBooking(ModifyBooking {
                    booking_id: B1,
                    check_out: Some(day(5)),
                    ..ModifyBooking::default()
                }),
                "modified",
            ),
            (
                CalendarCommand::ExpireHold { booking_id: B1 },
                "hold_expired",
            ),
        ];
        for (action, to) in cases {
            given(booking_in(from))
                .when(staff(action))
                .then_expect_error(CalendarError::InvalidTransition {
                    from: from.as_str(),
                    to,
                });
        }
    }
}

// ---------------------------------------------------------------- hold expiry

/// A hold lapses at its `hold_expires_at` (invariant 3), by the clock of the
/// command: from then on it may be expired, and no longer confirmed or
/// modified.
#[test]
fn a_hold_lapses_at_its_expiry_instant() {
    let hold = || booking_in(BookingStatus::Tentative);
    let expire = CalendarCommand::ExpireHold { booking_id: B1 };
    let confirm = CalendarCommand::ConfirmBooking { booking_id: B1 };
    let cases = [
        (
            "expired after its expiry",
            hold(),
            staff_at(at(30), expire.clone()),
            Ok(vec![hold_expired(B1, day(1), day(4), at(24), at(30))]),
        ),
        (
            "expired at exactly its expiry instant",
            hold(),
            staff_at(at(24), expire.clone()),
            Ok(vec![hold_expired(B1, day(1), day(4), at(24), at(24))]),
        ),
        (
            "expired before its expiry",
            hold(),
            staff_at(at(23), expire.clone()),
            Err(CalendarError::InvalidTransition {
                from: "tentative",
                to: "hold_expired",
            }),
        ),
        (
            "a confirmed booking expired",
            booking_in(BookingStatus::Confirmed),
            staff_at(at(100), expire),
            Err(CalendarError::InvalidTransition {
                from: "confirmed",
                to: "hold_expired",
            }),
        ),
        (
            "a lapsed hold confirmed",
            hold(),
            staff_at(at(25), confirm.clone()),
            Err(CalendarError::HoldExpired),
        ),
        (
            "a lapsed hold modified",
            hold(),
            staff_at(
                at(24),
                CalendarCommand::ModifyBooking(ModifyBooking {
                    booking_id: B1,
                    check_out: Some(day(5)),
                    ..ModifyBooking::default()
                }),
            ),
            Err(CalendarError::HoldExpired),
        ),
        (
            "an expired hold confirmed afterwards",
            vec![
                registered(),
                held(B1, day(1), day(4), at(24)),
                hold_expired(B1, day(1), day(4), at(24), at(25)),
            ],
            staff_at(at(26), confirm),
            Err(CalendarError::InvalidTransition {
                from: "cancelled",
                to: "confirmed",
            }),
        ),
    ];
    for (case, history, command, outcome) in cases {
        assert_eq!(decided(history, command), outcome, "{case}");
    }
}

#[test]
fn an_expired_hold_is_cancelled() {
    let calendar = calendar_after(vec![
        registered(),
        held(B1, day(1), day(4), at(24)),
        hold_expired(B1, day(1), day(4), at(24), at(25)),
    ]);
    assert_eq!(calendar.bookings[&B1].status, BookingStatus::Cancelled);
}

/// A hold holds its nights until it lapses (at `at(24)`), and for good once
/// confirmed: a stay on them is refused naming what stands in its way.
#[test]
fn a_hold_stands_in_the_way_until_it_lapses() {
    let hold = booking_in(BookingStatus::Tentative);
    let confirmed = moved(BookingStatus::Tentative, BookingStatus::Confirmed);
    let b1 = booking_conflict(B1, day(1), day(4));
    let cases = [
        ("a running hold", at(23), hold.clone(), b1.clone()),
        (
            "a confirmed hold after its expiry",
            at(48),
            [hold.clone(), vec![confirmed]].concat(),
            b1,
        ),
        (
            "a lapsed hold beside a booking: only the booking",
            at(30),
            [hold, vec![reserved(B2, day(4), day(6))]].concat(),
            booking_conflict(B2, day(4), day(6)),
        ),
    ];
    for (case, now, history, in_the_way) in cases {
        assert_eq!(
            decided(history, reserve_at(now, B3, day(2), day(5))),
            Err(CalendarError::NightsTaken {
                conflicts: vec![in_the_way],
            }),
            "{case}"
        );
    }
}

#[test]
fn a_lapsed_hold_no_longer_blocks_its_nights() {
    // The expiry task has not run yet: the reserve expires the hold itself.
    let events = given(vec![registered(), held(B1, day(1), day(4), at(24))])
        .when(reserve_at(at(24), B2, day(3), day(5)))
        .inspect_result()
        .unwrap();
    let mut expected_reserved = reserved(B2, day(3), day(5));
    if let CalendarEvent::BookingReserved {
        at: recorded_at, ..
    } = &mut expected_reserved
    {
        *recorded_at = at(24);
    }
    assert_eq!(
        events,
        vec![
            hold_expired(B1, day(1), day(4), at(24), at(24)),
            expected_reserved
        ]
    );
    let mut history = vec![registered(), held(B1, day(1), day(4), at(24))];
    history.extend(events);
    let calendar = calendar_after(history);
    assert_eq!(calendar.bookings[&B1].status, BookingStatus::Cancelled);
    assert_eq!(
        calendar
            .active_claims()
            .map(|(_, id, _)| id)
            .collect::<Vec<_>>(),
        vec![B2]
    );
}

/// A block or a moved stay over a lapsed hold expires the hold first, like a
/// new stay does.
#[test]
fn a_lapsed_hold_no_longer_blocks_a_block_or_a_moved_stay() {
    let cases = [
        (
            booking_in(BookingStatus::Tentative),
            block(K1, day(1), day(2), BlockReason::Maintenance),
            [("booking.hold_expired", B1), ("availability.blocked", K1)],
        ),
        (
            vec![
                registered(),
                reserved(B1, day(1), day(4)),
                held(B2, day(4), day(6), at(24)),
            ],
            CalendarCommand::ModifyBooking(ModifyBooking {
                booking_id: B1,
                check_out: Some(day(5)),
                ..ModifyBooking::default()
            }),
            [("booking.hold_expired", B2), ("booking.modified", B1)],
        ),
    ];
    for (history, action, expected) in cases {
        let events = decided(history, staff_at(at(30), action)).expect("decided");
        let recorded: Vec<(&str, Uuid)> = events
            .iter()
            .map(|e| (e.kind(), e.subject().expect("a subject")))
            .collect();
        assert_eq!(recorded, expected);
    }
}

// ---------------------------------------------------------------- blocks

#[test]
fn block_nights_on_free_nights_records_the_block() {
    given(vec![registered()])
        .when(staff(block(K1, day(1), day(5), BlockReason::Maintenance)))
        .then_expect_events(vec![blocked(K1, day(1), day(5), BlockReason::Maintenance)]);
}

/// A block is released once: the release is recorded, a second one and one
/// of a block that never was are refused.
#[test]
fn release_block_records_the_release_once() {
    let maintenance = blocked(K1, day(3), day(8), BlockReason::Maintenance);
    let release = released(K1, day(3), day(8), BlockReason::Maintenance);
    let cases = [
        (
            vec![registered(), maintenance.clone()],
            Ok(vec![release.clone()]),
        ),
        (
            vec![registered(), maintenance, release],
            Err(CalendarError::BlockAlreadyReleased),
        ),
        (vec![registered()], Err(CalendarError::BlockNotFound)),
    ];
    for (history, outcome) in cases {
        let command = staff(CalendarCommand::ReleaseBlock { block_id: K1 });
        assert_eq!(decided(history, command), outcome);
    }
}

// ---------------------------------------------------------------- expected versions

fn expecting(version: u64, command: Command) -> Command {
    Command {
        expected_version: Some(version),
        ..command
    }
}

#[test]
fn a_booking_command_at_the_expected_version_is_decided_as_usual() {
    given(vec![registered(), reserved(B1, day(0), day(3))])
        .when(expecting(1, modify_stay(B1, day(0), day(4))))
        .then_expect_events(vec![modified(
            B1,
            (day(0), day(4)),
            (day(0), day(3)),
            &["check_out"],
        )]);
}

#[test]
fn a_booking_command_at_a_stale_version_is_refused_with_the_current_booking() {
    let error = refusal(
        vec![
            registered(),
            reserved(B1, day(0), day(3)),
            modified(B1, (day(0), day(4)), (day(0), day(3)), &["check_out"]),
        ],
        expecting(1, modify_stay(B1, day(0), day(5))),
    );
    let CalendarError::VersionMismatch { expected, current } = error else {
        panic!("expected a version mismatch, got {error:?}");
    };
    assert_eq!(expected, 1);
    assert_eq!(current.version(), 2);
    assert!(matches!(
        *current,
        Current::Booking { ref booking, agency_id } if booking.id == B1 && agency_id == AGENCY
    ));
}

#[test]
fn another_booking_on_the_property_leaves_a_bookings_version_as_it_was() {
    given(vec![
        registered(),
        reserved(B1, day(0), day(3)),
        reserved(B2, day(5), day(7)),
    ])
    .when(expecting(
        1,
        staff(CalendarCommand::CancelBooking {
            booking_id: B1,
            reason: None,
        }),
    ))
    .then_expect_events(vec![CalendarEvent::BookingCancelled {
        booking_id: B1,
        property_id: PROPERTY,
        check_in: day(0),
        check_out: day(3),
        previous_status: BookingStatus::Confirmed,
        reason: None,
        room_type_id: None,
        at: at(0),
    }]);
}

#[test]
fn a_property_update_at_a_stale_version_is_refused_with_the_current_property() {
    let error = refusal(
        vec![registered(), reserved(B1, day(0), day(3))],
        expecting(
            2,
            manager(CalendarCommand::UpdateProperty(UpdateProperty {
                name: Some("Casa Verde".into()),
                ..UpdateProperty::default()
            })),
        ),
    );
    assert!(matches!(
        error,
        CalendarError::VersionMismatch { expected: 2, ref current }
            if matches!(**current, Current::Property(ref p) if p.version == 1)
    ));
}

// ---------------------------------------------------------------- roles

fn forbidden_role(error: &CalendarError) -> Option<&'static str> {
    match error {
        CalendarError::Forbidden { role, .. } => Some(role),
        _ => None,
    }
}

#[test]
fn staff_may_not_register_or_archive_a_property() {
    let error = refusal(
        vec![],
        staff_at(
            at(0),
            CalendarCommand::RegisterProperty(RegisterProperty {
                property_id: PROPERTY,
                name: "Casa Azul".into(),
                timezone: None,
                owner_id: None,
                external_ref: None,
            }),
        ),
    );
    assert_eq!(forbidden_role(&error), Some("staff"), "{error:?}");
    let error = refusal(vec![registered()], staff(CalendarCommand::ArchiveProperty));
    assert_eq!(forbidden_role(&error), Some("staff"), "{error:?}");
}

#[test]
fn admin_and_manager_may_archive_a_property() {
    for role in [Role::Admin, Role::Manager] {
        given(vec![registered()])
            .when(by(actor(role), at(0), CalendarCommand::ArchiveProperty))
            .then_expect_events(vec![archived()]);
    }
}

#[test]
fn owner_and_accountant_may_not_reserve_a_stay() {
    for actor in [owner(), actor(Role::Accountant)] {
        let role = actor.role.as_str();
        let error = refusal(
            vec![registered()],
            by(
                actor,
                at(0),
                CalendarCommand::ReserveStay(reserve(B1, day(1), day(4))),
            ),
        );
        assert_eq!(forbidden_role(&error), Some(role), "{error:?}");
    }
}

#[test]
fn accountant_may_not_cancel_a_booking() {
    let error = refusal(
        vec![registered(), reserved(B1, day(1), day(4))],
        by(
            actor(Role::Accountant),
            at(0),
            CalendarCommand::CancelBooking {
                booking_id: B1,
                reason: None,
            },
        ),
    );
    assert_eq!(forbidden_role(&error), Some("accountant"), "{error:?}");
}

#[test]
fn owner_may_block_an_owner_stay_on_their_own_property() {
    given(vec![registered()])
        .when(by(
            owner(),
            at(0),
            block(K1, day(1), day(5), BlockReason::OwnerStay),
        ))
        .then_expect_events(vec![blocked(K1, day(1), day(5), BlockReason::OwnerStay)]);
}

#[test]
fn owner_may_release_their_own_owner_stay() {
    given(vec![
        registered(),
        blocked(K1, day(1), day(5), BlockReason::OwnerStay),
    ])
    .when(by(
        owner(),
        at(0),
        CalendarCommand::ReleaseBlock { block_id: K1 },
    ))
    .then_expect_events(vec![released(K1, day(1), day(5), BlockReason::OwnerStay)]);
}

#[test]
fn owner_may_not_block_nights_for_maintenance() {
    let error = refusal(
        vec![registered()],
        by(
            owner(),
            at(0),
            block(K1, day(1), day(5), BlockReason::Maintenance),
        ),
    );
    assert_eq!(forbidden_role(&error), Some("owner"), "{error:?}");
}

#[test]
fn owner_may_not_release_a_maintenance_block() {
    let error = refusal(
        vec![
            registered(),
            blocked(K1, day(1), day(5), BlockReason::Maintenance),
        ],
        by(
            owner(),
            at(0),
            CalendarCommand::ReleaseBlock { block_id: K1 },
        ),
    );
    assert_eq!(forbidden_role(&error), Some("owner"), "{error:?}");
}

#[test]
fn owner_does_not_see_a_property_they_do_not_own() {
    let stranger_owner = Actor {
        user_id: "owner-2".into(),
        ..owner()
    };
    given(vec![registered()])
        .when(by(
            stranger_owner,
            at(0),
            block(K1, day(1), day(5), BlockReason::OwnerStay),
        ))
        .then_expect_error(CalendarError::PropertyNotFound);
}

#[test]
fn accountant_may_not_block_nights() {
    let error = refusal(
        vec![registered()],
        by(
            actor(Role::Accountant),
            at(0),
            block(K1, day(1), day(5), BlockReason::OwnerStay),
        ),
    );
    assert_eq!(forbidden_role(&error), Some("accountant"), "{error:?}");
}

// ---------------------------------------------------------------- invariant 1, by property

/// One step of a random session on one calendar. Days are offsets into a
/// short window so that claims collide often.
#[derive(Debug, Clone)]
enum Step {
    Reserve {
        start: u64,
        nights: u64,
        hold_hours: Option<i64>,
    },
    Modify {
        pick: Index,
        start: u64,
        nights: u64,
    },
    OnBooking {
        pick: Index,
        change: Change,
    },
    Block {
        start: u64,
        nights: u64,
    },
    Release {
        pick: Index,
    },
    Wait {
        hours: i64,
    },
}

/// What a step does to the booking it picks, whatever its status.
#[derive(Debug, Clone, Copy)]
enum Change {
    Cancel,
    Confirm,
    CheckIn,
    CheckOut,
    ExpireHold,
}

impl Change {
    fn command(self, booking_id: Uuid) -> CalendarCommand {
        match self {
            Change::Cancel => CalendarCommand::CancelBooking {
                booking_id,
                reason: None,
            },
            Change::Confirm => CalendarCommand::ConfirmBooking { booking_id },
            Change::CheckIn => CalendarCommand::CheckIn { booking_id },
            Change::CheckOut => CalendarCommand::CheckOut { booking_id },
            Change::ExpireHold => CalendarCommand::ExpireHold { booking_id },
        }
    }
}

fn step() -> impl Strategy<Value = Step> {
    let start = 0u64..30;
    let nights = 1u64..8;
    prop_oneof![
        5 => (start.clone(), nights.clone(), proptest::option::of(1i64..48))
            .prop_map(|(start, nights, hold_hours)| Step::Reserve { start, nights, hold_hours }),
        3 => (any::<Index>(), start.clone(), nights.clone())
            .prop_map(|(pick, start, nights)| Step::Modify { pick, start, nights }),
        2 => any::<Index>().prop_map(|pick| Step::OnBooking { pick, change: Change::Cancel }),
        1 => any::<Index>().prop_map(|pick| Step::OnBooking { pick, change: Change::Confirm }),
        1 => any::<Index>().prop_map(|pick| Step::OnBooking { pick, change: Change::CheckIn }),
        1 => any::<Index>().prop_map(|pick| Step::OnBooking { pick, change: Change::CheckOut }),
        1 => any::<Index>().prop_map(|pick| Step::OnBooking { pick, change: Change::ExpireHold }),
        3 => (start, nights).prop_map(|(start, nights)| Step::Block { start, nights }),
        1 => any::<Index>().prop_map(|pick| Step::Release { pick }),
        1 => (1i64..36).prop_map(|hours| Step::Wait { hours }),
    ]
}

impl Session {
    /// Claims that stand in the way of new nights at `now`, computed from the
    /// records alone: active bookings other than lapsed holds, unreleased blocks.
    fn standing_claims(&self, nights: Nights, except: Option<Uuid>) -> BTreeSet<Uuid> {
        let bookings = self
            .calendar
            .bookings
            .values()
            .filter(|b| b.status.is_active())
            .filter(|b| !lapsed(b, self.now))
            .map(|b| (b.id, b.nights));
        let blocks = self
            .calendar
            .blocks
            .values()
            .filter(|b| !b.released)
            .map(|b| (b.id, b.nights));
        bookings
            .chain(blocks)
            .filter(|(id, other)| Some(*id) != except && other.overlaps(&nights))
            .map(|(id, _)| id)
            .collect()
    }
}

fn lapsed(booking: &ledger_domain::Booking, now: DateTime<Utc>) -> bool {
    booking.status == BookingStatus::Tentative
        && booking.hold_expires_at.is_some_and(|at| at <= now)
}

fn range(start: u64, nights: u64) -> Nights {
    Nights {
        start: day(start),
        end: day(start + nights),
    }
}

/// A claim on new nights is accepted exactly when no standing claim overlaps
/// them, and a refusal names exactly the standing claims that do.
fn check_claim_outcome(
    outcome: &Result<Vec<CalendarEvent>, CalendarError>, expected_conflicts: &BTreeSet<Uuid>,
) -> Result<(), TestCaseError> {
    match outcome {
        Ok(_) => prop_assert!(
            expected_conflicts.is_empty(),
            "accepted despite conflicts {expected_conflicts:?}"
        ),
        Err(CalendarError::NightsTaken { conflicts }) => {
            let named: BTreeSet<Uuid> = conflicts.iter().map(|c| c.id).collect();
            prop_assert_eq!(&named, expected_conflicts);
            prop_assert_eq!(named.len(), conflicts.len(), "a conflict is named twice");
        }
        Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
    }
    Ok(())
}

/// Invariant 1 on the records, and the claim index agreeing with them.
fn check_no_shared_night(calendar: &PropertyCalendar) -> Result<(), TestCaseError> {
    let mut active: Vec<(Uuid, Nights)> = calendar
        .bookings
        .values()
        .filter(|b| b.status.is_active())
        .map(|b| (b.id, b.nights))
        .chain(
            calendar
                .blocks
                .values()
                .filter(|b| !b.released)
                .map(|b| (b.id, b.nights)),
        )
        .collect();
    for (i, (a_id, a)) in active.iter().enumerate() {
        for (b_id, b) in &active[i + 1..] {
            prop_assert!(
                !a.overlaps(b),
                "{a_id} {a:?} and {b_id} {b:?} share a night"
            );
        }
    }
    let mut indexed: Vec<(Uuid, Nights)> = calendar
        .active_claims()
        .map(|(_, id, nights)| (id, nights))
        .collect();
    active.sort();
    indexed.sort();
    prop_assert_eq!(
        indexed,
        active,
        "the claim index disagrees with the records"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_sessions_never_leave_two_active_claims_sharing_a_night(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        let mut session = Session::new(actor(Role::Staff), vec![registered()]);
        for step in steps {
            match step {
                Step::Reserve { start, nights, hold_hours } => {
                    let id = session.fresh_id();
                    let mut stay = reserve(id, day(start), day(start + nights));
                    if let Some(hours) = hold_hours {
                        stay.status = Some(BookingStatus::Tentative);
                        stay.hold_expires_at = Some(session.now + TimeDelta::hours(hours));
                    }
                    let expected = session.standing_claims(range(start, nights), None);
                    let outcome = session.run(CalendarCommand::ReserveStay(stay));
                    check_claim_outcome(&outcome, &expected)?;
                }
                Step::Block { start, nights } => {
                    let id = session.fresh_id();
                    let expected = session.standing_claims(range(start, nights), None);
                    let outcome = session.run(block(id, day(start), day(start + nights), BlockReason::Maintenance));
                    check_claim_outcome(&outcome, &expected)?;
                }
                Step::Modify { pick, start, nights } => {
                    let Some(id) = session.pick_booking(&pick) else { continue };
                    let booking = session.calendar.bookings[&id].clone();
                    let wanted = range(start, nights);
                    let expected = session.standing_claims(wanted, Some(booking.id));
                    let outcome = session.run(CalendarCommand::ModifyBooking(ModifyBooking {
                        booking_id: booking.id,
                        check_in: Some(wanted.start),
                        check_out: Some(wanted.end),
                        ..ModifyBooking::default()
                    }));
                    if !booking.status.is_active() {
                        prop_assert!(
                            matches!(outcome, Err(CalendarError::InvalidTransition { .. })),
                            "{outcome:?}"
                        );
                    } else if lapsed(&booking, session.now) {
                        prop_assert_eq!(outcome, Err(CalendarError::HoldExpired));
                    } else if wanted == booking.nights {
                        prop_assert_eq!(outcome, Ok(vec![]));
                    } else {
                        check_claim_outcome(&outcome, &expected)?;
                    }
                }
                Step::OnBooking { pick, change } => {
                    if let Some(booking_id) = session.pick_booking(&pick) {
                        let _ = session.run(change.command(booking_id));
                    }
                }
                Step::Release { pick } => {
                    if let Some(block_id) = session.pick_block(&pick) {
                        let _ = session.run(CalendarCommand::ReleaseBlock { block_id });
                    }
                }
                Step::Wait { hours } => session.now += TimeDelta::hours(hours),
            }
            check_no_shared_night(&session.calendar)?;
        }
        // Replay equals live state: the events alone rebuild the calendar.
        prop_assert_eq!(PropertyCalendar::replay(session.log.clone()), session.calendar);
    }
}

// ------------------------------------------------------------ values every layer can hold

/// Nights run from a first night up to an end that comes after it: a stay
/// or block ending on or before its first night is refused naming its end.
#[test]
fn a_stay_or_block_ending_on_or_before_its_first_night_is_refused() {
    for (first, end) in [(day(3), day(3)), (day(3), day(2))] {
        let cases = [
            (vec![registered()], reserve_cmd(B1, first, end), "check_out"),
            (
                booking_in(BookingStatus::Confirmed),
                modify_stay(B1, first, end),
                "check_out",
            ),
            (
                vec![registered()],
                staff(block(K1, first, end, BlockReason::Maintenance)),
                "end",
            ),
        ];
        for (history, command, field) in cases {
            assert_eq!(field_of(refusal(history, command)), field);
        }
    }
}

/// A command that names a value the calendar cannot hold is refused naming
/// the field at fault.
#[test]
fn a_value_out_of_bounds_is_refused_naming_its_field() {
    let reserving = |stay| staff(CalendarCommand::ReserveStay(stay));
    let stay = || reserve(B1, day(1), day(4));
    let cases = [
        (
            "a stay of 367 nights",
            vec![registered()],
            reserve_cmd(B1, day(0), day(367)),
            "check_out",
        ),
        (
            "a booking id that was taken before",
            booking_in(BookingStatus::Cancelled),
            reserve_cmd(B1, day(10), day(12)),
            "booking_id",
        ),
        (
            "a confirmed stay with a hold expiry",
            vec![registered()],
            reserving(ReserveStay {
                hold_expires_at: Some(at(24)),
                ..stay()
            }),
            "hold_expires_at",
        ),
        (
            "a hold expiring as it is made",
            vec![registered()],
            staff_at(
                at(5),
                CalendarCommand::ReserveStay(hold(B1, day(1), day(4), at(5))),
            ),
            "hold_expires_at",
        ),
        (
            "a new booking in a status other than tentative or confirmed",
            vec![registered()],
            reserving(ReserveStay {
                status: Some(BookingStatus::CheckedIn),
                ..stay()
            }),
            "status",
        ),
        // Only check_in is given: it is checked against the current check_out.
        (
            "a booking moved to arrive on its current check-out day",
            booking_in(BookingStatus::Confirmed),
            staff(CalendarCommand::ModifyBooking(ModifyBooking {
                booking_id: B1,
                check_in: Some(day(4)),
                ..ModifyBooking::default()
            })),
            "check_out",
        ),
        (
            "a block id that was taken before",
            vec![
                registered(),
                blocked(K1, day(1), day(2), BlockReason::Other),
                released(K1, day(1), day(2), BlockReason::Other),
            ],
            staff(block(K1, day(5), day(6), BlockReason::Other)),
            "block_id",
        ),
    ];
    for (case, history, command, field) in cases {
        assert_eq!(field_of(refusal(history, command)), field, "{case}");
    }
}

#[test]
fn a_stay_outside_the_calendar_years_is_refused_naming_its_date() {
    let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).expect("a date");
    for (check_in, check_out, field) in [
        (date(-5000, 1, 1), date(-5000, 1, 3), "check_in"),
        (date(12000, 1, 1), date(12000, 1, 3), "check_in"),
        (date(1899, 12, 31), date(1900, 1, 2), "check_in"),
        (date(2199, 12, 30), date(2200, 1, 1), "check_out"),
    ] {
        let command = staff(CalendarCommand::ReserveStay(reserve(
            Uuid::new_v4(),
            check_in,
            check_out,
        )));
        assert_eq!(field_of(refusal(vec![registered()], command)), field);
    }
}

#[test]
fn a_nul_in_the_guest_name_is_refused() {
    let mut stay = reserve(Uuid::new_v4(), day(1), day(3));
    stay.details.guest.name = "Ana\u{0}".into();
    let command = staff(CalendarCommand::ReserveStay(stay));
    assert_eq!(field_of(refusal(vec![registered()], command)), "guest.name");
}

#[test]
fn tab_and_newline_are_held_in_notes_but_not_in_a_cancel_reason() {
    let mut stay = reserve(Uuid::new_v4(), day(1), day(3));
    stay.details.notes = Some("late\n\tarrival".into());
    given(vec![registered()])
        .when(staff(CalendarCommand::ReserveStay(stay.clone())))
        .inspect_result()
        .expect("notes may run over lines");
    let cancel = staff(CalendarCommand::CancelBooking {
        booking_id: stay.booking_id,
        reason: Some("no\nshow".into()),
    });
    let booking = reserved(stay.booking_id, day(1), day(3));
    assert_eq!(
        field_of(refusal(vec![registered(), booking], cancel)),
        "reason"
    );
}

#[test]
fn a_hold_expiring_beyond_the_calendar_years_is_refused() {
    let mut stay = hold(Uuid::new_v4(), day(1), day(3), at(1));
    stay.hold_expires_at = Some("2500-01-01T00:00:00Z".parse().expect("a time"));
    let command = staff(CalendarCommand::ReserveStay(stay));
    assert_eq!(
        field_of(refusal(vec![registered()], command)),
        "hold_expires_at"
    );
}
