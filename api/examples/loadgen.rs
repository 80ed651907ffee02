//! The write-path load generator: P1, P2, P3 and P8 of docs/quality.md in one
//! run, each printed with the raw PostgreSQL baseline measured in the same
//! run on the same server.
//!
//!   cargo build --release -p ledger-api --bin ledger
//!   cargo run --release -p ledger-api --example loadgen
//!   #   [-- --seconds 20 --clients 32 --properties 10000 --p3-events 100000
//!   #       --ledger target/release/ledger]
//!   cargo run -p ledger-api --example loadgen -- --quick    # CI: seconds, small counts
//!
//! Needs PostgreSQL at DATABASE_URL (a scratch database is created and
//! dropped) and NATS with JetStream at NATS_URL. Runs the real `ledger serve`
//! binary (`--ledger PATH`, else target/release/ledger, else
//! target/debug/ledger) with its projections and publisher, and real signed
//! tokens.
//!
//! - Baseline: `--clients` connections each run one `INSERT ... ON CONFLICT
//!   DO NOTHING` per transaction (autocommit) into a table shaped like
//!   `inventory_ranges`, with its EXCLUSION constraint, over random
//!   properties and 1-3 night stays in three years.
//! - P1: `--clients` closed-loop HTTP clients, 80 % reserve, 8 % modify,
//!   7 % cancel, 5 % read, over `--properties` properties registered first;
//!   every command carries an Idempotency-Key.
//! - P8: the server's peak RSS (VmHWM) after P1.
//! - P1r: P1's clients all reserving on one room type of `--room-units`
//!   units (default 1,000) of one hotel: every command on one aggregate,
//!   1-3 night stays over three years, so nearly all succeed; printed
//!   against P1's single-unit command rate of the same run.
//! - P2: reserves open-loop at half the P1 command rate; latency is measured
//!   from each request's scheduled time, so a stall counts for every request
//!   it delays.
//! - P3: a property given `--p3-events` prior events (written with SQL) is
//!   reserved on against a fresh one, warm; then the server is restarted and
//!   the first reserve on each (nothing cached) is timed too.
//!
//! Exits non-zero on a 5xx, a transport error or an unexpected code (only 409
//! `BOOKING_CONFLICT` is expected), never on speed.
#[path = "../benches/support.rs"]
mod support;
use support::{arg, drop_database, flag, scratch_database, BenchResult, Ledger, Rng};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate};
use hdrhistogram::Histogram;
use ledger_api::auth::Keys;
use ledger_domain::Role;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinSet;
use uuid::Uuid;

const SECRET: &str = "loadgen-benchmark-secret-at-least-32-bytes";
/// Stays start within this many days of the first night.
const SPAN_DAYS: u64 = 3 * 365;

fn first_night() -> NaiveDate {
    NaiveDate::from_ymd_opt(2030, 1, 1).unwrap_or_default()
}

struct Settings {
    quick: bool,
    seconds: u64,
    baseline_seconds: u64,
    p2_seconds: u64,
    clients: usize,
    properties: usize,
    p3_events: i64,
    p3_samples: usize,
    room_units: u32,
    ledger: PathBuf,
    nats_url: String,
}

impl Settings {
    fn from_args() -> BenchResult<Settings> {
        let quick = flag("--quick");
        let seconds = arg("--seconds", if quick { 3 } else { 20 });
        let ledger = match std::env::args().skip_while(|a| a != "--ledger").nth(1) {
            Some(path) => PathBuf::from(path),
            None => find_ledger()?,
        };
        Ok(Settings {
            quick,
            seconds,
            baseline_seconds: arg("--baseline-seconds", seconds),
            p2_seconds: arg("--p2-seconds", if quick { 2 } else { 10 }),
            clients: arg("--clients", 32),
            properties: arg("--properties", if quick { 200 } else { 10_000 }),
            p3_events: arg("--p3-events", if quick { 5_000 } else { 100_000 }),
            p3_samples: arg("--p3-samples", if quick { 20 } else { 200 }),
            room_units: arg("--room-units", 1000),
            ledger,
            nats_url: std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        })
    }
}

