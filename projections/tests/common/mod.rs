//! Shared helpers of the projection tests: a fresh database per test, a
//! command bus on it, commands by an admin of one agency, and the read
//! models as the aggregates say they must be.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, TimeDelta, TimeZone, Utc};
use ledger_domain::commands::{RegisterProperty, ReserveStay};
use ledger_domain::values::{BookingStatus, ClaimKind, Guest};
use ledger_domain::{Actor, CalendarCommand, CalendarEvent, Command, PropertyCalendar, Role};
use ledger_infra::command_bus::{ExecuteError, Execution};
use ledger_infra::event_store::{EventMetadata, EventStore};
use ledger_infra::CommandBus;
use ledger_projections::queries::AuditEntry;
use ledger_projections::runner;
use ledger_projections::views::{BookingRow, PropertyRow};
use ledger_projections::Projection;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

pub use ledger_test_support::{eventually, properties_in_log};

/// A database of its own, migrated; dropped when this value is dropped.
pub struct TestDb {
    pub pool: PgPool,
    db: ledger_test_support::TestDb,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = ledger_test_support::TestDb::create().await;
        let pool = db.migrated_pool().await;
        TestDb { pool, db }
    }

    /// A connection of its own (outside the pool).
    pub async fn connect(&self) -> PgConnection {
        self.db.connect().await
    }
}

/// A fresh database, a command bus on it, and `N` properties one agency
/// registered: where most scenarios start.
pub async fn agency_with_properties<const N: usize>() -> (TestDb, CommandBus, Uuid, [Uuid; N]) {
    let db = TestDb::new().await;
    let bus = CommandBus::new(EventStore::new(db.pool.clone()));
    let agency = Uuid::new_v4();
    let properties = [(); N].map(|()| Uuid::new_v4());
    for property in properties {
        register(&bus, agency, property).await;
    }
    (db, bus, agency, properties)
}

// ------------------------------------------------------------------ commands

/// `hours` after the fixed instant every scenario starts at (whole seconds,
/// so timestamps survive PostgreSQL's microseconds unchanged).
pub fn at(hours: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 9, 0, 0).unwrap() + TimeDelta::hours(hours)
}

/// The night `n` days after 1 July 2025.
pub fn day(n: u64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 7, 1).unwrap() + Days::new(n)
}

pub fn admin(agency: Uuid) -> Actor {
    Actor {
        agency_id: agency,
        user_id: "admin-1".into(),
        role: Role::Admin,
    }
}

/// Runs one command on a property; `Ok` holds the position of its last event.
pub async fn exec(
    bus: &CommandBus, agency: Uuid, property: Uuid, now: DateTime<Utc>, action: CalendarCommand,
) -> Result<i64, ExecuteError> {
    let execution = Execution {
        property_id: property,
        command: Command {
            actor: admin(agency),
            now,
            action,
            expected_version: None,
        },
        request_id: format!("req-{}", Uuid::new_v4().simple()),
        idempotency: None,
    };
    Ok(bus.run_unkeyed(execution).await?.position)
}

pub async fn register(bus: &CommandBus, agency: Uuid, property: Uuid) -> i64 {
    exec(
        bus,
        agency,
        property,
        at(0),
        CalendarCommand::RegisterProperty(RegisterProperty {
            property_id: property,
            name: "Sea View".into(),
            timezone: Some("Europe/Lisbon".into()),
            owner_id: None,
            external_ref: None,
        }),
    )
    .await
    .expect("register a property")
}

pub fn guest() -> Guest {
    Guest {
        name: "Ana Guest".into(),
        email: Some("ana@example.com".into()),
        phone: None,
    }
}

pub fn reserve_stay(booking: Uuid, start: u64, end: u64) -> ReserveStay {
    let mut stay = ReserveStay::new(booking, day(start), day(end), guest());
    stay.details.adults = 2;
    stay
}

/// Reserves `[day(start), day(end))` (confirmed) and returns the position.
pub async fn reserve(
    bus: &CommandBus, agency: Uuid, property: Uuid, booking: Uuid, start: u64, end: u64,
) -> i64 {
    exec(
        bus,
        agency,
        property,
        at(1),
        CalendarCommand::ReserveStay(reserve_stay(booking, start, end)),
    )
    .await
    .expect("reserve a stay")
}

/// Cancels `booking` at `now` and returns the position.
pub async fn cancel(
    bus: &CommandBus, agency: Uuid, property: Uuid, booking: Uuid, now: DateTime<Utc>,
) -> i64 {
    let action = CalendarCommand::CancelBooking {
        booking_id: booking,
        reason: Some("plans changed".into()),
    };
    exec(bus, agency, property, now, action)
        .await
        .expect("cancel a booking")
}

