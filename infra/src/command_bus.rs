//! Runs commands against property calendars: load → decide → append, with
//! everything that must be atomic with the events in the same transaction
//! (booking/block refs, the Idempotency-Key reply).
//!
//! Within one process, commands on one property queue on that property's
//! slot, which also caches the calendar so a command only reads the events
//! it has not seen. Across processes the events primary key is the lock: a
//! lost race rolls back having committed nothing, so the whole
//! load → decide → append is retried, a bounded number of times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use ledger_domain::{CalendarError, CalendarEvent, Command, PropertyCalendar};
use serde_json::Value;
use sqlx::Row;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::db::{unique_violation, DbError};
use crate::event_store::{EventMetadata, EventStore, Loaded, RefKind, StoreError};

const MAX_ATTEMPTS: u32 = 16;
/// Past this many cached calendars, idle ones are dropped.
const MAX_CACHED: usize = 20_000;

/// An HTTP reply as stored for an Idempotency-Key.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    /// Hash of method, path and body: the same key with another request is refused.
    pub request_hash: String,
}

/// One command to run, with what the log records about it.
#[derive(Debug, Clone)]
pub struct Execution {
    pub property_id: Uuid,
    pub command: Command,
    pub request_id: String,
    pub idempotency: Option<Idempotency>,
}

/// What `execute` did: a fresh reply, or the stored one for a repeated key.
pub type Outcome = Reply;

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error(transparent)]
    Domain(#[from] CalendarError),
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("the property is too busy right now; retry")]
    Busy,
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<DbError> for ExecuteError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Unavailable(e) => ExecuteError::Unavailable(e),
            DbError::Other(e) => ExecuteError::Internal(e.to_string()),
        }
    }
}

impl From<sqlx::Error> for ExecuteError {
    fn from(error: sqlx::Error) -> Self {
        DbError::from(error).into()
    }
}

impl From<StoreError> for ExecuteError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Db(db) => db.into(),
            other => ExecuteError::Internal(other.to_string()),
        }
    }
}

/// How one attempt ended when it did not produce a reply.
enum Retry {
    /// Another writer appended first: decide again on fresh state.
    LostRace,
    /// Another request with the same key committed first: answer with its reply.
    KeyTaken,
}

type Slot = Arc<Mutex<Loaded>>;

pub struct CommandBus {
    store: EventStore,
    slots: SyncMutex<HashMap<Uuid, Slot>>,
}

