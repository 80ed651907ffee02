//! What the benchmark programs share: argument parsing and percentiles.
#![allow(dead_code)] // each program uses a part of it

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The value after `name` on the command line, or `default`.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p`th percentile of ascending `sorted` (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Whether `name` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// A small, fast xorshift generator for picking properties and dates; each
/// one seeded differently.
pub struct Rng(u64);

impl Rng {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Rng {
        Rng((uuid::Uuid::new_v4().as_u128() as u64) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A `ledger serve` process of the benchmark's own, on a free port, killed
/// when dropped.
pub struct Ledger {
    child: Option<std::process::Child>,
    pub base: String,
    pub pid: u32,
}

impl Ledger {
    /// Starts `binary serve` with `env` (`DATABASE_URL`, `NATS_URL`,
    /// `JWT_SECRET`, ...) and waits until `/health/ready` answers 2xx.
    pub async fn start(binary: &std::path::Path, env: &[(&str, &str)]) -> BenchResult<Ledger> {
        use std::time::{Duration, Instant};
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(binary)
            .arg("serve")
            .env("LEDGER_LISTEN", format!("127.0.0.1:{port}"))
            .env("LEDGER_METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "error")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let ledger = Ledger {
            pid: child.id(),
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client
                .get(format!("{}/health/ready", ledger.base))
                .send()
                .await;
            if matches!(&ready, Ok(reply) if reply.status().is_success()) {
                return Ok(ledger);
            }
            if Instant::now() > deadline {
                return Err("ledger did not become ready in 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident set size in MiB (VmHWM).
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The server's connection options: the owner's URL
/// (`DATABASE_MIGRATE_URL`) when the service's own is least-privileged.
pub fn server_options() -> BenchResult<sqlx::postgres::PgConnectOptions> {
    let url = std::env::var("DATABASE_MIGRATE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/ledger".into());
    Ok(url.parse()?)
}

/// A new empty database `<prefix>_<uuid>` on the server: its name, URL and
/// a pool of `connections` to it. [`drop_database`] removes it.
pub async fn scratch_database(
    prefix: &str, connections: u32,
) -> BenchResult<(String, String, sqlx::PgPool)> {
    use sqlx::ConnectOptions;
    let options = server_options()?;
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = options.clone().database("postgres").connect().await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let options = options.database(&name);
    let database_url = options.to_url_lossy().to_string();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await?;
    Ok((name, database_url, pool))
}

/// Drops a database [`scratch_database`] made, whoever is still connected.
pub async fn drop_database(name: &str) -> BenchResult<()> {
    use sqlx::ConnectOptions;
    let mut admin = server_options()?.database("postgres").connect().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}