/// target/release/ledger, else target/debug/ledger, from the workspace root.
fn find_ledger() -> BenchResult<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("ledger"))
        .find(|path| path.exists())
        .ok_or_else(|| {
            "no ledger binary: run `cargo build --release -p ledger-api --bin ledger` \
             or pass --ledger PATH"
                .into()
        })
}

/// Latencies in microseconds, 1 µs to 1 minute, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

fn micros(elapsed: Duration) -> u64 {
    elapsed.as_micros().clamp(1, 60_000_000) as u64
}

fn summary(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        h.max() as f64 / 1000.0
    )
}

/// What a run counts: latencies per operation, answers by status and code.
#[derive(Default)]
struct Tally {
    latencies: BTreeMap<&'static str, Histogram<u64>>,
    /// `(operation, status, code)` -> count; status 0 is a transport error.
    answers: BTreeMap<(&'static str, u16, String), u64>,
}

impl Tally {
    fn record(&mut self, op: &'static str, elapsed: Duration, status: u16, code: &str) {
        let h = self.latencies.entry(op).or_insert_with(histogram);
        let _ = h.record(micros(elapsed));
        *self
            .answers
            .entry((op, status, code.to_owned()))
            .or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        for (op, h) in other.latencies {
            let _ = self.latencies.entry(op).or_insert_with(histogram).add(&h);
        }
        for (key, n) in other.answers {
            *self.answers.entry(key).or_default() += n;
        }
    }

    fn count(&self, op: &str) -> u64 {
        self.latencies.get(op).map_or(0, |h| h.len())
    }

    /// Answers that mean a bug or a broken run: 5xx, transport errors, and
    /// any refusal but an overlap.
    fn unexpected(&self) -> u64 {
        self.answers
            .iter()
            .filter(|((_, status, code), _)| !expected(*status, code))
            .map(|(_, n)| n)
            .sum()
    }

