//! The channel-adapter kit: what an adapter (Airbnb, Booking.com, Vrbo, ...)
//! needs to follow the ledger's event stream safely.
//!
//! ```no_run
//! # async fn adapter() -> Result<(), ledger_infra::channel::ChannelError> {
//! use ledger_infra::channel::{Binding, ChannelConsumer};
//! # let agency = uuid::Uuid::nil();
//! let client = ledger_infra::nats::connect("nats://127.0.0.1:4222", "airbnb-adapter").await?;
//! let mut events = ChannelConsumer::bind(&client, Binding::new("airbnb").agency(agency)).await?;
//! while let Some(delivery) = events.next().await {
//!     let delivery = delivery?;
//!     if let Some(gap) = &delivery.gap {
//!         // Missed something: resync gap.property_id from the HTTP API first.
//!     }
//!     match push_to_the_channel(&delivery.event).await {
//!         Ok(()) => delivery.ack().await?,
//!         Err(_) => delivery.nak(Some(std::time::Duration::from_secs(5))).await?,
//!     }
//! }
//! # Ok(()) }
//! # async fn push_to_the_channel(_: &ledger_infra::channel::LedgerEvent) -> Result<(), ()> { Ok(()) }
//! ```
//!
//! What it guarantees on top of JetStream:
//! - a durable pull consumer on one agency, one property, or everything
//!   ([`Binding`]), so progress survives the adapter's restarts;
//! - typed events: the CloudEvent as published plus its decoded
//!   [`CalendarEvent`] ([`LedgerEvent`]);
//! - ack after the adapter's own handling succeeded, nak for a redelivery;
//! - per property, events are handed out in `ledgersequence` order: while an
//!   event of a property is being handled or waits for its redelivery, later
//!   events of that property are sent back (nak with a short delay) instead
//!   of overtaking it;
//! - a jump in `ledgersequence` is reported as a [`Gap`] on the delivery;
//! - duplicates are skipped (and acked): an event id already handled, or a
//!   `ledgersequence` at or below the property's last handled one. JetStream
//!   drops republished events only within its duplicate window; this catches
//!   the rest.
//!
//! Getting back in step (docs/api.md "Channel resync and drift checks";
//! docs/channels.md): an adapter that gives the kit its state
//! ([`ChannelConsumer::with_state`], an [`AdapterState`]) has snapshots and
//! checksums handled for it. A snapshot replaces what the adapter holds for
//! the property, and the kit continues after its `as_of_sequence`; a
//! checksum is compared with the checksum of the adapter's own ranges. On a
//! `ledgersequence` gap, or a checksum that differs, the kit asks the ledger
//! for a snapshot with a NATS request on
//! `ledger-resync.<agency_id>.<property_id>` ([`crate::resync`]); the
//! snapshot arrives on the stream in order with the property's events.
//! Without a state, snapshots and checksums are acked and skipped.
//!
//! The kit remembers in memory what was handled. An adapter that needs
//! duplicate and gap detection across its own restarts stores
//! [`ChannelConsumer::cursors`] with its own state and passes them back with
//! [`ChannelConsumer::resume_from`]. Run one kit instance per durable name.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, AckKind};
use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use ledger_domain::checksum::{self, ChannelRange};
use ledger_domain::CalendarEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cloudevent::{self, ChecksumData, CloudEvent, CloudEventError, SnapshotData};
use crate::nats::{self, Client};
use crate::resync::{self, Requested};

/// How long the kit waits before asking again for a snapshot it asked for
/// and has not seen yet.
const RESYNC_PATIENCE: Duration = Duration::from_secs(10);
/// How long a resync request may take to be answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a state operation of the adapter failed with.
pub type StateError = Box<dyn std::error::Error + Send + Sync>;

/// An availability snapshot as the adapter receives it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub agency_id: Uuid,
    /// When the snapshot was taken.
    pub time: DateTime<Utc>,
    pub data: SnapshotData,
}

