//! What happened to a property calendar. Past tense, and each event carries
//! every fact a reader needs (a projection or a channel adapter never has to
//! look anything up). The serde name of a variant is its stable event type.

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::calendar::{Booking, BookingDetails, PropertyDetails};
use crate::values::{BlockReason, BookingStatus, Guest, Price};

/// The version every event type is written with today. An event type that
/// changes shape gets a new version and an upcaster for the old one.
pub const EVENT_VERSION: &str = "1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CalendarEvent {
    #[serde(rename = "property.registered")]
    PropertyRegistered {
        property_id: Uuid,
        agency_id: Uuid,
        /// Flattened: the payload holds its fields as the event's own.
        #[serde(flatten)]
        details: PropertyDetails,
        at: DateTime<Utc>,
    },
    /// Carries the property's full state after the change and which fields changed.
    #[serde(rename = "property.updated")]
    PropertyUpdated {
        property_id: Uuid,
        /// As on `property.registered`.
        #[serde(flatten)]
        details: PropertyDetails,
        changed: Vec<String>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "property.archived")]
    PropertyArchived {
        property_id: Uuid,
        at: DateTime<Utc>,
    },
    /// The property sells `units` identical units of this type; from the
    /// first one on, every booking and block on it names a room type.
    #[serde(rename = "room_type.created")]
    RoomTypeCreated {
        room_type_id: Uuid,
        property_id: Uuid,
        name: String,
        units: u32,
        external_ref: Option<String>,
        at: DateTime<Utc>,
    },
    /// Carries the room type's full state after the change and which fields changed.
    #[serde(rename = "room_type.updated")]
    RoomTypeUpdated {
        room_type_id: Uuid,
        property_id: Uuid,
        name: String,
        units: u32,
        external_ref: Option<String>,
        changed: Vec<String>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "booking.reserved")]
    BookingReserved {
        booking_id: Uuid,
        property_id: Uuid,
        status: BookingStatus,
        check_in: NaiveDate,
        check_out: NaiveDate,
        /// Flattened: the payload holds its fields as the event's own.
        #[serde(flatten)]
        details: BookingDetails,
        hold_expires_at: Option<DateTime<Utc>>,
        /// The room type the booking takes a unit of; absent on a
        /// single-unit property (and in events from before room types).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_type_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    /// Carries the booking's modifiable fields after the change, the stay
    /// before it, and which fields changed.
    #[serde(rename = "booking.modified")]
    BookingModified {
        booking_id: Uuid,
        property_id: Uuid,
        check_in: NaiveDate,
        check_out: NaiveDate,
        previous_check_in: NaiveDate,
        previous_check_out: NaiveDate,
        guest: Guest,
        adults: u32,
        children: u32,
        price: Option<Price>,
        notes: Option<String>,
        changed: Vec<String>,
        /// The room type the booking holds a unit of; absent on a
        /// single-unit property (and in events from before v1.1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_type_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "booking.confirmed")]
    BookingConfirmed(BookingStay),
    #[serde(rename = "booking.cancelled")]
    BookingCancelled {
        booking_id: Uuid,
        property_id: Uuid,
        check_in: NaiveDate,
        check_out: NaiveDate,
        previous_status: BookingStatus,
        reason: Option<String>,
        /// As on `booking.modified`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_type_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "booking.checked_in")]
    BookingCheckedIn(BookingStay),
    #[serde(rename = "booking.checked_out")]
    BookingCheckedOut(BookingStay),
    #[serde(rename = "booking.no_show")]
    BookingNoShow(BookingStay),
    /// A tentative hold passed its `hold_expires_at`; its nights are free.
    #[serde(rename = "booking.hold_expired")]
    BookingHoldExpired {
        booking_id: Uuid,
        property_id: Uuid,
        check_in: NaiveDate,
        check_out: NaiveDate,
        hold_expires_at: DateTime<Utc>,
        /// As on `booking.modified`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_type_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "availability.blocked")]
    AvailabilityBlocked {
        block_id: Uuid,
        property_id: Uuid,
        start: NaiveDate,
        end: NaiveDate,
        reason: BlockReason,
        note: Option<String>,
        /// Added after v1: absent in older events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_ref: Option<String>,
        /// The room type the block closes units of; absent on a single-unit
        /// property.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_type_id: Option<Uuid>,
        /// How many units it closes: always 1 on a single-unit property,
        /// where it is not written.
        #[serde(default = "one_unit", skip_serializing_if = "is_one_unit")]
        units: u32,
        at: DateTime<Utc>,
    },
    #[serde(rename = "availability.released")]
    AvailabilityReleased {
        block_id: Uuid,
        property_id: Uuid,
        start: NaiveDate,
        end: NaiveDate,
        reason: BlockReason,
        /// The room type the block closed units of; absent on a
        /// single-unit property (and in events from before v1.1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_type_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
}

/// What a booking's status event carries (`booking.confirmed`,
/// `.checked_in`, `.checked_out`, `.no_show`): the booking's stay and room
/// type as they are when its status moves. Serialized as the event's body,
/// so the stored and published JSON is that of a struct variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookingStay {
    pub booking_id: Uuid,
    pub property_id: Uuid,
    pub check_in: NaiveDate,
    pub check_out: NaiveDate,
    /// As on `booking.modified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_type_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

impl BookingStay {
    /// `booking`'s stay at `at`.
    pub fn of(booking: &Booking, at: DateTime<Utc>) -> Self {
        BookingStay {
            booking_id: booking.id,
            property_id: booking.property_id,
            check_in: booking.nights.start,
            check_out: booking.nights.end,
            room_type_id: booking.room_type_id,
            at,
        }
    }
}

impl CalendarEvent {
    /// The stable name of the event type, as stored and as published.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PropertyRegistered { .. } => "property.registered",
            Self::PropertyUpdated { .. } => "property.updated",
            Self::PropertyArchived { .. } => "property.archived",
            Self::RoomTypeCreated { .. } => "room_type.created",
            Self::RoomTypeUpdated { .. } => "room_type.updated",
            Self::BookingReserved { .. } => "booking.reserved",
            Self::BookingModified { .. } => "booking.modified",
            Self::BookingConfirmed { .. } => "booking.confirmed",
            Self::BookingCancelled { .. } => "booking.cancelled",
            Self::BookingCheckedIn { .. } => "booking.checked_in",
            Self::BookingCheckedOut { .. } => "booking.checked_out",
            Self::BookingNoShow { .. } => "booking.no_show",
            Self::BookingHoldExpired { .. } => "booking.hold_expired",
            Self::AvailabilityBlocked { .. } => "availability.blocked",
            Self::AvailabilityReleased { .. } => "availability.released",
        }
    }

    /// The booking, block or room type the event is about, when there is one.
    pub fn subject(&self) -> Option<Uuid> {
        match self {
            Self::PropertyRegistered { .. }
            | Self::PropertyUpdated { .. }
            | Self::PropertyArchived { .. } => None,
            Self::RoomTypeCreated { room_type_id, .. }
            | Self::RoomTypeUpdated { room_type_id, .. } => Some(*room_type_id),
            Self::BookingReserved { booking_id, .. }
            | Self::BookingModified { booking_id, .. }
            | Self::BookingCancelled { booking_id, .. }
            | Self::BookingHoldExpired { booking_id, .. } => Some(*booking_id),
            Self::BookingConfirmed(stay)
            | Self::BookingCheckedIn(stay)
            | Self::BookingCheckedOut(stay)
            | Self::BookingNoShow(stay) => Some(stay.booking_id),
            Self::AvailabilityBlocked { block_id, .. }
            | Self::AvailabilityReleased { block_id, .. } => Some(*block_id),
        }
    }

    /// The room type the event is about or takes units of: on a room-type
    /// property every event but the `property.*` ones names one; on a
    /// single-unit property none does.
    pub fn room_type_id(&self) -> Option<Uuid> {
        match self {
            Self::RoomTypeCreated { .. } | Self::RoomTypeUpdated { .. } => self.subject(),
            Self::PropertyRegistered { .. }
            | Self::PropertyUpdated { .. }
            | Self::PropertyArchived { .. } => None,
            Self::BookingConfirmed(stay)
            | Self::BookingCheckedIn(stay)
            | Self::BookingCheckedOut(stay)
            | Self::BookingNoShow(stay) => stay.room_type_id,
            Self::BookingReserved { room_type_id, .. }
            | Self::BookingModified { room_type_id, .. }
            | Self::BookingCancelled { room_type_id, .. }
            | Self::BookingHoldExpired { room_type_id, .. }
            | Self::AvailabilityBlocked { room_type_id, .. }
            | Self::AvailabilityReleased { room_type_id, .. } => *room_type_id,
        }
    }

    /// The event body without its type tag: what is stored in `payload`.
    pub fn payload(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut tagged)) => tagged
                .remove(self.kind())
                .unwrap_or(serde_json::Value::Null),
            // Every variant is a struct variant, so the tagged form is always an object.
            _ => serde_json::Value::Null,
        }
    }

    /// Rebuilds an event from its stored type and payload.
    pub fn from_stored(
        event_type: &str, payload: serde_json::Value,
    ) -> Result<Self, serde_json::Error> {
        serde_json::from_value(Self::tagged(event_type, payload))
    }

    /// A stored payload as serde (and cqrs-es) spell the event: externally
    /// tagged, `{"booking.reserved": {...}}`. The log keeps the tag in
    /// `event_type` only.
    pub fn tagged(event_type: &str, payload: serde_json::Value) -> serde_json::Value {
        let mut tagged = serde_json::Map::with_capacity(1);
        tagged.insert(event_type.to_owned(), payload);
        serde_json::Value::Object(tagged)
    }
}

fn one_unit() -> u32 {
    1
}

fn is_one_unit(units: &u32) -> bool {
    *units == 1
}

impl DomainEvent for CalendarEvent {
    fn event_type(&self) -> String {
        self.kind().to_owned()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION.to_owned()
    }
}
