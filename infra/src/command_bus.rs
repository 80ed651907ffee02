//! Runs commands against property calendars: load → decide → append, with
//! everything that must be atomic with the events in the same transaction
//! (booking/block refs, the Idempotency-Key reply).
//!
//! All or nothing, whatever the caller does (docs/product.md invariant 7):
//! - a command runs in a task of its own, so a client that hangs up does not
//!   cut it short: it commits or rolls back whole, and a retry with its key
//!   finds the reply;
//! - the calendar is decided on, never changed, before the commit: the new
//!   events are folded into the cached calendar only once they are in the log,
//!   so the cache is always a prefix of the log (never ahead of it; when it is
//!   behind, the next command reads what it lacks).
//!
//! Within one process, commands on one property queue on that property's
//! slot, which also caches the calendar so a command only reads the events
//! it has not seen. Across processes the events primary key is the lock: a
//! lost race rolls back having committed nothing, so the whole
//! load → decide → append is retried, a bounded number of times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use ledger_domain::values::ClaimKind;
use ledger_domain::{CalendarError, CalendarEvent, Command, Outcome, PropertyCalendar};
use serde_json::Value;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::db::{unique_violation, DbError};
use crate::event_store::{Append, EventMetadata, EventStore, KeptReply, Loaded, StoreError};
use crate::tail::LogWaker;

const MAX_ATTEMPTS: u32 = 16;
/// Past this many cached calendars, idle ones are dropped.
const MAX_CACHED: usize = 20_000;
/// How long Idempotency-Key replies are kept unless configured otherwise.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(48 * 3600);

/// A reply as kept for an Idempotency-Key: what the caller answered the
/// first time, returned as it was to every repeat.
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

/// A command that was decided, and committed when it made events.
#[derive(Debug, Clone)]
pub struct Decided<V> {
    pub outcome: Outcome,
    /// The events appended (none for `Unchanged` and `AlreadyRecorded`).
    pub events: Vec<CalendarEvent>,
    /// Global position of the last event appended, or of the property's last
    /// event when none was.
    pub position: i64,
    /// What the caller asked to see of the calendar after the command.
    pub view: V,
}

/// How `execute` answered.
#[derive(Debug, Clone)]
pub enum Answer<V> {
    Decided(Decided<V>),
    /// The request repeats an Idempotency-Key: the first reply, nothing appended.
    Replayed(Reply),
}

/// How a caller's replies are kept for its Idempotency-Keys: supplied by the
/// caller (the HTTP layer), written by the bus in the command's transaction.
pub trait ReplyHook<V>: Send + Sync {
    /// The reply to keep for a decided command.
    fn accepted(&self, decided: &Decided<V>) -> Reply;
    /// The reply to keep for a refusal decided from the ledger's state;
    /// `None` for refusals a corrected retry should decide afresh.
    fn refused(&self, refusal: &CalendarError) -> Option<Reply>;
}

/// What the caller sees of the calendar after a command: `(calendar,
/// outcome, position)`.
pub trait View<V>: Fn(&PropertyCalendar, &Outcome, i64) -> V + Send + Sync + 'static {}
impl<V, F: Fn(&PropertyCalendar, &Outcome, i64) -> V + Send + Sync + 'static> View<V> for F {}

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

/// How one attempt ended.
enum Attempt<V> {
    Decided(Decided<V>),
    /// Another writer appended first: decide again on fresh state.
    LostRace,
    /// Another request with the same key committed first: answer with its reply.
    KeyTaken,
}

type Slot = Arc<Mutex<Loaded>>;

/// Cheap to clone: clones share the cached calendars.
#[derive(Clone)]
pub struct CommandBus {
    inner: Arc<Inner>,
}

struct Inner {
    store: EventStore,
    slots: SyncMutex<HashMap<Uuid, Slot>>,
    idempotency_ttl: Duration,
    waker: LogWaker,
}

impl CommandBus {
    pub fn new(store: EventStore) -> Self {
        Self::with_idempotency_ttl(store, DEFAULT_IDEMPOTENCY_TTL)
    }