/// The adapter's own state, as the kit needs it to resynchronise it.
#[async_trait::async_trait]
pub trait AdapterState: Send + Sync {
    /// Replaces everything held for `snapshot.data.property_id` with the
    /// snapshot's ranges, remembering `as_of_sequence` as the property's
    /// last applied sequence.
    async fn replace(&self, snapshot: &Snapshot) -> Result<(), StateError>;
    /// The ranges the adapter holds for the property that end after `from`
    /// and start before `to`.
    async fn ranges(
        &self, property_id: Uuid, from: NaiveDate, to: NaiveDate,
    ) -> Result<Vec<ChannelRange>, StateError>;
}

/// What the kit did to keep the adapter in step, since it was bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Recovery {
    pub gaps: u64,
    /// Checksums that differed from the adapter's own.
    pub drifts: u64,
    pub resyncs_requested: u64,
    pub snapshots_applied: u64,
    pub checksums_matched: u64,
}

/// The answer to a resync request: what was requested, or the contract's
/// error body.
#[derive(Deserialize)]
#[serde(untagged)]
enum ResyncReply {
    Requested(Requested),
    Refused { error: ReplyError },
}

#[derive(Deserialize)]
struct ReplyError {
    code: String,
    message: String,
}

/// How many handled event ids the kit remembers, beyond the per-property
/// sequence check.
const SEEN_IDS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("NATS: {0}")]
    Nats(#[source] async_nats::Error),
    /// A message on the stream that is not a ledger event; it was terminated
    /// (never redelivered).
    #[error("message {stream_sequence} of the stream is not a ledger event: {source}")]
    Malformed {
        stream_sequence: u64,
        #[source]
        source: CloudEventError,
    },
    /// Stream `LEDGER` does not exist: no ledger has published to this NATS
    /// yet (its publisher creates the stream).
    #[error("stream LEDGER does not exist yet: the ledger's publisher creates it")]
    NoStream,
    /// The ledger did not take a resync request: the contract's error
    /// `code` (docs/api.md "Errors", e.g. `PROPERTY_NOT_FOUND`) and message.
    #[error("the ledger refused the resync request: {code}: {message}")]
    Refused { code: String, message: String },
    /// The answer to a resync request was neither a request nor an error.
    #[error("the ledger's answer to the resync request does not decode: {0}")]
    UnreadableReply(String),
}

fn nats_error(error: impl Into<async_nats::Error>) -> ChannelError {
    ChannelError::Nats(error.into())
}

/// A handle on the `LEDGER` stream to create consumers on. The stream is not
/// asked for its info: an agency's user may not see it (it would tell every
/// agency's subjects), only its own consumers.
async fn ledger_stream(client: &Client) -> Result<jetstream::stream::Stream<()>, ChannelError> {
    jetstream::new(client.clone())
        .get_stream_no_info(nats::STREAM)
        .await
        .map_err(nats_error)
}

impl From<async_nats::ConnectError> for ChannelError {
    fn from(error: async_nats::ConnectError) -> Self {
        nats_error(error)
    }
}

/// Where a durable consumer starts the first time it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Everything the stream still holds.
    All,
    /// Only events published after the consumer is created.
    New,
    /// From this stream sequence on.
    StreamSequence(u64),
}

/// What to follow, and how.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The durable consumer's name: the adapter's progress is kept under it.
    pub name: String,
    pub agency_id: Option<Uuid>,
    pub property_id: Option<Uuid>,
    pub start: Start,
    /// How long a delivery may stay unacknowledged before JetStream
    /// redelivers it (the adapter crashed or hung).
    pub ack_wait: Duration,
    /// Deliveries in flight (unacknowledged) at most.
    pub max_ack_pending: i64,
    /// How long an event waits before it is offered again when an earlier
    /// event of its property is still being handled.
    pub hold_delay: Duration,
}

impl Binding {
    /// Every event of every agency, from the oldest the stream holds.
    pub fn new(name: impl Into<String>) -> Binding {
        Binding {
            name: name.into(),
            agency_id: None,
            property_id: None,
            start: Start::All,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            hold_delay: Duration::from_millis(50),
        }
    }

