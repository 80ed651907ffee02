//! Read-side benchmarks P4, P5 and P7 of docs/quality.md, each printed with its
//! baseline measured in the same run on the same PostgreSQL.
//!
//!   cargo run --release -p ledger-api --example bench_read_side [-- --ranges 1000000]
//!
//! Uses a scratch database `ledger_bench` on the server of DATABASE_URL
//! (dropped and recreated). Not a test: it prints figures.
//!
//! - P4: reserves through the command bus at 1,000/s; for each, the time from
//!   its commit (the bus returned) to the inventory projection's checkpoint
//!   passing its position, seen by a watcher polling every millisecond.
//! - P5: a full rebuild (`replay`) of inventory_ranges from the log, against
//!   raw GiST ingest (`INSERT ... SELECT` of as many ranges into a copy of
//!   the table with the same EXCLUSION constraint); and of the audit log.
//! - P7: availability search (`queries::free_units`, in the same
//!   RLS-confined read transaction the API uses) over 10,000 properties and
//!   the generated ranges, random 7-night windows, 500 queries; then again
//!   with 2,000 hotels of 5 room types x 20 units beside them, for 1, 5 and
//!   20 units.
#[path = "../benches/support.rs"]
mod support;
use support::{arg, percentile, BenchResult};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use ledger_domain::commands::{RegisterProperty, ReserveStay};
use ledger_domain::values::Guest;
use ledger_domain::{Actor, CalendarCommand, Command, Role};
use ledger_infra::{CommandBus, EventStore, Execution};
use ledger_projections::runner::{self, LogSignal};
use ledger_projections::{queries, replay, Projection};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor, PgPool};
use uuid::Uuid;

const AGENCY: Uuid = Uuid::from_u128(0x1111_1111_1111_4111_8111_1111_1111_1111);
const PROPERTIES: i64 = 10_000;

async fn scratch_database() -> BenchResult<PgPool> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/ledger".into());
    let options: PgConnectOptions = url.parse()?;
    let mut admin = options.clone().database("postgres").connect().await?;
    admin
        .execute("DROP DATABASE IF EXISTS ledger_bench WITH (FORCE)")
        .await?;
    admin.execute("CREATE DATABASE ledger_bench").await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(40)
        .connect_with(options.database("ledger_bench"))
        .await?;
    ledger_infra::migrate(&pool).await?;
    Ok(pool)
}

fn actor() -> Actor {
    Actor {
        agency_id: AGENCY,
        user_id: "bench".into(),
        role: Role::Admin,
    }
}

fn execution(property_id: Uuid, action: CalendarCommand) -> Execution {
    Execution {
        property_id,
        command: Command {
            actor: actor(),
            now: Utc::now(),
            action,
            expected_version: None,
        },
        request_id: "bench".into(),
        idempotency: None,
    }
}

fn day(n: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2027, 1, 1).unwrap() + chrono::Duration::days(n)
}

