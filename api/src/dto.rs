//! The JSON shapes of the contract: request bodies (unknown fields refused)
//! and the views written back. Mirrors of domain values live here so the
//! domain stays free of HTTP and schema concerns.

use chrono::{DateTime, NaiveDate, Utc};
use ledger_domain::commands::{
    BlockNights, ModifyBooking, RegisterProperty, ReserveStay, UpdateProperty,
};
use ledger_domain::values::{self, BlockReason, BookingStatus, Channel};
use ledger_domain::{Block, Booking, Property, PropertyCalendar};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

// The request schemas carry the limits the domain enforces
// (`ledger_domain::values`), so generated clients and schema-driven fuzzers
// see them: one-line texts match `^[^\u0000-\u001F\u007F-\u009F]*$` (no
// control characters), `notes`/`note` also allow tab and newline, dates are
// within 1900-01-01..2199-12-31 and timestamps within those years.

/// A field that may be left out but, when given, may not be null: `null`
/// for a name or a date that cannot be empty is a 400 naming the field,
/// never a silent "leave as it is".
pub(crate) fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)?
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("must not be null"))
}

/// Tells a field that is absent (`None`) from one set to null (`Some(None)`).
pub(crate) fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestDto {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    #[serde(default)]
    #[schema(
        min_length = 3,
        max_length = 254,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub email: Option<String>,
    #[serde(default)]
    #[schema(max_length = 50, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub phone: Option<String>,
}

impl From<GuestDto> for values::Guest {
    fn from(g: GuestDto) -> Self {
        values::Guest {
            name: g.name,
            email: g.email,
            phone: g.phone,
        }
    }
}

impl From<&values::Guest> for GuestDto {
    fn from(g: &values::Guest) -> Self {
        GuestDto {
            name: g.name.clone(),
            email: g.email.clone(),
            phone: g.phone.clone(),
        }
    }
}

/// Money in integer minor units (cents) and an ISO 4217 currency.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceDto {
    #[schema(minimum = 0)]
    pub amount_minor: i64,
    #[schema(min_length = 3, max_length = 3, pattern = "^[A-Z]{3}$")]
    pub currency: String,
}

impl From<PriceDto> for values::Price {
    fn from(p: PriceDto) -> Self {
        values::Price {
            amount_minor: p.amount_minor,
            currency: p.currency,
        }
    }
}

