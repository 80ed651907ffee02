//! Our event store on postgres-es's `events` layout. We do not go through
//! postgres-es's repository: it cannot return the global position, cannot
//! share its transaction, and its snapshots apply events twice
//! (docs/event-store.md). The primary key on
//! `(aggregate_type, aggregate_id, sequence)` is the optimistic lock.

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use ledger_domain::values::ClaimKind;
use ledger_domain::{CalendarEvent, PropertyCalendar};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::db::DbError;

const AGGREGATE_TYPE: &str = PropertyCalendar::TYPE;

/// A property calendar as of its last stored event.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub calendar: PropertyCalendar,
    /// Sequence of the last event folded in (0: no events).
    pub sequence: i64,
    /// Global position of the last event folded in (0: no events).
    pub position: i64,
    /// Sequence of the newest snapshot of this calendar known to be stored
    /// (0: none), so a load knows when another one is due.
    pub snapshot_sequence: i64,
}

/// Version of the calendar snapshots written by this build. Bump it when
/// `PropertyCalendar`'s fields or its `apply` change meaning: older
/// snapshots are then ignored (and replaced) instead of being trusted.
pub const SNAPSHOT_VERSION: i32 = 2;

/// A load that folds at least this many events past the newest snapshot
/// writes a new one.
pub const SNAPSHOT_EVERY: i64 = 1_000;

impl Loaded {
    /// Whether enough events were folded since the newest snapshot to write
    /// another one.
    pub fn snapshot_due(&self) -> bool {
        self.sequence - self.snapshot_sequence >= SNAPSHOT_EVERY
    }

    /// Folds newer events in order; events at or below `sequence` are ignored.
    pub fn fold(&mut self, events: Vec<(i64, i64, CalendarEvent)>) {
        for (sequence, position, event) in events {
            if sequence <= self.sequence {
                continue;
            }
            self.calendar.apply(event);
            self.sequence = sequence;
            self.position = self.position.max(position);
        }
    }
}

/// One row of the log as stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub position: i64,
    pub sequence: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

/// The facts about a write that go into every event's `metadata`.
#[derive(Debug, Clone, Serialize)]
pub struct EventMetadata {
    pub agency_id: Uuid,
    pub user_id: String,
    pub role: &'static str,
    pub request_id: String,
    pub recorded_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored event that this code cannot read: a bug or a missing upcaster.
    #[error("event {sequence} of property {property_id} cannot be read: {reason}")]
    Unreadable {
        property_id: Uuid,
        sequence: i64,
        reason: String,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Db(error.into())
    }
}

/// A reply kept for an Idempotency-Key, written with the events it answers for.
#[derive(Debug, Clone, Copy)]
pub struct KeptReply<'a> {
    pub key: &'a str,
    pub request_hash: &'a str,
    pub status: i16,
    pub body: &'a Value,
}

/// What one command writes to the log.
#[derive(Debug, Clone, Copy)]
pub struct Append<'a> {
    pub property_id: Uuid,
    pub expected_sequence: i64,
    pub events: &'a [CalendarEvent],
    pub metadata: &'a EventMetadata,
    /// The bookings and blocks the events bring into existence.
    pub refs: &'a [(Uuid, ClaimKind)],
    pub kept: Option<KeptReply<'a>>,
}

impl Append<'_> {
    async fn run<'e>(&self, executor: impl sqlx::PgExecutor<'e>) -> Result<Vec<i64>, sqlx::Error> {
        let count = self.events.len() as i64;
        let sequences: Vec<i64> = (1..=count).map(|i| self.expected_sequence + i).collect();
        let types: Vec<&str> = self.events.iter().map(|e| e.kind()).collect();
        let versions: Vec<String> = self.events.iter().map(|e| e.event_version()).collect();
        let payloads: Vec<String> = self
            .events
            .iter()
            .map(|e| e.payload().to_string())
            .collect();
        let metadata = serde_json::to_string(self.metadata).unwrap_or_else(|_| "{}".into());
        let ids: Vec<Uuid> = self.events.iter().map(|_| Uuid::now_v7()).collect();
        let ref_ids: Vec<Uuid> = self.refs.iter().map(|(id, _)| *id).collect();
        let ref_kinds: Vec<ClaimKind> = self.refs.iter().map(|(_, kind)| *kind).collect();
        let kept = self.kept.as_ref();
        // `$3::text::json`: the metadata goes in as the text serde wrote,
        // keys in that order, as a `String` argument.
        sqlx::query_scalar!(
            r#"WITH appended AS (
                INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                    event_version, payload, metadata, event_id)
                SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload::json,
                       $3::text::json, e.event_id
                  FROM UNNEST($4::bigint[], $5::text[], $6::text[], $7::text[], $8::uuid[])
                       WITH ORDINALITY AS e(sequence, event_type, event_version, payload, event_id, n)
                 ORDER BY e.n
                RETURNING position
             ), refs AS (
                INSERT INTO resource_refs (ref_id, kind, agency_id, property_id)
                SELECT r.ref_id, r.kind, $9, $10
                  FROM UNNEST($11::uuid[], $12::text[]) AS r(ref_id, kind)
             ), kept AS (
                INSERT INTO idempotency_keys (agency_id, key, request_hash, status_code, response)
                SELECT $9, $13, $14, $15,
                       CASE WHEN $16::jsonb ? 'position'
                            THEN jsonb_set($16::jsonb, '{position}',
                                           to_jsonb((SELECT max(position) FROM appended)))
                            ELSE $16::jsonb END
                 WHERE $13::text IS NOT NULL
             )
             SELECT position AS "position!" FROM appended ORDER BY position"#,
            AGGREGATE_TYPE,
            self.property_id.to_string(),
            metadata,
            &sequences,
            &types as &[&str],
            &versions,
            &payloads,
            &ids,
            self.metadata.agency_id,
            self.property_id,
            &ref_ids,
            &ref_kinds as &[ClaimKind],
            kept.map(|k| k.key),
            kept.map(|k| k.request_hash),
            kept.map(|k| k.status),
            kept.map(|k| k.body),
        )
        .fetch_all(executor)
        .await
    }
}