/// P4: commit -> visible in inventory_ranges at 1,000 commands/s.
async fn p4(pool: &PgPool) -> BenchResult<()> {
    let bus = Arc::new(CommandBus::new(EventStore::new(pool.clone())));
    let properties: Vec<Uuid> = (0..500).map(|_| Uuid::now_v7()).collect();
    for &id in &properties {
        let register = CalendarCommand::RegisterProperty(RegisterProperty {
            property_id: id,
            name: "bench".into(),
            timezone: None,
            owner_id: None,
            external_ref: None,
        });
        bus.run_unkeyed(execution(id, register)).await?;
    }
    runner::catch_up(pool, Projection::Inventory).await?;
    let signal = LogSignal::listen(bus.waker());
    let projector = tokio::spawn(runner::run(pool.clone(), Projection::Inventory, signal));

    // The watcher: when did the checkpoint first reach each value?
    let seen: Arc<Mutex<BTreeMap<i64, Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (pool, seen, stop) = (pool.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conn = pool.acquire().await.expect("a connection");
            let mut last = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let position: i64 = sqlx::query_scalar(
                    "SELECT ledger_watermark(txid, position) FROM projection_checkpoints
                      WHERE name = 'inventory'",
                )
                .fetch_one(&mut *conn)
                .await
                .unwrap_or(last);
                if position > last {
                    seen.lock().unwrap().insert(position, Instant::now());
                    last = position;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let rate = arg("--p4-rate", 1000) as u64;
    let seconds = arg("--p4-seconds", 10) as u64;
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut commits = Vec::new();
    let started = Instant::now();
    for i in 0..rate * seconds {
        ticker.tick().await;
        let bus = bus.clone();
        let property = properties[(i as usize) % properties.len()];
        let n = (i as usize / properties.len()) as i64;
        commits.push(tokio::spawn(async move {
            let guest = Guest {
                name: "Bench".into(),
                email: None,
                phone: None,
            };
            let reserve = CalendarCommand::ReserveStay(ReserveStay::new(
                Uuid::now_v7(),
                day(n * 2),
                day(n * 2 + 1),
                guest,
            ));
            let decided = bus.run_unkeyed(execution(property, reserve)).await;
            let at = Instant::now();
            decided.map(|d| (d.position, at))
        }));
    }
    let mut committed = Vec::new();
    for c in commits {
        committed.push(c.await??);
    }
    let offered = committed.len() as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.await?;
    projector.abort();
    let seen = seen.lock().unwrap();
    let mut latencies: Vec<f64> = committed
        .iter()
        .filter_map(|(position, at)| {
            let (_, visible) = seen.range(*position..).next()?;
            Some(visible.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "P4  commit -> visible in inventory_ranges: {} commands at {offered:.0}/s; \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= 50 ms)",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
    );
    Ok(())
}

/// Writes `PROPERTIES` property.registered events and `ranges` booking.reserved
/// events straight into the log (the same shape the event store writes).
async fn generate_log(pool: &PgPool, ranges: i64) -> BenchResult<()> {
    let per_property = (ranges / PROPERTIES).max(1);
    let metadata = format!(
        r#"{{"agency_id":"{AGENCY}","user_id":"bench","role":"admin","request_id":"bench","recorded_at":"2026-01-01T00:00:00Z"}}"#
    );
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, event_id)
         SELECT 'property', md5('p' || p)::uuid::text, 1, 'property.registered', '1',
                json_build_object('property_id', md5('p' || p)::uuid, 'agency_id', $1::uuid,
                                  'name', 'Property ' || p, 'timezone', 'UTC', 'owner_id', NULL,
                                  'external_ref', NULL, 'at', '2026-01-01T00:00:00Z'),
                $2::json, ('00000000-0000-7000-8000-' || lpad(to_hex(p), 12, '0'))::uuid
           FROM generate_series(1, $3) AS p ORDER BY p",
    )
    .bind(AGENCY)
    .bind(&metadata)
    .bind(PROPERTIES)
    .execute(pool)
    .await?;
    // In chunks of properties, so one statement stays modest.
    let chunk = 500;
    for first in (1..=PROPERTIES).step_by(chunk as usize) {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, event_id)
             SELECT 'property', md5('p' || p)::uuid::text, k + 1, 'booking.reserved', '1',
                    json_build_object('booking_id', ('00000002-0000-7000-8000-' || lpad(to_hex(p * 100000 + k), 12, '0'))::uuid,
                                      'property_id', md5('p' || p)::uuid,
                                      'check_in', date '2027-01-01' + (k * 10 + (p * 7 + k * 13) % 5)::int,
                                      'check_out', date '2027-01-01' + (k * 10 + (p * 7 + k * 13) % 5 + 2 + (p * 3 + k * 5) % 5)::int,
                                      'guest', json_build_object('name', 'Guest', 'email', NULL, 'phone', NULL),
                                      'adults', 2, 'children', 0, 'status', 'confirmed',
                                      'hold_expires_at', NULL, 'channel', 'direct',
                                      'external_ref', NULL, 'price', NULL, 'notes', NULL,
                                      'at', '2026-01-01T00:00:00Z'),
                    -- Time-ordered ids, as Uuid::now_v7() makes them.
                    $1::json, ('00000001-0000-7000-8000-' || lpad(to_hex(p * 100000 + k), 12, '0'))::uuid
               FROM generate_series($2::bigint, $3::bigint) AS p, generate_series(1, $4::bigint) AS k
              ORDER BY p, k",
        )
        .bind(&metadata)
        .bind(first)
        .bind((first + chunk - 1).min(PROPERTIES))
        .bind(per_property)
        .execute(pool)
        .await?;
    }
    pool.execute("VACUUM ANALYZE events").await?;
    Ok(())
}