impl CommandBus {
    pub fn new(store: EventStore) -> Self {
        Self {
            store,
            slots: SyncMutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    fn slot(&self, property_id: Uuid) -> Slot {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slots.len() >= MAX_CACHED && !slots.contains_key(&property_id) {
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots.entry(property_id).or_default().clone()
    }

    /// Brings a cached calendar up to the log's latest event.
    async fn refresh(&self, property_id: Uuid, state: &mut Loaded) -> Result<(), StoreError> {
        let newer = self.store.load_after(property_id, state.sequence).await?;
        state.fold(newer);
        Ok(())
    }

    /// Reads a property's calendar as of the latest committed event.
    pub async fn read<T>(
        &self,
        property_id: Uuid,
        view: impl FnOnce(&Loaded) -> T,
    ) -> Result<T, ExecuteError> {
        let slot = self.slot(property_id);
        let mut state = slot.lock().await;
        if let Err(error) = self.refresh(property_id, &mut state).await {
            *state = Loaded::default();
            return Err(error.into());
        }
        Ok(view(&state))
    }

    /// Runs a command and returns the reply `render` builds from the calendar
    /// after it and the position of its last event. With an Idempotency-Key, a
    /// repeated request gets the first reply back and appends nothing.
    #[tracing::instrument(skip_all, fields(property_id = %execution.property_id, request_id = %execution.request_id))]
    pub async fn execute(
        &self,
        execution: &Execution,
        render: &(dyn Fn(&PropertyCalendar, i64) -> Reply + Send + Sync),
    ) -> Result<Outcome, ExecuteError> {
        let slot = self.slot(execution.property_id);
        for attempt in 1..=MAX_ATTEMPTS {
            let mut state = slot.lock().await;
            if let Some(reply) = self.replay(execution, &mut state).await? {
                return Ok(reply);
            }
            let attempt_result = self.attempt(execution, &mut state, render).await;
            if !matches!(attempt_result, Ok(Ok(_)) | Err(ExecuteError::Domain(_))) {
                // The cached calendar may hold events that did not commit.
                *state = Loaded::default();
            }
            drop(state);
            match attempt_result {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(Retry::KeyTaken)) => continue,
                Ok(Err(Retry::LostRace)) => {
                    tracing::debug!(attempt, "lost an append race; deciding again");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(ExecuteError::Domain(refusal)) => {
                    // A concurrent twin with the same key may have won: answer as it did.
                    let mut state = slot.lock().await;
                    if let Some(reply) = self.replay(execution, &mut state).await? {
                        return Ok(reply);
                    }
                    return Err(refusal.into());
                }
                Err(other) => return Err(other),
            }
        }
        tracing::warn!(property_id = %execution.property_id, "gave up after {MAX_ATTEMPTS} append races");
        Err(ExecuteError::Busy)
    }

    async fn attempt(
        &self,
        execution: &Execution,
        state: &mut Loaded,
        render: &(dyn Fn(&PropertyCalendar, i64) -> Reply + Send + Sync),
    ) -> Result<Result<Reply, Retry>, ExecuteError> {
        let property_id = execution.property_id;
        self.refresh(property_id, state).await?;
        let sink = EventSink::<PropertyCalendar>::default();
        // `handle` decides, then folds the new events into the calendar.
        state
            .calendar
            .handle(execution.command.clone(), &(), &sink)
            .await?;
        let events = sink.collect().await;
        if events.is_empty() {
            return Ok(Ok(render(&state.calendar, state.position)));
        }

        let actor = &execution.command.actor;
        let metadata = EventMetadata {
            agency_id: actor.agency_id,
            user_id: actor.user_id.clone(),
            role: actor.role.as_str(),
            request_id: execution.request_id.clone(),
            recorded_at: execution.command.now,
            idempotency_key: execution.idempotency.as_ref().map(|i| i.key.clone()),
        };
        let mut tx = self.store.pool().begin().await?;
        let positions = match EventStore::append(
            &mut tx,
            property_id,
            state.sequence,
            &events,
            &metadata,
        )
        .await
        {
            Ok(positions) => positions,
            Err(e) if unique_violation(&e) == Some("events_pkey") => {
                return Ok(Err(Retry::LostRace))
            }
            Err(e) => return Err(e.into()),
        };
        state.sequence += events.len() as i64;
        state.position = positions.last().copied().unwrap_or(state.position);
        let reply = render(&state.calendar, state.position);

        for (ref_id, kind) in events.iter().filter_map(created_ref) {
            EventStore::record_ref(&mut tx, ref_id, kind, actor.agency_id, property_id).await?;
        }
        if let Some(idempotency) = &execution.idempotency {
            match store_reply(&mut tx, actor.agency_id, idempotency, &reply).await {
                Ok(()) => {}
                Err(e) if unique_violation(&e) == Some("idempotency_keys_pkey") => {
                    return Ok(Err(Retry::KeyTaken))
                }
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit().await?;
        Ok(Ok(reply))
    }

    /// The stored reply for this request's Idempotency-Key, if there is one
    /// and the caller may take the command now: a replay is held to the role
    /// table and the agency's visibility rules like a fresh request.
    async fn replay(
        &self,
        execution: &Execution,
        state: &mut Loaded,
    ) -> Result<Option<Reply>, ExecuteError> {
        let Some(reply) = self.stored_reply(execution).await? else {
            return Ok(None);
        };
        self.refresh(execution.property_id, state).await?;
        state.calendar.authorize(&execution.command)?;
        Ok(Some(reply))
    }

    /// The stored reply for this request's Idempotency-Key, if any.
    async fn stored_reply(&self, execution: &Execution) -> Result<Option<Reply>, ExecuteError> {
        let Some(idempotency) = &execution.idempotency else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT request_hash, status_code, response FROM idempotency_keys
              WHERE agency_id = $1 AND key = $2",
        )
        .bind(execution.command.actor.agency_id)
        .bind(&idempotency.key)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hash: String = row.try_get("request_hash")?;
        if hash != idempotency.request_hash {
            return Err(ExecuteError::IdempotencyKeyReused);
        }
        let status: i16 = row.try_get("status_code")?;
        Ok(Some(Reply {
            status: status as u16,
            body: row.try_get("response")?,
        }))
    }
}

async fn store_reply(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    agency_id: Uuid,
    idempotency: &Idempotency,
    reply: &Reply,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency_keys (agency_id, key, request_hash, status_code, response)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(agency_id)
    .bind(&idempotency.key)
    .bind(&idempotency.request_hash)
    .bind(reply.status as i16)
    .bind(&reply.body)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The booking or block an event brings into existence.
fn created_ref(event: &CalendarEvent) -> Option<(Uuid, RefKind)> {
    match event {
        CalendarEvent::BookingReserved { booking_id, .. } => Some((*booking_id, RefKind::Booking)),
        CalendarEvent::AvailabilityBlocked { block_id, .. } => Some((*block_id, RefKind::Block)),
        _ => None,
    }
}

/// A short, growing, jittered pause so racing writers spread out.
fn backoff(attempt: u32) -> Duration {
    let jitter = u64::from(Uuid::new_v4().as_u128() as u8 % 4);
    Duration::from_millis(u64::from(attempt) * 2 + jitter)
}
