//! Bookings: the reserve, modify and cancel bodies, and the booking view.

use chrono::{DateTime, NaiveDate, Utc};
use ledger_domain::calendar::BookingDetails;
use ledger_domain::commands::{ModifyBooking, ReserveStay};
use ledger_domain::values::{BookingStatus, Channel};
use ledger_domain::{Booking, PropertyCalendar};
use ledger_projections::views::BookingRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{not_null, nullable, optional_line, ChannelDto, GuestDto, NewBookingStatus, PriceDto};

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
    pub guest: GuestDto,
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
    pub channel: Option<ChannelDto>,
    #[serde(default)]
    #[schema(schema_with = optional_line::<0, 255>)]
    pub external_ref: Option<String>,
    #[serde(default)]
    pub price: Option<PriceDto>,
    /// Free text; tab and newline are the only control characters allowed.
    #[serde(default)]
    #[schema(
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub notes: Option<String>,
    /// Required on a property with room types, refused elsewhere.
    #[serde(default)]
    pub room_type_id: Option<Uuid>,
}

impl ReserveBody {
    pub fn into_command(self, booking_id: Uuid) -> ReserveStay {
        // What the body leaves out takes the domain's default.
        let defaults = BookingDetails::new(self.guest.into());
        ReserveStay {
            booking_id,
            check_in: self.check_in,
            check_out: self.check_out,
            details: BookingDetails {
                adults: self.adults.unwrap_or(defaults.adults),
                children: self.children.unwrap_or(defaults.children),
                channel: self.channel.map_or(defaults.channel, Into::into),
                external_ref: self.external_ref,
                price: self.price.map(Into::into),
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
    #[schema(value_type = GuestDto)]
    pub guest: Option<GuestDto>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = u32, minimum = 1, maximum = 50)]
    pub adults: Option<u32>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = u32, minimum = 0, maximum = 50)]
    pub children: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<PriceDto>)]
    pub price: Option<Option<PriceDto>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 2000, pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$")]
    pub notes: Option<Option<String>>,
}

impl ModifyBookingBody {
    pub fn into_command(self, booking_id: Uuid) -> ModifyBooking {
        ModifyBooking {
            booking_id,
            check_in: self.check_in,
            check_out: self.check_out,
            guest: self.guest.map(Into::into),
            adults: self.adults,
            children: self.children,
            price: self.price.map(|p| p.map(Into::into)),
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

#[derive(Debug, Serialize, ToSchema)]
pub struct BookingView {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub property_id: Uuid,
    /// tentative, confirmed, cancelled, checked_in, checked_out or no_show.
    #[schema(value_type = String)]
    pub status: BookingStatus,
    pub check_in: NaiveDate,
    pub check_out: NaiveDate,
    pub nights: i64,
    pub guest: GuestDto,
    pub adults: u32,
    pub children: u32,
    #[schema(value_type = String)]
    pub channel: Channel,
    pub external_ref: Option<String>,
    pub price: Option<PriceDto>,
    pub notes: Option<String>,
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// On a property with room types only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_type_id: Option<Uuid>,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub position: i64,
}

impl BookingView {
    pub fn new(agency_id: Uuid, b: &Booking, position: i64) -> Self {
        BookingView {
            id: b.id,
            agency_id,
            property_id: b.property_id,
            status: b.status,
            check_in: b.nights.start,
            check_out: b.nights.end,
            nights: b.nights.count(),
            guest: (&b.details.guest).into(),
            adults: b.details.adults,
            children: b.details.children,
            channel: b.details.channel,
            external_ref: b.details.external_ref.clone(),
            price: b.details.price.as_ref().map(Into::into),
            notes: b.details.notes.clone(),
            hold_expires_at: b.hold_expires_at,
            room_type_id: b.room_type_id,
            version: b.version,
            created_at: b.created_at,
            updated_at: b.updated_at,
            position,
        }
    }
}

impl From<&BookingRow> for BookingView {
    fn from(row: &BookingRow) -> Self {
        BookingView::new(row.agency_id, &row.to_domain(), row.position)
    }
}

/// A booking of a calendar, after a command or for a read.
pub fn booking_view(calendar: &PropertyCalendar, id: Uuid, position: i64) -> Option<BookingView> {
    let agency_id = calendar.property.as_ref()?.agency_id;
    calendar
        .bookings
        .get(&id)
        .map(|b| BookingView::new(agency_id, b, position))
}