async fn timed_replay(pool: &PgPool, projection: Projection) -> BenchResult<f64> {
    let started = Instant::now();
    let id = replay::start(pool, projection).await?;
    replay::run(pool, projection, id).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// P5: rebuild of inventory_ranges vs raw GiST ingest; audit log rebuild rate.
async fn p5(pool: &PgPool, ranges: i64) -> BenchResult<()> {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    pool.execute(
        // The baseline table has the EXCLUSION constraint and nothing else
        // (docs/quality.md); inventory_ranges also has its primary key and the
        // covering index of the free search, so the ratio is conservative.
        "CREATE TABLE bench_gist (LIKE inventory_ranges);
         ALTER TABLE bench_gist ADD EXCLUDE USING gist (property_id WITH =, during WITH &&);
         CREATE TABLE bench_source (LIKE inventory_ranges)",
    )
    .await?;
    let per_property = (ranges / PROPERTIES).max(1);
    sqlx::query(
        "INSERT INTO bench_source
         SELECT gen_random_uuid(), $1, md5('p' || p)::uuid, 'booking',
                daterange(date '2027-01-01' + (k * 10 + (p * 7 + k * 13) % 5)::int,
                          date '2027-01-01' + (k * 10 + (p * 7 + k * 13) % 5 + 2 + (p * 3 + k * 5) % 5)::int),
                'confirmed', 0, NULL, 1
           FROM generate_series(1, $2) p, generate_series(1, $3::bigint) k",
    )
    .bind(AGENCY)
    .bind(PROPERTIES)
    .bind(per_property)
    .execute(pool)
    .await?;
    let started = Instant::now();
    let rows = pool
        .execute("INSERT INTO bench_gist SELECT * FROM bench_source")
        .await?
        .rows_affected();
    let raw = rows as f64 / started.elapsed().as_secs_f64();
    pool.execute("DROP TABLE bench_gist, bench_source").await?;

    let inventory = events as f64 / timed_replay(pool, Projection::Inventory).await?;
    let audit = events as f64 / timed_replay(pool, Projection::Audit).await?;
    // What PostgreSQL alone pays for audit rows: INSERT ... SELECT straight
    // from the events table into a copy of audit_log with its indexes.
    pool.execute("CREATE TABLE bench_audit (LIKE audit_log INCLUDING ALL)")
        .await?;
    let started = Instant::now();
    let audit_rows = pool
        .execute(
            "INSERT INTO bench_audit
             SELECT event_id, (metadata->>'agency_id')::uuid, metadata->>'user_id', event_type,
                    'booking', coalesce((payload->>'booking_id')::uuid, aggregate_id::uuid),
                    payload::jsonb, recorded_at, position
               FROM events",
        )
        .await?
        .rows_affected();
    let audit_raw = audit_rows as f64 / started.elapsed().as_secs_f64();
    pool.execute("DROP TABLE bench_audit").await?;
    let built: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory_ranges")
        .fetch_one(pool)
        .await?;
    println!(
        "P5  raw GiST ingest (INSERT ... SELECT, {rows} rows): {raw:.0} rows/s (baseline)\n\
         P5  inventory_ranges rebuild from the log ({events} events -> {built} rows): \
         {inventory:.0} events/s = {:.2} x baseline (target >= 0.7 x)\n\
         P5  audit_log rebuild: {audit:.0} events/s (target >= 100,000 events/s); \
         raw audit ingest in SQL (INSERT ... SELECT FROM events, same indexes): \
         {audit_raw:.0} rows/s, rebuild = {:.2} x that",
        inventory / raw,
        audit / audit_raw
    );
    Ok(())
}

/// P7: availability search over 10,000 properties and the generated ranges.
async fn p7(pool: &PgPool) -> BenchResult<()> {
    runner::catch_up(pool, Projection::Views).await?;
    pool.execute("ANALYZE").await?;
    let (properties, ranges): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM properties_view), (SELECT count(*) FROM inventory_ranges)",
    )
    .fetch_one(pool)
    .await?;
    let span: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(upper(during)) - min(lower(during)), 1)::bigint FROM inventory_ranges",
    )
    .fetch_one(pool)
    .await?;
    let mut latencies = Vec::new();
    let mut found = 0usize;
    let queries_to_run = 500;
    for i in 0..queries_to_run {
        let from = day((i * 7919) % span.max(1));
        let to = from + chrono::Duration::days(7);
        let started = Instant::now();
        let mut tx = queries::begin(pool, AGENCY).await?;
        let rows = queries::free_units(
            &mut tx,
            AGENCY,
            &queries::FreeSearch {
                owner: None,
                from,
                to,
                units: 1,
                after: None,
                limit: 51,
            },
        )
        .await?;
        tx.commit().await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        found += rows.len();
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    // Baseline: the same search as one plain SQL statement, outside the RLS transaction.
    let mut plain = Vec::new();
    for i in 0..queries_to_run {
        let from = day((i * 7919) % span.max(1));
        let to = from + chrono::Duration::days(7);
        let started = Instant::now();
        let _: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT p.property_id FROM properties_view p
              WHERE p.agency_id = $1 AND NOT p.archived AND NOT EXISTS (
                    SELECT 1 FROM inventory_ranges r
                     WHERE r.agency_id = p.agency_id AND r.property_id = p.property_id
                       AND r.during && daterange($2, $3))
              ORDER BY p.property_id LIMIT 51",
        )
        .bind(AGENCY)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
        plain.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    plain.sort_by(|a, b| a.total_cmp(b));
    println!(
        "P7  availability search, {properties} properties, {ranges} ranges, {queries_to_run} queries \
         (first page of 50, {:.1} hits avg): p50 {:.2} ms, p99 {:.2} ms (target p99 <= 20 ms); \
         plain SQL baseline p50 {:.2} ms, p99 {:.2} ms",
        found as f64 / queries_to_run as f64,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&plain, 50.0),
        percentile(&plain, 99.0),
    );
    Ok(())
}