    /// One agency's events under a durable of that agency
    /// ([`agency_durable`]): what an agency's own NATS user may consume
    /// (`ledger nats-permissions`).
    pub fn for_agency(agency_id: Uuid, name: &str) -> Binding {
        Binding::new(agency_durable(agency_id, name)).agency(agency_id)
    }

    pub fn agency(mut self, agency_id: Uuid) -> Binding {
        self.agency_id = Some(agency_id);
        self
    }

    pub fn property(mut self, property_id: Uuid) -> Binding {
        self.property_id = Some(property_id);
        self
    }

    pub fn start(mut self, start: Start) -> Binding {
        self.start = start;
        self
    }

    /// The NATS subject filter this binding consumes.
    pub fn filter_subject(&self) -> String {
        cloudevent::filter(self.agency_id, self.property_id)
    }
}

/// The durable name `name` takes for an agency: `agency-<agency_id>-<name>`.
/// NATS permissions match whole subject tokens, so each durable an agency's
/// user may use is listed by its full name; the agency in it keeps the
/// names of two agencies apart.
pub fn agency_durable(agency_id: Uuid, name: &str) -> String {
    format!("agency-{agency_id}-{name}")
}

/// One event as the adapter receives it.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEvent {
    /// The document as published (id, source, type, subject, time,
    /// ledgerposition, ledgersequence, data).
    pub cloud: CloudEvent,
    pub agency_id: Uuid,
    pub property_id: Uuid,
    /// `data`, decoded.
    pub event: CalendarEvent,
}

impl LedgerEvent {
    pub fn from_cloud(cloud: CloudEvent) -> Result<LedgerEvent, CloudEventError> {
        let (agency_id, property_id) = cloud.origin()?;
        let event = cloud.decode()?;
        Ok(LedgerEvent {
            cloud,
            agency_id,
            property_id,
            event,
        })
    }

    pub fn id(&self) -> Uuid {
        self.cloud.id
    }

    pub fn position(&self) -> i64 {
        self.cloud.ledgerposition
    }

    pub fn sequence(&self) -> i64 {
        self.cloud.ledgersequence
    }

    /// The room type the event names, from the decoded event (so also for
    /// a document published without the `ledgerroomtypeid` attribute);
    /// `None` on a single-unit property.
    pub fn room_type_id(&self) -> Option<Uuid> {
        self.event.room_type_id()
    }
}

/// `ledgersequence` jumped: events `expected..received` of the property were
/// not seen. The adapter resynchronises the property (e.g. from
/// `GET /api/v1/properties/{id}/events`) before acking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub property_id: Uuid,
    pub expected: i64,
    pub received: i64,
}

/// A durable pull consumer with the kit's ordering, gap and duplicate rules.
pub struct ChannelConsumer {
    messages: pull::Stream,
    tracker: Arc<Mutex<Tracker>>,
    hold_delay: Duration,
    client: Client,
    state: Option<Arc<dyn AdapterState>>,
    /// Properties a snapshot was asked for, and when.
    asked: HashMap<Uuid, Instant>,
    recovery: Recovery,
}

impl ChannelConsumer {
    /// Creates the durable consumer if it does not exist yet and starts
    /// pulling. A stream the ledger has not created yet is waited for (see
    /// [`STREAM_WAIT`]).
    pub async fn bind(client: &Client, binding: Binding) -> Result<ChannelConsumer, ChannelError> {
        let stream = ledger_stream(client).await?;
        let config = pull::Config {
            durable_name: Some(binding.name.clone()),
            filter_subject: binding.filter_subject(),
            deliver_policy: match binding.start {
                Start::All => DeliverPolicy::All,
                Start::New => DeliverPolicy::New,
                Start::StreamSequence(start_sequence) => {
                    DeliverPolicy::ByStartSequence { start_sequence }
                }
            },
            ack_policy: AckPolicy::Explicit,
            ack_wait: binding.ack_wait,
            max_ack_pending: binding.max_ack_pending,
            max_deliver: -1,
            ..Default::default()
        };
        let consumer =
            once_the_stream_exists(|| stream.get_or_create_consumer(&binding.name, config.clone()))
                .await?;
        let messages = consumer.messages().await.map_err(nats_error)?;
        Ok(ChannelConsumer {
            messages,
            tracker: Arc::new(Mutex::new(Tracker::default())),
            hold_delay: binding.hold_delay,
            client: client.clone(),
            state: None,
            asked: HashMap::new(),
            recovery: Recovery::default(),
        })
    }

