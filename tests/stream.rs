//! The event stream on NATS JetStream (docs/api.md "Event stream on NATS
//! JetStream", docs/quality.md R3): what is published, in which order, and what
//! survives NATS and publisher failures. Each test runs its own nats-server
//! (tests/common/nats.rs), so stopping it touches nothing else.

use crate::common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream::StorageType;
use common::nats::NatsServer;
use common::stream::{assert_in_log_order, next, properties, published, receive_all, Load};
use common::{agency, created, operator, spawn_process_with_env, TestApp};
use futures::StreamExt;
use ledger_domain::CalendarEvent;
use ledger_infra::channel::{Binding, ChannelConsumer, ChannelError};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// A ledger publishing to a private nats-server. The app is declared last so
/// that it is dropped (killed) before the server.
async fn start() -> (NatsServer, TestApp) {
    let nats = NatsServer::start();
    let app = spawn_process_with_env(&[("NATS_URL", &nats.url)]).await;
    (nats, app)
}

async fn connect(nats: &NatsServer) -> async_nats::Client {
    async_nats::connect(&nats.url)
        .await
        .expect("connect to the test's nats-server")
}

/// How many snapshot and checksum messages the stream holds.
async fn availability_messages(stream: &async_nats::jetstream::stream::Stream) -> u64 {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: "ledger.*.*.availability.>".into(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut count = 0;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        count += 1;
        if message.info().is_ok_and(|info| info.pending == 0) {
            break;
        }
    }
    count
}

async fn total_events(app: &TestApp) -> usize {
    app.total_events().await as usize
}

#[tokio::test]
async fn a_reserve_is_published_as_the_documented_cloudevent() {
    let (nats, app) = start().await;
    let (agency_id, admin) = agency();
    let property = app.property(&admin, None).await;
    let (booking, position) = app
        .booked(&admin, property, "2027-05-01", "2027-05-04")
        .await;
    published(&app, Duration::from_secs(10)).await;
    let event_id: Uuid = sqlx::query_scalar("SELECT event_id FROM events WHERE position = $1")
        .bind(position)
        .fetch_one(&mut app.db().await)
        .await
        .expect("the event is in the log");

    // The stream, as docs/api.md and the publisher's doc comment define it.
    let client = connect(&nats).await;
    let jetstream = async_nats::jetstream::new(client.clone());
    let mut stream = jetstream.get_stream("LEDGER").await.expect("stream LEDGER");
    let config = &stream.info().await.expect("stream info").config;
    assert_eq!(config.subjects, vec!["ledger.>".to_owned()]);
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(config.duplicate_window, Duration::from_secs(120));

    // The raw message: subject, Nats-Msg-Id header, CloudEvent fields.
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("ledger.{agency_id}.>"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages").take(2);
    let mut raw = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("two messages within 10 s")
    {
        raw.push(message.expect("a message"));
    }
    let message = &raw[1];
    assert_eq!(
        message.subject.as_str(),
        format!("ledger.{agency_id}.{property}.booking.reserved")
    );
    let msg_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned());
    assert_eq!(msg_id, Some(event_id.to_string()));
    let document: Value = serde_json::from_slice(&message.payload).expect("JSON");
    assert_eq!(document["specversion"], "1.0");
    assert_eq!(document["id"], event_id.to_string());
    assert_eq!(
        document["source"],
        format!("/agencies/{agency_id}/properties/{property}")
    );
    assert_eq!(document["type"], "ledger.booking.reserved");
    assert_eq!(document["subject"], booking.to_string());
    assert_eq!(document["datacontenttype"], "application/json");
    assert_eq!(document["ledgerposition"], position);
    assert_eq!(document["ledgersequence"], 2);
    assert_eq!(document["data"]["booking_id"], booking.to_string());
    assert_eq!(document["data"]["check_in"], "2027-05-01");
    let time = document["time"].as_str().expect("a time");
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "time {time} is RFC 3339"
    );
    assert_eq!(
        raw[0].subject.as_str(),
        format!("ledger.{agency_id}.{property}.property.registered")
    );
    let registered: Value = serde_json::from_slice(&raw[0].payload).expect("JSON");
    assert!(
        registered.get("subject").is_none(),
        "no subject for a property event"
    );

    // Through the kit: typed, ack after handling, nak for a redelivery.
    let binding = Binding::new("test-adapter").property(property);
    let mut kit = ChannelConsumer::bind(&client, binding)
        .await
        .expect("bind the kit");
    let first = next(&mut kit, Duration::from_secs(10))
        .await
        .expect("the registration");
    assert!(matches!(
        first.event.event,
        CalendarEvent::PropertyRegistered { .. }
    ));
    first.ack().await.expect("ack");
    let reserved = next(&mut kit, Duration::from_secs(10))
        .await
        .expect("the reserve");
    assert_eq!(reserved.attempt, 1);
    assert_eq!(reserved.event.id(), event_id);
    reserved.nak(None).await.expect("nak");
    let again = next(&mut kit, Duration::from_secs(10))
        .await
        .expect("the redelivery");
    assert_eq!(again.event.id(), event_id);
    assert_eq!(again.attempt, 2, "a nak brings the event back");
    assert_eq!(
        (again.event.agency_id, again.event.property_id),
        (agency_id, property)
    );
    match &again.event.event {
        CalendarEvent::BookingReserved { booking_id, .. } => assert_eq!(*booking_id, booking),
        other => panic!("expected booking.reserved, got {other:?}"),
    }
    again.ack().await.expect("ack");
    assert!(next(&mut kit, Duration::from_millis(300)).await.is_none());

    // Readiness and ops see the publisher.
    let ready = app.send("GET", "/health/ready", None, None, &[]).await;
    assert_eq!(ready.body["nats"], "ok", "{:?}", ready.body);
    assert_eq!(ready.body["status"], "ok", "{:?}", ready.body);
    let ops = app.get("/ops/projections", &admin).await;
    let publisher = publisher_entry(&ops.body);
    assert_eq!(publisher["lag"], 0, "{publisher}");
    assert_eq!(publisher["position"], position, "{publisher}");

    // `ledger tail` prints the same document, one JSON line.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["tail", "--agency", &agency_id.to_string()])
        .args(["--from-position", &position.to_string()])
        .env("NATS_URL", &nats.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ledger tail");
    let stdout = tail.stdout.take().expect("stdout");
    let (lines, line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(Ok(first)) = BufReader::new(stdout).lines().next() {
            let _ = lines.send(first);
        }
    });
    let printed = line.recv_timeout(Duration::from_secs(10));
    let _ = tail.kill();
    let _ = tail.wait();
    let printed: Value =
        serde_json::from_str(&printed.expect("ledger tail printed a line")).expect("a JSON line");
    assert_eq!(printed, document);
}

