//! Typed configuration: every `ledger serve` flag is also an environment
//! variable of the same name (docs/api.md "Configuration").

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::NonEmptyStringValueParser;
use clap::{ArgGroup, Args};
use secrecy::SecretString;

pub const MIN_SECRET_BYTES: usize = 32;

/// The deployment example every copy of the repository publishes: a secret
/// equal to its `JWT_SECRET=` line is known to everyone, so it is refused.
const ENV_EXAMPLE: &str = include_str!("../../.env.example");

/// `JWT_SECRET` values published as examples for deployments (`.env.example`).
pub fn published_example_secrets() -> Vec<&'static str> {
    ENV_EXAMPLE
        .lines()
        .filter_map(|line| line.trim().strip_prefix("JWT_SECRET="))
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect()
}

/// Secrets never print (`SecretString`'s Debug is redacted), so the config can be logged.
fn parse_secret(value: &str) -> Result<SecretString, String> {
    if value.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (got {})",
            value.len()
        ));
    }
    if published_example_secrets().contains(&value) {
        return Err(
            "JWT_SECRET is the example value published in .env.example; \
             set a random secret of your own (scripts/run.sh writes one)"
                .to_owned(),
        );
    }
    Ok(SecretString::from(value))
}

/// An identity provider's JWKS address: http(s) only, never empty (an empty
/// value would start a service that accepts no token at all).
fn parse_jwks_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.starts_with("https://") || value.starts_with("http://") {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "JWT_JWKS_URL must be an http(s) URL, not `{value}`"
        ))
    }
}

/// `LEDGER_CONSOLE`: `on` or `off` (also `true`/`false`, `1`/`0`).
fn parse_on_off(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("must be `on` or `off`, not `{value}`")),
    }
}

/// `LEDGER_RATE_LIMIT`: requests per agency per process, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    Off,
    /// `count` requests per `per`, with bursts of up to `burst`.
    PerAgency {
        count: NonZeroU32,
        per: Duration,
        burst: NonZeroU32,
    },
}

/// Parses `off` or `<count>/<s|m|h>[,burst=<n>]` (e.g. `200/s,burst=400`);
/// the burst defaults to the count.
pub fn parse_rate_limit(value: &str) -> Result<RateLimit, String> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("off") {
        return Ok(RateLimit::Off);
    }
    let bad =
        || format!("LEDGER_RATE_LIMIT must be `off` or like `200/s,burst=400`, not `{value}`");
    let (rate, burst) = match value.split_once(',') {
        Some((rate, burst)) => (rate.trim(), Some(burst.trim())),
        None => (value, None),
    };
    let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
    let count: NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    let burst = match burst {
        Some(burst) => burst
            .strip_prefix("burst=")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(bad)?,
        None => count,
    };
    Ok(RateLimit::PerAgency { count, per, burst })
}

/// One origin of `LEDGER_CORS_ORIGINS`: `scheme://host[:port]`, as a browser
/// sends it in `Origin` (no path, no trailing slash). Empty entries are kept
/// as empty and skipped, so the empty default means "none".
pub fn parse_origin(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(String::new());
    }
    let host = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| format!("LEDGER_CORS_ORIGINS: `{value}` is not an http(s) origin"))?;
    let printable = value.bytes().all(|b| b.is_ascii_graphic());
    if host.is_empty() || host.contains('/') || !printable {
        return Err(format!(
            "LEDGER_CORS_ORIGINS: `{value}` must be scheme://host[:port] with no path"
        ));
    }
    Ok(value.to_owned())
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/ledger"
    )]
    pub database_url: String,
    /// Who applies the migrations: the owner of the tables. Unset, the
    /// migrations run as DATABASE_URL does (one URL for everything).
    #[arg(long, env = "DATABASE_MIGRATE_URL", hide_env_values = true)]
    pub database_migrate_url: Option<String>,
}

impl DatabaseArgs {
    /// The URL migrations run with: DATABASE_MIGRATE_URL, else DATABASE_URL.
    pub fn migrate_url(&self) -> &str {
        self.database_migrate_url
            .as_deref()
            .unwrap_or(&self.database_url)
    }
}

#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// HS256 key for tokens, at least 32 bytes.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: SecretString,
}