    /// Lets the kit apply snapshots to the adapter's state and compare
    /// checksums with it (see the module docs).
    pub fn with_state(mut self, state: Arc<dyn AdapterState>) -> ChannelConsumer {
        self.state = Some(state);
        self
    }

    /// What the kit did to keep the adapter in step so far.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Asks the ledger for a snapshot of a property (at most once per
    /// [`RESYNC_PATIENCE`] while none arrives).
    pub async fn request_resync(
        &mut self, agency_id: Uuid, property_id: Uuid,
    ) -> Result<Option<Requested>, ChannelError> {
        if self
            .asked
            .get(&property_id)
            .is_some_and(|at| at.elapsed() < RESYNC_PATIENCE)
        {
            return Ok(None);
        }
        let subject = resync::request_subject(agency_id, property_id);
        let request = self.client.request(subject, Vec::new().into());
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, request)
            .await
            .map_err(nats_error)?
            .map_err(nats_error)?;
        let requested = match serde_json::from_slice::<ResyncReply>(&reply.payload) {
            Ok(ResyncReply::Requested(requested)) => requested,
            Ok(ResyncReply::Refused { error }) => {
                return Err(ChannelError::Refused {
                    code: error.code,
                    message: error.message,
                })
            }
            Err(error) => {
                let reply = String::from_utf8_lossy(&reply.payload);
                return Err(ChannelError::UnreadableReply(format!("{reply}: {error}")));
            }
        };
        self.asked.insert(property_id, Instant::now());
        self.recovery.resyncs_requested += 1;
        tracing::info!(%property_id, as_of_position = requested.as_of_position, "channel: resync requested");
        Ok(Some(requested))
    }

    async fn resync_quietly(&mut self, agency_id: Uuid, property_id: Uuid) {
        if self.state.is_none() {
            return;
        }
        if let Err(error) = self.request_resync(agency_id, property_id).await {
            tracing::warn!(%error, %property_id, "channel: cannot request a resync; the next checksum or gap asks again");
        }
    }

    /// An availability message (snapshot or checksum) the adapter's state
    /// should take now, or the reply to send instead: no state is kept, the
    /// message is unreadable, an event of its property is still being
    /// handled, or it is older than what the adapter already applied.
    #[allow(clippy::type_complexity)]
    fn availability<T: AvailabilityData>(
        &self, cloud: &CloudEvent,
    ) -> Result<(Arc<dyn AdapterState>, Uuid, T), AckKind> {
        let Some(state) = self.state.clone() else {
            return Err(AckKind::Ack);
        };
        let (Ok((agency_id, _)), Ok(data)) = (
            cloud.origin(),
            serde_json::from_value::<T>(cloud.data.clone()),
        ) else {
            return Err(AckKind::Term);
        };
        let tracker = lock(&self.tracker);
        if tracker.outstanding.contains_key(&data.property_id()) {
            return Err(AckKind::Nak(Some(self.hold_delay)));
        }
        if tracker
            .last
            .get(&data.property_id())
            .is_some_and(|&last| last > data.as_of_sequence())
        {
            return Err(AckKind::Ack);
        }
        Ok((state, agency_id, data))
    }

    /// Applies a snapshot to the adapter's state: the reply to send.
    async fn on_snapshot(&mut self, cloud: &CloudEvent) -> AckKind {
        let (state, agency_id, data) = match self.availability::<SnapshotData>(cloud) {
            Ok(message) => message,
            Err(reply) => return reply,
        };
        let property_id = data.property_id;
        let snapshot = Snapshot {
            agency_id,
            time: cloud.time,
            data,
        };
        match state.replace(&snapshot).await {
            Ok(()) => {
                lock(&self.tracker)
                    .last
                    .insert(property_id, snapshot.data.as_of_sequence);
                self.asked.remove(&property_id);
                self.recovery.snapshots_applied += 1;
                AckKind::Ack
            }
            Err(error) => {
                tracing::warn!(%error, %property_id, "channel: snapshot not applied; redelivering");
                AckKind::Nak(Some(Duration::from_secs(1)))
            }
        }
    }

    /// Compares a checksum with the adapter's own state: the reply to send.
    async fn on_checksum(&mut self, cloud: &CloudEvent) -> AckKind {
        let (state, agency_id, data) = match self.availability::<ChecksumData>(cloud) {
            Ok(message) => message,
            Err(reply) => return reply,
        };
        let property_id = data.property_id;
        let own = match state.ranges(property_id, data.from, data.to).await {
            Ok(ranges) => ranges,
            Err(error) => {
                tracing::warn!(%error, %property_id, "channel: cannot read the adapter's state");
                return AckKind::Nak(Some(Duration::from_secs(1)));
            }
        };
        let own: Vec<ChannelRange> = own
            .into_iter()
            .filter(|r| r.end > data.from && r.start < data.to)
            .collect();
        if checksum::checksum(&own) == data.checksum {
            self.recovery.checksums_matched += 1;
        } else {
            self.recovery.drifts += 1;
            tracing::warn!(%property_id, as_of_sequence = data.as_of_sequence, "channel: drift found by the checksum");
            self.resync_quietly(agency_id, property_id).await;
        }
        AckKind::Ack
    }

    /// Seeds the last handled `ledgersequence` per property (the adapter's
    /// own stored progress), so duplicates and gaps are caught from the
    /// first event.
    pub fn resume_from(self, cursors: impl IntoIterator<Item = (Uuid, i64)>) -> ChannelConsumer {
        lock(&self.tracker).last.extend(cursors);
        self
    }

    /// The last handled `ledgersequence` of every property seen.
    pub fn cursors(&self) -> HashMap<Uuid, i64> {
        lock(&self.tracker).last.clone()
    }

    /// How many duplicates were skipped so far.
    pub fn duplicates_skipped(&self) -> u64 {
        lock(&self.tracker).duplicates
    }

    /// The next event to handle. Duplicates are acked and skipped; events
    /// that must wait behind an earlier one of their property are sent back.
    /// `None` when the subscription ends; an `Err` is one failed pull or one
    /// malformed message, and the consumer can go on.
    pub async fn next(&mut self) -> Option<Result<Delivery, ChannelError>> {
        loop {
            let message = match self.messages.next().await? {
                Ok(message) => message,
                Err(error) => return Some(Err(nats_error(error))),
            };
            let (stream_sequence, attempt) = message
                .info()
                .map(|info| (info.stream_sequence, info.delivered))
                .unwrap_or_default();
            let cloud = CloudEvent::from_json(&message.payload);
            let availability = match cloud.as_ref().map(|c| c.kind()) {
                Ok(Ok(cloudevent::SNAPSHOT)) => Some(true),
                Ok(Ok(cloudevent::CHECKSUM)) => Some(false),
                _ => None,
            };
            if let (Some(snapshot), Ok(cloud)) = (availability, cloud.as_ref()) {
                let reply = if snapshot {
                    self.on_snapshot(cloud).await
                } else {
                    self.on_checksum(cloud).await
                };
                if let Err(error) = message.ack_with(reply).await {
                    return Some(Err(nats_error(error)));
                }
                continue;
            }
            let event = match cloud.and_then(LedgerEvent::from_cloud) {
                Ok(event) => event,
                Err(source) => {
                    let _ = message.ack_with(AckKind::Term).await;
                    return Some(Err(ChannelError::Malformed {
                        stream_sequence,
                        source,
                    }));
                }
            };
            let verdict =
                lock(&self.tracker).admit(event.property_id, event.sequence(), event.id());
            let reply = match verdict {
                Verdict::Deliver { gap } => {
                    if gap.is_some() {
                        self.recovery.gaps += 1;
                        self.resync_quietly(event.agency_id, event.property_id)
                            .await;
                    }
                    return Some(Ok(Delivery {
                        event,
                        gap,
                        attempt,
                        stream_sequence,
                        message,
                        tracker: self.tracker.clone(),
                    }));
                }
                Verdict::Duplicate => AckKind::Ack,
                Verdict::Hold => AckKind::Nak(Some(self.hold_delay)),
            };
            if let Err(error) = message.ack_with(reply).await {
                return Some(Err(nats_error(error)));
            }
        }
    }
}