#[tokio::test]
async fn a_thousand_events_over_fifty_properties_arrive_in_order_without_gaps() {
    let _heavy = common::heavy().await;
    let (nats, app) = start().await;
    let (agency_id, admin) = agency();
    let properties = properties(&app, &admin, 50).await;
    let load = Load::start(&app, &admin, &properties, 32);
    load.until(950).await;
    let (acknowledged, refused) = load.finish().await;
    assert_eq!(refused, 0, "every reserve is acknowledged");
    let total = total_events(&app).await;
    assert_eq!(total, 50 + acknowledged);
    assert!(total >= 1000, "{total} events");

    let client = connect(&nats).await;
    let binding = Binding::new("thousand").agency(agency_id);
    let mut kit = ChannelConsumer::bind(&client, binding).await.expect("bind");
    let events = receive_all(&mut kit, total).await;
    assert_in_log_order(&events);
    let seen: HashSet<Uuid> = events.iter().map(|e| e.property_id).collect();
    assert_eq!(seen, properties.iter().copied().collect());
}

#[tokio::test]
async fn events_committed_while_nats_is_down_are_published_in_order_when_it_is_back() {
    let (mut nats, app) = start().await;
    let load = Load::on_new_properties(&app, 5, 4, 40).await;

    nats.stop();
    let stopped_at = load.acknowledged();
    let ready = app
        .poll("/health/ready", None, Duration::from_secs(10), |body| {
            body["nats"] == "degraded"
        })
        .await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    // Writes go on while NATS is down; the publisher's lag shows in ops.
    load.until(stopped_at + 100).await;
    let ops = app
        .poll(
            "/ops/projections",
            Some(&operator()),
            Duration::from_secs(10),
            |body| publisher_entry(body)["last_error"].is_string(),
        )
        .await;
    let lag = publisher_entry(&ops)["lag"].as_i64().unwrap_or_default();
    assert!(lag >= 100, "publisher lag {lag} while NATS is down: {ops}");

    nats.restart();
    app.poll("/health/ready", None, Duration::from_secs(10), |body| {
        body["status"] == "ok"
    })
    .await;
    load.until(load.acknowledged() + 40).await;
    let (_, refused) = load.finish().await;
    assert_eq!(refused, 0, "writes kept succeeding while NATS was down");
    published(&app, Duration::from_secs(20)).await;
    let ops = app.get("/ops/projections", &operator()).await;
    assert!(
        publisher_entry(&ops.body)["last_error"].is_null(),
        "{:?}",
        ops.body
    );

    let client = connect(&nats).await;
    let mut kit = ChannelConsumer::bind(&client, Binding::new("after-outage"))
        .await
        .expect("bind");
    let events = receive_all(&mut kit, total_events(&app).await).await;
    assert_in_log_order(&events);
}

