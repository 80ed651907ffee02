//! Typed configuration: every `ledger serve` flag is also an environment
//! variable of the same name (API.md "Configuration").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

pub const MIN_SECRET_BYTES: usize = 32;

/// Secrets never print (`SecretString`'s Debug is redacted), so the config can be logged.
fn parse_secret(value: &str) -> Result<SecretString, String> {
    if value.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (got {})",
            value.len()
        ));
    }
    Ok(SecretString::from(value))
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
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
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
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "LEDGER_DB_POOL_SIZE", default_value_t = 32)]
    pub db_pool_size: u32,
    /// How long Idempotency-Key replies are kept (e.g. `48h`, `30m`).
    #[arg(long, env = "LEDGER_IDEMPOTENCY_TTL", default_value = "48h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,
    /// Host names whose iCal feeds are fetched whatever address they
    /// resolve to (on-premises channel servers), comma-separated.
    #[arg(
        long,
        env = "LEDGER_FEED_ALLOW_HOSTS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub feed_allow_hosts: Vec<String>,
}

impl ServeConfig {
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

    pub fn jwt_secret(&self) -> &SecretString {
        &self.secret.jwt_secret
    }

    /// Names of the configuration variables set in the environment (never values).
    pub fn env_vars_set() -> Vec<&'static str> {
        [
            "DATABASE_URL",
            "DATABASE_MIGRATE_URL",
            "NATS_URL",
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
        ]
        .into_iter()
        .filter(|name| std::env::var_os(name).is_some())
        .collect()
    }
}
