//! The NATS connection the publisher, the channel kit and `ledger tail`
//! share, and the `LEDGER` stream's definition.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use async_nats::{ConnectError, ConnectErrorKind, ConnectOptions, ServerAddr};

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

/// Where a NATS server is and how to log in to it.
///
/// - `url`: `nats://host:4222`, `tls://host:4222` (TLS required), with
///   optional credentials: `nats://user:password@host:4222` or
///   `nats://token@host:4222` (percent-encode reserved characters). They
///   are taken out of the URL, so the URL the client keeps and logs has none.
///   Several servers of one cluster are listed comma-separated
///   (`nats://a:4222,nats://b:4222,nats://c:4222`): the client connects to
///   one of them and moves to another when it goes away; credentials may sit
///   in any one of the URLs and are used for all.
/// - `creds`: a `.creds` file (user JWT and NKey seed), for servers run in
///   operator/JWT mode.
/// - `tls_ca`: PEM file of a private CA that signed the server's
///   certificate; setting it requires TLS even on a `nats://` URL.
/// - `inbox_prefix`: replies (JetStream API answers, pulled messages) come
///   to subjects under this prefix instead of `_INBOX`; a per-agency user may
///   subscribe only to its own prefix ([`agency_inbox_prefix`]).
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    pub url: String,
    pub creds: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub inbox_prefix: Option<String>,
}

impl Endpoint {
    /// An endpoint with nothing but a URL (credentials may be in it).
    pub fn url(url: impl Into<String>) -> Endpoint {
        Endpoint {
            url: url.into(),
            ..Default::default()
        }
    }

    pub fn inbox_prefix(mut self, prefix: impl Into<String>) -> Endpoint {
        self.inbox_prefix = Some(prefix.into());
        self
    }

    /// The options that log in as this endpoint says, and the servers'
    /// addresses with any credentials removed.
    async fn options(&self, name: &str) -> Result<(ConnectOptions, Vec<ServerAddr>), ConnectError> {
        let parse = |e| ConnectError::with_source(ConnectErrorKind::ServerParse, e);
        let mut options = ConnectOptions::new().name(name);
        let mut logged_in = false;
        let mut addresses = Vec::new();
        for url in self.url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let address: ServerAddr = url.parse().map_err(parse)?;
            match (address.username(), address.password()) {
                (Some(user), Some(password)) if !logged_in => {
                    options =
                        options.user_and_password(percent_decode(user), percent_decode(password));
                    logged_in = true;
                }
                (Some(token), None) if !logged_in => {
                    options = options.token(percent_decode(token));
                    logged_in = true;
                }
                _ => {}
            }
            let mut url = address.into_inner();
            // Only fails for URLs that cannot have credentials, which parsed above.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            addresses.push(ServerAddr::from_url(url).map_err(parse)?);
        }
        if addresses.is_empty() {
            return Err(ConnectError::with_source(
                ConnectErrorKind::ServerParse,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "NATS_URL names no server"),
            ));
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| ConnectError::with_source(ConnectErrorKind::Authentication, e))?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        Ok((options, addresses))
    }
}

/// `%XX` escapes of a URL's user or password, decoded; anything else kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The inbox prefix of an agency's adapters: their user may subscribe to
/// replies under it and nowhere else (`ledger nats-permissions`).
pub fn agency_inbox_prefix(agency_id: uuid::Uuid) -> String {
    format!("_INBOX.agency-{agency_id}")
}

