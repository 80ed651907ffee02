//! Fetching a channel's feed without letting a feed URL reach inside
//! (docs/ical.md, "Which feeds are fetched").
//!
//! A feed URL is chosen by an agency admin, and the service fetches it from
//! inside the operator's network. So only `http`/`https` URLs are fetched,
//! and only from public addresses: every address a host name resolves to is
//! checked, and the connection goes to exactly the addresses checked (the
//! client's resolver is [`CheckedResolver`], so a DNS answer cannot change
//! between the check and the connect). IP-literal hosts, which never reach a
//! resolver, are checked from the URL itself: at registration, before each
//! fetch and at each redirect hop. Host names in [`AddressRules`]'s
//! allow-list (`LEDGER_FEED_ALLOW_HOSTS`) skip the address check: they name
//! on-premises channel servers.
//!
//! Errors are ours, in words a manager can act on ([`FetchError`]): never the
//! text of another server's reply, so a refused or failing URL tells the
//! caller nothing about what answered behind it.

use std::collections::HashSet;
use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect::Policy;
use reqwest::Url;

/// A feed larger than this is refused.
pub const MAX_FEED_BYTES: usize = 5 * 1024 * 1024;
/// A whole fetch (connect, redirects, body) longer than this is abandoned.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// The longest feed URL registered.
pub const MAX_URL_LEN: usize = 2048;
/// How long registration waits for DNS before accepting a name it cannot
/// resolve yet (every fetch checks it again).
const REGISTRATION_LOOKUP: Duration = Duration::from_secs(5);

/// Why a feed could not be read: what `last_error` says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("only http and https URLs are fetched")]
    Scheme,
    /// The contract's words for a refused address.
    #[error("address not allowed")]
    AddressNotAllowed,
    #[error("the feed could not be reached")]
    Unreachable,
    #[error("the feed answered with an error (HTTP {0})")]
    Status(u16),
    #[error("the feed redirected more than {MAX_REDIRECTS} times")]
    TooManyRedirects,
    #[error("the feed is larger than 5 MiB")]
    TooLarge,
    #[error("the feed took longer than 30 s")]
    TimedOut,
    #[error("the feed is not an iCalendar file")]
    NotText,
    #[error("the feed file cannot be read: {0}")]
    File(String),
}

/// Why a URL is refused at registration (the message of a 400 naming `url`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    #[error("url is not a URL")]
    NotAUrl,
    #[error("url must be an http or https URL of at most {MAX_URL_LEN} characters")]
    NotHttp,
    #[error("url names an address that is not allowed (loopback, private, link-local, multicast or unspecified)")]
    AddressNotAllowed,
}

/// Which hosts may be fetched: public addresses, plus the allow-listed names.
#[derive(Debug, Clone, Default)]
pub struct AddressRules {
    allowed_hosts: HashSet<String>,
}

impl AddressRules {
    /// `allowed_hosts`: host names (or IP literals) fetched whatever they
    /// resolve to; compared without case and without a trailing dot.
    pub fn new<S: AsRef<str>>(allowed_hosts: impl IntoIterator<Item = S>) -> AddressRules {
        let allowed_hosts = allowed_hosts
            .into_iter()
            .map(|host| normalise_host(host.as_ref()))
            .filter(|host| !host.is_empty())
            .collect();
        AddressRules { allowed_hosts }
    }

    fn allows_host(&self, host: &str) -> bool {
        self.allowed_hosts.contains(&normalise_host(host))
    }

