//! The property calendar: the aggregate that owns one property's nights and
//! is the consistency boundary for invariant 1 (no two active claims share a
//! night). `decide` is a pure function of (state, command); `apply` folds an
//! event into the state.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::claims::{claim_change, ClaimChange};
use crate::commands::{
    BlockNights, CalendarCommand, Command, ModifyBooking, RegisterProperty, ReserveStay,
    UpdateProperty,
};
use crate::error::{CalendarError, Conflict, Current};
use crate::events::CalendarEvent;
use crate::policy::{self, Action, Actor};
use crate::values::{self, BlockReason, BookingStatus, Channel, ClaimKind, Guest, Nights, Price};

pub const DEFAULT_TIMEZONE: &str = "UTC";
pub const DEFAULT_ADULTS: u32 = 1;
const MAX_PARTY: u32 = 50;
const MAX_NOTES: usize = 2000;
const MAX_REF: usize = 255;
const MAX_REASON: usize = 500;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Property {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub name: String,
    pub timezone: String,
    pub owner_id: Option<String>,
    pub external_ref: Option<String>,
    pub archived: bool,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booking {
    pub id: Uuid,
    pub property_id: Uuid,
    pub status: BookingStatus,
    pub nights: Nights,
    pub guest: Guest,
    pub adults: u32,
    pub children: u32,
    pub channel: Channel,
    pub external_ref: Option<String>,
    pub price: Option<Price>,
    pub notes: Option<String>,
    pub hold_expires_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Booking {
    fn hold_expired(&self, now: DateTime<Utc>) -> bool {
        self.status == BookingStatus::Tentative && self.hold_expires_at.is_some_and(|at| at <= now)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub id: Uuid,
    pub property_id: Uuid,
    pub nights: Nights,
    pub reason: BlockReason,
    pub note: Option<String>,
    pub external_ref: Option<String>,
    pub released: bool,
    pub created_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
}

/// An active claim on a run of nights, indexed by its first night.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    end: NaiveDate,
    kind: ClaimKind,
    id: Uuid,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PropertyCalendar {
    pub property: Option<Property>,
    pub bookings: BTreeMap<Uuid, Booking>,
    pub blocks: BTreeMap<Uuid, Block>,
    /// Active claims by first night. Active claims never overlap, so their
    /// starts are distinct and their ends ascend with their starts.
    claims: BTreeMap<NaiveDate, Claim>,
}

/// What stands in the way of a range of nights.
struct Overlap {
    conflicts: Vec<Conflict>,
    expired_holds: Vec<Uuid>,
}

impl PropertyCalendar {
    /// A calendar from its records, e.g. rows of a read model; the index of
    /// active claims is rebuilt from them.
    pub fn from_parts(
        property: Option<Property>,
        bookings: BTreeMap<Uuid, Booking>,
        blocks: BTreeMap<Uuid, Block>,
    ) -> Self {
        let mut calendar = Self {
            property,
            bookings,
            blocks,
            claims: BTreeMap::new(),
        };
        let active: Vec<(ClaimKind, Uuid, Nights)> = calendar
            .bookings
            .values()
            .filter(|b| b.status.is_active())
            .map(|b| (ClaimKind::Booking, b.id, b.nights))
            .chain(
                calendar
                    .blocks
                    .values()
                    .filter(|b| !b.released)
                    .map(|b| (ClaimKind::Block, b.id, b.nights)),
            )
            .collect();
        for (kind, id, nights) in active {
            calendar.claim(kind, id, nights);
        }
        calendar
    }

    pub fn replay(events: impl IntoIterator<Item = CalendarEvent>) -> Self {
        let mut calendar = Self::default();
        for event in events {
            calendar.apply(event);
        }
        calendar
    }

    /// The active claims, in night order: `(kind, id, nights)`.
    pub fn active_claims(&self) -> impl Iterator<Item = (ClaimKind, Uuid, Nights)> + '_ {
        self.claims.iter().map(|(start, c)| {
            (
                c.kind,
                c.id,
                Nights {
                    start: *start,
                    end: c.end,
                },
            )
        })
    }

    /// The status an active claim is held under: its booking's status, or
    /// [`BLOCKED`](crate::checksum::BLOCKED) for a block.
    pub fn claim_status(&self, kind: ClaimKind, id: Uuid) -> &'static str {
        match kind {
            ClaimKind::Booking => self
                .bookings
                .get(&id)
                .map_or(BookingStatus::Confirmed.as_str(), |b| b.status.as_str()),
            ClaimKind::Block => crate::checksum::BLOCKED,
        }
    }

    /// Decides a command against the current state: the events it produces, or
    /// why it is refused. Never changes the state.
    pub fn decide(&self, command: &Command) -> Result<Vec<CalendarEvent>, CalendarError> {
        let Command {
            actor,
            now,
            action,
            expected_version,
        } = command;
        let now = *now;
        if let CalendarCommand::RegisterProperty(register) = action {
            return self.register(actor, register, now);
        }
        let property = self.property_for(actor, self.required_action(action)?)?;
        if let Some(expected) = *expected_version {
            self.require_version(property, action, expected)?;
        }
        if property.archived {
            return Err(CalendarError::PropertyArchived);
        }
        let pid = property.id;
        match action {
            CalendarCommand::RegisterProperty(_) => Err(CalendarError::PropertyAlreadyRegistered),
            CalendarCommand::UpdateProperty(update) => update_property(property, update, now),
            CalendarCommand::ArchiveProperty => Ok(vec![CalendarEvent::PropertyArchived {
                property_id: pid,
                at: now,
            }]),
            CalendarCommand::ReserveStay(reserve) => self.reserve(pid, reserve, now),
            CalendarCommand::ModifyBooking(modify) => self.modify(pid, modify, now),
            CalendarCommand::ConfirmBooking { booking_id } => {
                let booking = self.booking(*booking_id)?;
                if booking.hold_expired(now) {
                    return Err(CalendarError::HoldExpired);
                }
                require_status(
                    booking,
                    &[BookingStatus::Tentative],
                    BookingStatus::Confirmed,
                )?;
                let (booking_id, property_id, check_in, check_out) = booking_facts(booking);
                Ok(vec![CalendarEvent::BookingConfirmed {
                    booking_id,
                    property_id,
                    check_in,
                    check_out,
                    at: now,
                }])
            }
            CalendarCommand::CancelBooking { booking_id, reason } => {
                let booking = self.booking(*booking_id)?;
                values::optional_text("reason", reason.as_deref(), MAX_REASON)?;
                require_status(
                    booking,
                    &[BookingStatus::Tentative, BookingStatus::Confirmed],
                    BookingStatus::Cancelled,
                )?;
                let (booking_id, property_id, check_in, check_out) = booking_facts(booking);
                Ok(vec![CalendarEvent::BookingCancelled {
                    booking_id,
                    property_id,
                    check_in,
                    check_out,
                    previous_status: booking.status,
                    reason: reason.clone(),
                    at: now,
                }])
            }
            CalendarCommand::CheckIn { booking_id } => {
                let booking = self.booking(*booking_id)?;
                require_status(
                    booking,
                    &[BookingStatus::Confirmed],
                    BookingStatus::CheckedIn,
                )?;
                let (booking_id, property_id, check_in, check_out) = booking_facts(booking);
                Ok(vec![CalendarEvent::BookingCheckedIn {
                    booking_id,
                    property_id,
                    check_in,
                    check_out,
                    at: now,
                }])
            }
            CalendarCommand::CheckOut { booking_id } => {
                let booking = self.booking(*booking_id)?;
                require_status(
                    booking,
                    &[BookingStatus::CheckedIn],
                    BookingStatus::CheckedOut,
                )?;
                let (booking_id, property_id, check_in, check_out) = booking_facts(booking);
                Ok(vec![CalendarEvent::BookingCheckedOut {
                    booking_id,
                    property_id,
                    check_in,
                    check_out,
                    at: now,
                }])
            }
            CalendarCommand::MarkNoShow { booking_id } => {
                let booking = self.booking(*booking_id)?;
                require_status(booking, &[BookingStatus::Confirmed], BookingStatus::NoShow)?;
                let (booking_id, property_id, check_in, check_out) = booking_facts(booking);
                Ok(vec![CalendarEvent::BookingNoShow {
                    booking_id,
                    property_id,
                    check_in,
                    check_out,
                    at: now,
                }])
            }
            CalendarCommand::ExpireHold { booking_id } => {
                let booking = self.booking(*booking_id)?;
                if !booking.hold_expired(now) {
                    return Err(CalendarError::InvalidTransition {
                        from: booking.status.as_str(),
                        to: "hold_expired",
                    });
                }
                Ok(vec![self.hold_expired_event(booking, now)])
            }
            CalendarCommand::BlockNights(block) => self.block(pid, block, now),
            CalendarCommand::ReleaseBlock { block_id } => {
                let block = self.block_by_id(*block_id)?;
                if block.released {
                    return Err(CalendarError::BlockAlreadyReleased);
                }
                Ok(vec![CalendarEvent::AvailabilityReleased {
                    block_id: block.id,
                    property_id: pid,
                    start: block.nights.start,
                    end: block.nights.end,
                    reason: block.reason,
                    at: now,
                }])
            }
        }
    }

    /// The role-table action a command needs.
    fn required_action(&self, command: &CalendarCommand) -> Result<Action, CalendarError> {
        Ok(match command {
            CalendarCommand::RegisterProperty(_)
            | CalendarCommand::UpdateProperty(_)
            | CalendarCommand::ArchiveProperty => Action::ManageProperty,
            CalendarCommand::BlockNights(block) => Action::ManageBlock(block.reason),
            CalendarCommand::ReleaseBlock { block_id } => {
                Action::ManageBlock(self.block_by_id(*block_id)?.reason)
            }
            CalendarCommand::ReserveStay(_)
            | CalendarCommand::ModifyBooking(_)
            | CalendarCommand::ConfirmBooking { .. }
            | CalendarCommand::CancelBooking { .. }
            | CalendarCommand::CheckIn { .. }
            | CalendarCommand::CheckOut { .. }
            | CalendarCommand::MarkNoShow { .. }
            | CalendarCommand::ExpireHold { .. } => Action::ManageBooking,
        })
    }

    /// The booking that came in from `channel` under its `external_ref`:
    /// inbound bookings are deduplicated on (property, channel, external_ref).
    pub fn booking_from_channel(&self, channel: Channel, external_ref: &str) -> Option<&Booking> {
        self.bookings
            .values()
            .find(|b| b.channel == channel && b.external_ref.as_deref() == Some(external_ref))
    }

    /// Whether the command's actor may take it on this calendar (the role
    /// table, and who sees the property), without deciding it. A replayed
    /// Idempotency-Key reply is held to this like a fresh request.
    pub fn authorize(&self, command: &Command) -> Result<(), CalendarError> {
        let action = self.required_action(&command.action)?;
        if let CalendarCommand::RegisterProperty(_) = command.action {
            // A registration names a property that does not exist yet: only
            // the role decides.
            return policy::require(&command.actor, action).map(|_| ());
        }
        self.property_for(&command.actor, action).map(|_| ())
    }

    /// The property, if the actor's agency has it and the actor may act on it.
    /// Another agency's property, or one an owner does not own, is not found.
    pub fn property_for(&self, actor: &Actor, action: Action) -> Result<&Property, CalendarError> {
        let property = self
            .property
            .as_ref()
            .filter(|p| p.agency_id == actor.agency_id)
            .ok_or(CalendarError::PropertyNotFound)?;
        let scope = policy::require(actor, action)?;
        if !policy::sees_property(actor, scope, property.owner_id.as_deref()) {
            return Err(CalendarError::PropertyNotFound);
        }
        Ok(property)
    }

    /// Refuses a conditional command when the resource it changes is no
    /// longer at the version the caller saw. Decided here, with the command,
    /// so a change committed in between is seen: there is no window between
    /// the check and the append. A property's version counts changes to the
    /// property record only (register, update, archive), a booking's the
    /// changes to that booking: another booking on the same property changes
    /// neither.
    fn require_version(
        &self,
        property: &Property,
        action: &CalendarCommand,
        expected: u64,
    ) -> Result<(), CalendarError> {
        let current = match action {
            CalendarCommand::UpdateProperty(_) | CalendarCommand::ArchiveProperty => {
                Current::Property(property.clone())
            }
            CalendarCommand::ModifyBooking(ModifyBooking { booking_id, .. })
            | CalendarCommand::ConfirmBooking { booking_id }
            | CalendarCommand::CancelBooking { booking_id, .. }
            | CalendarCommand::CheckIn { booking_id }
            | CalendarCommand::CheckOut { booking_id }
            | CalendarCommand::MarkNoShow { booking_id }
            | CalendarCommand::ExpireHold { booking_id } => Current::Booking {
                agency_id: property.agency_id,
                booking: self.booking(*booking_id)?.clone(),
            },
            // New resources and blocks carry no version to compare.
            CalendarCommand::RegisterProperty(_)
            | CalendarCommand::ReserveStay(_)
            | CalendarCommand::BlockNights(_)
            | CalendarCommand::ReleaseBlock { .. } => return Ok(()),
        };
        if current.version() == expected {
            Ok(())
        } else {
            Err(CalendarError::VersionMismatch {
                expected,
                current: Box::new(current),
            })
        }
    }

    fn booking(&self, id: Uuid) -> Result<&Booking, CalendarError> {
        self.bookings.get(&id).ok_or(CalendarError::BookingNotFound)
    }

    fn block_by_id(&self, id: Uuid) -> Result<&Block, CalendarError> {
        self.blocks.get(&id).ok_or(CalendarError::BlockNotFound)
    }

    fn register(
        &self,
        actor: &Actor,
        register: &RegisterProperty,
        now: DateTime<Utc>,
    ) -> Result<Vec<CalendarEvent>, CalendarError> {
        policy::require(actor, Action::ManageProperty)?;
        if self.property.is_some() {
            return Err(CalendarError::PropertyAlreadyRegistered);
        }
        let timezone = register
            .timezone
            .clone()
            .unwrap_or_else(|| DEFAULT_TIMEZONE.into());
        validate_property(
            &register.name,
            &timezone,
            &register.owner_id,
            &register.external_ref,
        )?;
        Ok(vec![CalendarEvent::PropertyRegistered {
            property_id: register.property_id,
            agency_id: actor.agency_id,
            name: register.name.clone(),
            timezone,
            owner_id: register.owner_id.clone(),
            external_ref: register.external_ref.clone(),
            at: now,
        }])
    }

    fn reserve(
        &self,
        property_id: Uuid,
        reserve: &ReserveStay,
        now: DateTime<Utc>,
    ) -> Result<Vec<CalendarEvent>, CalendarError> {
        let nights = stay(reserve.check_in, reserve.check_out)?;
        let status = reserve.status.unwrap_or(BookingStatus::Confirmed);
        if !matches!(status, BookingStatus::Tentative | BookingStatus::Confirmed) {
            return Err(CalendarError::invalid(
                "status",
                "a new booking is tentative or confirmed",
            ));
        }
        if let Some(at) = reserve.hold_expires_at {
            values::timestamp("hold_expires_at", at)?;
        }
        match (status, reserve.hold_expires_at) {
            (BookingStatus::Confirmed, Some(_)) => {
                return Err(CalendarError::invalid(
                    "hold_expires_at",
                    "only a tentative booking is a hold",
                ))
            }
            (_, Some(at)) if at <= now => {
                return Err(CalendarError::invalid(
                    "hold_expires_at",
                    "must be in the future",
                ))
            }
            _ => {}
        }
        let adults = reserve.adults.unwrap_or(DEFAULT_ADULTS);
        let children = reserve.children.unwrap_or(0);
        validate_booking_details(
            &reserve.guest,
            adults,
            children,
            reserve.price.as_ref(),
            reserve.notes.as_deref(),
        )?;
        values::optional_text("external_ref", reserve.external_ref.as_deref(), MAX_REF)?;
        if let Some((channel, external_ref)) = reserve.inbound_key() {
            if self.booking_from_channel(channel, external_ref).is_some() {
                // The channel sent this booking before: nothing new happens,
                // and the reply is the first booking.
                return Ok(Vec::new());
            }
        }
        if self.bookings.contains_key(&reserve.booking_id) {
            return Err(CalendarError::invalid("booking_id", "is already taken"));
        }
        let mut events = self.clear_nights(nights, None, now)?;
        events.push(CalendarEvent::BookingReserved {
            booking_id: reserve.booking_id,
            property_id,
            status,
            check_in: nights.start,
            check_out: nights.end,
            guest: reserve.guest.clone(),
            adults,
            children,
            channel: reserve.channel.unwrap_or_default(),
            external_ref: reserve.external_ref.clone(),
            price: reserve.price.clone(),
            notes: reserve.notes.clone(),
            hold_expires_at: reserve.hold_expires_at,
            at: now,
        });
        Ok(events)
    }

    fn modify(
        &self,
        property_id: Uuid,
        modify: &ModifyBooking,
        now: DateTime<Utc>,
    ) -> Result<Vec<CalendarEvent>, CalendarError> {
        let booking = self.booking(modify.booking_id)?;
        if !booking.status.is_active() {
            return Err(CalendarError::InvalidTransition {
                from: booking.status.as_str(),
                to: "modified",
            });
        }
        if booking.hold_expired(now) {
            return Err(CalendarError::HoldExpired);
        }
        let nights = stay(
            modify.check_in.unwrap_or(booking.nights.start),
            modify.check_out.unwrap_or(booking.nights.end),
        )?;
        let guest = modify
            .guest
            .clone()
            .unwrap_or_else(|| booking.guest.clone());
        let adults = modify.adults.unwrap_or(booking.adults);
        let children = modify.children.unwrap_or(booking.children);
        let price = modify
            .price
            .clone()
            .unwrap_or_else(|| booking.price.clone());
        let notes = modify
            .notes
            .clone()
            .unwrap_or_else(|| booking.notes.clone());
        validate_booking_details(&guest, adults, children, price.as_ref(), notes.as_deref())?;

        let mut changed = Vec::new();
        let mut note_change = |field: &str, differs: bool| {
            if differs {
                changed.push(field.to_owned());
            }
        };
        note_change("check_in", nights.start != booking.nights.start);
        note_change("check_out", nights.end != booking.nights.end);
        note_change("guest", guest != booking.guest);
        note_change("adults", adults != booking.adults);
        note_change("children", children != booking.children);
        note_change("price", price != booking.price);
        note_change("notes", notes != booking.notes);
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let mut events = if nights != booking.nights {
            self.clear_nights(nights, Some(booking.id), now)?
        } else {
            Vec::new()
        };
        events.push(CalendarEvent::BookingModified {
            booking_id: booking.id,
            property_id,
            check_in: nights.start,
            check_out: nights.end,
            previous_check_in: booking.nights.start,
            previous_check_out: booking.nights.end,
            guest,
            adults,
            children,
            price,
            notes,
            changed,
            at: now,
        });
        Ok(events)
    }

    fn block(
        &self,
        property_id: Uuid,
        block: &BlockNights,
        now: DateTime<Utc>,
    ) -> Result<Vec<CalendarEvent>, CalendarError> {
        let nights = Nights::block(block.start, block.end)?;
        values::optional_note("note", block.note.as_deref(), MAX_NOTES)?;
        values::optional_text("external_ref", block.external_ref.as_deref(), MAX_REF)?;
        if self.blocks.contains_key(&block.block_id) {
            return Err(CalendarError::invalid("block_id", "is already taken"));
        }
        let mut events = self.clear_nights(nights, None, now)?;
        events.push(CalendarEvent::AvailabilityBlocked {
            block_id: block.block_id,
            property_id,
            start: nights.start,
            end: nights.end,
            reason: block.reason,
            note: block.note.clone(),
            external_ref: block.external_ref.clone(),
            at: now,
        });
        Ok(events)
    }

    /// Makes room for `nights`: refuses when an active claim holds any of them,
    /// and expires the holds that lapsed but were not expired yet (invariant 3:
    /// an expired hold frees its nights, even before the expiry task runs).
    fn clear_nights(
        &self,
        nights: Nights,
        except: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CalendarEvent>, CalendarError> {
        let overlap = self.overlap(nights, except, now);
        if !overlap.conflicts.is_empty() {
            return Err(CalendarError::NightsTaken {
                conflicts: overlap.conflicts,
            });
        }
        Ok(overlap
            .expired_holds
            .into_iter()
            .filter_map(|id| self.bookings.get(&id))
            .map(|booking| self.hold_expired_event(booking, now))
            .collect())
    }

    fn overlap(&self, nights: Nights, except: Option<Uuid>, now: DateTime<Utc>) -> Overlap {
        let mut overlap = Overlap {
            conflicts: Vec::new(),
            expired_holds: Vec::new(),
        };
        // Claims are disjoint, so walking back from the last claim starting
        // before `nights.end` meets every overlapping one, then stops.
        for (start, claim) in self.claims.range(..nights.end).rev() {
            if claim.end <= nights.start {
                break;
            }
            if Some(claim.id) == except {
                continue;
            }
            let lapsed_hold = claim.kind == ClaimKind::Booking
                && self
                    .bookings
                    .get(&claim.id)
                    .is_some_and(|b| b.hold_expired(now));
            if lapsed_hold {
                overlap.expired_holds.push(claim.id);
            } else {
                overlap.conflicts.push(Conflict {
                    kind: claim.kind,
                    id: claim.id,
                    start: *start,
                    end: claim.end,
                });
            }
        }
        overlap.conflicts.reverse();
        overlap.expired_holds.reverse();
        overlap
    }

    fn hold_expired_event(&self, booking: &Booking, now: DateTime<Utc>) -> CalendarEvent {
        let (booking_id, property_id, check_in, check_out) = booking_facts(booking);
        CalendarEvent::BookingHoldExpired {
            booking_id,
            property_id,
            check_in,
            check_out,
            hold_expires_at: booking.hold_expires_at.unwrap_or(now),
            at: now,
        }
    }

    fn claim(&mut self, kind: ClaimKind, id: Uuid, nights: Nights) {
        self.claims.insert(
            nights.start,
            Claim {
                end: nights.end,
                kind,
                id,
            },
        );
    }

    /// Frees the claim `id` holds from `nights.start`; whether it held one.
    fn unclaim(&mut self, id: Uuid, nights: Nights) -> bool {
        let held = self.claims.get(&nights.start).is_some_and(|c| c.id == id);
        if held {
            self.claims.remove(&nights.start);
        }
        held
    }

    /// Folds what an event does to held nights into the index. Runs before
    /// the records change, so a booking's or block's record still has the
    /// nights it held.
    fn change_claims(&mut self, change: ClaimChange) {
        match change {
            ClaimChange::Hold {
                kind, id, nights, ..
            } => self.claim(kind, id, nights),
            ClaimChange::Move { id, nights } => {
                let before = self.bookings.get(&id).map(|b| b.nights);
                if before.is_some_and(|before| self.unclaim(id, before)) {
                    self.claim(ClaimKind::Booking, id, nights);
                }
            }
            // The index keeps no status.
            ClaimChange::Restatus { .. } => {}
            ClaimChange::Release { kind, id } => {
                let held = match kind {
                    ClaimKind::Booking => self.bookings.get(&id).map(|b| b.nights),
                    ClaimKind::Block => self.blocks.get(&id).map(|b| b.nights),
                };
                if let Some(nights) = held {
                    self.unclaim(id, nights);
                }
            }
        }
    }

    fn set_status(&mut self, id: Uuid, status: BookingStatus, at: DateTime<Utc>) {
        let Some(booking) = self.bookings.get_mut(&id) else {
            return;
        };
        booking.status = status;
        booking.version += 1;
        booking.updated_at = at;
    }

    fn touch_property(&mut self, at: DateTime<Utc>) -> Option<&mut Property> {
        let property = self.property.as_mut()?;
        property.version += 1;
        property.updated_at = at;
        Some(property)
    }
}

fn booking_facts(booking: &Booking) -> (Uuid, Uuid, NaiveDate, NaiveDate) {
    (
        booking.id,
        booking.property_id,
        booking.nights.start,
        booking.nights.end,
    )
}

/// A stay `[check_in, check_out)`; refusals name `check_in` or `check_out`.
fn stay(check_in: NaiveDate, check_out: NaiveDate) -> Result<Nights, CalendarError> {
    Nights::new(check_in, check_out)
}

fn require_status(
    booking: &Booking,
    allowed_from: &[BookingStatus],
    to: BookingStatus,
) -> Result<(), CalendarError> {
    if allowed_from.contains(&booking.status) {
        Ok(())
    } else {
        Err(CalendarError::transition(booking.status, to))
    }
}

fn validate_property(
    name: &str,
    timezone: &str,
    owner_id: &Option<String>,
    external_ref: &Option<String>,
) -> Result<(), CalendarError> {
    values::text("name", name, 1, 200)?;
    values::timezone(timezone)?;
    values::optional_text("owner_id", owner_id.as_deref(), MAX_REF)?;
    values::optional_text("external_ref", external_ref.as_deref(), MAX_REF)
}

fn validate_booking_details(
    guest: &Guest,
    adults: u32,
    children: u32,
    price: Option<&Price>,
    notes: Option<&str>,
) -> Result<(), CalendarError> {
    guest.validate()?;
    if !(1..=MAX_PARTY).contains(&adults) {
        return Err(CalendarError::invalid(
            "adults",
            format!("must be between 1 and {MAX_PARTY}"),
        ));
    }
    if children > MAX_PARTY {
        return Err(CalendarError::invalid(
            "children",
            format!("must be at most {MAX_PARTY}"),
        ));
    }
    if let Some(price) = price {
        price.validate()?;
    }
    values::optional_note("notes", notes, MAX_NOTES)
}

fn update_property(
    property: &Property,
    update: &UpdateProperty,
    now: DateTime<Utc>,
) -> Result<Vec<CalendarEvent>, CalendarError> {
    let name = update.name.clone().unwrap_or_else(|| property.name.clone());
    let timezone = update
        .timezone
        .clone()
        .unwrap_or_else(|| property.timezone.clone());
    let owner_id = update
        .owner_id
        .clone()
        .unwrap_or_else(|| property.owner_id.clone());
    let external_ref = update
        .external_ref
        .clone()
        .unwrap_or_else(|| property.external_ref.clone());
    validate_property(&name, &timezone, &owner_id, &external_ref)?;
    let changed: Vec<String> = [
        ("name", name != property.name),
        ("timezone", timezone != property.timezone),
        ("owner_id", owner_id != property.owner_id),
        ("external_ref", external_ref != property.external_ref),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(field, _)| field.to_owned())
    .collect();
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![CalendarEvent::PropertyUpdated {
        property_id: property.id,
        name,
        timezone,
        owner_id,
        external_ref,
        changed,
        at: now,
    }])
}

impl Aggregate for PropertyCalendar {
    const TYPE: &'static str = "property";
    type Command = Command;
    type Event = CalendarEvent;
    type Error = CalendarError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(&command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        if let Some(change) = claim_change(&event) {
            self.change_claims(change);
        }
        match event {
            CalendarEvent::PropertyRegistered {
                property_id,
                agency_id,
                name,
                timezone,
                owner_id,
                external_ref,
                at,
            } => {
                self.property = Some(Property {
                    id: property_id,
                    agency_id,
                    name,
                    timezone,
                    owner_id,
                    external_ref,
                    archived: false,
                    version: 1,
                    created_at: at,
                    updated_at: at,
                });
            }
            CalendarEvent::PropertyUpdated {
                name,
                timezone,
                owner_id,
                external_ref,
                at,
                ..
            } => {
                if let Some(property) = self.touch_property(at) {
                    property.name = name;
                    property.timezone = timezone;
                    property.owner_id = owner_id;
                    property.external_ref = external_ref;
                }
            }
            CalendarEvent::PropertyArchived { at, .. } => {
                if let Some(property) = self.touch_property(at) {
                    property.archived = true;
                }
            }
            CalendarEvent::BookingReserved {
                booking_id,
                property_id,
                status,
                check_in,
                check_out,
                guest,
                adults,
                children,
                channel,
                external_ref,
                price,
                notes,
                hold_expires_at,
                at,
            } => {
                let nights = Nights {
                    start: check_in,
                    end: check_out,
                };
                self.bookings.insert(
                    booking_id,
                    Booking {
                        id: booking_id,
                        property_id,
                        status,
                        nights,
                        guest,
                        adults,
                        children,
                        channel,
                        external_ref,
                        price,
                        notes,
                        hold_expires_at,
                        cancel_reason: None,
                        version: 1,
                        created_at: at,
                        updated_at: at,
                    },
                );
            }
            CalendarEvent::BookingModified {
                booking_id,
                check_in,
                check_out,
                guest,
                adults,
                children,
                price,
                notes,
                at,
                ..
            } => {
                let Some(booking) = self.bookings.get_mut(&booking_id) else {
                    return;
                };
                booking.nights = Nights {
                    start: check_in,
                    end: check_out,
                };
                booking.guest = guest;
                booking.adults = adults;
                booking.children = children;
                booking.price = price;
                booking.notes = notes;
                booking.version += 1;
                booking.updated_at = at;
            }
            CalendarEvent::BookingConfirmed { booking_id, at, .. } => {
                self.set_status(booking_id, BookingStatus::Confirmed, at);
                if let Some(booking) = self.bookings.get_mut(&booking_id) {
                    booking.hold_expires_at = None;
                }
            }
            CalendarEvent::BookingCancelled {
                booking_id,
                reason,
                at,
                ..
            } => {
                self.set_status(booking_id, BookingStatus::Cancelled, at);
                if let Some(booking) = self.bookings.get_mut(&booking_id) {
                    booking.cancel_reason = reason;
                }
            }
            CalendarEvent::BookingHoldExpired { booking_id, at, .. } => {
                self.set_status(booking_id, BookingStatus::Cancelled, at);
                if let Some(booking) = self.bookings.get_mut(&booking_id) {
                    booking.cancel_reason = Some("hold_expired".into());
                }
            }
            CalendarEvent::BookingCheckedIn { booking_id, at, .. } => {
                self.set_status(booking_id, BookingStatus::CheckedIn, at)
            }
            CalendarEvent::BookingCheckedOut { booking_id, at, .. } => {
                self.set_status(booking_id, BookingStatus::CheckedOut, at)
            }
            CalendarEvent::BookingNoShow { booking_id, at, .. } => {
                self.set_status(booking_id, BookingStatus::NoShow, at)
            }
            CalendarEvent::AvailabilityBlocked {
                block_id,
                property_id,
                start,
                end,
                reason,
                note,
                external_ref,
                at,
            } => {
                let nights = Nights { start, end };
                self.blocks.insert(
                    block_id,
                    Block {
                        id: block_id,
                        property_id,
                        nights,
                        reason,
                        note,
                        external_ref,
                        released: false,
                        created_at: at,
                        released_at: None,
                    },
                );
            }
            CalendarEvent::AvailabilityReleased { block_id, at, .. } => {
                let Some(block) = self.blocks.get_mut(&block_id) else {
                    return;
                };
                block.released = true;
                block.released_at = Some(at);
            }
        }
    }
}
