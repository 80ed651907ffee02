//! Channels that can always get back in step (docs/api.md "Channel resync and
//! drift checks"; docs/channels.md): availability snapshots in order with the
//! property's events, resync on request (one property, one agency, all),
//! periodic drift checksums, and the channel kit recovering by itself. Each
//! test runs its own nats-server (tests/common/nats.rs).

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use chrono::{Days, NaiveDate, Utc};
use common::nats::NatsServer;
use common::stream::published;
use common::{
    agency, assert_error, created, eventually, ok, operator, spawn_app_with_env, token,
    with_status, Reply, TestApp,
};
use futures::StreamExt;
use ledger_domain::checksum::{self, ChannelRange};
use ledger_domain::claims;
use ledger_domain::CalendarEvent;
use ledger_infra::channel::{
    AdapterState, Binding, ChannelConsumer, ChannelError, Gap, Snapshot, Start, StateError,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// A ledger publishing to a private nats-server (the app is dropped first).
async fn start(env: &[(&str, &str)]) -> (NatsServer, TestApp) {
    let nats = NatsServer::start();
    let mut all = vec![("NATS_URL", nats.url.as_str())];
    all.extend_from_slice(env);
    let app = spawn_app_with_env(&all).await;
    (nats, app)
}

/// `start` with the checksum job every `checksum_interval` ("0": never),
/// and a property of a new agency with its admin's token.
async fn with_a_property(checksum_interval: &str) -> (NatsServer, TestApp, String, Uuid) {
    let (nats, app) = start(&[("LEDGER_CHECKSUM_INTERVAL", checksum_interval)]).await;
    let (_, admin) = agency();
    let property = app.property(&admin, None).await;
    (nats, app, admin, property)
}

fn day(offset: u64) -> String {
    (Utc::now().date_naive() + Days::new(offset)).to_string()
}

/// An adapter's state kept in memory: property -> claim id -> range, plus
/// what it was asked to do.
#[derive(Default)]
pub(crate) struct Memory {
    ranges: Mutex<HashMap<Uuid, BTreeMap<Uuid, ChannelRange>>>,
    /// `(property, sequence)` of every event applied, in order.
    applied: Mutex<Vec<(Uuid, i64)>>,
    snapshots: Mutex<Vec<i64>>,
    gaps: Mutex<Vec<Gap>>,
}

#[async_trait::async_trait]
impl AdapterState for Memory {
    async fn replace(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        let data = &snapshot.data;
        let ranges = data.ranges.iter().map(|r| (r.id, r.clone())).collect();
        self.ranges.lock().unwrap().insert(data.property_id, ranges);
        self.snapshots.lock().unwrap().push(data.as_of_sequence);
        Ok(())
    }

    async fn ranges(
        &self, property_id: Uuid, _from: NaiveDate, _to: NaiveDate,
    ) -> Result<Vec<ChannelRange>, StateError> {
        Ok(self.held(property_id))
    }
}

impl Memory {
    pub(crate) fn held(&self, property: Uuid) -> Vec<ChannelRange> {
        let ranges = self.ranges.lock().unwrap();
        let held = ranges.get(&property).map(|r| r.values().cloned().collect());
        checksum::in_canonical_order(held.unwrap_or_default())
    }

    /// What the adapter does with one event: the domain's rule of held
    /// nights, as every adapter on the kit applies it.
    pub(crate) fn apply(&self, property: Uuid, sequence: i64, event: &CalendarEvent) {
        self.applied.lock().unwrap().push((property, sequence));
        let mut all = self.ranges.lock().unwrap();
        claims::fold_ranges(all.entry(property).or_default(), event);
    }
}

/// Binds an adapter on the kit with `memory` as its state (only new
/// messages: its state starts empty, as if wiped) and runs it in the
/// background.
async fn run_adapter(nats: &NatsServer, name: &str, memory: Arc<Memory>) {
    let client = ledger_infra::nats::connect_now(&nats.url, name)
        .await
        .expect("connect to the test's nats-server");
    let mut consumer = ChannelConsumer::bind(&client, Binding::new(name).start(Start::New))
        .await
        .expect("bind the adapter")
        .with_state(memory.clone());
    tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(ChannelError::Nats(_)) => continue,
                Err(error) => panic!("{error}"),
            };
            if let Some(gap) = delivery.gap {
                memory.gaps.lock().unwrap().push(gap);
            }
            let event = &delivery.event;
            memory.apply(event.property_id, event.sequence(), &event.event);
            delivery.ack().await.expect("ack");
        }
    });
}