    /// What can be decided from the URL alone: the scheme, and an IP-literal
    /// host (however it was spelt: the URL parser turns `127.1`, `0x7f.1` and
    /// `2130706433` into `127.0.0.1`). Names are checked when they resolve.
    pub fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Scheme);
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(FetchError::Scheme),
        };
        if is_public(ip) || self.allows_host(&ip.to_string()) {
            Ok(())
        } else {
            Err(FetchError::AddressNotAllowed)
        }
    }

    /// The checked form of a URL an admin registers: `http`/`https`, a host,
    /// at most [`MAX_URL_LEN`], and a host that is allow-listed or resolves
    /// only to public addresses. A name that does not resolve yet is
    /// accepted: each fetch checks it again.
    pub async fn check_registration(&self, raw: &str) -> Result<Url, UrlRefusal> {
        let raw = raw.trim();
        let url = Url::parse(raw).map_err(|_| UrlRefusal::NotAUrl)?;
        if raw.len() > MAX_URL_LEN || url.host_str().is_none() {
            return Err(UrlRefusal::NotHttp);
        }
        match self.check_url(&url) {
            Ok(()) => {}
            Err(FetchError::AddressNotAllowed) => return Err(UrlRefusal::AddressNotAllowed),
            Err(_) => return Err(UrlRefusal::NotHttp),
        }
        if let Some(url::Host::Domain(name)) = url.host() {
            if !self.allows_host(name) {
                let lookup = tokio::net::lookup_host((name, 0));
                if let Ok(Ok(addresses)) = tokio::time::timeout(REGISTRATION_LOOKUP, lookup).await {
                    let addresses: Vec<SocketAddr> = addresses.collect();
                    if addresses.iter().any(|a| !is_public(a.ip())) {
                        return Err(UrlRefusal::AddressNotAllowed);
                    }
                }
            }
        }
        Ok(url)
    }
}