/// The nats-server `users` entry of one agency's adapters: it may consume
/// `ledger.<agency>.>` through the listed durables of stream `LEDGER` (names
/// as [`crate::channel::agency_durable`] makes them), receive replies under
/// its own inbox prefix ([`agency_inbox_prefix`]), and publish nothing else.
///
/// What each permission is for (the kit's `ChannelConsumer::bind` and pull):
/// - `$JS.API.CONSUMER.INFO.LEDGER.<durable>`: find the durable;
/// - `$JS.API.CONSUMER.CREATE.LEDGER.<durable>.ledger.<agency>.>`: create it
///   the first time; the server refuses a body whose filter differs from the
///   subject's, so the filter cannot reach another agency;
/// - `$JS.API.CONSUMER.MSG.NEXT.LEDGER.<durable>`: pull;
/// - `$JS.ACK.LEDGER.<durable>.>`: ack, nak, term;
/// - subscribe `_INBOX.agency-<agency>.>`: the pulled messages and the API's
///   answers (not `_INBOX.>`, where other users' deliveries arrive).
pub fn agency_permissions(
    agency_id: uuid::Uuid, user: &str, password: &str, durables: &[String],
) -> String {
    let agency = agency_id.to_string();
    let mut publish = Vec::new();
    for durable in durables {
        publish.push(format!("$JS.API.CONSUMER.INFO.{STREAM}.{durable}"));
        publish.push(format!(
            "$JS.API.CONSUMER.CREATE.{STREAM}.{durable}.{}.{agency}.>",
            crate::cloudevent::PREFIX
        ));
        publish.push(format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{durable}"));
        publish.push(format!("$JS.ACK.{STREAM}.{durable}.>"));
    }
    // The kit asks for a snapshot of one of its agency's properties when it
    // sees a gap or a checksum that differs (`crate::resync`).
    publish.push(format!("{}.{agency}.>", crate::resync::REQUEST_PREFIX));
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| format!("        \"{s}\""))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    format!(
        "# Agency {agency}: reads its own events (stream {STREAM}, subjects {prefix}.{agency}.>)\n\
         # through the durable consumers {names}, with the inbox prefix\n\
         # {inbox}; may ask for its own properties' resyncs and publish nothing else. Paste into the server's\n\
         # authorization {{ users = [ ... ] }} (or the users of the ledger's account).\n\
         {{\n\
         \x20 user: \"{user}\"\n\
         \x20 password: \"{password}\"\n\
         \x20 permissions: {{\n\
         \x20   publish: {{\n\
         \x20     allow: [\n{publish}\n\
         \x20     ]\n\
         \x20   }}\n\
         \x20   subscribe: {{\n\
         \x20     allow: [\n{subscribe}\n\
         \x20     ]\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n",
        prefix = crate::cloudevent::PREFIX,
        names = durables.join(", "),
        inbox = agency_inbox_prefix(agency_id),
        publish = list(&publish),
        subscribe = list(&[format!("{}.>", agency_inbox_prefix(agency_id))]),
    )
}

/// A client that connects in the background and keeps reconnecting (at most
/// a second apart) for as long as the process runs, so the ledger starts and
/// keeps taking commands while NATS is down.
pub async fn connect(url: &str, name: &str) -> Result<Client, ConnectError> {
    connect_to(&Endpoint::url(url), name).await
}

/// [`connect`] with the endpoint's credentials and TLS settings.
pub async fn connect_to(endpoint: &Endpoint, name: &str) -> Result<Client, ConnectError> {
    let (options, addresses) = endpoint.options(name).await?;
    options
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).clamp(100, 1000))
        })
        .connect(addresses)
        .await
}

/// A client for a command-line tool: fails at once when NATS is unreachable.
pub async fn connect_now(url: &str, name: &str) -> Result<Client, ConnectError> {
    connect_now_to(&Endpoint::url(url), name).await
}

/// [`connect_now`] with the endpoint's credentials and TLS settings.
pub async fn connect_now_to(endpoint: &Endpoint, name: &str) -> Result<Client, ConnectError> {
    let (options, addresses) = endpoint.options(name).await?;
    options
        .connection_timeout(Duration::from_secs(2))
        .connect(addresses)
        .await
}

/// Whether the client is connected to a server right now.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_in_the_url_are_taken_out_of_it() {
        let endpoint = Endpoint::url("nats://ana:p%40ss@127.0.0.1:4222");
        let (_, addresses) = endpoint.options("test").await.expect("valid");
        assert_eq!(addresses.len(), 1);
        assert_eq!(addresses[0].username(), None);
        assert_eq!(addresses[0].password(), None);
        assert_eq!(addresses[0].port(), 4222);
    }

    #[tokio::test]
    async fn a_cluster_is_listed_comma_separated() {
        let endpoint = Endpoint::url(
            "nats://ana:pw@127.0.0.1:4222, nats://127.0.0.1:4223,nats://127.0.0.1:4224",
        );
        let (_, addresses) = endpoint.options("test").await.expect("valid");
        let ports: Vec<u16> = addresses.iter().map(ServerAddr::port).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert!(addresses.iter().all(|a| a.username().is_none()));
        assert!(Endpoint::url(" , ").options("test").await.is_err());
    }

    #[test]
    fn an_agency_user_may_publish_only_to_its_own_consumers() {
        let agency = uuid::Uuid::new_v4();
        let durable = crate::channel::agency_durable(agency, "airbnb");
        let block = agency_permissions(agency, "a", "pw", std::slice::from_ref(&durable));
        assert!(block.contains(&format!(
            "\"$JS.API.CONSUMER.CREATE.LEDGER.{durable}.ledger.{agency}.>\""
        )));
        assert!(block.contains(&format!("\"_INBOX.agency-{agency}.>\"")));
        assert!(!block.contains("\"ledger.>\""));
        assert!(!block.contains("\"_INBOX.>\""));
        assert!(!block.contains("STREAM."));
    }

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("p%40ss%2Fw"), "p@ss/w");
        assert_eq!(percent_decode("plain%zz%4"), "plain%zz%4");
    }
}
