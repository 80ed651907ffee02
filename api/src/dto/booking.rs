//! Bookings: the reserve, modify and cancel bodies, and the booking view.

use chrono::{DateTime, NaiveDate, Utc};
use ledger_domain::calendar::BookingDetails;
use ledger_domain::commands::{ModifyBooking, ReserveStay};
use ledger_domain::values::{BookingStatus, Channel, Guest, Price};
use ledger_domain::{Booking, PropertyCalendar};
use ledger_projections::views::{BookingRecord, BookingRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{not_null, nullable, optional_line, optional_notes, NewBookingStatus};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    pub property_id: Uuid,
    /// A date from 1900-01-01 to 2199-12-31.
    #[schema(pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    pub check_in: NaiveDate,
    /// Exclusive: the day the guest leaves (1900-01-02 to 2199-12-31, at
    /// most 366 nights after check_in).
    #[schema(pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    pub check_out: NaiveDate,
    pub guest: Guest,
    /// 1 when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 50)]
    pub adults: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 50)]
    pub children: Option<u32>,
    /// `confirmed` when absent.
    #[serde(default)]
    pub status: Option<NewBookingStatus>,
    /// Tentative bookings only; in the future, within the years 1900 to 2199.
    #[serde(default)]
    #[schema(pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}T")]
    pub hold_expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub channel: Option<Channel>,
    #[serde(default)]
    #[schema(schema_with = optional_line::<0, 255>)]
    pub external_ref: Option<String>,
    #[serde(default)]
    pub price: Option<Price>,
    #[serde(default)]
    #[schema(schema_with = optional_notes::<2000>)]
    pub notes: Option<String>,
    /// Required on a property with room types, refused elsewhere.
    #[serde(default)]
    pub room_type_id: Option<Uuid>,
}

impl ReserveBody {
    pub fn into_command(self, booking_id: Uuid) -> ReserveStay {
        // What the body leaves out takes the domain's default.
        let defaults = BookingDetails::new(self.guest);
        ReserveStay {
            booking_id,
            check_in: self.check_in,
            check_out: self.check_out,
            details: BookingDetails {
                adults: self.adults.unwrap_or(defaults.adults),
                children: self.children.unwrap_or(defaults.children),
                channel: self.channel.unwrap_or(defaults.channel),
                external_ref: self.external_ref,
                price: self.price,
                notes: self.notes,
                ..defaults
            },
            status: self.status.map(|s| match s {
                NewBookingStatus::Tentative => BookingStatus::Tentative,
                NewBookingStatus::Confirmed => BookingStatus::Confirmed,
            }),
            hold_expires_at: self.hold_expires_at,
            room_type_id: self.room_type_id,
        }
    }
}

/// Any of the fields; `null` clears `price` / `notes` and is refused for the
/// others, which a booking always has.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModifyBookingBody {
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = NaiveDate, pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    pub check_in: Option<NaiveDate>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = NaiveDate, pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    pub check_out: Option<NaiveDate>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = Guest)]
    pub guest: Option<Guest>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = u32, minimum = 1, maximum = 50)]
    pub adults: Option<u32>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = u32, minimum = 0, maximum = 50)]
    pub children: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Price>)]
    pub price: Option<Option<Price>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = optional_notes::<2000>)]
    pub notes: Option<Option<String>>,
}

impl ModifyBookingBody {
    pub fn into_command(self, booking_id: Uuid) -> ModifyBooking {
        ModifyBooking {
            booking_id,
            check_in: self.check_in,
            check_out: self.check_out,
            guest: self.guest,
            adults: self.adults,
            children: self.children,
            price: self.price,
            notes: self.notes,
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    #[serde(default)]
    #[schema(schema_with = optional_line::<0, 500>)]
    pub reason: Option<String>,
}

// A booking as the contract shows it: its read model's record with the
// booking's `id` and its count of `nights`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingView {
    pub id: Uuid,
    #[serde(flatten)]
    pub booking: BookingRecord,
    pub nights: i64,
}

impl BookingView {
    pub fn new(agency_id: Uuid, b: &Booking, position: i64) -> Self {
        BookingView {
            id: b.id,
            booking: BookingRecord::new(agency_id, b, position),
            nights: b.nights.count(),
        }
    }
}

impl From<&BookingRow> for BookingView {
    fn from(row: &BookingRow) -> Self {
        BookingView {
            id: row.booking_id,
            booking: row.booking.clone(),
            nights: row.booking.nights().count(),
        }
    }
}

/// A booking of a calendar, after a command or for a read.
pub fn booking_view(calendar: &PropertyCalendar, id: Uuid, position: i64) -> Option<BookingView> {
    let property = calendar.property.as_ref()?;
    let booking = calendar.bookings.get(&id)?;
    Some(BookingView::new(property.agency_id, booking, position))
}
