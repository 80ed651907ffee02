//! Room types seen from every side agree (issue #17's "done when"): one
//! hotel booked into a known shape (two room types, overlapping bookings, a
//! block closing two units, a cancelled booking), then the per-night counts
//! of the availability answer, the search by units, a resync snapshot taken
//! off NATS, the checksum route, the channel kit's own state and checksum,
//! and the iCal feed of each room type (read with the independent `ical`
//! crate) must all say the same thing.

use crate::common;
use crate::resync::{resync, stream_messages, Memory};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, NaiveDate, Utc};
use common::nats::NatsServer;
use common::{agency, assert_error, created, eventually, ok, spawn_app_with_env, Reply, TestApp};
use ledger_domain::checksum::{self, ChannelRange};
use ledger_infra::channel::{Binding, ChannelConsumer, Start};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
const BOOKINGS: &str = "/api/v1/bookings";

/// Units taken per room type and night (nights that hold none are absent).
type Taken = BTreeMap<(Uuid, NaiveDate), u32>;

fn day(offset: u64) -> NaiveDate {
    Utc::now().date_naive() + Days::new(offset)
}

fn counts(ranges: &[ChannelRange]) -> Taken {
    let mut taken = Taken::new();
    for range in ranges {
        let room_type = range.room_type_id.expect("every claim names its room type");
        for night in range.start.iter_days().take_while(|n| *n < range.end) {
            *taken.entry((room_type, night)).or_default() += range.units.expect("units");
        }
    }
    taken
}

async fn room_type(app: &TestApp, token: &str, property: Uuid, name: &str, units: u32) -> Uuid {
    let path = format!("/api/v1/properties/{property}/room-types");
    created(
        app.post(&path, token, json!({"name": name, "units": units}))
            .await,
    )
    .id()
}

async fn book(app: &TestApp, token: &str, property: Uuid, room: Uuid, from: u64, to: u64) -> Reply {
    let body = json!({"property_id": property, "room_type_id": room, "guest": {"name": "Ana"},
                      "check_in": day(from), "check_out": day(to)});
    created(app.post(BOOKINGS, token, body).await)
}

/// `GET /api/v1/availability` of the hotel: units and taken per night.
async fn availability(
    app: &TestApp, token: &str, property: Uuid, (from, to): (NaiveDate, NaiveDate),
) -> (HashMap<Uuid, u32>, Taken) {
    let path = format!("/api/v1/availability?property_id={property}&from={from}&to={to}");
    let reply = app.read_ok(&path, token).await;
    assert!(reply.body.get("ranges").is_none(), "{}", reply.body);
    let mut units = HashMap::new();
    let mut taken = Taken::new();
    for room_type in reply.body["room_types"].as_array().expect("room types") {
        let id: Uuid = room_type["id"].as_str().expect("an id").parse().unwrap();
        let capacity = room_type["units"].as_u64().expect("units") as u32;
        units.insert(id, capacity);
        let nights = room_type["nights"].as_array().expect("nights");
        assert_eq!(nights.len() as i64, (to - from).num_days(), "every night");
        for (night, expected) in nights.iter().zip(from.iter_days()) {
            assert_eq!(night["date"], expected.to_string());
            let free = night["free"].as_u64().expect("free") as u32;
            if free < capacity {
                taken.insert((id, expected), capacity - free);
            }
        }
    }
    (units, taken)
}

/// `GET /api/v1/availability/search`: `(property_id, room_type_id)` hits,
/// one per page, so that every hit's cursor is followed.
async fn search(
    app: &TestApp, token: &str, from: NaiveDate, to: NaiveDate, units: u32,
) -> BTreeSet<(Uuid, Option<Uuid>)> {
    let id = |v: &Value| v.as_str().map(|s| s.parse::<Uuid>().expect("a UUID"));
    let mut hits = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!(
            "/api/v1/availability/search?from={from}&to={to}&units={units}&limit=1&cursor={cursor}"
        );
        let reply = app.read_ok(&path, token).await;
        let page = reply.body["items"].as_array().expect("a page");
        hits.extend(
            page.iter()
                .map(|hit| (id(&hit["property_id"]).unwrap(), id(&hit["room_type_id"]))),
        );
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert!(
        hits.is_sorted(),
        "in property then room type order: {hits:?}"
    );
    let unique: BTreeSet<_> = hits.iter().copied().collect();
    assert_eq!(unique.len(), hits.len(), "no hit twice: {hits:?}");
    unique
}