#[derive(Debug, Clone, Args)]
#[command(group(
    ArgGroup::new("token_keys")
        .args(["jwt_secret", "jwt_jwks_url"])
        .required(true)
        .multiple(true)
))]
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// HS256 key for tokens, at least 32 bytes; this or JWT_JWKS_URL is required.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: Option<SecretString>,
    /// JWKS document of an identity provider whose RS256/ES256/EdDSA tokens are accepted.
    #[arg(long, env = "JWT_JWKS_URL", value_parser = parse_jwks_url)]
    pub jwt_jwks_url: Option<String>,
    /// When set, a token's `iss` must equal it.
    #[arg(long, env = "JWT_ISSUER", value_parser = NonEmptyStringValueParser::new())]
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` must contain it.
    #[arg(long, env = "JWT_AUDIENCE", value_parser = NonEmptyStringValueParser::new())]
    pub jwt_audience: Option<String>,
    /// Dotted path of the agency claim (e.g. `app_metadata.agency_id`).
    #[arg(long, env = "JWT_AGENCY_CLAIM", value_parser = NonEmptyStringValueParser::new(), default_value = "agency_id")]
    pub jwt_agency_claim: String,
    /// Dotted path of the role claim (e.g. `app_metadata.role`).
    #[arg(long, env = "JWT_ROLE_CLAIM", value_parser = NonEmptyStringValueParser::new(), default_value = "role")]
    pub jwt_role_claim: String,
    /// Requests per agency per process (`200/s,burst=400`), or `off`.
    #[arg(long, env = "LEDGER_RATE_LIMIT", default_value = "off", value_parser = parse_rate_limit)]
    pub rate_limit: RateLimit,
    /// Requests in flight past which new ones get 503 BUSY at once.
    #[arg(long, env = "LEDGER_MAX_IN_FLIGHT", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Longest a request may take, body included, before 503 BUSY.
    #[arg(long, env = "LEDGER_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Longest a client may take to send a request body before 503 BUSY.
    #[arg(long, env = "LEDGER_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// NATS with JetStream. Credentials may sit in the URL
    /// (`nats://user:pass@host:4222`, `nats://token@host:4222`); `tls://`
    /// requires TLS.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
    /// Copies JetStream keeps of the `LEDGER` stream: 1 on a single server,
    /// 3 on a three-node cluster (NATS_URL then lists the servers
    /// comma-separated).
    #[arg(long, env = "LEDGER_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// A NATS `.creds` file (user JWT and NKey seed).
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// PEM file of the CA that signed the NATS server's certificate; setting
    /// it requires TLS.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    #[arg(long, env = "LEDGER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[arg(long, env = "LEDGER_METRICS_LISTEN", default_value = "127.0.0.1:9090")]
    pub metrics_listen: SocketAddr,
    #[arg(long, env = "LEDGER_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// A hot standby of DATABASE_URL's database the read routes query
    /// (`min_position` waits for the standby to replay). Unset, reads go to
    /// DATABASE_URL.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "LEDGER_DB_POOL_SIZE", default_value_t = 32)]
    pub db_pool_size: u32,
    /// How long Idempotency-Key replies are kept (e.g. `48h`, `30m`).
    #[arg(long, env = "LEDGER_IDEMPOTENCY_TTL", default_value = "48h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,
    /// How often drift checksums are published to the channels (`1h`);
    /// `0` turns them off.
    #[arg(long, env = "LEDGER_CHECKSUM_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub checksum_interval: Duration,
    /// Host names whose iCal feeds are fetched whatever address they
    /// resolve to (on-premises channel servers), comma-separated.
    #[arg(long, env = "LEDGER_FEED_ALLOW_HOSTS", value_delimiter = ',')]
    pub feed_allow_hosts: Vec<String>,
    /// The Ops Console at `/console/` (`on` or `off`; off, it answers 404).
    #[arg(long, env = "LEDGER_CONSOLE", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub console: bool,
    /// Browser origins allowed to call the API (`https://app.example.com`),
    /// comma-separated and compared exactly; empty: no CORS headers at all.
    #[arg(
        long,
        env = "LEDGER_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = "",
        value_parser = parse_origin
    )]
    pub cors_origins: Vec<String>,
}

/// `ledger serve`'s arguments alone, for [`ServeConfig::from_args`].
#[derive(clap::Parser)]
struct ServeArgs {
    #[command(flatten)]
    config: ServeConfig,
}