#[tokio::test]
async fn a_publisher_killed_mid_load_republishes_and_the_kit_sees_each_event_once() {
    let _heavy = common::heavy().await;
    let (nats, mut app) = start().await;
    let load = Load::on_new_properties(&app, 10, 8, 60).await;
    app.kill();
    let killed_at = load.acknowledged();
    app.start().await;
    load.until(killed_at + 60).await;
    load.finish().await;
    published(&app, Duration::from_secs(20)).await;

    // Killed between publish and checkpoint, deterministically: the last
    // 100 events were published but the checkpoint did not move past them.
    app.kill();
    sqlx::query(
        "UPDATE projection_checkpoints SET position = greatest(position - 100, 0)
          WHERE name = 'publisher'",
    )
    .execute(&mut app.db().await)
    .await
    .expect("move the checkpoint back");
    app.start().await;
    let head = published(&app, Duration::from_secs(20)).await;
    let total = total_events(&app).await;

    let client = connect(&nats).await;
    let jetstream = async_nats::jetstream::new(client.clone());
    let mut stream = jetstream.get_stream("LEDGER").await.expect("stream LEDGER");
    // Snapshots (the iCal export asks for one when it sees a gap) are not
    // events of the log: count events only.
    let stored =
        stream.info().await.expect("info").state.messages - availability_messages(&stream).await;
    assert_eq!(
        stored, total as u64,
        "JetStream dropped the republished copies (head {head})"
    );

    // Copies older than the duplicate window reach consumers: publish 20
    // stored messages again without Nats-Msg-Id, as such a copy would arrive.
    let consumer = stream
        .create_consumer(pull::OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages").take(20);
    while let Some(message) = messages.next().await {
        let message = message.expect("a message");
        jetstream
            .publish(message.subject.clone(), message.payload.clone())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    assert_eq!(
        stream.info().await.expect("info").state.messages - availability_messages(&stream).await,
        total as u64 + 20
    );

    let mut kit = ChannelConsumer::bind(&client, Binding::new("after-crash"))
        .await
        .expect("bind");
    let events = receive_all(&mut kit, total).await;
    assert_in_log_order(&events);
    assert_eq!(kit.duplicates_skipped(), 20);
}

fn publisher_entry(body: &Value) -> Value {
    body.as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "publisher").cloned())
        .unwrap_or_else(|| panic!("no publisher in {body}"))
}

