//! The export adapter: follows the stream with the channel kit and keeps, per
//! property, the ranges of nights that are held (the domain's rule,
//! `ledger_domain::claims`, which the `inventory_ranges` projection folds
//! too), which `ledger_domain::ical::render` renders as an iCalendar document.
//!
//! Each event is applied in one transaction with the property's cursor (its
//! last applied `ledgersequence`), then acked. An event at or below the
//! cursor is a duplicate and changes nothing; one past `cursor + 1` means the
//! stream skipped something (or another process got ahead): the property is
//! then rebuilt from the log up to that event. So the table is right whatever
//! order deliveries arrive in, and however many processes share the durable
//! consumer.
//!
//! The export gives the kit its state ([`AdapterState`]), so snapshots
//! replace a property's ranges and drift checksums are checked against them
//! (docs/channels.md); each range keeps its status for that.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use ledger_domain::checksum::{self, ChannelRange};
use ledger_domain::claims::{claim_change, ClaimChange};
pub use ledger_domain::ical::render::ExportRange;
use ledger_domain::values::ClaimKind;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::channel::{
    AdapterState, Binding, ChannelConsumer, ChannelError, LedgerEvent, Snapshot, StateError,
};
use crate::event_store::{EventStore, Loaded, StoreError};
use crate::nats::Client;

/// The durable consumer's name on the `LEDGER` stream.
pub const CONSUMER: &str = "ical-export";

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event was the next one of its property.
    Applied,
    /// At or below the property's cursor: nothing changed.
    Duplicate,
    /// Past `cursor + 1`: the property was rebuilt from the log.
    Resynchronised,
}

#[derive(Clone)]
pub struct IcalExport {
    store: EventStore,
}

impl IcalExport {
    pub fn new(pool: PgPool) -> Self {
        Self {
            store: EventStore::new(pool),
        }
    }

    fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// Follows the stream for as long as the process runs. NATS or database
    /// failures are logged and retried; an event that cannot be applied is
    /// nak'ed and comes back.
    pub async fn run(self, client: Client) {
        let mut failures = 0u32;
        loop {
            match self.follow(&client).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, "ical export: cannot follow the stream; retrying");
                }
            }
            tokio::time::sleep(backoff(failures)).await;
        }
    }

    async fn follow(
        &self, client: &Client,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let cursors = self.cursors().await?;
        let mut consumer = ChannelConsumer::bind(client, Binding::new(CONSUMER))
            .await?
            .resume_from(cursors)
            .with_state(Arc::new(self.clone()));
        tracing::info!("ical export: following the stream");
        while let Some(delivery) = consumer.next().await {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(ChannelError::Malformed { .. }) => continue,
                Err(error) => {
                    tracing::debug!(%error, "ical export: a pull failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match self.apply(&delivery.event).await {
                Ok(_) => delivery.ack().await?,
                Err(error) => {
                    tracing::warn!(%error, property_id = %delivery.event.property_id,
                        sequence = delivery.event.sequence(), "ical export: event not applied; redelivering");
                    delivery.nak(Some(Duration::from_secs(1))).await?;
                }
            }
        }
        Ok(())
    }

    /// The last applied sequence of every property.
    pub async fn cursors(&self) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
        let rows = sqlx::query!("SELECT property_id, sequence FROM ical_export_cursors")
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.property_id, row.sequence))
            .collect())
    }

    /// Applies one event idempotently (see the module docs).
    #[tracing::instrument(skip_all, fields(property_id = %event.property_id, sequence = event.sequence()))]
    pub async fn apply(&self, event: &LedgerEvent) -> Result<Applied, StoreError> {
        let property_id = event.property_id;
        let sequence = event.sequence();
        let mut tx = self.pool().begin().await?;
        let last = lock_cursor(&mut tx, event.agency_id, property_id).await?;
        let applied = if sequence <= last {
            Applied::Duplicate
        } else if sequence == last + 1 {
            apply_event(&mut tx, event).await?;
            Applied::Applied
        } else {
            let ranges = self.ranges_from_log(property_id, sequence).await?;
            replace_property(&mut tx, event.agency_id, property_id, &ranges).await?;
            tracing::info!(%property_id, from = last, to = sequence, "ical export: resynchronised from the log");
            Applied::Resynchronised
        };
        if applied != Applied::Duplicate {
            move_cursor(&mut tx, property_id, sequence).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// The held ranges of a property after its first `up_to` events.
    async fn ranges_from_log(
        &self, property_id: Uuid, up_to: i64,
    ) -> Result<Vec<ExportRange>, StoreError> {
        let mut events = self.store.load_after(property_id, 0).await?;
        events.retain(|(sequence, _, _)| *sequence <= up_to);
        let mut loaded = Loaded::default();
        loaded.fold(events);
        let calendar = &loaded.calendar;
        // Every active claim, on the single unit or a room type: what a
        // snapshot over all nights would list.
        Ok(
            checksum::ranges_in(calendar, NaiveDate::MIN, NaiveDate::MAX)
                .into_iter()
                .map(|r| {
                    let changed_at = match r.kind {
                        ClaimKind::Booking => calendar.bookings.get(&r.id).map(|b| b.updated_at),
                        ClaimKind::Block => calendar.blocks.get(&r.id).map(|b| b.created_at),
                    };
                    ExportRange {
                        claim: r,
                        changed_at: changed_at.unwrap_or_default(),
                    }
                })
                .collect(),
        )
    }
}

/// The held ranges of a property as the adapter has them, by first night.
pub async fn ranges(pool: &PgPool, property_id: Uuid) -> Result<Vec<ExportRange>, sqlx::Error> {
    sqlx::query!(
        r#"SELECT ref_id, kind AS "kind: ClaimKind", start_night, end_night, changed_at, status,
                  room_type_id, units
             FROM ical_export_ranges
            WHERE property_id = $1 ORDER BY start_night, ref_id"#,
        property_id,
    )
    .map(|row| ExportRange {
        claim: ChannelRange {
            kind: row.kind,
            id: row.ref_id,
            start: row.start_night,
            end: row.end_night,
            status: row.status,
            room_type_id: row.room_type_id,
            units: row.units.map(|u| u32::try_from(u).unwrap_or(1)),
        },
        changed_at: row.changed_at,
    })
    .fetch_all(pool)
    .await
}

#[async_trait::async_trait]
impl AdapterState for IcalExport {
    /// Replaces the property's ranges and moves its cursor to the
    /// snapshot's sequence, unless the export is already past it.
    async fn replace(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        let data = &snapshot.data;
        let mut tx = self.pool().begin().await?;
        let last = lock_cursor(&mut tx, snapshot.agency_id, data.property_id).await?;
        if last > data.as_of_sequence {
            return Ok(());
        }
        let ranges: Vec<ExportRange> = data
            .ranges
            .iter()
            .map(|r| ExportRange {
                claim: r.clone(),
                changed_at: snapshot.time,
            })
            .collect();
        replace_property(&mut tx, snapshot.agency_id, data.property_id, &ranges).await?;
        move_cursor(&mut tx, data.property_id, data.as_of_sequence).await?;
        tx.commit().await?;
        tracing::info!(property_id = %data.property_id, as_of_sequence = data.as_of_sequence,
            "ical export: snapshot applied");
        Ok(())
    }

    async fn ranges(
        &self, property_id: Uuid, from: NaiveDate, to: NaiveDate,
    ) -> Result<Vec<ChannelRange>, StateError> {
        let held = ranges(self.pool(), property_id).await?;
        Ok(held
            .into_iter()
            .map(|r| r.claim)
            .filter(|r| r.end > from && r.start < to)
            .collect())
    }
}

/// The property's cursor (0 for a property not seen yet), locked until the
/// transaction ends, so one process at a time moves it.
async fn lock_cursor(
    conn: &mut PgConnection, agency_id: Uuid, property_id: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query!(
        "INSERT INTO ical_export_cursors (property_id, agency_id, sequence) VALUES ($1, $2, 0)
         ON CONFLICT (property_id) DO NOTHING",
        property_id,
        agency_id,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar!(
        "SELECT sequence FROM ical_export_cursors WHERE property_id = $1 FOR UPDATE",
        property_id
    )
    .fetch_one(conn)
    .await
}

async fn move_cursor(
    conn: &mut PgConnection, property_id: Uuid, sequence: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE ical_export_cursors SET sequence = $2, updated_at = now() WHERE property_id = $1",
        property_id,
        sequence,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Folds one event with the domain's rule of held nights.
async fn apply_event(conn: &mut PgConnection, event: &LedgerEvent) -> Result<(), sqlx::Error> {
    let Some(change) = claim_change(&event.event) else {
        return Ok(());
    };
    let at = event.cloud.time;
    match change {
        ClaimChange::Hold(hold) => {
            let range = ExportRange {
                claim: hold.channel_range(),
                changed_at: at,
            };
            insert(conn, event.agency_id, event.property_id, &range).await
        }
        ClaimChange::Move { id, nights } => {
            sqlx::query!(
                "UPDATE ical_export_ranges SET start_night = $2, end_night = $3, changed_at = $4
                  WHERE ref_id = $1",
                id,
                nights.start,
                nights.end,
                at,
            )
            .execute(conn)
            .await?;
            Ok(())
        }
        ClaimChange::Restatus { id, status } => set_status(conn, id, status).await,
        ClaimChange::Release { id, .. } => {
            sqlx::query!("DELETE FROM ical_export_ranges WHERE ref_id = $1", id)
                .execute(conn)
                .await?;
            Ok(())
        }
    }
}

async fn set_status(
    conn: &mut PgConnection, ref_id: Uuid, status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE ical_export_ranges SET status = $2 WHERE ref_id = $1",
        ref_id,
        status
    )
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert(
    conn: &mut PgConnection, agency_id: Uuid, property_id: Uuid, range: &ExportRange,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO ical_export_ranges (ref_id, agency_id, property_id, kind, start_night, end_night,
                                         changed_at, status, room_type_id, units)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (ref_id) DO UPDATE SET start_night = EXCLUDED.start_night,
             end_night = EXCLUDED.end_night, changed_at = EXCLUDED.changed_at,
             status = EXCLUDED.status",
        range.claim.id,
        agency_id,
        property_id,
        range.claim.kind as ClaimKind,
        range.claim.start,
        range.claim.end,
        range.changed_at,
        range.claim.status,
        range.claim.room_type_id,
        range.claim.units.map(|u| i32::try_from(u).unwrap_or(i32::MAX)),
    )
    .execute(conn)
    .await?;
    Ok(())
}

async fn replace_property(
    conn: &mut PgConnection, agency_id: Uuid, property_id: Uuid, ranges: &[ExportRange],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM ical_export_ranges WHERE property_id = $1",
        property_id
    )
    .execute(&mut *conn)
    .await?;
    for range in ranges {
        insert(conn, agency_id, property_id, range).await?;
    }
    Ok(())
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis((500 * u64::from(failures.min(10))).max(200))
}
