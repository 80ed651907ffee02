//! `properties_view` and `bookings_view`: the property and booking records
//! the list and detail routes read. The fold is the aggregate's own `apply`
//! (on a calendar holding just the rows a batch touches), so a view can
//! never disagree with the write side about what an event means.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::Aggregate;
use ledger_domain::calendar::{BookingDetails, PropertyDetails};
use ledger_domain::values::{BookingStatus, Nights};
use ledger_domain::{Booking, CalendarEvent, Property, PropertyCalendar};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::tail::Envelope;

// A row of `properties_view`; field names are its column names. It is also
// the contract's view of a property (`PropertyView`), so its key serialises
// as the property's `id` (see `upsert_rows`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = PropertyView))]
pub struct PropertyRow {
    #[serde(rename = "id", alias = "property_id")]
    pub property_id: Uuid,
    pub agency_id: Uuid,
    // Flattened, as in the property: the columns `name`, `timezone`,
    // `owner_id` and `external_ref`.
    #[serde(flatten)]
    pub details: PropertyDetails,
    pub archived: bool,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Global log position of the last event this reply reflects.
    pub position: i64,
}

impl PropertyRow {
    pub fn new(p: &Property, position: i64) -> Self {
        PropertyRow {
            property_id: p.id,
            agency_id: p.agency_id,
            details: p.details.clone(),
            archived: p.archived,
            version: p.version,
            created_at: p.created_at,
            updated_at: p.updated_at,
            position,
        }
    }

    pub fn to_domain(&self) -> Property {
        Property {
            id: self.property_id,
            agency_id: self.agency_id,
            details: self.details.clone(),
            archived: self.archived,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A row of `bookings_view`; field names are its column names, but for the
/// key (`id`, as a property row's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookingRow {
    #[serde(rename = "id", alias = "booking_id")]
    pub booking_id: Uuid,
    #[serde(flatten)]
    pub booking: BookingRecord,
    pub cancel_reason: Option<String>,
}

// What a booking's row shares with the contract's view of a booking
// (`BookingView`): all but the key, the reason of a cancellation (kept, not
// shown) and the count of nights (shown, not kept). Not a doc comment: it
// would be the description of the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BookingRecord {
    pub agency_id: Uuid,
    pub property_id: Uuid,
    /// tentative, confirmed, cancelled, checked_in, checked_out or no_show.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub status: BookingStatus,
    pub check_in: NaiveDate,
    pub check_out: NaiveDate,
    // Flattened, as in the booking: the columns `guest` to `notes`.
    #[serde(flatten)]
    pub details: BookingDetails,
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// On a property with room types only.
    // The column came with room types (migration 0013).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_type_id: Option<Uuid>,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub position: i64,
}

impl BookingRecord {
    pub fn new(agency_id: Uuid, b: &Booking, position: i64) -> Self {
        BookingRecord {
            agency_id,
            property_id: b.property_id,
            status: b.status,
            check_in: b.nights.start,
            check_out: b.nights.end,
            details: b.details.clone(),
            hold_expires_at: b.hold_expires_at,
            room_type_id: b.room_type_id,
            version: b.version,
            created_at: b.created_at,
            updated_at: b.updated_at,
            position,
        }
    }

    pub fn nights(&self) -> Nights {
        Nights {
            start: self.check_in,
            end: self.check_out,
        }
    }
}

impl BookingRow {
    pub fn new(agency_id: Uuid, b: &Booking, position: i64) -> Self {
        BookingRow {
            booking_id: b.id,
            booking: BookingRecord::new(agency_id, b, position),
            cancel_reason: b.cancel_reason.clone(),
        }
    }