fn normalise_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// Whether `ip` is an address on the public internet: not loopback,
/// private, shared (CGNAT), link-local, multicast, unspecified, broadcast,
/// reserved or documentation, in IPv4 or in any IPv6 form that carries an
/// IPv4 address (mapped, compatible, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", 0.0.0.0 included
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254) // link-local, cloud metadata services
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224; // multicast, reserved, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // IPv4-compatible `::a.b.c.d` (deprecated), `::` and `::1` included.
    if segments[..6].iter().all(|s| *s == 0) {
        return false;
    }
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    // NAT64 `64:ff9b::a.b.c.d` reaches the IPv4 address it carries.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(segments[6], segments[7]));
    }
    // 6to4 `2002:AABB:CCDD::` routes to the IPv4 address AABBCCDD.
    if segments[0] == 0x2002 {
        return is_public_v4(embedded(segments[1], segments[2]));
    }
    let refused = (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (segments[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (segments[0] & 0xff00) == 0xff00 // multicast
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || (segments[0] == 0x2001 && segments[1] == 0) // Teredo
        || segments[..4] == [0x100, 0, 0, 0]; // discard-only
    !refused
}

/// The client's resolver: resolves a name, and refuses it unless every
/// address is public (or the name is allow-listed). The client then
/// connects to exactly the addresses returned here.
struct CheckedResolver {
    rules: Arc<AddressRules>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let rules = self.rules.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !rules.allows_host(&host) && addresses.iter().any(|a| !is_public(a.ip())) {
                return Err(Box::new(FetchError::AddressNotAllowed) as _);
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

/// An HTTP client that fetches feeds by [`AddressRules`]. Build one and
/// share it: it keeps connections.
#[derive(Clone)]
pub struct FeedFetcher {
    client: reqwest::Client,
    rules: Arc<AddressRules>,
}

impl FeedFetcher {
    pub fn new(rules: AddressRules) -> Result<FeedFetcher, FetchError> {
        let rules = Arc::new(rules);
        let hop_rules = rules.clone();
        let redirects = Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(FetchError::TooManyRedirects);
            }
            match hop_rules.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("booking-ledger-ical/", env!("CARGO_PKG_VERSION")))
            // A proxy would resolve and connect on our behalf, unchecked.
            .no_proxy()
            .redirect(redirects)
            .dns_resolver(Arc::new(CheckedResolver {
                rules: rules.clone(),
            }))
            .build()
            .map_err(|_| FetchError::Unreachable)?;
        Ok(FeedFetcher { client, rules })
    }

    pub fn rules(&self) -> &AddressRules {
        &self.rules
    }

    /// The feed at `url` as text.
    pub async fn fetch(&self, url: &str) -> Result<String, FetchError> {
        let url = Url::parse(url.trim()).map_err(|_| FetchError::Scheme)?;
        self.rules.check_url(&url)?;
        let mut response = self.client.get(url).send().await.map_err(classify)?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_FEED_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| FetchError::NotText)
    }
}

/// Our words for a client error: a refusal of ours found in its chain of
/// causes, a timeout, or else "could not be reached".
fn classify(error: reqwest::Error) -> FetchError {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(&error);
    while let Some(current) = cause {
        if let Some(ours) = current.downcast_ref::<FetchError>() {
            return ours.clone();
        }
        cause = current.source();
    }
    if error.is_timeout() {
        FetchError::TimedOut
    } else {
        FetchError::Unreachable
    }
}

/// A feed from a local file (the operator's `ledger ical import` only).
pub async fn read_file(path: &str) -> Result<String, FetchError> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| FetchError::File(format!("{path}: {e}")))?;
    if bytes.len() > MAX_FEED_BYTES {
        return Err(FetchError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| FetchError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        !is_public(ip.parse().expect("an address"))
    }

    #[test]
    fn inside_addresses_are_refused_in_every_form() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(refused(ip), "{ip} is refused");
        }
    }

    #[test]
    fn public_addresses_are_fetched() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(ip), "{ip} is public");
        }
    }

    #[test]
    fn odd_ipv4_spellings_are_the_addresses_they_spell() {
        let rules = AddressRules::default();
        for url in [
            "http://127.1:8080/",
            "http://0x7f.1/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://[::ffff:7f00:1]/",
            "http://[::1]/",
        ] {
            let url = Url::parse(url).expect("a URL");
            assert_eq!(
                rules.check_url(&url),
                Err(FetchError::AddressNotAllowed),
                "{url}"
            );
        }
    }

    #[test]
    fn only_http_and_https_are_fetched() {
        let rules = AddressRules::default();
        for url in ["file:///etc/passwd", "ftp://example.com/x", "gopher://x/"] {
            let url = Url::parse(url).expect("a URL");
            assert_eq!(rules.check_url(&url), Err(FetchError::Scheme), "{url}");
        }
    }

    #[test]
    fn allow_listed_hosts_are_fetched_whatever_they_are() {
        let rules = AddressRules::new(["127.0.0.1", "Channel.Internal.", "[::1]"]);
        assert!(rules.allows_host("channel.internal"));
        assert!(rules.allows_host("::1"));
        let url = Url::parse("http://127.1:9000/").expect("a URL");
        assert_eq!(rules.check_url(&url), Ok(()));
        let url = Url::parse("http://10.0.0.1/").expect("a URL");
        assert_eq!(rules.check_url(&url), Err(FetchError::AddressNotAllowed));
    }

    /// A server on 127.0.0.1 that answers every request with `head` and
    /// `body_len` bytes of `x`; returns its base URL.
    async fn server(head: String, body_len: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let base = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let head = head.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = socket.read(&mut buffer).await;
                    let body = vec![b'x'; body_len];
                    let head = format!("HTTP/1.1 {head}\r\ncontent-length: {body_len}\r\nconnection: close\r\n\r\n");
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                });
            }
        });
        base
    }

    fn fetcher() -> FeedFetcher {
        FeedFetcher::new(AddressRules::new(["127.0.0.1"])).expect("a client")
    }

    #[tokio::test]
    async fn a_bad_answer_is_reported_in_our_words() {
        let cases = [
            (
                "an error status, by its code only",
                "404 Secret Admin Console",
                12,
                FetchError::Status(404),
            ),
            (
                "a feed over 5 MiB",
                "200 OK",
                MAX_FEED_BYTES + 1,
                FetchError::TooLarge,
            ),
            (
                "redirects, followed 5 times at most",
                "302 Found\r\nlocation: /again",
                0,
                FetchError::TooManyRedirects,
            ),
            (
                "a redirect to an inside address, refused before it is followed",
                "302 Found\r\nlocation: http://10.0.0.1/",
                0,
                FetchError::AddressNotAllowed,
            ),
            // The client follows no other scheme at all: the redirect is the answer.
            (
                "a redirect to a file",
                "302 Found\r\nlocation: file:///etc/passwd",
                0,
                FetchError::Status(302),
            ),
        ];
        for (case, head, body_len, error) in cases {
            let base = server(head.into(), body_len).await;
            assert_eq!(fetcher().fetch(&base).await, Err(error), "{case}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_could_not_be_reached() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port")
            .port();
        assert_eq!(
            fetcher().fetch(&format!("http://127.0.0.1:{port}/")).await,
            Err(FetchError::Unreachable)
        );
    }

    #[tokio::test]
    async fn registration_refuses_names_that_resolve_inside() {
        let rules = AddressRules::default();
        assert_eq!(
            rules
                .check_registration("http://localhost:8080/x.ics")
                .await,
            Err(UrlRefusal::AddressNotAllowed)
        );
        let allowed = AddressRules::new(["localhost"]);
        assert!(allowed
            .check_registration("http://localhost:8080/x.ics")
            .await
            .is_ok());
    }
}