/// The property's ranges in the snapshot window, from the read model.
async fn truth(app: &TestApp, token: &str, property: Uuid) -> Vec<ChannelRange> {
    let (from, to) = checksum::window("Europe/Lisbon", Utc::now());
    let reply = app
        .read_ok(
            &format!("/api/v1/availability?property_id={property}&from={from}&to={to}"),
            token,
        )
        .await;
    let ranges = serde_json::from_value(reply.body["ranges"].clone()).expect("ranges");
    checksum::in_canonical_order(ranges)
}

/// Polls `check` until it holds, at most [`WAIT`].
async fn holds<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(WAIT, || {
        let held = check();
        async move { held.await.then_some(()).ok_or(what) }
    })
    .await
}

fn booking_id(reply: &common::Reply) -> Uuid {
    assert!(reply.status.is_success(), "{:?}", reply.body);
    reply.id()
}

#[tokio::test]
async fn a_wiped_adapter_is_back_in_step_from_one_snapshot_and_the_events_after_it() {
    let (nats, app, admin, property) = with_a_property("0").await;
    let first = booking_id(&app.reserve(&admin, property, &day(10), &day(13)).await);
    let second = booking_id(&app.hold(&admin, property, &day(20), &day(22), None).await);
    app.block(&admin, property, &day(30), &day(31), "maintenance")
        .await;

    published(&app, WAIT).await;
    let memory = Arc::new(Memory::default());
    run_adapter(&nats, "wiped", memory.clone()).await;
    let reply = resync(&app, &admin, property).await;
    assert!(reply.body["as_of_position"].as_i64().unwrap_or(0) > 0);
    holds("the snapshot is applied", || async {
        !memory.snapshots.lock().unwrap().is_empty()
    })
    .await;
    // The events after the snapshot.
    ok(app.confirm(&admin, second).await);
    ok(app.cancel(&admin, first).await);
    booking_id(&app.reserve(&admin, property, &day(40), &day(45)).await);

    let expected = truth(&app, &admin, property).await;
    assert_eq!(expected.len(), 3, "{expected:?}");
    holds("the adapter holds what the ledger holds", || async {
        memory.held(property) == expected
    })
    .await;
    let snapshots = memory.snapshots.lock().unwrap().clone();
    assert_eq!(
        snapshots,
        vec![4],
        "one snapshot, as of the 4 events before it"
    );
    let applied: Vec<i64> = memory.applied.lock().unwrap().iter().map(|a| a.1).collect();
    assert_eq!(
        applied,
        vec![5, 6, 7],
        "every event after the snapshot, once, in order"
    );
    assert!(memory.gaps.lock().unwrap().is_empty(), "no gap");
    let checksum_reply = app
        .read(&format!("/api/v1/properties/{property}/checksum"), &admin)
        .await;
    assert_eq!(
        checksum_reply.body["checksum"].as_str(),
        Some(checksum::checksum(&memory.held(property)).as_str())
    );
}