    fn print(&self, indent: &str) {
        for (op, h) in &self.latencies {
            println!("{indent}{op:<8} {:>7}: {}", h.len(), summary(h));
        }
        let refusals: Vec<String> = self
            .answers
            .iter()
            .filter(|((_, status, _), _)| !(200..300).contains(status))
            .map(|((op, status, code), n)| {
                let status = if *status == 0 {
                    "transport".to_owned()
                } else {
                    status.to_string()
                };
                format!("{op} {status} {code}: {n}")
            })
            .collect();
        if refusals.is_empty() {
            println!("{indent}errors: none");
        } else {
            println!("{indent}errors: {}", refusals.join(", "));
        }
    }
}

fn expected(status: u16, code: &str) -> bool {
    (200..300).contains(&status) || (status == 409 && code == "BOOKING_CONFLICT")
}

/// The running `ledger serve`: no rate limit, so the load is all served.
async fn start_ledger(settings: &Settings, database_url: &str) -> BenchResult<Ledger> {
    Ledger::start(
        &settings.ledger,
        &[
            ("DATABASE_URL", database_url),
            ("NATS_URL", &settings.nats_url),
            ("JWT_SECRET", SECRET),
            ("LEDGER_RATE_LIMIT", "off"),
        ],
    )
    .await
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

/// CPU used by the ledger, this generator and the PostgreSQL backends
/// serving the scratch database: a snapshot to diff.
struct CpuShare {
    ledger: f64,
    generator: f64,
    postgres: BTreeMap<u32, f64>,
}

impl CpuShare {
    async fn now(pool: &PgPool, ledger: &Ledger) -> CpuShare {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        CpuShare {
            ledger: cpu_seconds(ledger.pid).unwrap_or(0.0),
            generator: cpu_seconds(std::process::id()).unwrap_or(0.0),
            postgres: pids
                .into_iter()
                .filter_map(|pid| Some((pid as u32, cpu_seconds(pid as u32)?)))
                .collect(),
        }
    }

    /// CPU milliseconds per command of each, from `before` to `self`.
    fn per_command(&self, before: &CpuShare, commands: u64) -> String {
        let per = |seconds: f64| seconds * 1000.0 / commands.max(1) as f64;
        // Backends that lived through the whole interval.
        let postgres: f64 = self
            .postgres
            .iter()
            .filter_map(|(pid, end)| Some(end - before.postgres.get(pid)?))
            .sum();
        format!(
            "CPU per command: ledger {:.3} ms, PostgreSQL backends {:.3} ms, generator {:.3} ms",
            per(self.ledger - before.ledger),
            per(postgres),
            per(self.generator - before.generator)
        )
    }
}

/// P1's time inside PostgreSQL, statement by statement, when the server
/// preloads `pg_stat_statements` (`scripts/profile-p1.sh` starts one that
/// does; elsewhere this prints one line saying it is off). Execution time is
/// wall time in the backend: on a CPU-bound server it is close to CPU.
struct Statements {
    on: bool,
}

impl Statements {
    async fn reset(pool: &PgPool) -> Statements {
        let on = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(pool)
            .await
            .is_ok()
            && sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(pool)
                .await
                .is_ok();
        Statements { on }
    }

    async fn print(&self, pool: &PgPool, commands: u64) {
        if !self.on {
            println!("  statements: pg_stat_statements is not preloaded (scripts/profile-p1.sh)");
            return;
        }
        let rows: Vec<(String, i64, f64)> = sqlx::query_as(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls, total_exec_time
               FROM pg_stat_statements
              WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              ORDER BY total_exec_time DESC",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        let total: f64 = rows.iter().map(|r| r.2).sum();
        let per = commands.max(1) as f64;
        println!(
            "  statements: {:.3} ms of execution per command in {} statements; the top 15:",
            total / per,
            rows.len()
        );
        for (query, calls, ms) in rows.iter().take(15) {
            let text: String = query.chars().take(110).collect();
            println!(
                "    {:5.1} %  {:.3} ms/cmd  {:6.2} calls/cmd  {text}",
                100.0 * ms / total.max(f64::MIN_POSITIVE),
                ms / per,
                *calls as f64 / per
            );
        }
    }
}

/// A random stay of 1-3 nights in the three years from the first night.
fn stay(rng: &mut Rng) -> (NaiveDate, NaiveDate) {
    let check_in = first_night() + Days::new(rng.below(SPAN_DAYS));
    (check_in, check_in + Days::new(1 + rng.below(3)))
}

/// The raw claim insert: what PostgreSQL alone does per second. The table
/// takes `inventory_ranges`' columns, defaults and checks from the migrated
/// database, with its key and its no-overlap constraint but not its read
/// index: one row per claim, checked as the ledger checks a claim.
async fn baseline(pool: &PgPool, settings: &Settings) -> BenchResult<(f64, Histogram<u64>)> {
    sqlx::query(
        "CREATE TABLE claim_baseline (
            LIKE inventory_ranges INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
            PRIMARY KEY (ref_id),
            EXCLUDE USING gist (property_id WITH =, during WITH &&))",
    )
    .execute(pool)
    .await?;
    let properties: Arc<Vec<Uuid>> =
        Arc::new((0..settings.properties).map(|_| Uuid::new_v4()).collect());
    let agency = Uuid::new_v4();
    let until = Instant::now() + Duration::from_secs(settings.baseline_seconds);
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for _ in 0..settings.clients {
        let pool = pool.clone();
        let properties = properties.clone();
        clients.spawn(async move {
            let mut rng = Rng::new();
            let mut h = histogram();
            let mut conn = pool.acquire().await?;
            while Instant::now() < until {
                let property = properties[rng.below(properties.len() as u64) as usize];
                let (from, to) = stay(&mut rng);
                let sent = Instant::now();
                sqlx::query(
                    "INSERT INTO claim_baseline
                         (ref_id, agency_id, property_id, kind, during, status, position)
                     VALUES ($1, $2, $3, 'booking', daterange($4, $5), 'confirmed', 0)
                     ON CONFLICT DO NOTHING",
                )
                .bind(Uuid::now_v7())
                .bind(agency)
                .bind(property)
                .bind(from)
                .bind(to)
                .execute(&mut *conn)
                .await?;
                let _ = h.record(micros(sent.elapsed()));
            }
            Ok::<_, sqlx::Error>(h)
        });
    }
    let mut all = histogram();
    while let Some(done) = clients.join_next().await {
        let _ = all.add(&done??);
    }
    let tps = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((tps, all))
}

/// An HTTP client of the ledger with an admin token.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Arc<str>,
}

/// One answer: status (0 when the request failed in transport), error code,
/// body.
struct Answer {
    status: u16,
    code: String,
    body: Value,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&*self.token);
        if method != reqwest::Method::GET {
            request = request.header("Idempotency-Key", Uuid::new_v4().to_string());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = match request.send().await {
            Ok(reply) => reply,
            Err(e) => {
                return Answer {
                    status: 0,
                    code: e.to_string(),
                    body: Value::Null,
                }
            }
        };
        let status = reply.status().as_u16();
        let body: Value = match reply.bytes().await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(e) => {
                return Answer {
                    status: 0,
                    code: e.to_string(),
                    body: Value::Null,
                }
            }
        };
        let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
        Answer { status, code, body }
    }

    /// Reserves `[from, to)` on a single-unit property, or on `room_type` of it.
    async fn reserve(
        &self, property: Uuid, room_type: Option<Uuid>, from: NaiveDate, to: NaiveDate,
    ) -> Answer {
        let mut body = json!({
            "property_id": property,
            "check_in": from.to_string(),
            "check_out": to.to_string(),
            "guest": {"name": "Load Guest", "email": "guest@example.com"},
            "adults": 2,
        });
        if let Some(room_type) = room_type {
            body["room_type_id"] = json!(room_type);
        }
        self.send(reqwest::Method::POST, "/api/v1/bookings", Some(body))
            .await
    }

    /// POSTs `body` to `path` and reads the id of what it created.
    async fn create(&self, path: &str, body: Value) -> Result<Uuid, String> {
        let answer = self.send(reqwest::Method::POST, path, Some(body)).await;
        answer.body["id"]
            .as_str()
            .and_then(|id| id.parse::<Uuid>().ok())
            .ok_or_else(|| format!("{path}: {} {}", answer.status, answer.code))
    }
}