/// The nights each event of the feed covers, read with the `ical` crate.
fn full_nights(text: &str) -> BTreeSet<NaiveDate> {
    let calendar = ical::IcalParser::new(BufReader::new(text.as_bytes()))
        .next()
        .expect("one calendar")
        .expect("the document parses");
    let mut nights = BTreeSet::new();
    for event in &calendar.events {
        let date = |name: &str| {
            let property = event.properties.iter().find(|p| p.name == name);
            let value = property.and_then(|p| p.value.as_deref()).expect(name);
            NaiveDate::parse_from_str(value, "%Y%m%d").expect("a DATE")
        };
        let (start, end) = (date("DTSTART"), date("DTEND"));
        nights.extend(start.iter_days().take_while(|n| *n < end));
    }
    nights
}

#[tokio::test]
async fn availability_search_snapshot_checksum_kit_and_ical_agree_on_per_night_counts() {
    let nats = NatsServer::start();
    let app = spawn_app_with_env(&[
        ("NATS_URL", nats.url.as_str()),
        ("LEDGER_CHECKSUM_INTERVAL", "1s"),
    ])
    .await;
    let (agency_id, admin) = agency();
    let hotel = app.property(&admin, None).await;
    let cottage = app.property(&admin, None).await;
    let double = room_type(&app, &admin, hotel, "Double", 3).await;
    let suite = room_type(&app, &admin, hotel, "Suite", 2).await;

    // An adapter on the channel kit, folding the events from now on.
    let client = ledger_infra::nats::connect_now(&nats.url, "rooms-agree")
        .await
        .expect("connect");
    let held = Arc::new(Memory::default());
    let mut kit = ChannelConsumer::bind(&client, Binding::new("rooms-agree").start(Start::New))
        .await
        .expect("bind the adapter")
        .with_state(held.clone());

    // Double (3): nights 10..14 hold 1, 3, 2, 1, 1, 0 ...; Suite (2): a
    // block closes both units on 11 and 12, a booking takes one on 13, 14.
    book(&app, &admin, hotel, double, 10, 14).await;
    book(&app, &admin, hotel, double, 12, 16).await;
    book(&app, &admin, hotel, double, 12, 13).await;
    let cancelled = book(&app, &admin, hotel, double, 13, 15).await;
    ok(app.cancel(&admin, cancelled.id()).await);
    let block = json!({"property_id": hotel, "start": day(11), "end": day(13),
                       "reason": "maintenance", "room_type_id": suite, "units": 2});
    created(app.post("/api/v1/availability/blocks", &admin, block).await);
    book(&app, &admin, hotel, suite, 13, 15).await;
    // A stay on the single-unit cottage: not a room type, never in the counts.
    created(
        app.reserve(&admin, cottage, &day(12).to_string(), &day(13).to_string())
            .await,
    );

    let mut expected = Taken::new();
    for (offset, units) in [(10, 1), (11, 1), (12, 3), (13, 2), (14, 1), (15, 1)] {
        expected.insert((double, day(offset)), units);
    }
    for (offset, units) in [(11, 2), (12, 2), (13, 1), (14, 1)] {
        expected.insert((suite, day(offset)), units);
    }

    // 1. Availability per night.
    let window = (day(8), day(18));
    let (units, taken) = availability(&app, &admin, hotel, window).await;
    assert_eq!(units, HashMap::from([(double, 3), (suite, 2)]));
    assert_eq!(taken, expected, "availability per night");
    let free = |room: Uuid, night: NaiveDate| {
        units[&room] - taken.get(&(room, night)).copied().unwrap_or(0)
    };

    // 2. The search by units: a room type iff every night has that many free;
    // the cottage only for one unit, when its nights are free.
    for (from, to) in [
        (9, 10),
        (10, 12),
        (12, 13),
        (13, 14),
        (13, 15),
        (15, 16),
        (16, 17),
    ] {
        let (from, to) = (day(from), day(to));
        for wanted in 1..=3 {
            let hits = search(&app, &admin, from, to, wanted).await;
            let mut expected = BTreeSet::new();
            for room in [double, suite] {
                if from
                    .iter_days()
                    .take_while(|n| *n < to)
                    .all(|n| free(room, n) >= wanted)
                {
                    expected.insert((hotel, Some(room)));
                }
            }
            if wanted == 1 && (to <= day(12) || from >= day(13)) {
                expected.insert((cottage, None));
            }
            assert_eq!(hits, expected, "search {from}..{to} for {wanted} units");
        }
    }

    for units in ["0", "1001", "two"] {
        let path = format!(
            "/api/v1/availability/search?from={}&to={}&units={units}",
            day(1),
            day(2)
        );
        assert_error(
            &app.get(&path, &admin).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        );
    }

    // 3. A resync snapshot off NATS: its ranges sum to the same counts.
    let (from, to) = checksum::window("Europe/Lisbon", Utc::now());
    let asked = resync(&app, &admin, hotel).await.body["as_of_position"].clone();
    let asked = asked.as_i64().expect("a position");
    let subject = format!("ledger.{agency_id}.{hotel}.availability.snapshot");
    // The one asked for, not one the kit may have asked for on its own.
    let snapshot = eventually(WAIT, || async {
        let messages = stream_messages(&nats, &subject).await;
        let mut answers = messages.into_iter().map(|(_, document)| document);
        answers
            .find(|s| s["data"]["as_of_position"].as_i64() >= Some(asked))
            .ok_or("the snapshot is not on the stream yet")
    })
    .await;
    let data = &snapshot["data"];
    let ranges: Vec<ChannelRange> = serde_json::from_value(data["ranges"].clone()).expect("ranges");
    assert_eq!(
        ranges.len(),
        5,
        "the cancelled booking is not held: {ranges:?}"
    );
    assert_eq!(counts(&ranges), expected, "snapshot per night");
    assert_eq!(data["checksum"], checksum::checksum(&ranges));

    // 4. The checksum route over the read model.
    let path = format!("/api/v1/properties/{hotel}/checksum?from={from}&to={to}");
    let route = app.read_ok(&path, &admin).await;
    assert_eq!(
        route.body["checksum"], data["checksum"],
        "route and snapshot"
    );

    // 5. The kit: the events it folded and the snapshot it applied give the
    // same state, whose checksum matches the periodic checksums. The kit
    // only moves while it is polled.
    let deadline = Instant::now() + WAIT;
    loop {
        let recovery = kit.recovery();
        if recovery.snapshots_applied >= 1 && recovery.checksums_matched >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the kit did not catch up: {recovery:?}"
        );
        if let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(300), kit.next()).await
        {
            let delivery = delivery.expect("a delivery");
            let event = &delivery.event;
            held.apply(event.property_id, event.sequence(), &event.event);
            delivery.ack().await.expect("ack");
        }
    }
    assert_eq!(kit.recovery().drifts, 0, "{:?}", kit.recovery());
    let own = held.held(hotel);
    assert_eq!(counts(&own), expected, "the kit's state per night");
    assert_eq!(
        checksum::checksum(&own),
        data["checksum"],
        "the kit's checksum"
    );

    // 6. The iCal feed of each room type: full nights only, exactly those
    // with no unit free.
    let (token, _) = app.export_token(&admin, hotel).await;
    for room in [double, suite] {
        let full: BTreeSet<NaiveDate> = window
            .0
            .iter_days()
            .take_while(|n| *n < window.1)
            .filter(|n| free(room, *n) == 0)
            .collect();
        assert!(!full.is_empty(), "the shape has full nights");
        let url = format!("{}/ical/{hotel}/{room}.ics?token={token}", app.base);
        let text = eventually(WAIT, || async {
            let response = app
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let text = response.text().await.map_err(|e| e.to_string())?;
            if full_nights(&text) == full {
                Ok(text)
            } else {
                Err(format!("the feed of {room} is not {full:?} yet: {text}"))
            }
        })
        .await;
        assert!(text.contains("SUMMARY:Full"), "{text}");
    }
    // Another property's secret, or a room type of another property: 404.
    let (other_token, _) = app.export_token(&admin, cottage).await;
    for url in [
        format!("{}/ical/{hotel}/{double}.ics?token={other_token}", app.base),
        format!(
            "{}/ical/{cottage}/{double}.ics?token={other_token}",
            app.base
        ),
    ] {
        let response = app.client.get(&url).send().await.expect("an answer");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{url}");
    }
}