    /// A bus whose Idempotency-Key replies count as gone after `ttl`.
    pub fn with_idempotency_ttl(store: EventStore, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                waker: LogWaker::new(store.pool().clone()),
                store,
                slots: SyncMutex::new(HashMap::new()),
                idempotency_ttl: ttl,
            }),
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// What tells tailers that this bus appended: give it to
    /// [`crate::tail::LogSignal::listen`] so this process's tailers wake at once.
    pub fn waker(&self) -> &LogWaker {
        &self.inner.waker
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.inner.store.pool()
    }

    fn ttl_secs(&self) -> f64 {
        self.inner.idempotency_ttl.as_secs_f64()
    }

    fn slot(&self, property_id: Uuid) -> Slot {
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slots.len() >= MAX_CACHED && !slots.contains_key(&property_id) {
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots.entry(property_id).or_default().clone()
    }

    /// Brings a cached calendar up to the log's latest event. A calendar
    /// not in the cache starts from its stored snapshot, if any; when a load
    /// folded many events past the newest snapshot, a new one is written in
    /// the background (a cache of a committed prefix of the log, so it can
    /// never be ahead of it).
    async fn refresh(&self, property_id: Uuid, state: &mut Loaded) -> Result<(), StoreError> {
        if state.sequence == 0 {
            if let Some(snapshot) = self.store().load_snapshot(property_id).await? {
                *state = snapshot;
            }
        }
        let newer = self.store().load_after(property_id, state.sequence).await?;
        state.fold(newer);
        if state.snapshot_due() {
            state.snapshot_sequence = state.sequence;
            let (store, snapshot) = (self.store().clone(), state.clone());
            tokio::spawn(async move {
                if let Err(error) = store.save_snapshot(property_id, &snapshot).await {
                    tracing::warn!(%property_id, %error, "calendar snapshot not written");
                }
            });
        }
        Ok(())
    }

    /// Reads a property's calendar as of the latest committed event.
    pub async fn read<T>(
        &self, property_id: Uuid, view: impl FnOnce(&Loaded) -> T,
    ) -> Result<T, ExecuteError> {
        let slot = self.slot(property_id);
        let mut state = slot.lock().await;
        if let Err(error) = self.refresh(property_id, &mut state).await {
            *state = Loaded::default();
            return Err(error.into());
        }
        Ok(view(&state))
    }

    /// Runs a command to its end in a task of its own, so that the caller
    /// going away (a client that hangs up drops the request's future) cannot
    /// leave it half done. `view` says what to show of the calendar after
    /// it; with an Idempotency-Key, `replies` says what to keep, and a
    /// repeated request gets the first reply back and appends nothing.
    pub async fn execute<V: Send + 'static>(
        &self, execution: Execution, view: impl View<V>, replies: Option<Arc<dyn ReplyHook<V>>>,
    ) -> Result<Answer<V>, ExecuteError> {
        let bus = self.clone();
        let task =
            tokio::spawn(async move { bus.run(&execution, &view, replies.as_deref()).await });
        task.await
            .map_err(|e| ExecuteError::Internal(format!("the command task failed: {e}")))?
    }

    /// [`CommandBus::execute`] for callers that keep no reply (background
    /// jobs, tools): what the command did, and nothing to show. The
    /// execution's Idempotency-Key, if any, is ignored.
    pub async fn run_unkeyed(&self, execution: Execution) -> Result<Decided<()>, ExecuteError> {
        let execution = Execution {
            idempotency: None,
            ..execution
        };
        match self.execute(execution, |_, _, _| (), None).await? {
            Answer::Decided(decided) => Ok(decided),
            // Only a request with a key is ever replayed.
            Answer::Replayed(_) => Err(ExecuteError::Internal(
                "a command without an Idempotency-Key was replayed".into(),
            )),
        }
    }

    #[tracing::instrument(skip_all, fields(property_id = %execution.property_id, request_id = %execution.request_id))]
    async fn run<V>(
        &self, execution: &Execution, view: &dyn View<V>, replies: Option<&dyn ReplyHook<V>>,
    ) -> Result<Answer<V>, ExecuteError> {
        let slot = self.slot(execution.property_id);
        // The first attempt decides on the cached calendar as it is: when
        // events of other processes are missing from it, the append of the
        // next sequence fails on the primary key and the next attempt reads
        // them first. Sequences are dense, so an append that succeeds proves
        // the decision saw the whole log.
        let mut read_first = false;
        for attempt in 1..=MAX_ATTEMPTS {
            let mut state = slot.lock().await;
            if let Some(reply) = self.replay(execution, &mut state).await? {
                return Ok(Answer::Replayed(reply));
            }
            match self
                .attempt(execution, &mut state, read_first, view, replies)
                .await?
            {
                Attempt::Decided(decided) => return Ok(Answer::Decided(decided)),
                Attempt::KeyTaken => continue,
                Attempt::LostRace => {
                    drop(state);
                    read_first = true;
                    tracing::debug!(attempt, "lost an append race; deciding again");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        tracing::warn!(property_id = %execution.property_id, "gave up after {MAX_ATTEMPTS} append races");
        Err(ExecuteError::Busy)
    }

    async fn attempt<V>(
        &self, execution: &Execution, state: &mut Loaded, read_first: bool, view: &dyn View<V>,
        replies: Option<&dyn ReplyHook<V>>,
    ) -> Result<Attempt<V>, ExecuteError> {
        let property_id = execution.property_id;
        let mut fresh = false;
        if read_first {
            self.refresh(property_id, state).await?;
            fresh = true;
        }
        let events = loop {
            let decision = state.calendar.decide(&execution.command);
            // A refusal, or nothing to do, appends nothing that would prove
            // the cache whole: decide those on the log as it is now.
            let proven = matches!(&decision, Ok(events) if !events.is_empty());
            if !proven && !fresh {
                let known = state.sequence;
                self.refresh(property_id, state).await?;
                fresh = true;
                if state.sequence != known {
                    continue;
                }
            }
            match decision {
                Ok(events) => break events,
                Err(refusal) => return self.refuse(execution, refusal, replies).await,
            }
        };
        let outcome = state.calendar.outcome(&execution.command.action, &events);
        let keep = |decided: &Decided<V>| {
            execution
                .idempotency
                .as_ref()
                .zip(replies)
                .map(|(key, replies)| (key, replies.accepted(decided)))
        };

        if events.is_empty() {
            let decided = Decided {
                outcome,
                events,
                position: state.position,
                view: view(&state.calendar, &outcome, state.position),
            };
            if let Some((key, reply)) = keep(&decided) {
                if !self.keep_reply(execution, key, &reply).await? {
                    return Ok(Attempt::KeyTaken);
                }
            }
            return Ok(Attempt::Decided(decided));
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
        let refs: Vec<(Uuid, ClaimKind)> = events.iter().filter_map(created_ref).collect();
        // Shown from a copy of what the events touch: the cached calendar
        // stays as the log has it until the append is committed.
        let preview = state.calendar.preview(&events);
        let render = |position: i64| Decided {
            view: view(&preview, &outcome, position),
            outcome,
            events: Vec::new(),
            position,
        };
        // The reply kept for a key is rendered before the append, which
        // writes the position it takes into the reply's `position` field.
        let kept = keep(&render(0));
        let append = Append {
            property_id,
            expected_sequence: state.sequence,
            events: &events,
            metadata: &metadata,
            refs: &refs,
            kept: kept.as_ref().map(|(key, reply)| KeptReply {
                key: &key.key,
                request_hash: &key.request_hash,
                status: reply.status as i16,
                body: &reply.body,
            }),
        };
        let positions = match self.store().append_command(&append).await {
            Ok(positions) => positions,
            Err(e) => {
                return match unique_violation(&e) {
                    Some("events_pkey") => Ok(Attempt::LostRace),
                    Some("idempotency_keys_pkey") => Ok(Attempt::KeyTaken),
                    _ => Err(e.into()),
                }
            }
        };
        self.inner.waker.appended();
        let position = positions.last().copied().unwrap_or(state.position);
        let mut decided = render(position);
        // In the log now: only from here on does the cache move.
        let first = state.sequence + 1;
        state.fold(
            (first..)
                .zip(positions)
                .zip(events.iter().cloned())
                .map(|((sequence, position), event)| (sequence, position, event))
                .collect(),
        );
        decided.events = events;
        Ok(Attempt::Decided(decided))
    }

    /// A refusal decided from state is the first reply too: with a key, it is
    /// kept, so a retry gets it again even if the state changes meanwhile.
    async fn refuse<V>(
        &self, execution: &Execution, refusal: CalendarError, replies: Option<&dyn ReplyHook<V>>,
    ) -> Result<Attempt<V>, ExecuteError> {
        let kept = execution
            .idempotency
            .as_ref()
            .zip(replies.and_then(|r| r.refused(&refusal)));
        if let Some((key, reply)) = kept {
            if !self.keep_reply(execution, key, &reply).await? {
                return Ok(Attempt::KeyTaken);
            }
        }
        Err(refusal.into())
    }

    /// The stored reply for this request's Idempotency-Key, if there is one
    /// and the caller may take the command now: a replay is held to the role
    /// table and the agency's visibility rules like a fresh request.
    async fn replay(
        &self, execution: &Execution, state: &mut Loaded,
    ) -> Result<Option<Reply>, ExecuteError> {
        let Some(reply) = self.stored_reply(execution).await? else {
            return Ok(None);
        };
        self.refresh(execution.property_id, state).await?;
        match state.calendar.authorize(&execution.command) {
            Ok(()) => Ok(Some(reply)),
            // A kept "not found" stays the answer while the property is still
            // missing; other refusals of the caller are answered afresh.
            Err(CalendarError::PropertyNotFound) if reply.status == 404 => Ok(Some(reply)),
            Err(refusal) => Err(refusal.into()),
        }
    }

    /// The unexpired reply kept for this request's Idempotency-Key, if any.
    /// An expired one is deleted here, so the key can be taken afresh.
    async fn stored_reply(&self, execution: &Execution) -> Result<Option<Reply>, ExecuteError> {
        let Some(idempotency) = &execution.idempotency else {
            return Ok(None);
        };
        let agency_id = execution.command.actor.agency_id;
        let row = sqlx::query!(
            r#"SELECT request_hash, status_code, response,
                    created_at <= now() - make_interval(secs => $3) AS "expired!"
               FROM idempotency_keys
              WHERE agency_id = $1 AND key = $2"#,
            agency_id,
            &idempotency.key,
            self.ttl_secs(),
        )
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if row.expired {
            sqlx::query!(
                "DELETE FROM idempotency_keys
                  WHERE agency_id = $1 AND key = $2
                    AND created_at <= now() - make_interval(secs => $3)",
                agency_id,
                &idempotency.key,
                self.ttl_secs(),
            )
            .execute(self.pool())
            .await?;
            return Ok(None);
        }
        if row.request_hash != idempotency.request_hash {
            return Err(ExecuteError::IdempotencyKeyReused);
        }
        Ok(Some(Reply {
            status: row.status_code as u16,
            body: row.response,
        }))
    }

    /// Keeps `reply` for the key, with no event; `false` when another
    /// request holds the key.
    async fn keep_reply(
        &self, execution: &Execution, idempotency: &Idempotency, reply: &Reply,
    ) -> Result<bool, ExecuteError> {
        let kept = KeptReply {
            key: &idempotency.key,
            request_hash: &idempotency.request_hash,
            status: reply.status as i16,
            body: &reply.body,
        };
        match EventStore::keep_reply(self.pool(), execution.command.actor.agency_id, &kept).await {
            Ok(()) => Ok(true),
            Err(e) if unique_violation(&e) == Some("idempotency_keys_pkey") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes Idempotency-Key replies older than the TTL, a batch at a
    /// time; returns how many went.
    pub async fn purge_expired_keys(&self) -> Result<u64, DbError> {
        let mut total = 0;
        loop {
            let purged = sqlx::query!(
                "DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
                    SELECT ctid FROM idempotency_keys
                     WHERE created_at <= now() - make_interval(secs => $1)
                     LIMIT 5000))",
                self.ttl_secs(),
            )
            .execute(self.pool())
            .await?
            .rows_affected();
            total += purged;
            if purged < 5000 {
                return Ok(total);
            }
        }
    }
}

/// The booking or block an event brings into existence.
fn created_ref(event: &CalendarEvent) -> Option<(Uuid, ClaimKind)> {
    match event {
        CalendarEvent::BookingReserved { booking_id, .. } => {
            Some((*booking_id, ClaimKind::Booking))
        }
        CalendarEvent::AvailabilityBlocked { block_id, .. } => Some((*block_id, ClaimKind::Block)),
        CalendarEvent::PropertyRegistered { .. }
        | CalendarEvent::PropertyUpdated { .. }
        | CalendarEvent::PropertyArchived { .. }
        // Room types are addressed under their property's path.
        | CalendarEvent::RoomTypeCreated { .. }
        | CalendarEvent::RoomTypeUpdated { .. }
        | CalendarEvent::BookingModified { .. }
        | CalendarEvent::BookingConfirmed { .. }
        | CalendarEvent::BookingCancelled { .. }
        | CalendarEvent::BookingCheckedIn { .. }
        | CalendarEvent::BookingCheckedOut { .. }
        | CalendarEvent::BookingNoShow { .. }
        | CalendarEvent::BookingHoldExpired { .. }
        | CalendarEvent::AvailabilityReleased { .. } => None,
    }
}

/// A short, growing, jittered pause so racing writers spread out.
fn backoff(attempt: u32) -> Duration {
    let jitter = u64::from(Uuid::new_v4().as_u128() as u8 % 4);
    Duration::from_millis(u64::from(attempt) * 2 + jitter)
}