/// One event handed to the adapter. Ack it once handled; nak it to have it
/// redelivered. Dropped without either, it is redelivered after `ack_wait`.
pub struct Delivery {
    pub event: LedgerEvent,
    /// Set when `ledgersequence` jumped past the property's last handled one.
    pub gap: Option<Gap>,
    /// 1 on the first delivery, 2 on the first redelivery, ...
    pub attempt: i64,
    pub stream_sequence: u64,
    message: jetstream::Message,
    tracker: Arc<Mutex<Tracker>>,
}

impl Delivery {
    /// The adapter handled the event: it is never handed out again.
    pub async fn ack(self) -> Result<(), ChannelError> {
        let event = &self.event;
        lock(&self.tracker).handled(event.property_id, event.sequence(), event.id());
        // Should this ack be lost, the redelivery is recognised as a duplicate.
        self.message.ack().await.map_err(nats_error)
    }

    /// The adapter failed: have the event redelivered (after `delay`). Later
    /// events of the same property wait for it.
    pub async fn nak(self, delay: Option<Duration>) -> Result<(), ChannelError> {
        self.message
            .ack_with(AckKind::Nak(delay))
            .await
            .map_err(nats_error)
    }
}

/// Follows the stream without a durable consumer (`ledger tail`): an ordered
/// consumer on one agency, one property or everything. With `from_position`
/// it reads everything the stream still holds and skips events below that
/// log position (stream sequences are not log positions: the stream may be
/// shared, and old messages age out); without it, only new events.
pub struct Follower {
    messages: pull::Ordered,
    from_position: i64,
}

