//! The NATS connection the publisher, the channel kit and `ledger tail`
//! share, and the `LEDGER` stream's definition.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use async_nats::ConnectOptions;

pub use async_nats::Client;

/// The JetStream stream every event goes to.
pub const STREAM: &str = "LEDGER";

/// How long JetStream remembers a `Nats-Msg-Id` to drop a republished event.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The `LEDGER` stream, created or updated by every `ledger serve` at start.
///
/// Limits, and why:
/// - file storage, one replica here (three in a cluster): the stream must
///   survive a NATS restart, but it is a fan-out buffer, not the truth. The
///   log in PostgreSQL is, and a consumer that falls off the end of the
///   stream resynchronises from `GET /api/v1/properties/{id}/events`.
/// - `max_age` 7 days, `max_bytes` 8 GiB, discard old: a week covers an
///   adapter that is down over a long weekend with room to spare; at about
///   1 KiB an event, 8 GiB holds ~8 million events, far above a week of
///   traffic, so age is the limit that normally applies and bytes only guard
///   the disk.
/// - `max_message_size` 1 MiB: an event is a few hundred bytes; anything near
///   this is a bug, refused rather than stored.
/// - `duplicate_window` 2 minutes ([`DUPLICATE_WINDOW`]): a publisher that
///   died after publishing and before its checkpoint republishes within
///   seconds, so JetStream drops those copies; older copies are left to the
///   consumers (the channel kit skips an event id or `ledgersequence` it has
///   already handled).
/// - in production, run the server with `jetstream { sync_interval: always }`
///   (or accept losing the last seconds of acknowledged messages on power
///   loss; they are republished only if the publisher's checkpoint had not
///   moved past them).
pub fn stream_config() -> Config {
    Config {
        name: STREAM.to_owned(),
        description: Some("Booking Ledger events, CloudEvents 1.0 JSON, in log order".into()),
        subjects: vec![format!("{}.>", crate::cloudevent::PREFIX)],
        storage: StorageType::File,
        num_replicas: 1,
        discard: DiscardPolicy::Old,
        max_age: Duration::from_secs(7 * 24 * 3600),
        max_bytes: 8 * 1024 * 1024 * 1024,
        max_messages: -1,
        max_messages_per_subject: -1,
        max_message_size: 1024 * 1024,
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        ..Default::default()
    }
}

/// A client that connects in the background and keeps reconnecting (at most
/// a second apart) for as long as the process runs, so the ledger starts and
/// keeps taking commands while NATS is down.
pub async fn connect(url: &str, name: &str) -> Result<Client, async_nats::ConnectError> {
    ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).clamp(100, 1000))
        })
        .connect(url)
        .await
}

/// A client for a command-line tool: fails at once when NATS is unreachable.
pub async fn connect_now(url: &str, name: &str) -> Result<Client, async_nats::ConnectError> {
    ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
}

/// Whether the client is connected to a server right now.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}
