//! Live updates: ONE reader per process tails the log with the same
//! gap-free reader the projections use (`ledger_infra::tail::read_batch`,
//! in `(txid, position)` order) and fans every event out on its agency's
//! broadcast channel (so an event wakes only the streams of its agency);
//! each open stream filters it further for its caller. A stream that
//! resumes from an old position, or falls behind the channel, reads its
//! backlog from the log in bounded pages and then takes the channel again,
//! dropping what it already sent (by cursor), so nothing is missed or
//! doubled. The log is the source: a stream can resume across restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger_infra::tail::{self, Cursor, Envelope, LogSignal, LogWaker, TailError};
use sqlx::PgPool;
use tokio::sync::{broadcast, watch, OnceCell};
use uuid::Uuid;

/// Events one backlog page (and one read of the live reader) takes at most.
pub const PAGE: i64 = 500;
/// Events a stream may fall behind the live reader before it reads its
/// backlog from the log instead (per agency).
pub const CHANNEL_CAPACITY: usize = 256;
/// How often the reader looks again when nothing woke it: a transaction
/// that holds back the horizon may commit without appending (and so
/// without a wake-up).
const POLL: Duration = Duration::from_millis(250);

pub type Live = Arc<Envelope>;
type Channels = Arc<Mutex<HashMap<Uuid, broadcast::Sender<Live>>>>;

/// The process's one live reader, started by the first stream.
pub struct Hub {
    pool: PgPool,
    waker: LogWaker,
    started: OnceCell<()>,
    /// One channel per agency with an open stream.
    channels: Channels,
    /// The cursor of the last event the reader sent on the channel.
    sent: Arc<Mutex<Cursor>>,
    /// Set when the process is told to stop: every stream ends, so the
    /// server's graceful shutdown does not wait on them (their clients
    /// reconnect elsewhere with Last-Event-ID).
    closing: Arc<watch::Sender<bool>>,
}

/// A new stream's place: events after `from` come from the log, then the
/// channel.
pub struct Subscription {
    pub receiver: broadcast::Receiver<Live>,
    pub from: Cursor,
    pub closing: watch::Receiver<bool>,
}

impl Hub {
    pub fn new(pool: PgPool, waker: LogWaker) -> Arc<Hub> {
        Arc::new(Hub {
            pool,
            waker,
            started: OnceCell::new(),
            channels: Arc::default(),
            sent: Arc::new(Mutex::new(Cursor::default())),
            closing: Arc::new(watch::channel(false).0),
        })
    }

    /// Joins the live feed. Without `resume_after`, the stream starts at the
    /// reader's cursor as it is now, read BEFORE joining: what the reader
    /// sends in between is read from the log (and the channel's copy is
    /// dropped as a double).
    pub async fn subscribe(
        &self, agency_id: Uuid, resume_after: Option<Cursor>,
    ) -> Result<Subscription, sqlx::Error> {
        self.started.get_or_try_init(|| self.start()).await?;
        let from = resume_after.unwrap_or_else(|| self.sent_cursor());
        let receiver = lock(&self.channels)
            .entry(agency_id)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        Ok(Subscription {
            receiver,
            from,
            closing: self.closing.subscribe(),
        })
    }

    /// How many streams are open in this process.
    pub fn streams(&self) -> usize {
        lock(&self.channels)
            .values()
            .map(broadcast::Sender::receiver_count)
            .sum()
    }

    fn sent_cursor(&self) -> Cursor {
        *self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the reader at the log's horizon: every event at or behind it
    /// is visible already, so a stream joining later reads them from the log.
    async fn start(&self) -> Result<(), sqlx::Error> {
        let horizon = tail::horizon(&self.pool).await?;
        *self.sent.lock().unwrap_or_else(|p| p.into_inner()) = horizon;
        let reader = Reader {
            pool: self.pool.clone(),
            signal: LogSignal::listen(&self.waker),
            channels: self.channels.clone(),
            sent: self.sent.clone(),
            cursor: horizon,
        };
        tokio::spawn(reader.run());
        let closing = self.closing.clone();
        tokio::spawn(async move {
            crate::startup::shutdown_signal().await;
            closing.send_replace(true);
        });
        Ok(())
    }

    /// One page of the log after `after`, for a stream's backlog.
    pub async fn page(&self, after: Cursor) -> Result<Vec<Envelope>, TailError> {
        let mut conn = self.pool.acquire().await?;
        tail::read_batch(&mut conn, after, PAGE).await
    }

    /// The cursor of the event at `position`: a stream that was sent it has
    /// been sent everything before it in the reader's order, and nothing after.
    pub async fn cursor_of(&self, position: i64) -> Result<Option<Cursor>, sqlx::Error> {
        tail::cursor_of(&self.pool, position).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Reader {
    pool: PgPool,
    signal: LogSignal,
    channels: Channels,
    sent: Arc<Mutex<Cursor>>,
    cursor: Cursor,
}

impl Reader {
    async fn run(mut self) {
        loop {
            match self.read().await {
                Ok(full) if full => continue,
                Ok(_) => self.signal.wait(POLL).await,
                Err(error) => {
                    // An unreadable event holds the feed here (as it parks a
                    // projection); streams keep their keep-alives meanwhile.
                    tracing::warn!(%error, "the live reader cannot read the log; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Sends the next page; `true` when it was full (more may be waiting).
    async fn read(&mut self) -> Result<bool, TailError> {
        let mut conn = self.pool.acquire().await?;
        let batch = tail::read_batch(&mut conn, self.cursor, PAGE).await?;
        drop(conn);
        let full = batch.len() as i64 == PAGE;
        for envelope in batch {
            self.cursor = envelope.cursor();
            // The cursor first, then the event: a stream that reads the
            // cursor before joining either gets the event on the channel
            // or reads it from the log.
            *self.sent.lock().unwrap_or_else(|p| p.into_inner()) = self.cursor;
            let agency_id = envelope.meta.agency_id;
            let mut channels = lock(&self.channels);
            if let Some(channel) = channels.get(&agency_id) {
                // Its last stream closed: the channel goes (under the lock
                // a new stream would subscribe with).
                if channel.send(Arc::new(envelope)).is_err() {
                    channels.remove(&agency_id);
                }
            }
        }
        Ok(full)
    }
}