impl From<&values::Price> for PriceDto {
    fn from(p: &values::Price) -> Self {
        PriceDto {
            amount_minor: p.amount_minor,
            currency: p.currency.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NewBookingStatus {
    Tentative,
    Confirmed,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelDto {
    Direct,
    Airbnb,
    BookingCom,
    Vrbo,
    Ical,
    Other,
}

impl From<ChannelDto> for Channel {
    fn from(c: ChannelDto) -> Self {
        match c {
            ChannelDto::Direct => Channel::Direct,
            ChannelDto::Airbnb => Channel::Airbnb,
            ChannelDto::BookingCom => Channel::BookingCom,
            ChannelDto::Vrbo => Channel::Vrbo,
            ChannelDto::Ical => Channel::Ical,
            ChannelDto::Other => Channel::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlockReasonDto {
    OwnerStay,
    Maintenance,
    Other,
}

impl From<BlockReasonDto> for BlockReason {
    fn from(r: BlockReasonDto) -> Self {
        match r {
            BlockReasonDto::OwnerStay => BlockReason::OwnerStay,
            BlockReasonDto::Maintenance => BlockReason::Maintenance,
            BlockReasonDto::Other => BlockReason::Other,
        }
    }
}

// ---------------------------------------------------------------- bodies

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterPropertyBody {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// IANA time zone; `UTC` when absent.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub timezone: Option<String>,
    #[serde(default)]
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub owner_id: Option<String>,
    #[serde(default)]
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub external_ref: Option<String>,
}

impl RegisterPropertyBody {
    pub fn into_command(self, property_id: Uuid) -> RegisterProperty {
        RegisterProperty {
            property_id,
            name: self.name,
            timezone: self.timezone,
            owner_id: self.owner_id,
            external_ref: self.external_ref,
        }
    }
}

/// Any of the fields; `null` clears `owner_id` / `external_ref` and is
/// refused for `name` and `timezone`, which a property always has.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePropertyBody {
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = String, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = String, min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub timezone: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub owner_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub external_ref: Option<Option<String>>,
}

impl From<UpdatePropertyBody> for UpdateProperty {
    fn from(b: UpdatePropertyBody) -> Self {
        UpdateProperty {
            name: b.name,
            timezone: b.timezone,
            owner_id: b.owner_id,
            external_ref: b.external_ref,
        }
    }
}

/// The body of action routes that take no parameters: `{}` or nothing.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

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
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
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
        ReserveStay {
            booking_id,
            check_in: self.check_in,
            check_out: self.check_out,
            guest: self.guest.into(),
            adults: self.adults,
            children: self.children,
            status: self.status.map(|s| match s {
                NewBookingStatus::Tentative => BookingStatus::Tentative,
                NewBookingStatus::Confirmed => BookingStatus::Confirmed,
            }),
            hold_expires_at: self.hold_expires_at,
            channel: self.channel.map(Into::into),
            external_ref: self.external_ref,
            price: self.price.map(Into::into),
            notes: self.notes,
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
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockBody {
    pub property_id: Uuid,
    /// A date from 1900-01-01 to 2199-12-31.
    #[schema(pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    pub start: NaiveDate,
    /// Exclusive: the first night that is not blocked (at most 366 nights
    /// after start).
    #[schema(pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    pub end: NaiveDate,
    pub reason: BlockReasonDto,
    /// Free text; tab and newline are the only control characters allowed.
    #[serde(default)]
    #[schema(
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub note: Option<String>,
    /// The channel's id for what the block mirrors (an iCal `UID`).
    #[serde(default)]
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub external_ref: Option<String>,
    /// Required on a property with room types, refused elsewhere.
    #[serde(default)]
    pub room_type_id: Option<Uuid>,
    /// How many units of the room type the block closes: 1 when absent, at
    /// most the room type's units; only 1 on a single-unit property.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub units: Option<u32>,
}

impl BlockBody {
    pub fn into_command(self, block_id: Uuid) -> BlockNights {
        BlockNights {
            block_id,
            start: self.start,
            end: self.end,
            reason: self.reason.into(),
            note: self.note,
            external_ref: self.external_ref,
            room_type_id: self.room_type_id,
            units: self.units,
        }
    }
}

// ---------------------------------------------------------------- views

#[derive(Debug, Serialize, ToSchema)]
pub struct PropertyView {
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
    /// Global log position of the last event this reply reflects.
    pub position: i64,
}

impl PropertyView {
    pub fn new(p: &Property, position: i64) -> Self {
        PropertyView {
            id: p.id,
            agency_id: p.agency_id,
            name: p.name.clone(),
            timezone: p.timezone.clone(),
            owner_id: p.owner_id.clone(),
            external_ref: p.external_ref.clone(),
            archived: p.archived,
            version: p.version,
            created_at: p.created_at,
            updated_at: p.updated_at,
            position,
        }
    }
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
            guest: (&b.guest).into(),
            adults: b.adults,
            children: b.children,
            channel: b.channel,
            external_ref: b.external_ref.clone(),
            price: b.price.as_ref().map(Into::into),
            notes: b.notes.clone(),
            hold_expires_at: b.hold_expires_at,
            room_type_id: b.room_type_id,
            version: b.version,
            created_at: b.created_at,
            updated_at: b.updated_at,
            position,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BlockView {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub property_id: Uuid,
    pub start: NaiveDate,
    pub end: NaiveDate,
    #[schema(value_type = String)]
    pub reason: BlockReason,
    pub note: Option<String>,
    pub external_ref: Option<String>,
    /// On a property with room types only, with the units it closes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_type_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<u32>,
    pub released: bool,
    pub created_at: DateTime<Utc>,
    pub position: i64,
}

impl BlockView {
    pub fn new(agency_id: Uuid, b: &Block, position: i64) -> Self {
        BlockView {
            id: b.id,
            agency_id,
            property_id: b.property_id,
            start: b.nights.start,
            end: b.nights.end,
            reason: b.reason,
            note: b.note.clone(),
            external_ref: b.external_ref.clone(),
            room_type_id: b.room_type_id,
            units: b.room_type_id.map(|_| b.units),
            released: b.released,
            created_at: b.created_at,
            position,
        }
    }
}

/// The views of one calendar, looked up by id after a command or for a read.
pub fn property_view(calendar: &PropertyCalendar, position: i64) -> Option<PropertyView> {
    calendar
        .property
        .as_ref()
        .map(|p| PropertyView::new(p, position))
}

pub fn booking_view(calendar: &PropertyCalendar, id: Uuid, position: i64) -> Option<BookingView> {
    let agency_id = calendar.property.as_ref()?.agency_id;
    calendar
        .bookings
        .get(&id)
        .map(|b| BookingView::new(agency_id, b, position))
}

pub fn block_view(calendar: &PropertyCalendar, id: Uuid, position: i64) -> Option<BlockView> {
    let agency_id = calendar.property.as_ref()?.agency_id;
    calendar
        .blocks
        .get(&id)
        .map(|b| BlockView::new(agency_id, b, position))
}

/// The error body of every non-2xx reply.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
    pub request_id: String,
}

/// One stored event of a property's raw history.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub position: i64,
    pub sequence: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<EventView>,
    pub next_cursor: Option<String>,
}