#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The events of a property after `after_sequence`, decoded, in order:
    /// `(sequence, position, event)`.
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn load_after(
        &self, property_id: Uuid, after_sequence: i64,
    ) -> Result<Vec<(i64, i64, CalendarEvent)>, StoreError> {
        let rows = sqlx::query!(
            "SELECT sequence, position, event_type, event_version, payload
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
              ORDER BY sequence",
            AGGREGATE_TYPE,
            property_id.to_string(),
            after_sequence,
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let sequence = row.sequence;
                let event =
                    decode(row.event_type, row.event_version, row.payload).map_err(|reason| {
                        StoreError::Unreadable {
                            property_id,
                            sequence,
                            reason,
                        }
                    })?;
                Ok((sequence, row.position, event))
            })
            .collect()
    }

    /// The stored snapshot of a property's calendar, if there is one of
    /// [`SNAPSHOT_VERSION`] that decodes. A snapshot that does not decode is
    /// logged and ignored: the history is the truth, the snapshot a cache.
    pub async fn load_snapshot(&self, property_id: Uuid) -> Result<Option<Loaded>, StoreError> {
        let row = sqlx::query!(
            "SELECT sequence, position, state FROM calendar_snapshots
              WHERE property_id = $1 AND version = $2",
            property_id,
            SNAPSHOT_VERSION,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|row| {
            let (sequence, position) = (row.sequence, row.position);
            match serde_json::from_value::<PropertyCalendar>(row.state) {
                Ok(calendar) => Some(Loaded {
                    calendar,
                    sequence,
                    position,
                    snapshot_sequence: sequence,
                }),
                Err(error) => {
                    tracing::warn!(%property_id, sequence, %error, "calendar snapshot ignored: it does not decode");
                    None
                }
            }
        }))
    }

    /// Stores `loaded` as the property's snapshot, unless a newer one of
    /// this version is already there (two processes may write at once).
    pub async fn save_snapshot(
        &self, property_id: Uuid, loaded: &Loaded,
    ) -> Result<(), sqlx::Error> {
        let state = serde_json::to_value(&loaded.calendar)
            .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        sqlx::query!(
            "INSERT INTO calendar_snapshots (property_id, version, sequence, position, state)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (property_id) DO UPDATE
                SET version = EXCLUDED.version, sequence = EXCLUDED.sequence,
                    position = EXCLUDED.position, state = EXCLUDED.state, taken_at = now()
              WHERE calendar_snapshots.version <> EXCLUDED.version
                 OR calendar_snapshots.sequence < EXCLUDED.sequence",
            property_id,
            SNAPSHOT_VERSION,
            loaded.sequence,
            loaded.position,
            state,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A property's calendar replayed from its whole history.
    pub async fn load(&self, property_id: Uuid) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        loaded.fold(self.load_after(property_id, 0).await?);
        Ok(loaded)
    }

    /// Appends events after `expected_sequence` inside `tx` and returns their
    /// global positions in order. A concurrent append shows up as a unique
    /// violation on `events_pkey` when the transaction writes or commits.
    pub async fn append(
        tx: &mut Transaction<'_, Postgres>, property_id: Uuid, expected_sequence: i64,
        events: &[CalendarEvent], metadata: &EventMetadata,
    ) -> Result<Vec<i64>, sqlx::Error> {
        let append = Append {
            property_id,
            expected_sequence,
            events,
            metadata,
            refs: &[],
            kept: None,
        };
        append.run(&mut **tx).await
    }

    /// Appends a command's events with the refs they create and the reply
    /// kept for its Idempotency-Key, in ONE statement: one round trip, one
    /// commit, all or nothing. The kept reply's top-level `position`, when it
    /// has one, is set to the position of the last event appended. A lost
    /// race is a unique violation on `events_pkey`; a key another request
    /// holds, on `idempotency_keys_pkey`.
    pub async fn append_command(&self, append: &Append<'_>) -> Result<Vec<i64>, sqlx::Error> {
        append.run(&self.pool).await
    }

    /// Keeps a reply for an Idempotency-Key that no event goes with (a
    /// refusal, or a command that changed nothing).
    pub async fn keep_reply<'e>(
        executor: impl sqlx::PgExecutor<'e>, agency_id: Uuid, kept: &KeptReply<'_>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "INSERT INTO idempotency_keys (agency_id, key, request_hash, status_code, response)
             VALUES ($1, $2, $3, $4, $5)",
            agency_id,
            kept.key,
            kept.request_hash,
            kept.status,
            kept.body,
        )
        .execute(executor)
        .await?;
        Ok(())
    }

    /// Records which property a new booking or block belongs to, in the
    /// transaction of the event that creates it.
    pub async fn record_ref(
        tx: &mut Transaction<'_, Postgres>, ref_id: Uuid, kind: ClaimKind, agency_id: Uuid,
        property_id: Uuid,
    ) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "INSERT INTO resource_refs (ref_id, kind, agency_id, property_id) VALUES ($1, $2, $3, $4)",
            ref_id,
            kind as ClaimKind,
            agency_id,
            property_id,
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The property of an agency's booking or block; `None` when the id is
    /// unknown or belongs to another agency (the caller answers 404 for both).
    pub async fn resolve_ref(
        &self, ref_id: Uuid, kind: ClaimKind, agency_id: Uuid,
    ) -> Result<Option<Uuid>, DbError> {
        let property = sqlx::query_scalar!(
            "SELECT property_id FROM resource_refs WHERE ref_id = $1 AND kind = $2 AND agency_id = $3",
            ref_id,
            kind as ClaimKind,
            agency_id,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(property)
    }

    /// The highest position in the log: a read of the log itself has reached it.
    pub async fn head(&self) -> Result<i64, DbError> {
        Ok(crate::tail::head(&self.pool).await?)
    }

    /// A page of a property's raw history, in order, after `after_sequence`.
    pub async fn history(
        &self, property_id: Uuid, after_sequence: i64, limit: i64,
    ) -> Result<Vec<StoredEvent>, DbError> {
        let events = sqlx::query_as!(
            StoredEvent,
            r#"SELECT position, sequence, event_id, event_type, event_version,
                    payload::jsonb AS "payload!", metadata::jsonb AS "metadata!", recorded_at
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
              ORDER BY sequence
              LIMIT $4"#,
            AGGREGATE_TYPE,
            property_id.to_string(),
            after_sequence,
            limit,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(events)
    }
}

/// Decodes a stored event, upcasting older versions first. Version "1" is the
/// only one so far; a new version adds a step here, never an edit of the log.
pub fn decode(
    event_type: String, event_version: String, payload: Value,
) -> Result<CalendarEvent, String> {
    let payload = upcast(&event_type, &event_version, payload)?;
    CalendarEvent::from_stored(&event_type, payload).map_err(|e| e.to_string())
}

fn upcast(event_type: &str, event_version: &str, payload: Value) -> Result<Value, String> {
    match event_version {
        ledger_domain::events::EVENT_VERSION => Ok(payload),
        other => Err(format!("no upcaster for {event_type} version {other}")),
    }
}

/// For cqrs-es tools pointed at our log (postgres-es's
/// `PostgresEventRepository` reads it as it is, projections/tests/postgres_es.rs):
/// cqrs-es stores an event as its externally tagged enum,
/// `{"booking.reserved": {...}}`, and we store only the inner object, because
/// `event_type` already names it. This upcaster adds the tag back, so
/// `PersistedEventStore::new_event_store(repo).with_upcasters(vec![Box::new(TagPayload)])`
/// loads a `PropertyCalendar` exactly as [`EventStore::load`] does.
pub struct TagPayload;

impl cqrs_es::persist::EventUpcaster for TagPayload {
    fn can_upcast(&self, _event_type: &str, event_version: &str) -> bool {
        event_version == ledger_domain::events::EVENT_VERSION
    }

    fn upcast(
        &self, mut event: cqrs_es::persist::SerializedEvent,
    ) -> cqrs_es::persist::SerializedEvent {
        event.payload = CalendarEvent::tagged(&event.event_type, event.payload.take());
        event
    }
}