impl Follower {
    pub async fn open(
        client: &Client, agency_id: Option<Uuid>, property_id: Option<Uuid>,
        from_position: Option<i64>,
    ) -> Result<Follower, ChannelError> {
        let stream = ledger_stream(client).await?;
        let config = pull::OrderedConfig {
            filter_subject: cloudevent::filter(agency_id, property_id),
            deliver_policy: if from_position.is_some() {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            ..Default::default()
        };
        let consumer = once_the_stream_exists(|| stream.create_consumer(config.clone())).await?;
        Ok(Follower {
            messages: consumer.messages().await.map_err(nats_error)?,
            from_position: from_position.unwrap_or(0),
        })
    }

    /// The next event, as published.
    pub async fn next(&mut self) -> Option<Result<CloudEvent, ChannelError>> {
        loop {
            let message = match self.messages.next().await? {
                Ok(message) => message,
                Err(error) => return Some(Err(nats_error(error))),
            };
            match CloudEvent::from_json(&message.payload) {
                Ok(event) if event.ledgerposition < self.from_position => continue,
                Ok(event) => return Some(Ok(event)),
                Err(source) => {
                    return Some(Err(ChannelError::Malformed {
                        stream_sequence: message.info().map(|i| i.stream_sequence).unwrap_or(0),
                        source,
                    }))
                }
            }
        }
    }
}

/// One durable consumer of the `LEDGER` stream and how far behind it is
/// (`GET /ops/consumers`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerLag {
    pub name: String,
    pub filter_subject: String,
    /// Messages of its subjects not yet delivered to it.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// The stream sequence below which everything is acknowledged.
    pub ack_floor: u64,
    /// The last stream sequence delivered.
    pub delivered: u64,
    pub redelivered: u64,
}