#[tokio::test]
async fn every_booking_and_block_event_of_a_room_type_names_it_on_the_stream() {
    let (nats, app) = start().await;
    let (_, admin) = agency();
    let property = app.property(&admin, None).await;
    let double = created(
        app.post(
            &format!("/api/v1/properties/{property}/room-types"),
            &admin,
            json!({"name": "Double", "units": 2}),
        )
        .await,
    )
    .id();
    let on_double = |extra: Value| {
        let mut body = json!({"room_type_id": double});
        body.as_object_mut()
            .expect("an object")
            .extend(extra.as_object().cloned().unwrap_or_default());
        body
    };
    let reserve = |check_in: &'static str, check_out: &'static str, extra: Value| {
        let body = on_double(extra);
        let (app, admin) = (&app, &admin);
        async move {
            created(
                app.reserve_with(admin, property, check_in, check_out, body)
                    .await,
            )
            .id()
        }
    };
    let step = |path: String, body: Value| {
        let (app, admin) = (&app, &admin);
        async move {
            let reply = app.post(&path, admin, body).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {:?}", reply.body);
        }
    };
    let tentative = json!({"status": "tentative"});

    // Every booking event: reserved, confirmed, modified, checked in and out;
    // cancelled; no-show; a hold that lapses and is expired by the booking
    // that needs its unit.
    let stay = reserve("2027-06-01", "2027-06-03", tentative.clone()).await;
    step(format!("/api/v1/bookings/{stay}/confirm"), json!({})).await;
    let modified = app
        .edit_booking(&admin, stay, json!({"check_out": "2027-06-04"}))
        .await;
    assert_eq!(modified.status, StatusCode::OK, "{:?}", modified.body);
    step(format!("/api/v1/bookings/{stay}/check-in"), json!({})).await;
    step(format!("/api/v1/bookings/{stay}/check-out"), json!({})).await;
    let cancelled = reserve("2027-06-10", "2027-06-12", json!({})).await;
    step(format!("/api/v1/bookings/{cancelled}/cancel"), json!({})).await;
    let no_show = reserve("2027-06-14", "2027-06-15", json!({})).await;
    step(format!("/api/v1/bookings/{no_show}/no-show"), json!({})).await;
    let lapses = chrono::Utc::now() + chrono::TimeDelta::seconds(2);
    let mut hold = tentative.clone();
    hold["hold_expires_at"] = json!(lapses);
    reserve("2027-06-20", "2027-06-21", hold).await;
    reserve("2027-06-20", "2027-06-21", json!({})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    reserve("2027-06-20", "2027-06-21", json!({})).await;
    // A block of one unit, released.
    let block = created(
        app.post(
            "/api/v1/availability/blocks",
            &admin,
            on_double(json!({
                "property_id": property, "start": "2027-06-25", "end": "2027-06-26",
                "reason": "maintenance", "units": 1,
            })),
        )
        .await,
    )
    .id();
    let released = app.release(&admin, block).await;
    assert_eq!(released.status, StatusCode::OK, "{:?}", released.body);
    published(&app, Duration::from_secs(10)).await;

    let client = connect(&nats).await;
    let binding = Binding::new("room-type-adapter").property(property);
    let mut kit = ChannelConsumer::bind(&client, binding)
        .await
        .expect("bind the kit");
    let count = app.property_events(property).await as usize;
    let events = receive_all(&mut kit, count).await;
    assert_in_log_order(&events);
    let mut kinds = HashSet::new();
    for event in &events {
        let kind = event.event.kind();
        kinds.insert(kind);
        let expected = (!kind.starts_with("property.")).then_some(double);
        assert_eq!(event.room_type_id(), expected, "{:?}", event.cloud);
        assert_eq!(event.cloud.ledgerroomtypeid, expected, "{:?}", event.cloud);
        if kind.starts_with("booking.") || kind.starts_with("availability.") {
            assert_eq!(event.cloud.data["room_type_id"], double.to_string());
        }
    }
    for kind in [
        "room_type.created",
        "booking.reserved",
        "booking.modified",
        "booking.confirmed",
        "booking.cancelled",
        "booking.checked_in",
        "booking.checked_out",
        "booking.no_show",
        "booking.hold_expired",
        "availability.blocked",
        "availability.released",
    ] {
        assert!(kinds.contains(kind), "no {kind} among {kinds:?}");
    }
}

#[tokio::test]
async fn the_kit_reads_the_contracts_error_when_a_resync_names_no_property_of_the_agency() {
    let (nats, app) = start().await;
    let (agency_id, admin) = agency();
    let (other_agency, _) = agency();
    let property = app.property(&admin, None).await;
    let client = connect(&nats).await;
    let mut kit = ChannelConsumer::bind(&client, Binding::new("resync-adapter").agency(agency_id))
        .await
        .expect("bind the kit");
    for (agency, property) in [(agency_id, Uuid::new_v4()), (other_agency, property)] {
        match kit.request_resync(agency, property).await {
            Err(ChannelError::Refused { code, message }) => {
                assert_eq!(code, "PROPERTY_NOT_FOUND", "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("expected PROPERTY_NOT_FOUND, got {other:?}"),
        }
    }
    let requested = kit
        .request_resync(agency_id, property)
        .await
        .expect("the agency's own property");
    assert!(requested.is_some_and(|r| r.as_of_position > 0));
}
