//! Publishes the log to NATS JetStream, in order, at least once, with no gaps
//! (docs/api.md "Event stream on NATS JetStream").
//!
//! The publisher tails `events` by global position with the same gap-free
//! reader as the projections (`crate::tail`), publishes a batch as CloudEvents
//! with `Nats-Msg-Id` = event id, awaits every ack in order, and only then
//! advances its checkpoint (row `publisher` of `projection_checkpoints`). A
//! crash between publish and checkpoint republishes the same events with the
//! same ids: JetStream drops them within its duplicate window, consumers
//! (the channel kit) drop older copies.
//!
//! Exactly one active publisher across processes: each `ledger serve` runs a
//! publisher, and the one holding a session advisory lock on its own
//! dedicated PostgreSQL connection publishes; the others retry the lock every
//! second. A process that dies drops its connection and with it the lock.
//! Unlike the projections' per-batch transaction lock, publishing happens
//! outside any transaction (an open transaction with an id would hold back
//! every tailer's `pg_snapshot_xmin`), hence the session lock; that
//! connection must go to PostgreSQL directly (or through a session-mode
//! pooler), not through a transaction-mode PgBouncer.
//! Should two publishers ever overlap (the old holder's connection is cut but
//! it has not noticed yet), each still publishes in log order from its
//! checkpoint, and JetStream keeps the first copy of each id, so the stream
//! stays in log order; the checkpoint only moves forward.
//!
//! Resync and drift checks ride the same loop: after each batch the
//! publisher serves a few pending `resync_requests` (`crate::resync`),
//! taking each snapshot or checksum from the property's log folded up to
//! the last sequence it has itself published, and publishing it right
//! there. So a snapshot sits in the stream after every event it includes
//! and before every event it does not. A token bucket
//! ([`RESYNC_PER_SECOND`]) and a short slice between batches (at most
//! [`RESYNC_SLICE`] snapshots, none started after [`RESYNC_SLICE_TIME`])
//! keep a resync of every property from holding live events back: a live
//! event waits for at most one slice.
//!
//! NATS down: commands keep committing; the publisher waits for the client
//! to reconnect (retrying about every second), then publishes the backlog in
//! order. Its lag shows in `/ops/projections` as `publisher`.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishError as NatsPublishError};
use chrono::Utc;
use ledger_domain::checksum;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::cloudevent::{self, ChecksumData, CloudEvent, SnapshotData};
use crate::event_store::Loaded;
use crate::nats::{self, Client};
use crate::resync::{self, Pending, RequestKind};
use crate::tail::{self, Cursor, Envelope, LogSignal, TailError};

/// The publisher's row in `projection_checkpoints`.
pub const CHECKPOINT: &str = "publisher";
/// Events per batch: published back to back, then their acks awaited in
/// order (≈10,000 acked messages/s with a window this size, docs/event-store.md).
pub const BATCH: i64 = 1000;
/// How often an idle publisher looks for work without a NOTIFY.
const POLL: Duration = Duration::from_millis(500);
/// How soon to look again when committed events wait behind an older
/// transaction still running (`tail::waiting`).
const BLOCKED_POLL: Duration = Duration::from_millis(10);
/// How often a standby publisher tries to take over.
const STANDBY_RETRY: Duration = Duration::from_secs(1);
/// How often to look at the NATS connection while it is down.
const RECONNECT_POLL: Duration = Duration::from_millis(100);
/// How long NATS may be unreachable before the publisher reports it.
const DISCONNECTED_GRACE: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long to wait for one publish ack before treating NATS as failing.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Snapshots and checksums per second, at most (docs/benchmarks.md).
pub const RESYNC_PER_SECOND: f64 = 100.0;
/// Snapshots and checksums served between two batches of events, at most.
pub const RESYNC_SLICE: usize = 8;
/// No further snapshot is started in a slice after this long: with the
/// snapshot under way, how long a live event may wait behind a resync.
pub const RESYNC_SLICE_TIME: Duration = Duration::from_millis(10);
/// How often the active publisher looks whether a checksum round is due.
const ROUND_POLL: Duration = Duration::from_secs(1);
/// The default of `LEDGER_CHECKSUM_INTERVAL`.
pub const CHECKSUM_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Tail(#[from] TailError),
    #[error("cannot create or update stream LEDGER: {0}")]
    Stream(#[from] jetstream::context::CreateStreamError),
    #[error("publishing the event at position {position} failed: {source}")]
    Publish {
        position: i64,
        #[source]
        source: NatsPublishError,
    },
    #[error("encoding the event at position {position}: {source}")]
    Encode {
        position: i64,
        #[source]
        source: serde_json::Error,
    },
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Published (and checkpointed) this many events; `more` when committed
    /// events or resync requests are still waiting; `busy` when resync
    /// requests were served (look again at once: more may wait).
    Published {
        count: usize,
        more: bool,
        busy: bool,
    },
    /// Another process holds the lease.
    Standby,
    /// NATS is not connected; nothing was tried.
    Disconnected,
}

pub struct Publisher {
    pool: PgPool,
    client: Client,
    jetstream: jetstream::Context,
    /// The dedicated connection, and whether it holds the publisher's lock.
    lease: Option<(PgConnection, bool)>,
    stream_ready: bool,
    /// Copies JetStream keeps of the `LEDGER` stream (1 on one server, 3 in
    /// a three-node cluster); applied whenever the stream is created or
    /// updated.
    stream_replicas: usize,
    /// The problem last reported (logged once, shown in `last_error`).
    problem: Option<String>,
    /// How often drift checksums go out; zero: never.
    checksum_interval: Duration,
    last_round_check: Option<Instant>,
    resync_budget: TokenBucket,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: usize) -> TokenBucket {
        TokenBucket {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            refilled: Instant::now(),
        }
    }

    /// Takes up to `wanted` tokens; returns how many it got.
    fn take(&mut self, wanted: usize) -> usize {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        let granted = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= granted as f64;
        granted
    }
}

