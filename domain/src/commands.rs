//! What callers ask of a property calendar. Ids and the clock come in with
//! the command: the domain never generates them itself.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::calendar::BookingDetails;
use crate::policy::Actor;
use crate::values::{BlockReason, BookingStatus, Channel, Guest, Price};

/// A command with who asks and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub actor: Actor,
    pub now: DateTime<Utc>,
    pub action: CalendarCommand,
    /// The version the caller last saw of the resource the command changes
    /// (the property for property commands, the booking for booking
    /// commands): when it has another version now, the command is refused
    /// with [`crate::CalendarError::VersionMismatch`]. `None`: no condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CalendarCommand {
    RegisterProperty(RegisterProperty),
    UpdateProperty(UpdateProperty),
    ArchiveProperty,
    ReserveStay(ReserveStay),
    ModifyBooking(ModifyBooking),
    ConfirmBooking {
        booking_id: Uuid,
    },
    CancelBooking {
        booking_id: Uuid,
        reason: Option<String>,
    },
    CheckIn {
        booking_id: Uuid,
    },
    CheckOut {
        booking_id: Uuid,
    },
    MarkNoShow {
        booking_id: Uuid,
    },
    ExpireHold {
        booking_id: Uuid,
    },
    BlockNights(BlockNights),
    ReleaseBlock {
        block_id: Uuid,
    },
    CreateRoomType(CreateRoomType),
    UpdateRoomType(UpdateRoomType),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateRoomType {
    pub room_type_id: Uuid,
    pub name: String,
    pub units: u32,
    pub external_ref: Option<String>,
}

/// `None` leaves a field as it is; `Some(None)` clears `external_ref`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateRoomType {
    pub room_type_id: Uuid,
    pub name: Option<String>,
    pub units: Option<u32>,
    pub external_ref: Option<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterProperty {
    pub property_id: Uuid,
    pub name: String,
    pub timezone: Option<String>,
    pub owner_id: Option<String>,
    pub external_ref: Option<String>,
}

/// `Some(None)` clears an optional field; `None` leaves it as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateProperty {
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub owner_id: Option<Option<String>>,
    pub external_ref: Option<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReserveStay {
    pub booking_id: Uuid,
    pub check_in: NaiveDate,
    pub check_out: NaiveDate,
    /// The booking's details as they will be (a request's defaults are
    /// [`BookingDetails::new`]'s).
    #[serde(flatten)]
    pub details: BookingDetails,
    /// `Tentative` or `Confirmed` (the default).
    pub status: Option<BookingStatus>,
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// Required on a property with room types, refused elsewhere.
    #[serde(default)]
    pub room_type_id: Option<Uuid>,
}

impl ReserveStay {
    /// A stay with nothing but what a reservation needs: the details'
    /// defaults (one adult, booked direct), and every optional field
    /// absent, so `decide` takes its default (confirmed, on a single-unit
    /// property).
    pub fn new(booking_id: Uuid, check_in: NaiveDate, check_out: NaiveDate, guest: Guest) -> Self {
        Self {
            booking_id,
            check_in,
            check_out,
            details: BookingDetails::new(guest),
            status: None,
            hold_expires_at: None,
            room_type_id: None,
        }
    }

    /// The key inbound bookings are deduplicated on within a property: the
    /// channel and the channel's own reference.
    pub fn inbound_key(&self) -> Option<(Channel, &str)> {
        let external_ref = self.details.external_ref.as_deref()?;
        Some((self.details.channel, external_ref))
    }
}

/// `None` leaves a field as it is; `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModifyBooking {
    pub booking_id: Uuid,
    pub check_in: Option<NaiveDate>,
    pub check_out: Option<NaiveDate>,
    pub guest: Option<Guest>,
    pub adults: Option<u32>,
    pub children: Option<u32>,
    pub price: Option<Option<Price>>,
    pub notes: Option<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockNights {
    pub block_id: Uuid,
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub reason: BlockReason,
    pub note: Option<String>,
    /// The channel's id for what this block mirrors (an iCal feed's `UID`).
    pub external_ref: Option<String>,
    /// Required on a property with room types, refused elsewhere.
    #[serde(default)]
    pub room_type_id: Option<Uuid>,
    /// How many units of the room type it closes (default 1).
    #[serde(default)]
    pub units: Option<u32>,
}