    pub fn to_domain(&self) -> Booking {
        let record = &self.booking;
        Booking {
            id: self.booking_id,
            property_id: record.property_id,
            status: record.status,
            nights: record.nights(),
            details: record.details.clone(),
            hold_expires_at: record.hold_expires_at,
            cancel_reason: self.cancel_reason.clone(),
            version: record.version,
            created_at: record.created_at,
            updated_at: record.updated_at,
            room_type_id: record.room_type_id,
        }
    }
}

const PROPERTY_COLUMNS: &[&str] = &[
    "agency_id",
    "name",
    "timezone",
    "owner_id",
    "external_ref",
    "archived",
    "version",
    "created_at",
    "updated_at",
    "position",
];

const BOOKING_COLUMNS: &[&str] = &[
    "agency_id",
    "property_id",
    "status",
    "check_in",
    "check_out",
    "guest",
    "adults",
    "children",
    "channel",
    "external_ref",
    "price",
    "notes",
    "hold_expires_at",
    "cancel_reason",
    "version",
    "created_at",
    "updated_at",
    "position",
];

/// Rows of a table as JSON, read back into their row type. The table is an
/// argument, so the statement is built here rather than checked by a macro.
async fn load_rows<T: for<'de> Deserialize<'de>>(
    conn: &mut PgConnection, table: &str, key: &str, ids: &[Uuid],
) -> Result<Vec<T>, sqlx::Error> {
    let rows: Vec<serde_json::Value> = sqlx::query_scalar(&format!(
        "SELECT to_jsonb(t) FROM {table} t WHERE {key} = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| serde_json::from_value(row).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .collect()
}

/// Writes rows (serialised with their column names, but for the key, which
/// is `id` as the contract shows it) with one upsert; built here, like
/// [`load_rows`]'s, from the table and its columns.
async fn upsert_rows<T: Serialize>(
    conn: &mut PgConnection, table: &str, key: &str, columns: &[&str], rows: &[T],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_value(rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let targets = columns.join(", ");
    let sources = columns
        .iter()
        .map(|c| format!("EXCLUDED.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(&format!(
        "INSERT INTO {table}
         SELECT t.* FROM jsonb_array_elements($1) r,
                LATERAL jsonb_populate_record(NULL::{table}, r || jsonb_build_object('{key}', r -> 'id')) t
         ON CONFLICT ({key}) DO UPDATE SET ({targets}) = ({sources})"
    ))
    .bind(json)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn apply(conn: &mut PgConnection, events: &[Envelope]) -> Result<(), sqlx::Error> {
    let mut property_ids: Vec<Uuid> = events.iter().map(|e| e.property_id).collect();
    property_ids.sort_unstable();
    property_ids.dedup();
    let mut booking_ids: Vec<Uuid> = events
        .iter()
        .filter_map(|e| match view_row(&e.event) {
            ViewRow::Booking(id) => Some(id),
            ViewRow::Property | ViewRow::Nothing => None,
        })
        .collect();
    booking_ids.sort_unstable();
    booking_ids.dedup();

    // The calendars of the touched properties, holding just the touched rows.
    let mut parts: HashMap<Uuid, (Option<Property>, BTreeMap<Uuid, Booking>)> = HashMap::new();
    for row in
        load_rows::<PropertyRow>(conn, "properties_view", "property_id", &property_ids).await?
    {
        parts.entry(row.property_id).or_default().0 = Some(row.to_domain());
    }
    let mut booking_agency: HashMap<Uuid, Uuid> = HashMap::new();
    for row in load_rows::<BookingRow>(conn, "bookings_view", "booking_id", &booking_ids).await? {
        booking_agency.insert(row.booking_id, row.booking.agency_id);
        parts
            .entry(row.booking.property_id)
            .or_default()
            .1
            .insert(row.booking_id, row.to_domain());
    }
    let mut calendars: HashMap<Uuid, PropertyCalendar> = parts
        .into_iter()
        .map(|(id, (property, bookings))| {
            (
                id,
                PropertyCalendar::from_parts(property, bookings, BTreeMap::new()),
            )
        })
        .collect();

    let mut property_positions: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut booking_positions: BTreeMap<Uuid, (Uuid, i64)> = BTreeMap::new();
    for envelope in events {
        calendars
            .entry(envelope.property_id)
            .or_default()
            .apply(envelope.event.clone());
        match view_row(&envelope.event) {
            ViewRow::Property => {
                property_positions.insert(envelope.property_id, envelope.position);
            }
            ViewRow::Booking(id) => {
                booking_agency.entry(id).or_insert(envelope.meta.agency_id);
                booking_positions.insert(id, (envelope.property_id, envelope.position));
            }
            ViewRow::Nothing => {}
        }
    }

    let properties: Vec<PropertyRow> = property_positions
        .iter()
        .filter_map(|(id, position)| {
            let property = calendars.get(id)?.property.as_ref()?;
            Some(PropertyRow::new(property, *position))
        })
        .collect();
    let bookings: Vec<BookingRow> = booking_positions
        .iter()
        .filter_map(|(id, (property_id, position))| {
            let booking = calendars.get(property_id)?.bookings.get(id)?;
            Some(BookingRow::new(
                *booking_agency.get(id)?,
                booking,
                *position,
            ))
        })
        .collect();
    upsert_rows(
        conn,
        "properties_view",
        "property_id",
        PROPERTY_COLUMNS,
        &properties,
    )
    .await?;
    upsert_rows(
        conn,
        "bookings_view",
        "booking_id",
        BOOKING_COLUMNS,
        &bookings,
    )
    .await?;
    Ok(())
}

/// The row of the views an event changes.
enum ViewRow {
    Property,
    Booking(Uuid),
    Nothing,
}

/// Exhaustive on purpose: a new event type does not compile until it says
/// which view row it changes.
fn view_row(event: &CalendarEvent) -> ViewRow {
    match event {
        CalendarEvent::PropertyRegistered { .. }
        | CalendarEvent::PropertyUpdated { .. }
        | CalendarEvent::PropertyArchived { .. } => ViewRow::Property,
        CalendarEvent::BookingReserved { booking_id, .. }
        | CalendarEvent::BookingModified { booking_id, .. }
        | CalendarEvent::BookingCancelled { booking_id, .. }
        | CalendarEvent::BookingHoldExpired { booking_id, .. } => ViewRow::Booking(*booking_id),
        CalendarEvent::BookingConfirmed(stay)
        | CalendarEvent::BookingCheckedIn(stay)
        | CalendarEvent::BookingCheckedOut(stay)
        | CalendarEvent::BookingNoShow(stay) => ViewRow::Booking(stay.booking_id),
        // Blocks and room types have no view of their own yet.
        CalendarEvent::AvailabilityBlocked { .. }
        | CalendarEvent::AvailabilityReleased { .. }
        | CalendarEvent::RoomTypeCreated { .. }
        | CalendarEvent::RoomTypeUpdated { .. } => ViewRow::Nothing,
    }
}
