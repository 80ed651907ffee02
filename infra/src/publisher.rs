//! Publishes the log to NATS JetStream, in order, at least once, with no gaps
//! (API.md "Event stream on NATS JetStream").
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
//! NATS down: commands keep committing; the publisher waits for the client
//! to reconnect (retrying about every second), then publishes the backlog in
//! order. Its lag shows in `/ops/projections` as `publisher`.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishError as NatsPublishError};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::cloudevent::{self, CloudEvent};
use crate::nats::{self, Client};
use crate::tail::{self, Envelope, LogSignal, TailError};

/// The publisher's row in `projection_checkpoints`.
pub const CHECKPOINT: &str = "publisher";
/// Events per batch: published back to back, then their acks awaited in
/// order (≈10,000 acked messages/s with a window this size, EVENT-STORE.md).
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
    /// events are still waiting to be read.
    Published { count: usize, more: bool },
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
        }
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
        let mut backoff = MIN_BACKOFF;
        let mut disconnected_since = None;
        loop {
            let step = self.step().await;
            disconnected_since =
                disconnected_since.filter(|_| matches!(step, Ok(Step::Disconnected)));
            match step {
                Ok(Step::Published { count, more }) => {
                    backoff = MIN_BACKOFF;
                    self.clear_problem().await;
                    if count < BATCH as usize {
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
        let more = events.len() < BATCH as usize && tail::waiting(&mut *conn, CHECKPOINT).await?;
        Ok(Step::Published {
            count: events.len(),
            more,
        })
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
        *held = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended('ledger.publisher', 0))",
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
        let recorded = sqlx::query(
            "UPDATE projection_checkpoints SET last_error = $2, updated_at = now() WHERE name = $1",
        )
        .bind(CHECKPOINT)
        .bind(problem)
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
        let cleared = sqlx::query(
            "UPDATE projection_checkpoints SET last_error = NULL, updated_at = now() WHERE name = $1",
        )
        .bind(CHECKPOINT)
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

/// Publishes `events` back to back, then awaits their acks in order. Returns
/// the position of the last event acked with none missing before it, and the
/// first failure, if any.
async fn publish(
    jetstream: &jetstream::Context,
    events: &[Envelope],
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