/// What the command bus writes into `metadata` for an admin of `agency`.
pub fn metadata(agency: Uuid) -> EventMetadata {
    EventMetadata {
        agency_id: agency,
        user_id: "admin-1".into(),
        role: "admin",
        request_id: format!("req-{}", Uuid::new_v4().simple()),
        recorded_at: at(1),
        idempotency_key: None,
    }
}

// ------------------------------------------------------------------ the log and checkpoints

pub async fn head(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(pool)
        .await
        .expect("read the head")
}

/// The value `sql` selects with `$1` bound to `parameter`, if a row has it.
pub async fn value_of<T, P>(pool: &PgPool, sql: &str, parameter: P) -> Option<T>
where
    (T,): for<'r> sqlx::FromRow<'r, PgRow>,
    T: Send + Unpin,
    P: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send + 'static,
{
    sqlx::query_scalar(sql)
        .bind(parameter)
        .fetch_optional(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The position of the last event a checkpoint's cursor took.
pub async fn cursor_position(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("read a checkpoint")
}

/// The watermark of a checkpoint: every committed event at or below it has
/// been applied.
pub async fn checkpoint(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT ledger_watermark(txid, position) FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("read a checkpoint")
}

/// Runs `catch_up` for every projection until all of them reached `target`.
/// Loops because a transaction of another test anywhere on the server holds
/// back `pg_snapshot_xmin` for a moment.
pub async fn catch_up_to(pool: &PgPool, target: i64) {
    eventually(Duration::from_secs(20), || async {
        let mut reached = i64::MAX;
        for projection in Projection::ALL {
            runner::catch_up(pool, projection)
                .await
                .unwrap_or_else(|e| panic!("catch up {}: {e}", projection.name()));
            reached = reached.min(checkpoint(pool, projection.name()).await);
        }
        if reached >= target {
            Ok(())
        } else {
            Err(format!("the projections are at {reached} of {target}"))
        }
    })
    .await
}

/// Catches every projection up to the current head of the log.
pub async fn catch_up_all(pool: &PgPool) {
    let target = head(pool).await;
    catch_up_to(pool, target).await;
}

// ------------------------------------------------------------------ read models

/// A row of `inventory_ranges`, with its range split into its bounds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InventoryRow {
    pub ref_id: Uuid,
    pub agency_id: Uuid,
    pub property_id: Uuid,
    pub kind: String,
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub status: String,
    pub position: i64,
}

/// All four read models, each in key order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReadModels {
    pub properties: Vec<PropertyRow>,
    pub bookings: Vec<BookingRow>,
    pub inventory: Vec<InventoryRow>,
    pub audit: Vec<AuditEntry>,
}

async fn json_rows<T: for<'de> serde::Deserialize<'de>>(
    pool: &PgPool, table: &str, key: &str,
) -> Vec<T> {
    let rows: Vec<Value> =
        sqlx::query_scalar(&format!("SELECT to_jsonb(t) FROM {table} t ORDER BY {key}"))
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("read {table}: {e}"));
    rows.into_iter()
        .map(|row| {
            serde_json::from_value(row.clone())
                .unwrap_or_else(|e| panic!("a row of {table} reads back ({e}): {row}"))
        })
        .collect()
}

pub async fn inventory_rows(pool: &PgPool) -> Vec<InventoryRow> {
    sqlx::query(
        "SELECT ref_id, agency_id, property_id, kind, lower(during) AS start_night,
                upper(during) AS end_night, status, position
           FROM inventory_ranges ORDER BY ref_id",
    )
    .fetch_all(pool)
    .await
    .expect("read inventory_ranges")
    .into_iter()
    .map(|row| InventoryRow {
        ref_id: row.get("ref_id"),
        agency_id: row.get("agency_id"),
        property_id: row.get("property_id"),
        kind: row.get("kind"),
        start: row.get("start_night"),
        end: row.get("end_night"),
        status: row.get("status"),
        position: row.get("position"),
    })
    .collect()
}

/// The rows of `audit_log`, in the order the audit routes read them.
pub async fn audit_rows(pool: &PgPool) -> Vec<AuditEntry> {
    json_rows(pool, "audit_log", "position, id").await
}

/// The read models as they are in `public`.
pub async fn read_models(pool: &PgPool) -> ReadModels {
    ReadModels {
        properties: json_rows(pool, "properties_view", "property_id").await,
        bookings: json_rows(pool, "bookings_view", "booking_id").await,
        inventory: inventory_rows(pool).await,
        audit: audit_rows(pool).await,
    }
}