#[tokio::test]
async fn a_faked_drift_is_found_by_the_checksum_and_mended_by_the_resync_it_triggers() {
    let (nats, app, admin, property) = with_a_property("1s").await;
    let kept = booking_id(&app.reserve(&admin, property, &day(3), &day(5)).await);
    app.block(&admin, property, &day(8), &day(9), "other").await;
    published(&app, WAIT).await;
    let memory = Arc::new(Memory::default());
    run_adapter(&nats, "drifting", memory.clone()).await;
    resync(&app, &admin, property).await;
    let expected = truth(&app, &admin, property).await;
    holds("the adapter is in step", || async {
        memory.held(property) == expected
    })
    .await;
    let snapshots_before = memory.snapshots.lock().unwrap().len();

    // Drift: the adapter loses a booking without any event saying so.
    memory
        .ranges
        .lock()
        .unwrap()
        .get_mut(&property)
        .expect("the property is held")
        .remove(&kept);
    assert_ne!(memory.held(property), expected);
    holds(
        "the checksum finds the drift and the resync mends it",
        || async { memory.held(property) == expected },
    )
    .await;
    assert!(memory.snapshots.lock().unwrap().len() > snapshots_before);
    assert!(
        memory.applied.lock().unwrap().is_empty(),
        "mended by a snapshot, not by events"
    );

    // The iCal export (an adapter on the same kit) is mended the same way.
    let mut db = app.db().await;
    holds("the export holds the booking", || async {
        ledger_infra::ical::export::ranges(&sqlx_pool(&app).await, property)
            .await
            .is_ok_and(|r| r.iter().any(|r| r.claim.id == kept))
    })
    .await;
    sqlx::query("DELETE FROM ical_export_ranges WHERE ref_id = $1")
        .bind(kept)
        .execute(&mut db)
        .await
        .expect("fake a drift in the export");
    holds("the export gets the booking back", || async {
        ledger_infra::ical::export::ranges(&sqlx_pool(&app).await, property)
            .await
            .is_ok_and(|r| {
                r.iter()
                    .any(|r| r.claim.id == kept && r.claim.status == "confirmed")
            })
    })
    .await;
}

async fn sqlx_pool(app: &TestApp) -> sqlx::PgPool {
    sqlx::PgPool::connect(&app.database_url)
        .await
        .expect("a pool")
}

/// The messages of the stream under `subject` (a filter), as
/// `(subject, document)`, in stream order: everything there is now.
pub(crate) async fn stream_messages(nats: &NatsServer, subject: &str) -> Vec<(String, Value)> {
    let client = async_nats::connect(&nats.url).await.expect("connect");
    let Ok(stream) = async_nats::jetstream::new(client)
        .get_stream("LEDGER")
        .await
    else {
        return Vec::new(); // Not created yet: nothing published yet.
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::new();
    // Until the last message the consumer has (`pending` 0), or none at all.
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(1), messages.next()).await
    {
        let document = serde_json::from_slice(&message.payload).expect("JSON");
        out.push((message.subject.to_string(), document));
        if message.info().is_ok_and(|info| info.pending == 0) {
            break;
        }
    }
    out
}

/// `POST /api/v1/properties/{id}/resync`, answered 202.
pub(crate) async fn resync(app: &TestApp, token: &str, property: Uuid) -> Reply {
    with_status(
        StatusCode::ACCEPTED,
        app.post(
            &format!("/api/v1/properties/{property}/resync"),
            token,
            json!({}),
        )
        .await,
    )
}

async fn finished_job(app: &TestApp, op: &str, body: Value) -> Value {
    let reply = with_status(
        StatusCode::ACCEPTED,
        app.post("/ops/resync", op, body).await,
    );
    let job = reply.body["job_id"].as_str().expect("a job id").to_owned();
    eventually(WAIT, || async {
        let reply = ok(app.get(&format!("/ops/resync/{job}"), op).await);
        if reply.body["state"] == "finished" {
            return Ok(reply.body);
        }
        assert_eq!(reply.body["state"], "running");
        Err(format!("the job did not finish: {:?}", reply.body))
    })
    .await
}