impl ServeConfig {
    /// The configuration `ledger serve ARGS...` would run with, the
    /// environment read as it would be: how an in-process start
    /// (`startup::spawn`) is configured.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = std::iter::once("serve".into()).chain(args.into_iter().map(Into::into));
        <ServeArgs as clap::Parser>::try_parse_from(args).map(|parsed| parsed.config)
    }

    pub fn database_url(&self) -> &str {
        &self.database.database_url
    }

    /// How `ledger serve` reaches NATS.
    pub fn nats_endpoint(&self) -> ledger_infra::nats::Endpoint {
        ledger_infra::nats::Endpoint {
            url: self.nats_url.clone(),
            creds: self.nats_creds.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            inbox_prefix: None,
        }
    }

    pub fn jwt_secret(&self) -> Option<&SecretString> {
        self.jwt_secret.as_ref()
    }

    /// Names of the configuration variables set in the environment (never values).
    pub fn env_vars_set() -> Vec<&'static str> {
        [
            "DATABASE_URL",
            "DATABASE_MIGRATE_URL",
            "DATABASE_READ_URL",
            "NATS_URL",
            "LEDGER_STREAM_REPLICAS",
            "NATS_CREDS",
            "NATS_TLS_CA",
            "JWT_SECRET",
            "LEDGER_LISTEN",
            "LEDGER_METRICS_LISTEN",
            "RUST_LOG",
            "LEDGER_LOG_FORMAT",
            "LEDGER_DB_POOL_SIZE",
            "LEDGER_IDEMPOTENCY_TTL",
            "LEDGER_FEED_ALLOW_HOSTS",
            "LEDGER_CHECKSUM_INTERVAL",
            "JWT_JWKS_URL",
            "JWT_ISSUER",
            "JWT_AUDIENCE",
            "JWT_AGENCY_CLAIM",
            "JWT_ROLE_CLAIM",
            "LEDGER_RATE_LIMIT",
            "LEDGER_MAX_IN_FLIGHT",
            "LEDGER_REQUEST_TIMEOUT",
            "LEDGER_BODY_TIMEOUT",
            "LEDGER_CONSOLE",
            "LEDGER_CORS_ORIGINS",
        ]
        .into_iter()
        .filter(|name| std::env::var_os(name).is_some())
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_example_secret_is_refused() {
        let published = published_example_secrets();
        assert!(!published.is_empty(), ".env.example has a JWT_SECRET line");
        for secret in published {
            assert!(parse_secret(secret).is_err(), "{secret} is refused");
        }
    }

    #[test]
    fn short_secrets_are_refused_and_long_random_ones_accepted() {
        assert!(parse_secret("0123456789").is_err());
        assert!(parse_secret("a-long-enough-secret-of-our-very-own-42").is_ok());
    }

    #[test]
    fn the_console_switch_is_on_or_off() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("OFF"), Ok(false));
        assert!(parse_on_off("maybe").is_err());
    }

    #[test]
    fn cors_origins_are_exact_origins_without_paths() {
        assert_eq!(
            parse_origin(" https://app.example.com:8443 "),
            Ok("https://app.example.com:8443".to_owned())
        );
        assert_eq!(parse_origin(""), Ok(String::new()));
        for bad in [
            "app.example.com",
            "https://",
            "https://a.example/",
            "ftp://a",
            "*",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn rate_limits_parse_with_and_without_burst() {
        assert_eq!(parse_rate_limit("off"), Ok(RateLimit::Off));
        let n = |n| NonZeroU32::new(n).unwrap();
        assert_eq!(
            parse_rate_limit("200/s,burst=400"),
            Ok(RateLimit::PerAgency {
                count: n(200),
                per: Duration::from_secs(1),
                burst: n(400)
            })
        );
        assert_eq!(
            parse_rate_limit("5/m"),
            Ok(RateLimit::PerAgency {
                count: n(5),
                per: Duration::from_secs(60),
                burst: n(5)
            })
        );
        for bad in ["", "0/s", "5", "5/d", "5/s,burst=0", "5/s,bust=3", "-1/s"] {
            assert!(parse_rate_limit(bad).is_err(), "{bad} is refused");
        }
    }
}