impl Publisher {
    pub fn new(pool: PgPool, client: Client) -> Publisher {
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .max_ack_inflight(2 * BATCH as usize)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Publisher {
            pool,
            client,
            jetstream,
            lease: None,
            stream_ready: false,
            stream_replicas: 1,
            problem: None,
            checksum_interval: CHECKSUM_INTERVAL,
            last_round_check: None,
            resync_budget: TokenBucket::new(RESYNC_PER_SECOND, RESYNC_SLICE),
        }
    }

    /// How often drift checksums are published (`LEDGER_CHECKSUM_INTERVAL`);
    /// zero turns them off.
    pub fn checksum_every(mut self, interval: Duration) -> Publisher {
        self.checksum_interval = interval;
        self
    }

    /// Keeps the `LEDGER` stream at `replicas` copies (at least 1; at most
    /// the cluster's size, or JetStream refuses the stream and the
    /// publisher reports it and retries).
    pub fn with_stream_replicas(mut self, replicas: usize) -> Publisher {
        self.stream_replicas = replicas.max(1);
        self
    }

    /// Publishes until the process ends; every failure is logged, recorded
    /// and retried with backoff.
    pub async fn run(mut self, mut signal: LogSignal) {
        // Every process answers adapters' resync requests; only the active
        // publisher serves them.
        tokio::spawn(resync::answer_requests(
            self.pool.clone(),
            self.client.clone(),
        ));
        let mut backoff = MIN_BACKOFF;
        let mut disconnected_since = None;
        loop {
            let step = self.step().await;
            disconnected_since =
                disconnected_since.filter(|_| matches!(step, Ok(Step::Disconnected)));
            match step {
                Ok(Step::Published { count, more, busy }) => {
                    backoff = MIN_BACKOFF;
                    self.clear_problem().await;
                    if count < BATCH as usize && !busy {
                        signal.wait(if more { BLOCKED_POLL } else { POLL }).await;
                    }
                }
                Ok(Step::Standby) => {
                    backoff = MIN_BACKOFF;
                    tokio::time::sleep(STANDBY_RETRY).await;
                }
                Ok(Step::Disconnected) => {
                    // The client connects in the background: a moment at start-up is normal.
                    let since = *disconnected_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= DISCONNECTED_GRACE {
                        self.report("NATS is not connected; publishing resumes when it is back")
                            .await;
                    }
                    tokio::time::sleep(RECONNECT_POLL).await;
                }
                Err(error) => {
                    if let PublisherError::Db(_) | PublisherError::Tail(TailError::Db(_)) = error {
                        // The lock went with the connection (or may have): start over.
                        self.lease = None;
                    } else {
                        self.stream_ready = false;
                    }
                    self.report(&error.to_string()).await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn step(&mut self) -> Result<Step, PublisherError> {
        if !self.hold_lease().await? {
            return Ok(Step::Standby);
        }
        if !nats::is_connected(&self.client) {
            return Ok(Step::Disconnected);
        }
        if !self.stream_ready {
            let config = async_nats::jetstream::stream::Config {
                num_replicas: self.stream_replicas,
                ..nats::stream_config()
            };
            self.jetstream.create_or_update_stream(config).await?;
            self.stream_ready = true;
        }
        self.queue_checksum_round().await;
        let Some((conn, _)) = self.lease.as_mut() else {
            return Ok(Step::Standby);
        };
        let after = tail::load_checkpoint(conn, CHECKPOINT).await?;
        let events = tail::read_batch(conn, after, BATCH).await?;
        let (reached, failure) = publish(&self.jetstream, &events).await;
        let reached = reached.and_then(|p| events.iter().find(|e| e.position == p));
        if let Some(event) = reached {
            tail::store_checkpoint(conn, CHECKPOINT, event.cursor()).await?;
        }
        if let Some(error) = failure {
            return Err(error);
        }
        let published = reached.map_or(after, Envelope::cursor);
        let served =
            serve_requests(conn, &self.jetstream, &mut self.resync_budget, published).await?;
        let more = served.is_some()
            || events.len() < BATCH as usize && tail::waiting(&mut *conn, CHECKPOINT).await?;
        Ok(Step::Published {
            count: events.len(),
            more,
            busy: served.is_some_and(|n| n > 0),
        })
    }

    /// Queues a round of drift checksums when one is due (`crate::resync`).
    async fn queue_checksum_round(&mut self) {
        if self.checksum_interval.is_zero()
            || self
                .last_round_check
                .is_some_and(|at| at.elapsed() < ROUND_POLL.min(self.checksum_interval))
        {
            return;
        }
        self.last_round_check = Some(Instant::now());
        match resync::queue_checksums(&self.pool, self.checksum_interval).await {
            Ok(0) => {}
            Ok(queued) => tracing::info!(queued, "drift checksum round queued"),
            Err(error) => tracing::warn!(%error, "cannot queue a drift checksum round"),
        }
    }

    /// Whether this process is the active publisher, taking the lock when free.
    async fn hold_lease(&mut self) -> Result<bool, sqlx::Error> {
        if let Some((_, true)) = self.lease {
            return Ok(true);
        }
        if self.lease.is_none() {
            let options = (*self.pool.connect_options())
                .clone()
                .application_name("ledger-publisher");
            self.lease = Some((options.connect().await?, false));
        }
        let Some((conn, held)) = self.lease.as_mut() else {
            return Ok(false);
        };
        *held = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_lock(hashtextextended('ledger.publisher', 0)) AS "held!""#
        )
        .fetch_one(&mut *conn)
        .await?;
        if *held {
            tracing::info!("this process is now the NATS publisher");
            // A fresh lease may follow a lost one: make sure the stream exists.
            self.stream_ready = false;
        }
        Ok(*held)
    }

    /// Logs a problem once and shows it in the checkpoint's `last_error`.
    async fn report(&mut self, problem: &str) {
        if self.problem.as_deref() == Some(problem) {
            return;
        }
        tracing::warn!(problem, "NATS publisher is behind");
        self.problem = Some(problem.to_owned());
        let recorded = sqlx::query!(
            "UPDATE projection_checkpoints SET last_error = $2, updated_at = now() WHERE name = $1",
            CHECKPOINT,
            problem,
        )
        .execute(&self.pool)
        .await;
        if let Err(error) = recorded {
            tracing::debug!(%error, "could not record the publisher's problem");
        }
    }

    async fn clear_problem(&mut self) {
        if self.problem.take().is_none() {
            return;
        }
        tracing::info!("NATS publisher has recovered");
        let cleared = sqlx::query!(
            "UPDATE projection_checkpoints SET last_error = NULL, updated_at = now() WHERE name = $1",
            CHECKPOINT,
        )
        .execute(&self.pool)
        .await;
        if let Err(error) = cleared {
            tracing::debug!(%error, "could not clear the publisher's problem");
        }
    }

    /// Closes the lease connection (tests and graceful shutdown).
    pub async fn close(mut self) {
        if let Some((conn, _)) = self.lease.take() {
            let _ = conn.close().await;
        }
    }
}

/// Serves up to one slice of pending resync and checksum requests, as of
/// `published` (the publisher's cursor: everything of a property at or
/// behind it is on the stream). Returns how many it served, `None` when
/// none were pending.
async fn serve_requests(
    conn: &mut PgConnection, jetstream: &jetstream::Context, budget: &mut TokenBucket,
    published: Cursor,
) -> Result<Option<usize>, PublisherError> {
    let requests = resync::pending(&mut *conn, RESYNC_SLICE as i64).await?;
    if requests.is_empty() {
        return Ok(None);
    }
    let allowed = budget.take(requests.len());
    let mut served = Vec::with_capacity(allowed);
    let mut pending_acks = Vec::with_capacity(allowed);
    let mut failure = None;
    let started = Instant::now();
    for request in requests.into_iter().take(allowed) {
        if started.elapsed() >= RESYNC_SLICE_TIME {
            // Unused tokens stay spent: the bucket only ever slows down.
            break;
        }
        let events = tail::read_property(&mut *conn, request.property_id, 0, published).await?;
        let Some(document) = availability_document(&request, events) else {
            continue;
        };
        let Some(document) = document else {
            // Nothing to say (no such property, or a checksum of nothing).
            served.push(request.id);
            continue;
        };
        let subject = cloudevent::subject(
            document.origin().map(|(a, _)| a).unwrap_or_default(),
            request.property_id,
            document.kind().unwrap_or(cloudevent::SNAPSHOT),
        );
        let payload = match serde_json::to_vec(&document) {
            Ok(payload) => payload,
            Err(source) => {
                failure = Some(PublisherError::Encode {
                    position: document.ledgerposition,
                    source,
                });
                break;
            }
        };
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(document.id.to_string());
        match jetstream.send_publish(subject, message).await {
            Ok(ack) => pending_acks.push((request.id, document.ledgerposition, ack)),
            Err(source) => {
                failure = Some(PublisherError::Publish {
                    position: document.ledgerposition,
                    source,
                });
                break;
            }
        }
    }
    for (id, position, ack) in pending_acks {
        match ack.await {
            Ok(_) => served.push(id),
            Err(source) => {
                failure = Some(PublisherError::Publish { position, source });
                break;
            }
        }
    }
    resync::finish(&mut *conn, &served).await?;
    match failure {
        Some(error) => Err(error),
        None => Ok(Some(served.len())),
    }
}

/// The snapshot or checksum a request asks for, from the property's events
/// as published: `None` while the publisher has not yet published as far as
/// the request needs; `Some(None)` when there is nothing to publish.
fn availability_document(request: &Pending, events: Vec<Envelope>) -> Option<Option<CloudEvent>> {
    let last_sequence = events.last().map_or(0, |e| e.sequence);
    if last_sequence < request.min_sequence {
        return None;
    }
    let Some(agency_id) = events.first().map(|e| e.meta.agency_id) else {
        return Some(None);
    };
    let mut loaded = Loaded::default();
    loaded.fold(
        events
            .into_iter()
            .map(|e| (e.sequence, e.position, e.event))
            .collect(),
    );
    let timezone = loaded
        .calendar
        .property
        .as_ref()
        .map_or(ledger_domain::calendar::DEFAULT_TIMEZONE, |p| {
            p.details.timezone.as_str()
        });
    let (from, to) = checksum::window(timezone, Utc::now());
    let ranges = checksum::ranges_in(&loaded.calendar, from, to);
    let sum = checksum::checksum(&ranges);
    let property_id = request.property_id;
    let (kind, data) = match request.kind {
        RequestKind::Snapshot => (
            cloudevent::SNAPSHOT,
            serde_json::to_value(SnapshotData {
                property_id,
                as_of_position: loaded.position,
                as_of_sequence: loaded.sequence,
                from,
                to,
                ranges,
                checksum: sum,
            }),
        ),
        RequestKind::Checksum if ranges.is_empty() => return Some(None),
        RequestKind::Checksum => (
            cloudevent::CHECKSUM,
            serde_json::to_value(ChecksumData {
                property_id,
                as_of_sequence: loaded.sequence,
                from,
                to,
                checksum: sum,
            }),
        ),
    };
    let Ok(data) = data else {
        return Some(None);
    };
    Some(Some(CloudEvent::availability(
        agency_id,
        property_id,
        kind,
        loaded.position,
        loaded.sequence,
        data,
    )))
}

/// Publishes `events` back to back, then awaits their acks in order. Returns
/// the position of the last event acked with none missing before it, and the
/// first failure, if any.
async fn publish(
    jetstream: &jetstream::Context, events: &[Envelope],
) -> (Option<i64>, Option<PublisherError>) {
    let mut pending = Vec::with_capacity(events.len());
    let mut failure = None;
    for envelope in events {
        let position = envelope.position;
        let document = CloudEvent::from_envelope(envelope);
        let payload = match serde_json::to_vec(&document) {
            Ok(payload) => payload,
            Err(source) => {
                failure = Some(PublisherError::Encode { position, source });
                break;
            }
        };
        let subject = cloudevent::subject(
            envelope.meta.agency_id,
            envelope.property_id,
            envelope.event.kind(),
        );
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(envelope.event_id.to_string());
        match jetstream.send_publish(subject, message).await {
            Ok(ack) => pending.push((position, ack)),
            Err(source) => {
                failure = Some(PublisherError::Publish { position, source });
                break;
            }
        }
    }
    let mut reached = None;
    for (position, ack) in pending {
        match ack.await {
            Ok(_) => reached = Some(position),
            Err(source) => {
                // Later acks may have succeeded, but the checkpoint cannot
                // pass a hole; they are republished and dropped as duplicates.
                failure = Some(PublisherError::Publish { position, source });
                break;
            }
        }
    }
    (reached, failure)
}