/// Every durable consumer on the `LEDGER` stream, by name. An empty list
/// when the stream does not exist yet.
pub async fn consumers(client: &Client) -> Result<Vec<ConsumerLag>, ChannelError> {
    let context = jetstream::new(client.clone());
    let stream = match context.get_stream(nats::STREAM).await {
        Ok(stream) => stream,
        Err(error)
            if matches!(error.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(Vec::new())
        }
        Err(error) => return Err(nats_error(error)),
    };
    let mut infos = stream.consumers();
    let mut lags = Vec::new();
    while let Some(info) = infos.next().await {
        let info = info.map_err(nats_error)?;
        lags.push(ConsumerLag {
            name: info.name,
            filter_subject: info.config.filter_subject,
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            ack_floor: info.ack_floor.stream_sequence,
            delivered: info.delivered.stream_sequence,
            redelivered: info.num_redelivered as u64,
        });
    }
    lags.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(lags)
}

/// How long the kit waits for stream `LEDGER` to exist.
///
/// The kit never creates the stream: the ledger's publisher does, with the
/// replica count it is configured with (`LEDGER_STREAM_REPLICAS`). When a
/// kit created it first, at one replica, and the publisher then scaled it to
/// three, killing the stream's leader left it without a leader for good
/// (nats-server 2.15 here: tests/cluster.rs failed 5 runs of 5 that way, and
/// passed every run once the stream was born with three replicas).
const STREAM_WAIT: Duration = Duration::from_secs(10);

/// Runs `attempt` (a consumer creation) until stream `LEDGER` exists, for
/// at most [`STREAM_WAIT`].
async fn once_the_stream_exists<T, Attempt>(
    mut attempt: impl FnMut() -> Attempt,
) -> Result<T, ChannelError>
where
    Attempt: std::future::Future<Output = Result<T, async_nats::jetstream::stream::ConsumerError>>,
{
    let deadline = Instant::now() + STREAM_WAIT;
    loop {
        match attempt().await {
            Err(error) if is_stream_missing(&error) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) if is_stream_missing(&error) => return Err(ChannelError::NoStream),
            other => return other.map_err(nats_error),
        }
    }
}

