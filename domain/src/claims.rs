//! The "held nights" rule, written once: which events make a booking or a
//! block hold nights, move them, change the status they are held under, or
//! free them. The aggregate's index of claims, the `inventory_ranges`
//! projection and the iCal export all fold [`claim_change`], so they cannot
//! disagree on which nights are held (invariant 1 is decided on the first
//! and backed by the second; channels see the third).
//!
//! The match is exhaustive on purpose: a new event type does not compile
//! until it says what it does to held nights.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::checksum::{ChannelRange, BLOCKED};
use crate::events::{BookingStay, CalendarEvent};
use crate::values::{BookingStatus, ClaimKind, Nights};

/// A booking or block that holds `nights`, under `status` (a booking's
/// status, or [`BLOCKED`]): the whole property, or `units` of a room type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub kind: ClaimKind,
    pub id: Uuid,
    pub nights: Nights,
    pub status: &'static str,
    pub room_type_id: Option<Uuid>,
    pub units: u32,
}

impl Hold {
    /// The claim as channels see it: on a room type it has its room type
    /// and units, as in snapshots and checksums.
    pub fn channel_range(&self) -> ChannelRange {
        ChannelRange {
            room_type_id: self.room_type_id,
            units: self.room_type_id.map(|_| self.units),
            ..ChannelRange::single(
                self.kind,
                self.id,
                self.nights.start,
                self.nights.end,
                self.status.to_owned(),
            )
        }
    }
}

/// How one event changes the nights held at its property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimChange {
    /// A booking or block starts holding nights.
    Hold(Hold),
    /// A booking moves to other nights. Changes nothing when it holds none.
    Move { id: Uuid, nights: Nights },
    /// A booking keeps its nights under a new status. Changes nothing when
    /// it holds none.
    Restatus { id: Uuid, status: &'static str },
    /// The booking or block stops holding nights.
    Release { kind: ClaimKind, id: Uuid },
}

/// What `event` does to held nights, if anything.
pub fn claim_change(event: &CalendarEvent) -> Option<ClaimChange> {
    match event {
        CalendarEvent::BookingReserved {
            booking_id,
            status,
            check_in,
            check_out,
            room_type_id,
            ..
        } => status.is_active().then_some(ClaimChange::Hold(Hold {
            kind: ClaimKind::Booking,
            id: *booking_id,
            nights: Nights {
                start: *check_in,
                end: *check_out,
            },
            status: status.as_str(),
            room_type_id: *room_type_id,
            units: 1,
        })),
        CalendarEvent::AvailabilityBlocked {
            block_id,
            start,
            end,
            room_type_id,
            units,
            ..
        } => Some(ClaimChange::Hold(Hold {
            kind: ClaimKind::Block,
            id: *block_id,
            nights: Nights {
                start: *start,
                end: *end,
            },
            status: BLOCKED,
            room_type_id: *room_type_id,
            units: *units,
        })),
        CalendarEvent::BookingModified {
            booking_id,
            check_in,
            check_out,
            ..
        } => Some(ClaimChange::Move {
            id: *booking_id,
            nights: Nights {
                start: *check_in,
                end: *check_out,
            },
        }),
        // Confirming or checking in keeps the nights held, with a new status.
        CalendarEvent::BookingConfirmed(BookingStay { booking_id, .. }) => {
            Some(ClaimChange::Restatus {
                id: *booking_id,
                status: BookingStatus::Confirmed.as_str(),
            })
        }
        CalendarEvent::BookingCheckedIn(BookingStay { booking_id, .. }) => {
            Some(ClaimChange::Restatus {
                id: *booking_id,
                status: BookingStatus::CheckedIn.as_str(),
            })
        }
        // A checked-out stay is history: its nights are no longer held.
        CalendarEvent::BookingCancelled { booking_id, .. }
        | CalendarEvent::BookingCheckedOut(BookingStay { booking_id, .. })
        | CalendarEvent::BookingNoShow(BookingStay { booking_id, .. })
        | CalendarEvent::BookingHoldExpired { booking_id, .. } => Some(ClaimChange::Release {
            kind: ClaimKind::Booking,
            id: *booking_id,
        }),
        CalendarEvent::AvailabilityReleased { block_id, .. } => Some(ClaimChange::Release {
            kind: ClaimKind::Block,
            id: *block_id,
        }),
        // A room type's units change what a night can take, not what is held.
        CalendarEvent::PropertyRegistered { .. }
        | CalendarEvent::PropertyUpdated { .. }
        | CalendarEvent::PropertyArchived { .. }
        | CalendarEvent::RoomTypeCreated { .. }
        | CalendarEvent::RoomTypeUpdated { .. } => None,
    }
}

/// Folds `event` into a channel's held ranges of one property, by claim id:
/// what an adapter on the channel kit keeps (docs/channels.md).
pub fn fold_ranges(held: &mut BTreeMap<Uuid, ChannelRange>, event: &CalendarEvent) {
    match claim_change(event) {
        Some(ClaimChange::Hold(hold)) => {
            held.insert(hold.id, hold.channel_range());
        }
        Some(ClaimChange::Move { id, nights }) => {
            if let Some(range) = held.get_mut(&id) {
                (range.start, range.end) = (nights.start, nights.end);
            }
        }
        Some(ClaimChange::Restatus { id, status }) => {
            if let Some(range) = held.get_mut(&id) {
                range.status = status.to_owned();
            }
        }
        Some(ClaimChange::Release { id, .. }) => {
            held.remove(&id);
        }
        None => {}
    }
}
