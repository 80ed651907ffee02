//! `properties_view` and `bookings_view`: the property and booking records
//! the list and detail routes read. The fold is the aggregate's own `apply`
//! (on a calendar holding just the rows a batch touches), so a view can
//! never disagree with the write side about what an event means.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::Aggregate;
use ledger_domain::calendar::{BookingDetails, PropertyDetails};
use ledger_domain::values::{BookingStatus, Channel, Guest, Nights, Price};
use ledger_domain::{Booking, CalendarEvent, Property, PropertyCalendar};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::tail::Envelope;

/// A row of `properties_view`; field names are its column names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropertyRow {
    pub property_id: Uuid,
    pub agency_id: Uuid,
    pub name: String,
    pub timezone: String,
    pub owner_id: Option<String>,
    pub external_ref: Option<String>,
    pub archived: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub position: i64,
}

impl PropertyRow {
    pub fn new(p: &Property, position: i64) -> Self {
        PropertyRow {
            property_id: p.id,
            agency_id: p.agency_id,
            name: p.details.name.clone(),
            timezone: p.details.timezone.clone(),
            owner_id: p.details.owner_id.clone(),
            external_ref: p.details.external_ref.clone(),
            archived: p.archived,
            version: p.version as i64,
            created_at: p.created_at,
            updated_at: p.updated_at,
            position,
        }
    }

    pub fn to_domain(&self) -> Property {
        Property {
            id: self.property_id,
            agency_id: self.agency_id,
            details: PropertyDetails {
                name: self.name.clone(),
                timezone: self.timezone.clone(),
                owner_id: self.owner_id.clone(),
                external_ref: self.external_ref.clone(),
            },
            archived: self.archived,
            version: self.version as u64,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A row of `bookings_view`; field names are its column names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookingRow {
    pub booking_id: Uuid,
    pub agency_id: Uuid,
    pub property_id: Uuid,
    pub status: BookingStatus,
    pub check_in: NaiveDate,
    pub check_out: NaiveDate,
    pub guest: Guest,
    pub adults: i32,
    pub children: i32,
    pub channel: Channel,
    pub external_ref: Option<String>,
    pub price: Option<Price>,
    pub notes: Option<String>,
    pub hold_expires_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    /// Added with room types (migration 0013).
    #[serde(default)]
    pub room_type_id: Option<Uuid>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub position: i64,
}

impl BookingRow {
    pub fn new(agency_id: Uuid, b: &Booking, position: i64) -> Self {
        BookingRow {
            booking_id: b.id,
            agency_id,
            property_id: b.property_id,
            status: b.status,
            check_in: b.nights.start,
            check_out: b.nights.end,
            guest: b.details.guest.clone(),
            adults: b.details.adults as i32,
            children: b.details.children as i32,
            channel: b.details.channel,
            external_ref: b.details.external_ref.clone(),
            price: b.details.price.clone(),
            notes: b.details.notes.clone(),
            hold_expires_at: b.hold_expires_at,
            cancel_reason: b.cancel_reason.clone(),
            room_type_id: b.room_type_id,
            version: b.version as i64,
            created_at: b.created_at,
            updated_at: b.updated_at,
            position,
        }
    }

    pub fn to_domain(&self) -> Booking {
        Booking {
            id: self.booking_id,
            property_id: self.property_id,
            status: self.status,
            nights: Nights {
                start: self.check_in,
                end: self.check_out,
            },
            details: BookingDetails {
                guest: self.guest.clone(),
                adults: self.adults as u32,
                children: self.children as u32,
                channel: self.channel,
                external_ref: self.external_ref.clone(),
                price: self.price.clone(),
                notes: self.notes.clone(),
            },
            hold_expires_at: self.hold_expires_at,
            cancel_reason: self.cancel_reason.clone(),
            version: self.version as u64,
            created_at: self.created_at,
            updated_at: self.updated_at,
            room_type_id: self.room_type_id,
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

/// Writes rows (serialised with their column names) with one upsert; built
/// here, like [`load_rows`]'s, from the table and its columns.
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
        "INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1)
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
        booking_agency.insert(row.booking_id, row.agency_id);
        parts
            .entry(row.property_id)
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