#[tokio::test]
async fn snapshots_resyncs_and_checksums_are_on_the_stream_as_the_contract_says() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (nats, app) = start(&[
        ("LEDGER_CHECKSUM_INTERVAL", "1s"),
        ("LEDGER_METRICS_LISTEN", &metrics),
    ])
    .await;
    let (agency_id, admin) = agency();
    let property = app.property(&admin, None).await;
    let other = app.property(&admin, None).await;
    booking_id(&app.reserve(&admin, property, &day(2), &day(4)).await);
    app.block(&admin, property, &day(6), &day(7), "owner_stay")
        .await;
    booking_id(&app.reserve(&admin, other, &day(1), &day(2)).await);

    // One property, on request.
    let reply = resync(&app, &admin, property).await;
    let as_of_position = reply.body["as_of_position"].as_i64().expect("a position");
    booking_id(&app.reserve(&admin, property, &day(9), &day(11)).await);
    let all = format!("ledger.{agency_id}.{property}.>");
    let messages = eventually(WAIT, || async {
        let messages = stream_messages(&nats, &all).await;
        if messages
            .iter()
            .any(|(s, _)| s.ends_with(".availability.snapshot"))
            && messages.iter().any(|(_, d)| d["ledgersequence"] == 4)
        {
            Ok(messages)
        } else {
            Err(format!("not on the stream: {messages:?}"))
        }
    })
    .await;
    let at = messages
        .iter()
        .position(|(s, _)| s.ends_with(".availability.snapshot"))
        .expect("a snapshot");
    let (subject, snapshot) = &messages[at];
    assert_eq!(
        subject,
        &format!("ledger.{agency_id}.{property}.availability.snapshot")
    );
    assert_eq!(snapshot["type"], "ledger.availability.snapshot");
    assert_eq!(
        snapshot["source"],
        format!("/agencies/{agency_id}/properties/{property}")
    );
    let data = &snapshot["data"];
    assert_eq!(data["property_id"], property.to_string());
    // As of the last event published when the publisher served the
    // request: at least the 3 events before it, maybe the booking after.
    let as_of = data["as_of_sequence"].as_i64().expect("a sequence");
    assert!((3..=4).contains(&as_of), "{data}");
    assert_eq!(snapshot["ledgersequence"], as_of);
    assert!(data["as_of_position"].as_i64().unwrap_or(0) >= as_of_position);
    let (from, to) = checksum::window("Europe/Lisbon", Utc::now());
    assert_eq!(data["from"], from.to_string());
    assert_eq!(data["to"], to.to_string());
    let ranges: Vec<ChannelRange> = serde_json::from_value(data["ranges"].clone()).expect("ranges");
    assert_eq!(
        ranges.len() as i64,
        as_of - 1,
        "one range per claim: {ranges:?}"
    );
    assert_eq!(
        ranges[..2]
            .iter()
            .map(|r| (r.kind.as_str(), r.status.as_str()))
            .collect::<Vec<_>>(),
        vec![("booking", "confirmed"), ("block", "blocked")],
        "in start order"
    );
    assert_eq!(data["checksum"], checksum::checksum(&ranges));
    let route = app
        .read_ok(
            &format!("/api/v1/properties/{property}/checksum?from={from}&to={to}"),
            &admin,
        )
        .await;
    assert_eq!(route.body["from"], from.to_string());
    assert!(route.body["as_of_position"].as_i64().is_some());
    // The event it does not include comes after it; those it does, before.
    for (i, (_, document)) in messages.iter().enumerate() {
        if document["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("ledger.availability"))
        {
            continue;
        }
        let sequence = document["ledgersequence"].as_i64().expect("a sequence");
        assert_eq!(
            i < at,
            sequence <= as_of,
            "event {sequence} at {i}, snapshot at {at}"
        );
    }

    // The periodic checksum: same definition as the snapshot and the route.
    let sums = format!("ledger.{agency_id}.{property}.availability.checksum");
    let checksum_message = eventually(WAIT, || async {
        let found = stream_messages(&nats, &sums).await;
        match found.last() {
            Some((_, d)) if d["data"]["as_of_sequence"] == 4 => Ok(d.clone()),
            _ => Err(format!("no checksum message: {found:?}")),
        }
    })
    .await;
    assert_eq!(checksum_message["type"], "ledger.availability.checksum");
    let now_sum = app
        .read(&format!("/api/v1/properties/{property}/checksum"), &admin)
        .await;
    assert_eq!(
        checksum_message["data"]["checksum"],
        now_sum.body["checksum"]
    );
    assert_eq!(checksum_message["data"]["from"], now_sum.body["from"]);
    assert_eq!(
        checksum_message["data"]["property_id"],
        property.to_string()
    );

    // Resync jobs: one property, one agency, every property.
    let op = operator();
    let one = finished_job(&app, &op, json!({"property_id": other})).await;
    assert_eq!(
        (one["total"].as_i64(), one["processed"].as_i64()),
        (Some(1), Some(1))
    );
    assert!(one["finished_at"].is_string() && one["started_at"].is_string());
    let agency_job = finished_job(&app, &op, json!({"agency_id": agency_id})).await;
    assert_eq!(agency_job["total"], 2);
    let (_, stranger) = agency();
    app.property(&stranger, None).await;
    app.read("/api/v1/properties", &stranger).await;
    let everything = finished_job(&app, &op, json!({})).await;
    assert_eq!(everything["total"], 3);
    let snapshots_of_other = stream_messages(
        &nats,
        &format!("ledger.{agency_id}.{other}.availability.snapshot"),
    )
    .await;
    assert_eq!(snapshots_of_other.len(), 3, "one per job that covered it");

    // Lag per channel: the iCal export's durable consumer.
    let consumers = ok(app.get("/ops/consumers", &op).await);
    let export = consumers
        .body
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == "ical-export"))
        .unwrap_or_else(|| panic!("the iCal export is listed: {:?}", consumers.body));
    assert!(export["pending"].is_u64() && export["ack_floor"].is_u64());
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("ledger_consumer_pending{consumer=\"ical-export\"}"),
        "{text}"
    );
    assert!(text.contains("ledger_consumer_ack_floor{consumer=\"ical-export\"}"));
}