fn is_stream_missing(error: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::stream::ConsumerErrorKind;
    matches!(
        error.kind(),
        ConsumerErrorKind::JetStream(e) if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    // The tracker's maps stay consistent even if a holder panicked.
    tracker
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Deliver {
        gap: Option<Gap>,
    },
    Duplicate,
    /// An earlier event of the property is being handled or awaits redelivery.
    Hold,
}

/// What the kit knows about handled events: pure bookkeeping, no I/O.
#[derive(Debug, Default)]
struct Tracker {
    /// Last handled `ledgersequence` per property.
    last: HashMap<Uuid, i64>,
    /// Per property, the lowest sequence handed out and not yet acked.
    outstanding: HashMap<Uuid, i64>,
    seen: HashSet<Uuid>,
    seen_order: VecDeque<Uuid>,
    duplicates: u64,
}

impl Tracker {
    fn admit(&mut self, property: Uuid, sequence: i64, id: Uuid) -> Verdict {
        let last = self.last.get(&property).copied();
        if self.seen.contains(&id) || last.is_some_and(|last| sequence <= last) {
            self.duplicates += 1;
            return Verdict::Duplicate;
        }
        match self.outstanding.get(&property) {
            Some(&earlier) if earlier < sequence => return Verdict::Hold,
            _ => {}
        }
        self.outstanding.insert(property, sequence);
        let gap = last.filter(|last| sequence > last + 1).map(|last| Gap {
            property_id: property,
            expected: last + 1,
            received: sequence,
        });
        Verdict::Deliver { gap }
    }

    fn handled(&mut self, property: Uuid, sequence: i64, id: Uuid) {
        let last = self.last.entry(property).or_insert(sequence);
        *last = (*last).max(sequence);
        if self.outstanding.get(&property) == Some(&sequence) {
            self.outstanding.remove(&property);
        }
        if self.seen.insert(id) {
            self.seen_order.push_back(id);
            if self.seen_order.len() > SEEN_IDS {
                if let Some(oldest) = self.seen_order.pop_front() {
                    self.seen.remove(&oldest);
                }
            }
        }
    }
}

/// What snapshots and checksums share: the property, and the sequence they
/// were taken at.
trait AvailabilityData: serde::de::DeserializeOwned {
    fn property_id(&self) -> Uuid;
    fn as_of_sequence(&self) -> i64;
}

impl AvailabilityData for SnapshotData {
    fn property_id(&self) -> Uuid {
        self.property_id
    }
    fn as_of_sequence(&self) -> i64 {
        self.as_of_sequence
    }
}

impl AvailabilityData for ChecksumData {
    fn property_id(&self) -> Uuid {
        self.property_id
    }
    fn as_of_sequence(&self) -> i64 {
        self.as_of_sequence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uuid, Uuid, Uuid) {
        (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4())
    }

    /// A tracker that has delivered and handled event 1 (id `a`) of
    /// property `p`; `b` is a fresh event id.
    fn after_first_event() -> (Tracker, Uuid, Uuid, Uuid) {
        let mut tracker = Tracker::default();
        let (p, a, b) = ids();
        tracker.admit(p, 1, a);
        tracker.handled(p, 1, a);
        (tracker, p, a, b)
    }

    #[test]
    fn events_in_sequence_are_delivered_without_a_gap() {
        let mut tracker = Tracker::default();
        let (p, a, b) = ids();
        assert_eq!(tracker.admit(p, 1, a), Verdict::Deliver { gap: None });
        tracker.handled(p, 1, a);
        assert_eq!(tracker.admit(p, 2, b), Verdict::Deliver { gap: None });
    }

    #[test]
    fn a_jump_in_ledgersequence_is_reported_as_a_gap() {
        let (mut tracker, p, _, b) = after_first_event();
        let gap = Gap {
            property_id: p,
            expected: 2,
            received: 4,
        };
        assert_eq!(tracker.admit(p, 4, b), Verdict::Deliver { gap: Some(gap) });
    }

    #[test]
    fn the_first_event_seen_of_a_property_is_its_baseline() {
        let mut tracker = Tracker::default();
        let (p, a, _) = ids();
        assert_eq!(tracker.admit(p, 17, a), Verdict::Deliver { gap: None });
    }

    #[test]
    fn a_handled_id_or_an_old_sequence_is_a_duplicate() {
        let (mut tracker, p, a, b) = after_first_event();
        assert_eq!(tracker.admit(p, 1, a), Verdict::Duplicate);
        assert_eq!(tracker.admit(p, 1, b), Verdict::Duplicate, "same sequence");
        assert_eq!(tracker.duplicates, 2);
    }

    #[test]
    fn resumed_cursors_catch_duplicates_and_gaps_from_the_start() {
        let mut tracker = Tracker::default();
        let (p, a, b) = ids();
        tracker.last.insert(p, 5);
        assert_eq!(tracker.admit(p, 5, a), Verdict::Duplicate);
        assert!(matches!(
            tracker.admit(p, 7, b),
            Verdict::Deliver { gap: Some(_) }
        ));
    }

    #[test]
    fn a_later_event_waits_while_an_earlier_one_is_outstanding() {
        let (mut tracker, p, _, b) = after_first_event();
        let c = Uuid::new_v4();
        assert_eq!(tracker.admit(p, 2, b), Verdict::Deliver { gap: None });
        // 2 was naked (or is still being handled): 3 must not overtake it.
        assert_eq!(tracker.admit(p, 3, c), Verdict::Hold);
        // The redelivery of 2 is handed out again.
        assert_eq!(tracker.admit(p, 2, b), Verdict::Deliver { gap: None });
        tracker.handled(p, 2, b);
        assert_eq!(tracker.admit(p, 3, c), Verdict::Deliver { gap: None });
    }

    #[test]
    fn other_properties_do_not_wait() {
        let mut tracker = Tracker::default();
        let (p, q, a) = ids();
        tracker.admit(p, 1, a);
        assert_eq!(
            tracker.admit(q, 1, Uuid::new_v4()),
            Verdict::Deliver { gap: None }
        );
    }
}