const HOTELS: i64 = 2_000;
const ROOM_TYPES_PER_HOTEL: i64 = 5;
const UNITS_PER_ROOM_TYPE: i32 = 20;
/// The nights of the hotels' calendars that hold claims.
const HOTEL_NIGHTS: i64 = 365;

/// P7 with room types: 2,000 hotels of 5 room types x 20 units beside the
/// single units, written straight into the read models (the inventory
/// projection's output; its speed is P4/P5's business). Every night of the
/// first year has a count that varies by room type and night, so a search
/// for many units finds few room types and has to look at all of them.
async fn p7_room_types(pool: &PgPool) -> BenchResult<()> {
    let started = Instant::now();
    pool.execute(
        sqlx::query(
            "INSERT INTO properties_view (property_id, agency_id, name, timezone, archived,
                                          version, created_at, updated_at, position)
             SELECT gen_random_uuid(), $1, 'Hotel ' || h, 'UTC', false, 1, now(), now(), 0
               FROM generate_series(1, $2) AS h",
        )
        .bind(AGENCY)
        .bind(HOTELS),
    )
    .await?;
    pool.execute(
        sqlx::query(
            "INSERT INTO inventory_room_types (room_type_id, agency_id, property_id, name, units,
                                               version, created_at, updated_at, position)
             SELECT gen_random_uuid(), p.agency_id, p.property_id, 'Type ' || t, $2, 1,
                    now(), now(), 0
               FROM properties_view p, generate_series(1, $3) AS t
              WHERE p.name LIKE 'Hotel %'",
        )
        .bind(AGENCY)
        .bind(UNITS_PER_ROOM_TYPE)
        .bind(ROOM_TYPES_PER_HOTEL),
    )
    .await?;
    let nights = pool
        .execute(
            sqlx::query(
                "INSERT INTO inventory_nights (room_type_id, night, agency_id, property_id,
                                               units, taken)
                 SELECT rt.room_type_id, $1::date + n, rt.agency_id, rt.property_id, rt.units,
                        (hashtext(rt.room_type_id::text || n) & 2147483647) % (rt.units + 1)
                   FROM inventory_room_types rt, generate_series(0, $2 - 1) AS n",
            )
            .bind(day(0))
            .bind(HOTEL_NIGHTS as i32),
        )
        .await?
        .rows_affected();
    pool.execute("ANALYZE").await?;
    println!(
        "    wrote {HOTELS} hotels x {ROOM_TYPES_PER_HOTEL} room types x \
         {UNITS_PER_ROOM_TYPE} units, {nights} nights, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let queries_to_run = 500;
    for units in [1, 5, UNITS_PER_ROOM_TYPE] {
        let mut latencies = Vec::new();
        let mut found = 0usize;
        for i in 0..queries_to_run {
            let from = day((i * 7919) % (HOTEL_NIGHTS - 7));
            let search = queries::FreeSearch {
                owner: None,
                from,
                to: from + chrono::Duration::days(7),
                units,
                after: None,
                limit: 51,
            };
            let started = Instant::now();
            let mut tx = queries::begin(pool, AGENCY).await?;
            let rows = queries::free_units(&mut tx, AGENCY, &search).await?;
            tx.commit().await?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            found += rows.len();
        }
        latencies.sort_by(|a, b| a.total_cmp(b));
        println!(
            "P7  availability search with room types, units={units}, {queries_to_run} queries \
             (first page of 50, {:.1} hits avg): p50 {:.2} ms, p99 {:.2} ms (target p99 <= 20 ms)",
            found as f64 / queries_to_run as f64,
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let ranges = arg("--ranges", 1_000_000);
    let pool = scratch_database().await?;
    p4(&pool).await?;

    // P5 and P7 on a bigger log, in a fresh database.
    drop(pool);
    let pool = scratch_database().await?;
    let started = Instant::now();
    generate_log(&pool, ranges).await?;
    println!(
        "    generated {PROPERTIES} properties and {ranges} bookings in the log in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    p5(&pool, ranges).await?;
    p7(&pool).await?;
    p7_room_types(&pool).await?;
    Ok(())
}
