//! Our event store on postgres-es's `events` layout. We do not go through
//! postgres-es's repository: it cannot return the global position, cannot
//! share its transaction, and its snapshots apply events twice
//! (docs/event-store.md). The primary key on
//! `(aggregate_type, aggregate_id, sequence)` is the optimistic lock.

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use ledger_domain::{CalendarEvent, PropertyCalendar};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Row, Transaction};
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
}

impl Loaded {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Booking,
    Block,
}

impl RefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Booking => "booking",
            RefKind::Block => "block",
        }
    }
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
    pub refs: &'a [(Uuid, RefKind)],
    pub kept: Option<KeptReply<'a>>,
}

impl Append<'_> {
    /// The rows this command writes, encoded, owned: what a group commit
    /// carries from the command's task to the statement.
    pub fn prepare(&self) -> Prepared {
        let count = self.events.len() as i64;
        Prepared {
            property_id: self.property_id,
            agency_id: self.metadata.agency_id,
            sequences: (1..=count).map(|i| self.expected_sequence + i).collect(),
            types: self.events.iter().map(|e| e.kind()).collect(),
            versions: self.events.iter().map(|e| e.event_version()).collect(),
            payloads: self
                .events
                .iter()
                .map(|e| e.payload().to_string())
                .collect(),
            metadata: serde_json::to_string(self.metadata).unwrap_or_else(|_| "{}".into()),
            ids: self.events.iter().map(|_| Uuid::now_v7()).collect(),
            refs: self.refs.to_vec(),
            kept: self.kept.map(|k| PreparedReply {
                key: k.key.to_owned(),
                request_hash: k.request_hash.to_owned(),
                status: k.status,
                body: k.body.to_string(),
            }),
        }
    }
}

/// A kept reply, owned and encoded.
#[derive(Debug, Clone)]
pub struct PreparedReply {
    key: String,
    request_hash: String,
    status: i16,
    body: String,
}

/// One command's rows, encoded and owned ([`Append::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    property_id: Uuid,
    agency_id: Uuid,
    sequences: Vec<i64>,
    types: Vec<&'static str>,
    versions: Vec<String>,
    payloads: Vec<String>,
    metadata: String,
    ids: Vec<Uuid>,
    refs: Vec<(Uuid, RefKind)>,
    kept: Option<PreparedReply>,
}

