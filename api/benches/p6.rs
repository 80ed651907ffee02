//! P6 of docs/quality.md: commit -> received by a JetStream consumer at 1,000
//! events/s (target p99 <= 100 ms), and catch-up publishing (target >= 10,000
//! events/s). Not a test: it prints figures.
//!
//!   cargo bench -p ledger-api --bench p6 [-- --rate 1000 --seconds 20 --backlog 100000]
//!
//! Needs PostgreSQL at DATABASE_URL (a scratch database is created and
//! dropped) and a `nats-server` binary (a private one is started on a free
//! port; the shared one is not touched). Runs the real `ledger serve` binary
//! (release build, as `cargo bench` builds it).
//!
//! - Latency: reserves through HTTP at a steady rate over 50 properties; a
//!   channel-kit consumer (durable pull consumer, ack per event) takes for
//!   each event `received - time`, where `time` is the CloudEvent's `time`:
//!   the event's `recorded_at`, stamped at insert, just before its commit, so
//!   the figure slightly over-states commit -> received. Same host, same
//!   clock. The first 2 s are warm-up and not counted.
//! - Catch-up: NATS is stopped, a backlog of `property.updated` events is
//!   appended straight into the log, the projections are let catch up (so
//!   they do not compete), then NATS is started again; the rate is the
//!   backlog over the time from the publisher's first checkpoint move to its
//!   reaching the head, and the consumer's receipt of the last event is shown
//!   too.
#[path = "support.rs"]
mod support;
use support::{arg, drop_database, percentile, scratch_database, BenchResult, Ledger};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate, Utc};
use ledger_api::auth::Keys;
use ledger_domain::Role;
use ledger_infra::channel::{Binding, ChannelConsumer, Start};
use ledger_test_support::nats::NatsServer;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const SECRET: &str = "p6-benchmark-secret-at-least-32-bytes-long";
const PROPERTIES: usize = 50;
const WARM_UP: Duration = Duration::from_secs(2);

/// One received event: its type and commit -> received in milliseconds.
struct Sample {
    kind: String,
    latency_ms: f64,
    received: Instant,
}

/// (position of the publisher's checkpoint, head of the log)
async fn publisher(pool: &PgPool) -> BenchResult<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT position, (SELECT coalesce(max(position), 0) FROM events)
           FROM projection_checkpoints WHERE name = 'publisher'",
    )
    .fetch_one(pool)
    .await?)
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let rate = arg("--rate", 1000);
    let seconds = arg("--seconds", 20);
    let backlog = arg("--backlog", 100_000);
    let mut nats = NatsServer::start();
    let (db_name, database_url, pool) = scratch_database("ledger_bench_p6", 4).await?;
    let outcome = run(&mut nats, &database_url, &pool, rate, seconds, backlog).await;
    pool.close().await;
    drop_database(&db_name).await?;
    outcome
}