async fn register(api: &Api, settings: &Settings) -> BenchResult<Vec<Uuid>> {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let per_client = settings.properties.div_ceil(settings.clients);
    for c in 0..settings.clients {
        let api = api.clone();
        let count = per_client.min(settings.properties.saturating_sub(c * per_client));
        tasks.spawn(async move {
            let mut ids = Vec::with_capacity(count);
            for i in 0..count {
                let body = json!({"name": format!("Load {c}-{i}"), "timezone": "Europe/Lisbon"});
                ids.push(api.create("/api/v1/properties", body).await?);
            }
            Ok::<_, String>(ids)
        });
    }
    let mut ids = Vec::with_capacity(settings.properties);
    while let Some(done) = tasks.join_next().await {
        ids.extend(done??);
    }
    println!(
        "  registered {} properties in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ids)
}

/// Waits until every projection and the publisher have reached the log's head.
async fn caught_up(pool: &PgPool, within: Duration) -> BenchResult<Duration> {
    let started = Instant::now();
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_checkpoints
              WHERE name IN ('inventory', 'views', 'audit', 'publisher')
                AND position < (SELECT coalesce(max(position), 0) FROM events)",
        )
        .fetch_one(pool)
        .await?;
        if behind == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(format!("{behind} projections still behind after {within:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A booking a client made and may still change.
struct Booking {
    id: Uuid,
    check_out: NaiveDate,
}

/// `clients` closed-loop clients at once, each made by `client` and told
/// when to stop; the seconds they took and their tallies merged.
async fn closed_loop<F, Fut>(clients: usize, seconds: u64, client: F) -> (f64, Tally)
where
    F: Fn(Instant) -> Fut,
    Fut: std::future::Future<Output = Tally> + Send + 'static,
{
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut running = JoinSet::new();
    for _ in 0..clients {
        running.spawn(client(until));
    }
    let mut tally = Tally::default();
    while let Some(done) = running.join_next().await {
        if let Ok(t) = done {
            tally.merge(t);
        }
    }
    (started.elapsed().as_secs_f64(), tally)
}

/// P1: closed-loop mixed load.
async fn mixed(api: &Api, properties: Arc<Vec<Uuid>>, settings: &Settings) -> (f64, Tally) {
    closed_loop(settings.clients, settings.seconds, |until| {
        let api = api.clone();
        let properties = properties.clone();
        async move {
            let mut rng = Rng::new();
            let mut tally = Tally::default();
            let mut mine: Vec<Booking> = Vec::new();
            while Instant::now() < until {
                let dice = rng.below(100);
                let sent = Instant::now();
                let (op, answer) = if dice < 80 || mine.is_empty() {
                    let property = properties[rng.below(properties.len() as u64) as usize];
                    let (from, to) = stay(&mut rng);
                    let answer = api.reserve(property, None, from, to).await;
                    if let Some(id) = answer.body["id"].as_str().and_then(|s| s.parse().ok()) {
                        mine.push(Booking { id, check_out: to });
                    }
                    ("reserve", answer)
                } else if dice < 88 {
                    let pick = rng.below(mine.len() as u64) as usize;
                    let booking = &mut mine[pick];
                    // Half the changes move the check-out a night later (which
                    // may overlap a neighbour), half change the guest.
                    let body = if rng.below(2) == 0 {
                        json!({"check_out": (booking.check_out + Days::new(1)).to_string()})
                    } else {
                        json!({"guest": {"name": "Changed Guest"}, "adults": 3})
                    };
                    let path = format!("/api/v1/bookings/{}", booking.id);
                    let answer = api.send(reqwest::Method::PATCH, &path, Some(body)).await;
                    if let Some(out) = answer.body["check_out"].as_str() {
                        booking.check_out = out.parse().unwrap_or(booking.check_out);
                    }
                    ("modify", answer)
                } else if dice < 95 {
                    let pick = rng.below(mine.len() as u64) as usize;
                    let booking = mine.swap_remove(pick);
                    let path = format!("/api/v1/bookings/{}/cancel", booking.id);
                    let body = json!({"reason": "load test"});
                    (
                        "cancel",
                        api.send(reqwest::Method::POST, &path, Some(body)).await,
                    )
                } else {
                    let property = properties[rng.below(properties.len() as u64) as usize];
                    let path = format!("/api/v1/properties/{property}");
                    ("read", api.send(reqwest::Method::GET, &path, None).await)
                };
                tally.record(op, sent.elapsed(), answer.status, &answer.code);
            }
            tally
        }
    })
    .await
}

/// P1r: every client reserves on one room type of one hotel.
async fn one_room_type(api: &Api, settings: &Settings) -> BenchResult<(f64, Tally)> {
    let hotel = api
        .create(
            "/api/v1/properties",
            json!({"name": "Load hotel", "timezone": "Europe/Lisbon"}),
        )
        .await?;
    let room_type = api
        .create(
            &format!("/api/v1/properties/{hotel}/room-types"),
            json!({"name": "Double", "units": settings.room_units}),
        )
        .await?;
    Ok(closed_loop(settings.clients, settings.seconds, |until| {
        let api = api.clone();
        async move {
            let mut rng = Rng::new();
            let mut tally = Tally::default();
            while Instant::now() < until {
                let (from, to) = stay(&mut rng);
                let sent = Instant::now();
                let answer = api.reserve(hotel, Some(room_type), from, to).await;
                tally.record("reserve", sent.elapsed(), answer.status, &answer.code);
            }
            tally
        }
    })
    .await)
}

/// P2: reserves sent on a fixed schedule; latency from the scheduled time.
async fn open_loop(api: &Api, properties: Arc<Vec<Uuid>>, rate: f64, seconds: u64) -> Tally {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (rate * seconds as f64) as u64;
    let started = tokio::time::Instant::now();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut rng = Rng::new();
    let mut in_flight = JoinSet::new();
    for i in 0..total {
        let scheduled = started + interval * i as u32;
        tokio::time::sleep_until(scheduled).await;
        let property = properties[rng.below(properties.len() as u64) as usize];
        let (from, to) = stay(&mut rng);
        let api = api.clone();
        let tally = tally.clone();
        in_flight.spawn(async move {
            let answer = api.reserve(property, None, from, to).await;
            let elapsed = scheduled.elapsed();
            if let Ok(mut t) = tally.lock() {
                t.record("reserve", elapsed, answer.status, &answer.code);
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
    Arc::try_unwrap(tally)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default()
}

/// `samples` reserves one after the other on a property, on distinct nights.
async fn sequential(api: &Api, property: Uuid, offset: u64, samples: usize) -> Tally {
    let mut tally = Tally::default();
    for i in 0..samples as u64 {
        let from = first_night() + Days::new(offset + 2 * i);
        let sent = Instant::now();
        let answer = api.reserve(property, None, from, from + Days::new(1)).await;
        tally.record("reserve", sent.elapsed(), answer.status, &answer.code);
    }
    tally
}

/// How many of a tally's answers were 2xx.
fn admitted(t: &Tally) -> u64 {
    t.answers
        .iter()
        .filter(|((_, s, _), _)| (200..300).contains(s))
        .map(|(_, n)| n)
        .sum()
}

fn p50(t: &Tally) -> f64 {
    t.latencies
        .get("reserve")
        .map_or(f64::NAN, |h| h.value_at_quantile(0.5) as f64 / 1000.0)
}

fn p99(t: &Tally) -> f64 {
    t.latencies
        .get("reserve")
        .map_or(f64::NAN, |h| h.value_at_quantile(0.99) as f64 / 1000.0)
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let settings = Settings::from_args()?;
    let (name, database_url, pool) =
        scratch_database("ledger_loadgen", settings.clients as u32 + 4).await?;
    ledger_infra::migrate(&pool).await?;
    let outcome = run(&settings, &database_url, &pool).await;
    pool.close().await;
    drop_database(&name).await?;
    let unexpected = outcome?;
    if unexpected > 0 {
        eprintln!("loadgen: {unexpected} unexpected answers (5xx, transport errors or codes)");
        std::process::exit(1);
    }
    Ok(())
}

/// Runs everything; returns the number of unexpected answers.
async fn run(settings: &Settings, database_url: &str, pool: &PgPool) -> BenchResult<u64> {
    let mut unexpected = 0;
    println!(
        "loadgen{}: {} clients, {} properties, ledger {}",
        if settings.quick { " --quick" } else { "" },
        settings.clients,
        settings.properties,
        settings.ledger.display()
    );

    println!(
        "baseline: raw claim insert, {} connections, {} s",
        settings.clients, settings.baseline_seconds
    );
    let (baseline_tps, baseline_h) = baseline(pool, settings).await?;
    println!("  {baseline_tps:.0} tps; {}", summary(&baseline_h));

    let mut ledger = start_ledger(settings, database_url).await?;
    println!("ledger serve: pid {}", ledger.pid);
    let agency = Uuid::new_v4();
    let keys = Keys::new(SECRET.as_bytes());
    let api = Api {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(settings.clients * 4)
            .build()?,
        base: ledger.base.clone(),
        token: keys
            .mint(
                agency,
                Role::Admin,
                "loadgen",
                Duration::from_secs(3 * 3600),
            )
            .into(),
    };
    let properties = Arc::new(register(&api, settings).await?);
    let waited = caught_up(pool, Duration::from_secs(300)).await?;
    println!(
        "  projections caught up {:.1} s later",
        waited.as_secs_f64()
    );

    println!(
        "P1: {} clients closed-loop for {} s: 80 % reserve, 8 % modify, 7 % cancel, 5 % read",
        settings.clients, settings.seconds
    );
    let statements = Statements::reset(pool).await;
    let cpu_before = CpuShare::now(pool, &ledger).await;
    let (elapsed, tally) = mixed(&api, properties.clone(), settings).await;
    let cpu_after = CpuShare::now(pool, &ledger).await;
    let commands = tally.count("reserve") + tally.count("modify") + tally.count("cancel");
    let command_rate = commands as f64 / elapsed;
    let reserve_rate = tally.count("reserve") as f64 / elapsed;
    tally.print("  ");
    println!(
        "  {command_rate:.0} commands/s ({reserve_rate:.0} reserves/s, {:.0} requests/s); \
         baseline {baseline_tps:.0} tps -> P1 = {:.2} x (target >= 0.5 x)",
        (commands + tally.count("read")) as f64 / elapsed,
        command_rate / baseline_tps
    );
    println!("  {}", cpu_after.per_command(&cpu_before, commands));
    statements.print(pool, commands).await;
    unexpected += tally.unexpected();
    let rss = ledger.peak_rss_mib();
    println!(
        "P8: server peak RSS (VmHWM) after P1: {} (target <= 150 MB)",
        rss.map_or("unknown".into(), |m| format!("{m:.1} MiB"))
    );

    println!(
        "P1r: {} clients closed-loop for {} s: reserves on one room type of {} units \
         (one hotel, one aggregate)",
        settings.clients, settings.seconds, settings.room_units
    );
    let (elapsed, busy) = one_room_type(&api, settings).await?;
    busy.print("  ");
    let busy_rate = busy.count("reserve") as f64 / elapsed;
    println!(
        "  {busy_rate:.0} commands/s, {} admitted; single-unit P1 {command_rate:.0} commands/s \
         -> P1r/P1 = {:.2} x",
        admitted(&busy),
        busy_rate / command_rate
    );
    unexpected += busy.unexpected();

    let rate = command_rate / 2.0;
    println!(
        "P2: reserves open-loop at {rate:.0}/s (half the P1 rate) for {} s",
        settings.p2_seconds
    );
    let tally = open_loop(&api, properties.clone(), rate, settings.p2_seconds).await;
    tally.print("  ");
    println!(
        "  -> target p50 <= 3 ms, p99 <= 15 ms: p50 {:.2} ms, p99 {:.2} ms",
        p50(&tally),
        p99(&tally)
    );
    unexpected += tally.unexpected();

    println!(
        "P3: reserve on a property with {} prior events against a fresh one",
        settings.p3_events
    );
    let hot = properties[0];
    let fresh = properties[1];
    let started = Instant::now();
    ledger_test_support::write_history(pool, hot, settings.p3_events).await?;
    println!(
        "  wrote {} events in {:.1} s",
        settings.p3_events,
        started.elapsed().as_secs_f64()
    );
    caught_up(pool, Duration::from_secs(600)).await?;
    // Far beyond the P1 stays, so nothing overlaps.
    let offset = 4 * 365;
    let samples = settings.p3_samples;
    let first_hot = sequential(&api, hot, offset, 1).await;
    let warm_hot = sequential(&api, hot, offset + 2, samples).await;
    let warm_fresh = sequential(&api, fresh, offset + 2, samples).await;
    println!(
        "  warm: hot p50 {:.2} ms p99 {:.2} ms; fresh p50 {:.2} ms p99 {:.2} ms -> hot/fresh p50 {:.2} x (target <= 1.2 x)",
        p50(&warm_hot),
        p99(&warm_hot),
        p50(&warm_fresh),
        p99(&warm_fresh),
        p50(&warm_hot) / p50(&warm_fresh)
    );
    drop(ledger);
    ledger = start_ledger(settings, database_url).await?;
    let api = Api {
        base: ledger.base.clone(),
        ..api
    };
    let offset = offset + 2 * samples as u64 + 10;
    let cold_fresh = sequential(&api, fresh, offset, 1).await;
    let cold_hot = sequential(&api, hot, offset, 1).await;
    let after_hot = sequential(&api, hot, offset + 2, samples).await;
    let after_fresh = sequential(&api, fresh, offset + 2, samples).await;
    println!(
        "  after a restart: first reserve on the hot property {:.2} ms, on the fresh one {:.2} ms ({:.1} x); \
         following: hot p50 {:.2} ms, fresh p50 {:.2} ms",
        p50(&cold_hot),
        p50(&cold_fresh),
        p50(&cold_hot) / p50(&cold_fresh),
        p50(&after_hot),
        p50(&after_fresh)
    );
    for t in [
        &first_hot,
        &warm_hot,
        &warm_fresh,
        &cold_fresh,
        &cold_hot,
        &after_hot,
        &after_fresh,
    ] {
        unexpected += t.unexpected();
        let refused = t.count("reserve") - admitted(t);
        // Distinct nights on one property: every one must succeed.
        unexpected += refused;
    }
    println!(
        "  server peak RSS after the restart and P3: {}",
        ledger
            .peak_rss_mib()
            .map_or("unknown".into(), |m| format!("{m:.1} MiB"))
    );
    println!("unexpected answers: {unexpected}");
    Ok(unexpected)
}