/// The read models as the aggregates themselves say they must be: each
/// property's calendar replayed from its stream, each row carrying the
/// position of the last event that shaped it.
pub async fn expected_read_models(store: &EventStore) -> ReadModels {
    let mut expected = ReadModels::default();
    for property_id in properties_in_log(store.pool()).await {
        let events = store
            .load_after(property_id, 0)
            .await
            .expect("load a property's events");
        let history = store
            .history(property_id, 0, i64::MAX)
            .await
            .expect("read a property's history");
        assert_eq!(events.len(), history.len());
        let mut calendar = PropertyCalendar::default();
        let mut last_property_event = 0;
        let mut last_about: HashMap<Uuid, i64> = HashMap::new();
        for ((_, position, event), stored) in events.iter().zip(&history) {
            assert_eq!(*position, stored.position);
            let subject = event.subject();
            match subject {
                Some(id) => {
                    last_about.insert(id, *position);
                }
                None => last_property_event = *position,
            }
            let (action, resource_type) = ledger_projections::audit::action(event);
            expected.audit.push(AuditEntry {
                id: stored.event_id,
                agency_id: stored.metadata["agency_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("metadata has the agency"),
                user_id: stored.metadata["user_id"]
                    .as_str()
                    .expect("metadata has the user")
                    .to_owned(),
                action: action.to_owned(),
                resource_type: resource_type.to_owned(),
                resource_id: subject.unwrap_or(property_id),
                details: stored.payload.clone(),
                created_at: stored.recorded_at,
                position: *position,
            });
            cqrs_es::Aggregate::apply(&mut calendar, event.clone());
        }
        let Some(property) = &calendar.property else {
            continue;
        };
        let agency = property.agency_id;
        expected
            .properties
            .push(PropertyRow::new(property, last_property_event));
        for booking in calendar.bookings.values() {
            expected
                .bookings
                .push(BookingRow::new(agency, booking, last_about[&booking.id]));
        }
        for (kind, id, nights) in calendar.active_claims() {
            let (kind, status) = match kind {
                ClaimKind::Booking => {
                    let booking = &calendar.bookings[&id];
                    assert!(booking.status.is_active());
                    assert_eq!(booking.nights, nights);
                    ("booking", booking.status.as_str())
                }
                ClaimKind::Block => {
                    assert!(!calendar.blocks[&id].released);
                    ("block", "blocked")
                }
            };
            expected.inventory.push(InventoryRow {
                ref_id: id,
                agency_id: agency,
                property_id,
                kind: kind.into(),
                start: nights.start,
                end: nights.end,
                status: status.into(),
                position: last_about[&id],
            });
        }
        // The claim index agrees with the records it indexes.
        let active_bookings = calendar
            .bookings
            .values()
            .filter(|b| b.status.is_active())
            .count();
        let unreleased_blocks = calendar.blocks.values().filter(|b| !b.released).count();
        assert_eq!(
            calendar.active_claims().count(),
            active_bookings + unreleased_blocks
        );
    }
    expected.properties.sort_by_key(|p| p.property_id);
    expected.bookings.sort_by_key(|b| b.booking_id);
    expected.inventory.sort();
    expected.audit.sort_by_key(|a| (a.position, a.id));
    expected
}

/// Asserts the read models equal what the aggregates say, table by table.
pub async fn assert_read_models_match_aggregates(pool: &PgPool) {
    let store = EventStore::new(pool.clone());
    let expected = expected_read_models(&store).await;
    let actual = read_models(pool).await;
    assert_eq!(actual.properties, expected.properties, "properties_view");
    assert_eq!(actual.bookings, expected.bookings, "bookings_view");
    assert_eq!(actual.inventory, expected.inventory, "inventory_ranges");
    assert_eq!(actual.audit, expected.audit, "audit_log");
}

/// How a scenario that parked or failed on the way ends: once every
/// projection has caught up, the read models hold exactly what the
/// aggregates do.
pub async fn assert_nothing_lost(pool: &PgPool) {
    catch_up_all(pool).await;
    assert_read_models_match_aggregates(pool).await;
}

/// Each read-model table as JSON rows sorted by its key.
pub async fn snapshot(pool: &PgPool) -> Vec<(&'static str, Value)> {
    let mut tables = Vec::new();
    for (table, key) in [
        ("inventory_ranges", "ref_id"),
        ("properties_view", "property_id"),
        ("bookings_view", "booking_id"),
        ("audit_log", "id"),
    ] {
        let rows: Value = sqlx::query_scalar(&format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY {key}), '[]'::jsonb) FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("snapshot {table}: {e}"));
        tables.push((table, rows));
    }
    tables
}

/// A `BookingReserved` for `property` as the aggregate would decide it.
pub fn reserved_event(property: Uuid, booking: Uuid, start: u64, end: u64) -> CalendarEvent {
    CalendarEvent::BookingReserved {
        booking_id: booking,
        property_id: property,
        status: BookingStatus::Confirmed,
        check_in: day(start),
        check_out: day(end),
        details: reserve_stay(booking, start, end).details,
        hold_expires_at: None,
        at: at(1),
        room_type_id: None,
    }
}
