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
    BlockNights, CalendarCommand, Command, CreateRoomType, ModifyBooking, RegisterProperty,
    ReserveStay, UpdateProperty, UpdateRoomType,
};
use crate::error::{CalendarError, Conflict, Current, FullNight};
use crate::events::{BookingStay, CalendarEvent};
use crate::policy::{self, Action, Actor};
use crate::values::{self, BlockReason, BookingStatus, Channel, ClaimKind, Guest, Nights, Price};

pub const DEFAULT_TIMEZONE: &str = "UTC";
pub const DEFAULT_ADULTS: u32 = 1;
const MAX_PARTY: u32 = 50;
const MAX_NOTES: usize = 2000;
const MAX_REF: usize = 255;
const MAX_REASON: usize = 500;
/// The most units a room type may have.
pub const MAX_UNITS: u32 = 1000;

/// An event about an existing booking that adds facts to its stay
/// (`booking.cancelled`, `.hold_expired`): like a [`BookingStay`] it repeats
/// the booking's stay and room type, so a reader of one event never looks
/// the booking up; `field: value` pairs are the facts the variant adds.
macro_rules! booking_event {
    ($variant:ident, $booking:expr, $at:expr $(, $field:ident: $value:expr)* $(,)?) => {{
        let booking: &Booking = $booking;
        CalendarEvent::$variant {
            booking_id: booking.id,
            property_id: booking.property_id,
            check_in: booking.nights.start,
            check_out: booking.nights.end,
            room_type_id: booking.room_type_id,
            $($field: $value,)*
            at: $at,
        }
    }};
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Property {
    pub id: Uuid,
    pub agency_id: Uuid,
    /// Flattened: a snapshot holds its fields as the property's own.
    #[serde(flatten)]
    pub details: PropertyDetails,
    pub archived: bool,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a property's manager says about it: its name, its time zone, its
/// owner and the channel's own reference. Registration and every update
/// carry all of it; `property.registered` and `property.updated` embed it
/// flattened, as the property does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PropertyDetails {
    pub name: String,
    pub timezone: String,
    pub owner_id: Option<String>,
    pub external_ref: Option<String>,
}

impl PropertyDetails {
    fn validate(&self) -> Result<(), CalendarError> {
        values::text("name", &self.name, 1, 200)?;
        values::timezone(&self.timezone)?;
        values::optional_text("owner_id", self.owner_id.as_deref(), MAX_REF)?;
        values::optional_text("external_ref", self.external_ref.as_deref(), MAX_REF)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booking {
    pub id: Uuid,
    pub property_id: Uuid,
    pub status: BookingStatus,
    pub nights: Nights,
    /// Flattened: a snapshot holds its fields as the booking's own.
    #[serde(flatten)]
    pub details: BookingDetails,
    pub hold_expires_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    /// The room type it takes a unit of; `None` on a single-unit property.
    #[serde(default)]
    pub room_type_id: Option<Uuid>,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Booking {
    fn hold_expired(&self, now: DateTime<Utc>) -> bool {
        self.status == BookingStatus::Tentative && self.hold_expires_at.is_some_and(|at| at <= now)
    }
}

/// What a booking says about its stay besides the nights and its status:
/// who stays, how many, through which channel (and under the channel's own
/// reference), at what price, with what notes. A reservation asks for it,
/// `booking.reserved` carries it and the booking keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BookingDetails {
    pub guest: Guest,
    pub adults: u32,
    pub children: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub channel: Channel,
    pub external_ref: Option<String>,
    pub price: Option<Price>,
    pub notes: Option<String>,
}

impl BookingDetails {
    /// `guest` alone, booked direct, with the defaults of the rest: one
    /// adult, no children, no reference, price or notes.
    pub fn new(guest: Guest) -> Self {
        BookingDetails {
            guest,
            adults: DEFAULT_ADULTS,
            children: 0,
            channel: Channel::default(),
            external_ref: None,
            price: None,
            notes: None,
        }
    }

    /// Refuses details a booking may not have. The channel's reference is
    /// checked where a booking comes in (a modification never changes it).
    fn validate(&self) -> Result<(), CalendarError> {
        self.guest.validate()?;
        if !(1..=MAX_PARTY).contains(&self.adults) {
            return Err(CalendarError::invalid(
                "adults",
                format!("must be between 1 and {MAX_PARTY}"),
            ));
        }
        if self.children > MAX_PARTY {
            return Err(CalendarError::invalid(
                "children",
                format!("must be at most {MAX_PARTY}"),
            ));
        }
        if let Some(price) = &self.price {
            price.validate()?;
        }
        values::optional_note("notes", self.notes.as_deref(), MAX_NOTES)
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
    /// The room type it closes `units` of; `None` on a single-unit property.
    #[serde(default)]
    pub room_type_id: Option<Uuid>,
    #[serde(default = "one_unit")]
    pub units: u32,
    pub released: bool,
    pub created_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
}

/// A kind of identical units a property sells by count (a "Double").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoomType {
    pub id: Uuid,
    pub property_id: Uuid,
    pub name: String,
    pub units: u32,
    pub external_ref: Option<String>,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RoomType {
    /// Folds a `room_type.*` event into the room types of a property: the
    /// id of the room type it created or changed. Other events change
    /// nothing. The aggregate and the `inventory` projection both fold with it.
    pub fn fold(room_types: &mut BTreeMap<Uuid, RoomType>, event: &CalendarEvent) -> Option<Uuid> {
        match event {
            CalendarEvent::RoomTypeCreated {
                room_type_id,
                property_id,
                name,
                units,
                external_ref,
                at,
            } => {
                room_types.insert(
                    *room_type_id,
                    RoomType {
                        id: *room_type_id,
                        property_id: *property_id,
                        name: name.clone(),
                        units: *units,
                        external_ref: external_ref.clone(),
                        version: 1,
                        created_at: *at,
                        updated_at: *at,
                    },
                );
                Some(*room_type_id)
            }
            CalendarEvent::RoomTypeUpdated {
                room_type_id,
                name,
                units,
                external_ref,
                at,
                ..
            } => {
                let room_type = room_types.get_mut(room_type_id)?;
                room_type.name = name.clone();
                room_type.units = *units;
                room_type.external_ref = external_ref.clone();
                room_type.version += 1;
                room_type.updated_at = *at;
                Some(*room_type_id)
            }
            _ => None,
        }
    }
}

fn one_unit() -> u32 {
    1
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
    #[serde(default)]
    pub room_types: BTreeMap<Uuid, RoomType>,
    /// Active claims on the single unit, by first night. They never
    /// overlap, so their starts are distinct and their ends ascend with
    /// their starts.
    claims: BTreeMap<NaiveDate, Claim>,
    /// Units held by active claims, per room type and night (nights that
    /// hold none are absent).
    #[serde(default)]
    taken: BTreeMap<Uuid, BTreeMap<NaiveDate, u32>>,
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
        property: Option<Property>, bookings: BTreeMap<Uuid, Booking>,
        blocks: BTreeMap<Uuid, Block>,
    ) -> Self {
        let mut calendar = Self {
            property,
            bookings,
            blocks,
            ..Self::default()
        };
        let active: Vec<(ClaimKind, Uuid, Nights, Option<Uuid>, u32)> = calendar
            .bookings
            .values()
            .filter(|b| b.status.is_active())
            .map(|b| (ClaimKind::Booking, b.id, b.nights, b.room_type_id, 1))
            .chain(
                calendar
                    .blocks
                    .values()
                    .filter(|b| !b.released)
                    .map(|b| (ClaimKind::Block, b.id, b.nights, b.room_type_id, b.units)),
            )
            .collect();
        for (kind, id, nights, room_type, units) in active {
            calendar.hold(kind, id, nights, room_type, units);
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

    /// The active claims on the single unit, in night order: `(kind, id, nights)`.
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
                restatus(booking, BookingStatus::Confirmed, now)
            }
            CalendarCommand::CancelBooking { booking_id, reason } => {
                let booking = self.booking(*booking_id)?;
                values::optional_text("reason", reason.as_deref(), MAX_REASON)?;
                require_status(booking, BookingStatus::Cancelled)?;
                Ok(vec![booking_event!(
                    BookingCancelled,
                    booking,
                    now,
                    previous_status: booking.status,
                    reason: reason.clone(),
                )])
            }
            CalendarCommand::CheckIn { booking_id } => {
                restatus(self.booking(*booking_id)?, BookingStatus::CheckedIn, now)
            }
            CalendarCommand::CheckOut { booking_id } => {
                restatus(self.booking(*booking_id)?, BookingStatus::CheckedOut, now)
            }
            CalendarCommand::MarkNoShow { booking_id } => {
                restatus(self.booking(*booking_id)?, BookingStatus::NoShow, now)
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
            CalendarCommand::CreateRoomType(create) => self.create_room_type(pid, create, now),
            CalendarCommand::UpdateRoomType(update) => self.update_room_type(update, now),
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
                    room_type_id: block.room_type_id,
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
            | CalendarCommand::ArchiveProperty
            | CalendarCommand::CreateRoomType(_)
            | CalendarCommand::UpdateRoomType(_) => Action::ManageProperty,
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
        self.bookings.values().find(|b| {
            b.details.channel == channel && b.details.external_ref.as_deref() == Some(external_ref)
        })
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
        if !policy::sees_property(actor, scope, property.details.owner_id.as_deref()) {
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
        &self, property: &Property, action: &CalendarCommand, expected: u64,
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
            | CalendarCommand::ReleaseBlock { .. }
            | CalendarCommand::CreateRoomType(_)
            | CalendarCommand::UpdateRoomType(_) => return Ok(()),
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

    /// The room type a new booking or block names: required on a property
    /// with room types, refused on a single-unit one.
    fn room_type_for(&self, id: Option<Uuid>) -> Result<Option<&RoomType>, CalendarError> {
        match id {
            None if self.room_types.is_empty() => Ok(None),
            None => Err(CalendarError::invalid(
                "room_type_id",
                "is required on a property with room types",
            )),
            Some(_) if self.room_types.is_empty() => Err(CalendarError::invalid(
                "room_type_id",
                "is not allowed on a property without room types",
            )),
            Some(id) => self
                .room_types
                .get(&id)
                .map(Some)
                .ok_or(CalendarError::RoomTypeNotFound),
        }
    }

    fn create_room_type(
        &self, property_id: Uuid, create: &CreateRoomType, now: DateTime<Utc>,
    ) -> Result<Vec<CalendarEvent>, CalendarError> {
        validate_room_type(&create.name, create.units, &create.external_ref)?;
        if self.room_types.contains_key(&create.room_type_id) {
            return Err(CalendarError::invalid("room_type_id", "is already taken"));
        }
        // Bookings and blocks that hold the whole property cannot be
        // counted against a room type; the history of the others stays as
        // it is.
        if !self.claims.is_empty() {
            return Err(CalendarError::PropertyHasSingleUnitClaims);
        }
        Ok(vec![CalendarEvent::RoomTypeCreated {
            room_type_id: create.room_type_id,
            property_id,
            name: create.name.clone(),
            units: create.units,
            external_ref: create.external_ref.clone(),
            at: now,
        }])
    }

    fn update_room_type(
        &self, update: &UpdateRoomType, now: DateTime<Utc>,
    ) -> Result<Vec<CalendarEvent>, CalendarError> {
        let room_type = self
            .room_types
            .get(&update.room_type_id)
            .ok_or(CalendarError::RoomTypeNotFound)?;
        let name = or_current(&update.name, &room_type.name);
        let units = update.units.unwrap_or(room_type.units);
        let external_ref = or_current(&update.external_ref, &room_type.external_ref);
        validate_room_type(&name, units, &external_ref)?;
        let changed = changed_fields([
            ("name", name != room_type.name),
            ("units", units != room_type.units),
            ("external_ref", external_ref != room_type.external_ref),
        ]);
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        // A lapsed hold still counts here until it is expired: lowering
        // units is rare enough to wait for the expiry task.
        let over: Vec<FullNight> = self
            .taken
            .get(&room_type.id)
            .into_iter()
            .flatten()
            .filter(|(_, taken)| **taken > units)
            .map(|(date, taken)| FullNight {
                date: *date,
                units,
                taken: *taken,
            })
            .collect();
        if !over.is_empty() {
            return Err(CalendarError::CapacityExceeded { nights: over });
        }
        Ok(vec![CalendarEvent::RoomTypeUpdated {
            room_type_id: room_type.id,
            property_id: room_type.property_id,
            name,
            units,
            external_ref,
            changed,
            at: now,
        }])
    }

    fn register(
        &self, actor: &Actor, register: &RegisterProperty, now: DateTime<Utc>,
    ) -> Result<Vec<CalendarEvent>, CalendarError> {
        policy::require(actor, Action::ManageProperty)?;
        if self.property.is_some() {
            return Err(CalendarError::PropertyAlreadyRegistered);
        }
        let details = PropertyDetails {
            name: register.name.clone(),
            timezone: register
                .timezone
                .clone()
                .unwrap_or_else(|| DEFAULT_TIMEZONE.into()),
            owner_id: register.owner_id.clone(),
            external_ref: register.external_ref.clone(),
        };
        details.validate()?;
        Ok(vec![CalendarEvent::PropertyRegistered {
            property_id: register.property_id,
            agency_id: actor.agency_id,
            details,
            at: now,
        }])
    }

    fn reserve(
        &self, property_id: Uuid, reserve: &ReserveStay, now: DateTime<Utc>,
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
        reserve.details.validate()?;
        let external_ref = reserve.details.external_ref.as_deref();
        values::optional_text("external_ref", external_ref, MAX_REF)?;
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
        let room_type = self.room_type_for(reserve.room_type_id)?;
        let mut events = self.make_room(room_type, nights, 1, None, now)?;
        events.push(CalendarEvent::BookingReserved {
            booking_id: reserve.booking_id,
            property_id,
            status,
            check_in: nights.start,
            check_out: nights.end,
            details: reserve.details.clone(),
            hold_expires_at: reserve.hold_expires_at,
            room_type_id: room_type.map(|t| t.id),
            at: now,
        });
        Ok(events)
    }

    fn modify(
        &self, property_id: Uuid, modify: &ModifyBooking, now: DateTime<Utc>,
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
        let current = &booking.details;
        let details = BookingDetails {
            guest: or_current(&modify.guest, &current.guest),
            adults: modify.adults.unwrap_or(current.adults),
            children: modify.children.unwrap_or(current.children),
            price: or_current(&modify.price, &current.price),
            notes: or_current(&modify.notes, &current.notes),
            ..current.clone()
        };
        details.validate()?;

        let mut changed = Vec::new();
        let mut note_change = |field: &str, differs: bool| {
            if differs {
                changed.push(field.to_owned());
            }
        };
        note_change("check_in", nights.start != booking.nights.start);
        note_change("check_out", nights.end != booking.nights.end);
        note_change("guest", details.guest != current.guest);
        note_change("adults", details.adults != current.adults);
        note_change("children", details.children != current.children);
        note_change("price", details.price != current.price);
        note_change("notes", details.notes != current.notes);
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let mut events = if nights != booking.nights {
            let room_type = booking.room_type_id.and_then(|id| self.room_types.get(&id));
            self.make_room(room_type, nights, 1, Some(booking.id), now)?
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
            guest: details.guest,
            adults: details.adults,
            children: details.children,
            price: details.price,
            notes: details.notes,
            changed,
            room_type_id: booking.room_type_id,
            at: now,
        });
        Ok(events)
    }

    fn block(
        &self, property_id: Uuid, block: &BlockNights, now: DateTime<Utc>,
    ) -> Result<Vec<CalendarEvent>, CalendarError> {
        let nights = Nights::block(block.start, block.end)?;
        values::optional_note("note", block.note.as_deref(), MAX_NOTES)?;
        values::optional_text("external_ref", block.external_ref.as_deref(), MAX_REF)?;
        if self.blocks.contains_key(&block.block_id) {
            return Err(CalendarError::invalid("block_id", "is already taken"));
        }
        let room_type = self.room_type_for(block.room_type_id)?;
        let units = block.units.unwrap_or(1);
        let most = room_type.map_or(1, |t| t.units);
        if !(1..=most).contains(&units) {
            return Err(CalendarError::invalid(
                "units",
                match room_type {
                    Some(_) => format!("must be between 1 and the room type's {most} units"),
                    None => "a property without room types has one unit".to_owned(),
                },
            ));
        }
        let mut events = self.make_room(room_type, nights, units, None, now)?;
        events.push(CalendarEvent::AvailabilityBlocked {
            block_id: block.block_id,
            property_id,
            start: nights.start,
            end: nights.end,
            reason: block.reason,
            note: block.note.clone(),
            external_ref: block.external_ref.clone(),
            room_type_id: room_type.map(|t| t.id),
            units,
            at: now,
        });
        Ok(events)
    }

    /// Makes room for a claim of `units` on `nights`: of the room type, or
    /// of the single unit when there is none. `except` is the booking being
    /// moved, whose own nights do not count against it.
    fn make_room(
        &self, room_type: Option<&RoomType>, nights: Nights, units: u32, except: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CalendarEvent>, CalendarError> {
        let Some(room_type) = room_type else {
            return self.clear_nights(nights, except, now);
        };
        let own: Vec<Nights> = except
            .and_then(|id| self.bookings.get(&id))
            .map(|b| b.nights)
            .into_iter()
            .collect();
        if self.full_nights(room_type, nights, units, &own).is_empty() {
            return Ok(Vec::new());
        }
        // Some night is full: the holds that lapsed on it but were not
        // expired yet give their units back first (invariant 3). Looked for
        // only now, so a booking that fits costs no walk over the bookings.
        let lapsed: Vec<&Booking> = self
            .bookings
            .values()
            .filter(|b| {
                b.room_type_id == Some(room_type.id)
                    && Some(b.id) != except
                    && b.hold_expired(now)
                    && b.nights.overlaps(&nights)
            })
            .collect();
        let freed: Vec<Nights> = own
            .into_iter()
            .chain(lapsed.iter().map(|b| b.nights))
            .collect();
        let full = self.full_nights(room_type, nights, units, &freed);
        if !full.is_empty() {
            return Err(CalendarError::NightsFull { nights: full });
        }
        Ok(lapsed
            .into_iter()
            .map(|booking| self.hold_expired_event(booking, now))
            .collect())
    }

    /// The nights of `nights` on which the room type cannot take `units`
    /// more, not counting one unit for each of `freed` that covers the night.
    fn full_nights(
        &self, room_type: &RoomType, nights: Nights, units: u32, freed: &[Nights],
    ) -> Vec<FullNight> {
        let taken = self.taken.get(&room_type.id);
        nights
            .start
            .iter_days()
            .take_while(|date| *date < nights.end)
            .filter_map(|date| {
                let held = taken.and_then(|t| t.get(&date)).copied().unwrap_or(0);
                let back = freed
                    .iter()
                    .filter(|n| n.start <= date && date < n.end)
                    .count();
                let taken = held.saturating_sub(u32::try_from(back).unwrap_or(u32::MAX));
                (taken + units > room_type.units).then_some(FullNight {
                    date,
                    units: room_type.units,
                    taken,
                })
            })
            .collect()
    }

    /// Makes room for `nights`: refuses when an active claim holds any of them,
    /// and expires the holds that lapsed but were not expired yet (invariant 3:
    /// an expired hold frees its nights, even before the expiry task runs).
    fn clear_nights(
        &self, nights: Nights, except: Option<Uuid>, now: DateTime<Utc>,
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
        booking_event!(
            BookingHoldExpired,
            booking,
            now,
            hold_expires_at: booking.hold_expires_at.unwrap_or(now),
        )
    }

    /// Holds `nights`: `units` of a room type, or the single unit.
    fn hold(
        &mut self, kind: ClaimKind, id: Uuid, nights: Nights, room_type: Option<Uuid>, units: u32,
    ) {
        match room_type {
            Some(room_type) => self.count(room_type, nights, units, true),
            None => self.claim(kind, id, nights),
        }
    }

    /// Adds `units` to (or takes them from) the room type's count of every night.
    fn count(&mut self, room_type: Uuid, nights: Nights, units: u32, add: bool) {
        let counts = self.taken.entry(room_type).or_default();
        for date in nights.start.iter_days().take_while(|d| *d < nights.end) {
            let taken = counts.entry(date).or_default();
            *taken = if add {
                *taken + units
            } else {
                taken.saturating_sub(units)
            };
            if *taken == 0 {
                counts.remove(&date);
            }
        }
        // Equal states compare equal whatever they went through.
        if counts.is_empty() {
            self.taken.remove(&room_type);
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
            ClaimChange::Hold(hold) => self.hold(
                hold.kind,
                hold.id,
                hold.nights,
                hold.room_type_id,
                hold.units,
            ),
            ClaimChange::Move { id, nights } => {
                let Some(booking) = self.bookings.get(&id) else {
                    return;
                };
                let (before, room_type) = (booking.nights, booking.room_type_id);
                match room_type {
                    Some(room_type) if booking.status.is_active() => {
                        self.count(room_type, before, 1, false);
                        self.count(room_type, nights, 1, true);
                    }
                    Some(_) => {}
                    None => {
                        if self.unclaim(id, before) {
                            self.claim(ClaimKind::Booking, id, nights);
                        }
                    }
                }
            }
            // The indexes keep no status.
            ClaimChange::Restatus { .. } => {}
            ClaimChange::Release { kind, id } => {
                let held = match kind {
                    ClaimKind::Booking => self
                        .bookings
                        .get(&id)
                        .filter(|b| b.status.is_active())
                        .map(|b| (b.nights, b.room_type_id, 1)),
                    ClaimKind::Block => self
                        .blocks
                        .get(&id)
                        .filter(|b| !b.released)
                        .map(|b| (b.nights, b.room_type_id, b.units)),
                };
                match held {
                    Some((nights, Some(room_type), units)) => {
                        self.count(room_type, nights, units, false)
                    }
                    Some((nights, None, _)) => {
                        self.unclaim(id, nights);
                    }
                    None => {}
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

/// A stay `[check_in, check_out)`; refusals name `check_in` or `check_out`.
fn stay(check_in: NaiveDate, check_out: NaiveDate) -> Result<Nights, CalendarError> {
    Nights::new(check_in, check_out)
}

/// Moves a booking along its life cycle to a status whose event carries
/// nothing but the booking's facts: confirmed, checked in, checked out or
/// no-show.
fn restatus(
    booking: &Booking, to: BookingStatus, now: DateTime<Utc>,
) -> Result<Vec<CalendarEvent>, CalendarError> {
    require_status(booking, to)?;
    let stay = BookingStay::of(booking, now);
    let event = match to {
        BookingStatus::Confirmed => CalendarEvent::BookingConfirmed(stay),
        BookingStatus::CheckedIn => CalendarEvent::BookingCheckedIn(stay),
        BookingStatus::CheckedOut => CalendarEvent::BookingCheckedOut(stay),
        BookingStatus::NoShow => CalendarEvent::BookingNoShow(stay),
        // Not moves of this kind: a cancellation carries its reason (its
        // own arm of `decide`), and no booking goes back to tentative.
        BookingStatus::Cancelled | BookingStatus::Tentative => {
            return Err(CalendarError::transition(booking.status, to))
        }
    };
    Ok(vec![event])
}

/// Refuses a move to `to` that the booking life cycle does not allow from
/// the booking's status.
fn require_status(booking: &Booking, to: BookingStatus) -> Result<(), CalendarError> {
    if booking.status.may_become(to) {
        Ok(())
    } else {
        Err(CalendarError::transition(booking.status, to))
    }
}

/// The value a change command gives a field, or the field's current one
/// when the command leaves it as it is (`None`).
fn or_current<T: Clone>(new: &Option<T>, current: &T) -> T {
    new.clone().unwrap_or_else(|| current.clone())
}

/// The names of the fields that differ, for an `*.updated` event's `changed`.
fn changed_fields<const N: usize>(fields: [(&str, bool); N]) -> Vec<String> {
    fields
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(field, _)| field.to_owned())
        .collect()
}

fn validate_room_type(
    name: &str, units: u32, external_ref: &Option<String>,
) -> Result<(), CalendarError> {
    values::text("name", name, 1, 200)?;
    if !(1..=MAX_UNITS).contains(&units) {
        return Err(CalendarError::invalid(
            "units",
            format!("must be between 1 and {MAX_UNITS}"),
        ));
    }
    values::optional_text("external_ref", external_ref.as_deref(), MAX_REF)
}

fn update_property(
    property: &Property, update: &UpdateProperty, now: DateTime<Utc>,
) -> Result<Vec<CalendarEvent>, CalendarError> {
    let current = &property.details;
    let details = PropertyDetails {
        name: or_current(&update.name, &current.name),
        timezone: or_current(&update.timezone, &current.timezone),
        owner_id: or_current(&update.owner_id, &current.owner_id),
        external_ref: or_current(&update.external_ref, &current.external_ref),
    };
    details.validate()?;
    let changed = changed_fields([
        ("name", details.name != current.name),
        ("timezone", details.timezone != current.timezone),
        ("owner_id", details.owner_id != current.owner_id),
        ("external_ref", details.external_ref != current.external_ref),
    ]);
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![CalendarEvent::PropertyUpdated {
        property_id: property.id,
        details,
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
        &mut self, command: Self::Command, _services: &Self::Services, sink: &EventSink<Self>,
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
                details,
                at,
            } => {
                self.property = Some(Property {
                    id: property_id,
                    agency_id,
                    details,
                    archived: false,
                    version: 1,
                    created_at: at,
                    updated_at: at,
                });
            }
            CalendarEvent::PropertyUpdated { details, at, .. } => {
                if let Some(property) = self.touch_property(at) {
                    property.details = details;
                }
            }
            CalendarEvent::PropertyArchived { at, .. } => {
                if let Some(property) = self.touch_property(at) {
                    property.archived = true;
                }
            }
            CalendarEvent::RoomTypeCreated { .. } | CalendarEvent::RoomTypeUpdated { .. } => {
                RoomType::fold(&mut self.room_types, &event);
            }
            CalendarEvent::BookingReserved {
                booking_id,
                property_id,
                status,
                check_in,
                check_out,
                details,
                hold_expires_at,
                room_type_id,
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
                        details,
                        hold_expires_at,
                        cancel_reason: None,
                        room_type_id,
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
                booking.details.guest = guest;
                booking.details.adults = adults;
                booking.details.children = children;
                booking.details.price = price;
                booking.details.notes = notes;
                booking.version += 1;
                booking.updated_at = at;
            }
            CalendarEvent::BookingConfirmed(BookingStay { booking_id, at, .. }) => {
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
            CalendarEvent::BookingCheckedIn(BookingStay { booking_id, at, .. }) => {
                self.set_status(booking_id, BookingStatus::CheckedIn, at)
            }
            CalendarEvent::BookingCheckedOut(BookingStay { booking_id, at, .. }) => {
                self.set_status(booking_id, BookingStatus::CheckedOut, at)
            }
            CalendarEvent::BookingNoShow(BookingStay { booking_id, at, .. }) => {
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
                room_type_id,
                units,
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
                        room_type_id,
                        units,
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