async fn run(
    nats: &mut NatsServer, database_url: &str, pool: &PgPool, rate: u64, seconds: u64, backlog: u64,
) -> BenchResult<()> {
    let ledger = Ledger::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_ledger")),
        &[
            ("DATABASE_URL", database_url),
            ("NATS_URL", &nats.url),
            ("JWT_SECRET", SECRET),
        ],
    )
    .await?;
    let agency = Uuid::new_v4();
    let token =
        Keys::new(SECRET.as_bytes()).mint(agency, Role::Admin, "bench", Duration::from_secs(3600));
    let http = reqwest::Client::new();
    let mut properties = Vec::with_capacity(PROPERTIES);
    for i in 0..PROPERTIES {
        let reply: serde_json::Value = http
            .post(format!("{}/api/v1/properties", ledger.base))
            .bearer_auth(&token)
            .json(&json!({"name": format!("P6 {i}"), "timezone": "Europe/Lisbon"}))
            .send()
            .await?
            .json()
            .await?;
        properties.push(reply["id"].as_str().ok_or("no property id")?.to_owned());
    }

    // The consumer: the channel kit, as an adapter runs it.
    let client = ledger_infra::nats::connect(&nats.url, "p6-consumer").await?;
    let mut kit = ChannelConsumer::bind(&client, Binding::new("p6").start(Start::New)).await?;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let consumer = {
        let samples = samples.clone();
        tokio::spawn(async move {
            while let Some(delivery) = kit.next().await {
                let Ok(delivery) = delivery else { continue };
                let latency = Utc::now() - delivery.event.cloud.time;
                let sample = Sample {
                    kind: delivery.event.cloud.event_type.clone(),
                    latency_ms: latency.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0,
                    received: Instant::now(),
                };
                let _ = delivery.ack().await;
                if let Ok(mut all) = samples.lock() {
                    all.push(sample);
                }
            }
        })
    };

    // Steady load: `rate` reserves a second, each one event.
    println!(
        "P6 latency: {rate} reserves/s for {seconds} s over {PROPERTIES} properties (+2 s warm-up)"
    );
    let started = Instant::now();
    let total = (rate * (seconds + WARM_UP.as_secs())) as usize;
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = tokio::task::JoinSet::new();
    let first_night = NaiveDate::from_ymd_opt(2030, 1, 1).ok_or("a date")?;
    for i in 0..total {
        ticker.tick().await;
        let property = properties[i % PROPERTIES].clone();
        let night = first_night + Days::new(2 * (i / PROPERTIES) as u64);
        let request = http
            .post(format!("{}/api/v1/bookings", ledger.base))
            .bearer_auth(&token)
            .json(&json!({
                "property_id": property,
                "check_in": night.to_string(),
                "check_out": (night + Days::new(1)).to_string(),
                "guest": {"name": "P6 Guest"},
            }));
        let acknowledged = acknowledged.clone();
        in_flight.spawn(async move {
            if let Ok(reply) = request.send().await {
                if reply.status() == reqwest::StatusCode::CREATED {
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
    let load_time = started.elapsed();
    let acknowledged = acknowledged.load(Ordering::Relaxed);
    println!(
        "  offered {total} reserves in {:.1} s: {:.0}/s, {acknowledged} acknowledged",
        load_time.as_secs_f64(),
        total as f64 / load_time.as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let reserved = || {
        samples
            .lock()
            .map(|all| {
                all.iter()
                    .filter(|s| s.kind == "ledger.booking.reserved")
                    .count()
            })
            .unwrap_or(0)
    };
    while reserved() < acknowledged && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warm_end = started + WARM_UP;
    let mut latencies: Vec<f64> = samples
        .lock()
        .map(|all| {
            all.iter()
                .filter(|s| s.kind == "ledger.booking.reserved" && s.received >= warm_end)
                .map(|s| s.latency_ms)
                .collect()
        })
        .unwrap_or_default();
    latencies.sort_by(f64::total_cmp);
    let p99 = percentile(&latencies, 99.0);
    println!(
        "  received {} (after warm-up {}): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         -> target p99 <= 100 ms: {}",
        reserved(),
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        p99,
        latencies.last().copied().unwrap_or(f64::NAN),
        if p99 <= 100.0 { "met" } else { "NOT met" }
    );

    // Catch-up: a backlog built while NATS is down.
    println!("P6 catch-up: {backlog} events appended while NATS is down");
    nats.stop();
    let before = publisher(pool).await?.1;
    let mut conn = pool.acquire().await?;
    let chunk = 10_000u64;
    let mut appended = 0;
    while appended < backlog {
        let rows = chunk.min(backlog - appended);
        let per_property = rows.div_ceil(PROPERTIES as u64) as i64;
        sqlx::query(
            "WITH heads AS (
                 SELECT aggregate_type, aggregate_id, max(sequence) AS sequence,
                        (array_agg(metadata::text))[1] AS metadata
                   FROM events WHERE aggregate_type = 'property'
                  GROUP BY aggregate_type, aggregate_id)
             INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata, event_id)
             SELECT h.aggregate_type, h.aggregate_id, h.sequence + g, 'property.updated', '1',
                    json_build_object('property_id', h.aggregate_id, 'name', 'Backlog ' || g,
                        'timezone', 'Europe/Lisbon', 'owner_id', NULL, 'external_ref', NULL,
                        'changed', json_build_array('name'), 'at', now()),
                    h.metadata::json, gen_random_uuid()
               FROM heads h, generate_series(1, $1) g
              ORDER BY g, h.aggregate_id",
        )
        .bind(per_property)
        .execute(&mut *conn)
        .await?;
        appended += per_property as u64 * PROPERTIES as u64;
    }
    drop(conn);
    let head = publisher(pool).await?.1;
    let appended = head - before;
    // Let the projections take the backlog first: they must not compete.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_checkpoints
              WHERE name IN ('inventory', 'views', 'audit') AND position < $1",
        )
        .bind(head)
        .fetch_one(pool)
        .await?;
        if behind == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let from = publisher(pool).await?.0;
    let received_before = samples.lock().map(|all| all.len()).unwrap_or(0);
    nats.restart();
    let restarted = Instant::now();
    let mut first_move = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let done = loop {
        let (position, _) = publisher(pool).await?;
        if position > from && first_move.is_none() {
            first_move = Some(Instant::now());
        }
        if position >= head {
            break Instant::now();
        }
        if Instant::now() > deadline {
            return Err(format!("the publisher is at {position} of {head} after 300 s").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let moving = done - first_move.unwrap_or(restarted);
    let published = (head - from) as f64;
    let rate_published = published / moving.as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    let expected = received_before + (head - from) as usize;
    while samples.lock().map(|all| all.len()).unwrap_or(0) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received_all = samples
        .lock()
        .map(|all| all.last().map(|s| s.received))
        .ok()
        .flatten()
        .unwrap_or(restarted);
    println!(
        "  appended {appended}; published {published:.0} in {:.2} s after the first ack \
         ({:.2} s after NATS restarted): {rate_published:.0} events/s \
         -> target >= 10,000 events/s: {}",
        moving.as_secs_f64(),
        (done - restarted).as_secs_f64(),
        if rate_published >= 10_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  consumer received the last backlog event {:.2} s after NATS restarted ({:.0} events/s)",
        (received_all - restarted).as_secs_f64(),
        published / (received_all - restarted).as_secs_f64()
    );
    consumer.abort();
    drop(ledger);
    Ok(())
}