#[tokio::test]
async fn resync_routes_refuse_what_the_contract_refuses() {
    let (_nats, app) = start(&[("LEDGER_CHECKSUM_INTERVAL", "0")]).await;
    let (agency_id, admin) = agency();
    let property = app.property(&admin, None).await;
    let path = format!("/api/v1/properties/{property}/resync");
    let staff = token(agency_id, "staff", "s");
    assert_error(
        &app.post(&path, &staff, json!({})).await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );
    let manager = token(agency_id, "manager", "m");
    assert_eq!(
        app.post(&path, &manager, json!({})).await.status,
        StatusCode::ACCEPTED
    );
    let (_, stranger) = agency();
    assert_error(
        &app.post(&path, &stranger, json!({})).await,
        StatusCode::NOT_FOUND,
        "PROPERTY_NOT_FOUND",
    );
    assert_error(
        &app.post("/ops/resync", &admin, json!({})).await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );
    let op = operator();
    assert_error(
        &app.post("/ops/resync", &op, json!({"agency": "x"})).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
    );
    assert_error(
        &app.get(&format!("/ops/resync/{}", Uuid::new_v4()), &op)
            .await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    let checksum = format!("/api/v1/properties/{property}/checksum");
    assert_error(
        &app.get(&format!("{checksum}?from=2027-13-01"), &admin)
            .await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
    );
    assert_error(
        &app.get(&format!("{checksum}?from=2027-02-01&to=2027-01-01"), &admin)
            .await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
    );
    assert_error(
        &app.get(&checksum, &stranger).await,
        StatusCode::NOT_FOUND,
        "PROPERTY_NOT_FOUND",
    );
    let empty = app.read(&checksum, &admin).await;
    assert_eq!(
        empty.body["checksum"],
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

/// Registers `count` properties, each with one booking in the window, 16 at
/// a time; returns their ids.
async fn properties_with_a_booking(app: &TestApp, token: &str, count: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(count);
    let mut pending = futures::stream::iter(0..count)
        .map(|i| async move {
            let property = app.property(token, None).await;
            let offset = 1 + (i % 300) as u64;
            booking_id(
                &app.reserve(token, property, &day(offset), &day(offset + 2))
                    .await,
            );
            property
        })
        .buffer_unordered(16);
    while let Some(id) = pending.next().await {
        ids.push(id);
    }
    ids
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Live reserves at `rate` a second for as long as `until` says, over
/// `live`; returns commit -> received latencies (ms) of their events.
async fn live_load(
    app: &TestApp, token: &str, nats: &NatsServer, live: &[Uuid], rate: u64, first_night: u64,
    mut until: impl FnMut(usize) -> bool,
) -> Vec<f64> {
    let client = ledger_infra::nats::connect_now(&nats.url, "latency")
        .await
        .expect("connect");
    let mut follower = ledger_infra::channel::Follower::open(&client, None, None, None)
        .await
        .expect("follow the stream");
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let watching: std::collections::HashSet<Uuid> = live.iter().copied().collect();
    let collector = {
        let latencies = latencies.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = follower.next().await {
                if event.event_type != "ledger.booking.reserved" {
                    continue;
                }
                let Ok((_, property)) = event.origin() else {
                    continue;
                };
                if watching.contains(&property) {
                    let ms =
                        (Utc::now() - event.time).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                    latencies.lock().unwrap().push(ms);
                }
            }
        })
    };
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut sent = 0usize;
    let mut offset = 0u64;
    while until(sent) {
        tick.tick().await;
        let property = live[sent % live.len()];
        offset += 1;
        let night = first_night + (offset / live.len() as u64) * 2;
        created(
            app.reserve(token, property, &day(night), &day(night + 1))
                .await,
        );
        sent += 1;
    }
    let deadline = Instant::now() + WAIT;
    while latencies.lock().unwrap().len() < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    collector.abort();
    let mut all = latencies.lock().unwrap().clone();
    all.sort_by(f64::total_cmp);
    all
}

/// Not a test: figures for docs/benchmarks.md ("Channel resync"). Live
/// reserves at `LIVE_RATE`/s (default 100) while a resync of every one of
/// `RESYNC_PROPERTIES` (default 2000) properties runs; prints the live
/// commit -> received p99 beside the same load without a resync.
///
///   RESYNC_BENCH=1 cargo test -p ledger-api --test resync -- resync_under_live_load --nocapture
#[tokio::test]
async fn resync_under_live_load() {
    if !bench_requested("resync_under_live_load") {
        return;
    }
    let count: usize = env_or("RESYNC_PROPERTIES", 2000);
    let rate: u64 = env_or("LIVE_RATE", 100);
    let (nats, app) = start(&[("LEDGER_CHECKSUM_INTERVAL", "0"), ("RUST_LOG", "error")]).await;
    let (_agency, admin) = agency();
    let started = Instant::now();
    let properties = properties_with_a_booking(&app, &admin, count).await;
    app.read("/api/v1/properties?limit=1", &admin).await;
    published(&app, WAIT).await;
    eprintln!(
        "{count} properties set up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let live = &properties[..20];

    let baseline_end = Instant::now() + Duration::from_secs(10);
    let baseline = live_load(&app, &admin, &nats, live, rate, 400, |_| {
        Instant::now() < baseline_end
    })
    .await;

    let op = operator();
    let reply = app.post("/ops/resync", &op, json!({})).await;
    let job = reply.body["job_id"].as_str().expect("a job").to_owned();
    let resync_started = Instant::now();
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let finished = finished.clone();
        let path = format!("/ops/resync/{job}");
        let base = app.base.clone();
        let op = op.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let body: Value = client
                    .get(format!("{base}{path}"))
                    .bearer_auth(&op)
                    .send()
                    .await
                    .expect("progress")
                    .json()
                    .await
                    .expect("json");
                if body["state"] == "finished" {
                    finished.store(true, std::sync::atomic::Ordering::SeqCst);
                    return body;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let during = live_load(&app, &admin, &nats, live, rate, 2000, |_| {
        !finished.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    let progress = watcher.await.expect("the job");
    let seconds = resync_started.elapsed().as_secs_f64();
    println!(
        "resync of {} properties: {:.1} s ({:.0} snapshots/s); live reserves at {rate}/s over 20 properties",
        progress["total"], seconds, progress["total"].as_f64().unwrap_or(0.0) / seconds
    );
    for (when, latencies) in [("without resync:", &baseline), ("during resync: ", &during)] {
        println!(
            "  {when} {} events, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            percentile(latencies, 1.0)
        );
    }
    assert_eq!(progress["processed"], progress["total"]);
}

/// Not a test: figures for docs/benchmarks.md ("Drift checksums"). One
/// checksum round over `CHECKSUM_PROPERTIES` (default 10000) properties that
/// each hold a booking in the window: how long it takes and how many
/// messages it publishes.
///
///   RESYNC_BENCH=1 cargo test -p ledger-api --test resync -- checksum_round_cost --nocapture
#[tokio::test]
async fn checksum_round_cost() {
    if !bench_requested("checksum_round_cost") {
        return;
    }
    let count: usize = env_or("CHECKSUM_PROPERTIES", 10_000);
    let (nats, app) = start(&[("LEDGER_CHECKSUM_INTERVAL", "1h"), ("RUST_LOG", "error")]).await;
    let (agency_id, admin) = agency();
    let started = Instant::now();
    properties_with_a_booking(&app, &admin, count).await;
    app.read("/api/v1/properties?limit=1", &admin).await;
    published(&app, WAIT).await;
    eprintln!(
        "{count} properties set up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut db = app.db().await;
    // Make the next round due now; earlier rounds (the one at start-up)
    // are left out of the figures.
    let due_at: chrono::DateTime<Utc> = sqlx::query_scalar(
        "UPDATE checksum_rounds SET last_run_at = now() - interval '2 hours' RETURNING now()",
    )
    .fetch_one(&mut db)
    .await
    .expect("make a round due");
    let deadline = Instant::now() + Duration::from_secs(600);
    let (queued, seconds): (i64, f64) = loop {
        let (queued, left, seconds): (i64, i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE done_at IS NULL),
                    extract(epoch FROM max(done_at) - min(requested_at))::float8
               FROM resync_requests WHERE kind = 'checksum' AND requested_at >= $1",
        )
        .bind(due_at)
        .fetch_one(&mut db)
        .await
        .expect("read the round");
        if queued >= count as i64 && left == 0 {
            break (queued, seconds.unwrap_or(0.0));
        }
        assert!(Instant::now() < deadline, "the round did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let on_stream = stream_messages(
        &nats,
        &format!("ledger.{agency_id}.*.availability.checksum"),
    )
    .await
    .len();
    println!(
        "checksum round over {count} properties: {queued} queued, {on_stream} messages, {seconds:.1} s ({:.0} checksums/s)",
        on_stream as f64 / seconds.max(0.001)
    );
    assert_eq!(on_stream as i64, queued, "one message per property checked");
    assert!(queued >= count as i64);
}

#[path = "../infra/examples/json_mirror.rs"]
mod json_mirror;

/// The mirror's file, or nothing while it has not been written yet.
fn mirrored(path: &std::path::Path, property: Uuid) -> Option<Vec<ChannelRange>> {
    let text = std::fs::read(path).ok()?;
    let mut file: HashMap<Uuid, Vec<ChannelRange>> = serde_json::from_slice(&text).ok()?;
    file.remove(&property)
}

#[tokio::test]
async fn the_example_adapter_mirrors_availability_into_a_json_file() {
    let (nats, app, admin, property) = with_a_property("0").await;
    let booking = booking_id(&app.reserve(&admin, property, &day(5), &day(7)).await);
    app.block(&admin, property, &day(9), &day(10), "maintenance")
        .await;
    let path = std::env::temp_dir().join(format!("json-mirror-{}.json", Uuid::new_v4()));
    let mirror = Arc::new(json_mirror::Mirror::new(&path));
    let url = nats.url.clone();
    tokio::spawn(async move { json_mirror::run(&url, "json-mirror", None, mirror).await });

    let expected = truth(&app, &admin, property).await;
    assert_eq!(expected.len(), 2);
    holds("the file mirrors the property", || async {
        mirrored(&path, property) == Some(expected.clone())
    })
    .await;
    app.cancel(&admin, booking).await;
    // A snapshot on request changes nothing for an adapter in step.
    resync(&app, &admin, property).await;
    let expected = truth(&app, &admin, property).await;
    assert_eq!(expected.len(), 1);
    holds("the file follows the cancellation", || async {
        mirrored(&path, property) == Some(expected.clone())
    })
    .await;
    let _ = std::fs::remove_file(&path);
}

/// The two figure-printing runs above take minutes: they run only when
/// `RESYNC_BENCH=1` asks for them (the test suite skips them, saying so).
fn bench_requested(name: &str) -> bool {
    let requested = std::env::var("RESYNC_BENCH").is_ok_and(|v| v == "1");
    if !requested {
        eprintln!("{name}: skipped (set RESYNC_BENCH=1 to measure)");
    }
    requested
}

/// A number from the environment, or `default` when unset or not a number.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