/// Writes the rows of several commands (on different properties) in ONE
/// statement: one round trip, and in autocommit one transaction and one WAL
/// flush for all of them. All or nothing: when any row is refused (a lost
/// race, a key already taken) nothing is written. Returns each command's
/// positions, in the order given.
async fn write_prepared<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    commands: &[&Prepared],
) -> Result<Vec<Vec<i64>>, sqlx::Error> {
    let mut cmd = Vec::new();
    let mut aggregate_ids = Vec::new();
    let mut sequences = Vec::new();
    let mut types = Vec::new();
    let mut versions = Vec::new();
    let mut payloads = Vec::new();
    let mut metadata = Vec::new();
    let mut ids = Vec::new();
    let (mut ref_ids, mut ref_kinds, mut ref_agencies, mut ref_properties) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut kept_cmd, mut kept_agency, mut kept_key, mut kept_hash, mut kept_status) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut kept_body = Vec::new();
    for (i, c) in commands.iter().enumerate() {
        let i = i as i32;
        let property = c.property_id.to_string();
        for n in 0..c.ids.len() {
            cmd.push(i);
            aggregate_ids.push(property.clone());
            sequences.push(c.sequences[n]);
            types.push(c.types[n]);
            versions.push(c.versions[n].as_str());
            payloads.push(c.payloads[n].as_str());
            metadata.push(c.metadata.as_str());
            ids.push(c.ids[n]);
        }
        for (id, kind) in &c.refs {
            ref_ids.push(*id);
            ref_kinds.push(kind.as_str());
            ref_agencies.push(c.agency_id);
            ref_properties.push(c.property_id);
        }
        if let Some(k) = &c.kept {
            kept_cmd.push(i);
            kept_agency.push(c.agency_id);
            kept_key.push(k.key.as_str());
            kept_hash.push(k.request_hash.as_str());
            kept_status.push(k.status);
            kept_body.push(k.body.as_str());
        }
    }
    let rows = sqlx::query(
        "WITH input AS (
            SELECT * FROM UNNEST($2::int[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::uuid[])
                   WITH ORDINALITY AS e(cmd, aggregate_id, sequence, event_type, event_version,
                                        payload, metadata, event_id, n)
         ), appended AS (
            INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                event_version, payload, metadata, event_id)
            SELECT $1, e.aggregate_id, e.sequence, e.event_type, e.event_version,
                   e.payload::json, e.metadata::json, e.event_id
              FROM input e
             ORDER BY e.n
            RETURNING position, event_id
         ), placed AS (
            SELECT e.cmd, a.position FROM appended a JOIN input e USING (event_id)
         ), refs AS (
            INSERT INTO resource_refs (ref_id, kind, agency_id, property_id)
            SELECT * FROM UNNEST($10::uuid[], $11::text[], $12::uuid[], $13::uuid[])
         ), kept AS (
            INSERT INTO idempotency_keys (agency_id, key, request_hash, status_code, response)
            SELECT k.agency_id, k.key, k.request_hash, k.status,
                   CASE WHEN k.body::jsonb ? 'position'
                        THEN jsonb_set(k.body::jsonb, '{position}',
                                       to_jsonb((SELECT max(p.position) FROM placed p
                                                  WHERE p.cmd = k.cmd)))
                        ELSE k.body::jsonb END
              FROM UNNEST($14::int[], $15::uuid[], $16::text[], $17::text[], $18::int2[],
                          $19::text[]) AS k(cmd, agency_id, key, request_hash, status, body)
         )
         SELECT cmd, position FROM placed ORDER BY position",
    )
    .bind(AGGREGATE_TYPE)
    .bind(&cmd)
    .bind(&aggregate_ids)
    .bind(&sequences)
    .bind(&types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&metadata)
    .bind(&ids)
    .bind(&ref_ids)
    .bind(&ref_kinds)
    .bind(&ref_agencies)
    .bind(&ref_properties)
    .bind(&kept_cmd)
    .bind(&kept_agency)
    .bind(&kept_key)
    .bind(&kept_hash)
    .bind(&kept_status)
    .bind(&kept_body)
    .fetch_all(executor)
    .await?;
    let mut positions = vec![Vec::new(); commands.len()];
    for row in rows {
        let cmd: i32 = row.try_get("cmd")?;
        let position: i64 = row.try_get("position")?;
        if let Some(list) = positions.get_mut(cmd as usize) {
            list.push(position);
        }
    }
    Ok(positions)
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
        &self,
        property_id: Uuid,
        after_sequence: i64,
    ) -> Result<Vec<(i64, i64, CalendarEvent)>, StoreError> {
        let rows = sqlx::query(
            "SELECT sequence, position, event_type, event_version, payload
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
              ORDER BY sequence",
        )
        .bind(AGGREGATE_TYPE)
        .bind(property_id.to_string())
        .bind(after_sequence)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let sequence: i64 = row.try_get("sequence")?;
                let event = decode(
                    row.try_get("event_type")?,
                    row.try_get("event_version")?,
                    row.try_get("payload")?,
                )
                .map_err(|reason| StoreError::Unreadable {
                    property_id,
                    sequence,
                    reason,
                })?;
                Ok((sequence, row.try_get("position")?, event))
            })
            .collect()
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
        tx: &mut Transaction<'_, Postgres>,
        property_id: Uuid,
        expected_sequence: i64,
        events: &[CalendarEvent],
        metadata: &EventMetadata,
    ) -> Result<Vec<i64>, sqlx::Error> {
        let append = Append {
            property_id,
            expected_sequence,
            events,
            metadata,
            refs: &[],
            kept: None,
        };
        let prepared = append.prepare();
        let mut positions = write_prepared(&mut **tx, &[&prepared]).await?;
        Ok(positions.pop().unwrap_or_default())
    }

    /// Appends a command's events with the refs they create and the reply
    /// kept for its Idempotency-Key, in ONE statement: one round trip, one
    /// commit, all or nothing. The kept reply's top-level `position`, when it
    /// has one, is set to the position of the last event appended. A lost
    /// race is a unique violation on `events_pkey`; a key another request
    /// holds, on `idempotency_keys_pkey`.
    pub async fn append_command(&self, append: &Append<'_>) -> Result<Vec<i64>, sqlx::Error> {
        let mut positions = self.append_prepared(&[&append.prepare()]).await?;
        Ok(positions.pop().unwrap_or_default())
    }

    /// [`EventStore::append_command`] for several commands on different
    /// properties at once (group commit): one statement, one transaction,
    /// one WAL flush; all are written or none. Each command's positions, in
    /// the order given.
    pub async fn append_prepared(
        &self,
        commands: &[&Prepared],
    ) -> Result<Vec<Vec<i64>>, sqlx::Error> {
        write_prepared(&self.pool, commands).await
    }

    /// Keeps a reply for an Idempotency-Key that no event goes with (a
    /// refusal, or a command that changed nothing).
    pub async fn keep_reply<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        agency_id: Uuid,
        kept: &KeptReply<'_>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO idempotency_keys (agency_id, key, request_hash, status_code, response)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(agency_id)
        .bind(kept.key)
        .bind(kept.request_hash)
        .bind(kept.status)
        .bind(kept.body)
        .execute(executor)
        .await?;
        Ok(())
    }

    /// Records which property a new booking or block belongs to, in the
    /// transaction of the event that creates it.
    pub async fn record_ref(
        tx: &mut Transaction<'_, Postgres>,
        ref_id: Uuid,
        kind: RefKind,
        agency_id: Uuid,
        property_id: Uuid,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO resource_refs (ref_id, kind, agency_id, property_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(ref_id)
        .bind(kind.as_str())
        .bind(agency_id)
        .bind(property_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The property of an agency's booking or block; `None` when the id is
    /// unknown or belongs to another agency (the caller answers 404 for both).
    pub async fn resolve_ref(
        &self,
        ref_id: Uuid,
        kind: RefKind,
        agency_id: Uuid,
    ) -> Result<Option<Uuid>, DbError> {
        let property: Option<Uuid> = sqlx::query_scalar(
            "SELECT property_id FROM resource_refs WHERE ref_id = $1 AND kind = $2 AND agency_id = $3",
        )
        .bind(ref_id)
        .bind(kind.as_str())
        .bind(agency_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(property)
    }

    /// The highest position in the log: a read of the log itself has reached it.
    pub async fn head(&self) -> Result<i64, DbError> {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(head)
    }

    /// A page of a property's raw history, in order, after `after_sequence`.
    pub async fn history(
        &self,
        property_id: Uuid,
        after_sequence: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, DbError> {
        let rows = sqlx::query(
            "SELECT position, sequence, event_id, event_type, event_version,
                    payload::jsonb AS payload, metadata::jsonb AS metadata, recorded_at
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
              ORDER BY sequence
              LIMIT $4",
        )
        .bind(AGGREGATE_TYPE)
        .bind(property_id.to_string())
        .bind(after_sequence)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let events = rows
            .into_iter()
            .map(|row| {
                Ok(StoredEvent {
                    position: row.try_get("position")?,
                    sequence: row.try_get("sequence")?,
                    event_id: row.try_get("event_id")?,
                    event_type: row.try_get("event_type")?,
                    event_version: row.try_get("event_version")?,
                    payload: row.try_get("payload")?,
                    metadata: row.try_get("metadata")?,
                    recorded_at: row.try_get("recorded_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(events)
    }
}

/// Decodes a stored event, upcasting older versions first. Version "1" is the
/// only one so far; a new version adds a step here, never an edit of the log.
pub fn decode(
    event_type: String,
    event_version: String,
    payload: Value,
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
