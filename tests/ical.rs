//! The iCal channel (docs/ical.md), against the real PostgreSQL and a private
//! nats-server: the export feed equals the inventory and is well-formed
//! RFC 5545 (read back with the independent `ical` crate, not our own
//! parser); its secret is required and rotates; the import makes a
//! property's blocks match a feed, idempotently, from the command line and
//! from feeds `ledger serve` runs itself.

use crate::channel;
use crate::common;

use std::collections::BTreeSet;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use channel::{all_ran, feeds_when, register, Answer, Channel, EMPTY_CALENDAR};
use chrono::{DateTime, NaiveDate, Utc};
use common::nats::NatsServer;
use common::{agency, assert_error, created, eventually, ok, spawn_app_with_env, token, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// A ledger on a private nats-server; the app is dropped (killed) first.
/// The test channels listen on 127.0.0.1, so it is allow-listed.
async fn start() -> (NatsServer, TestApp) {
    let nats = NatsServer::start();
    let app = spawn_app_with_env(&[
        ("NATS_URL", &nats.url),
        ("LEDGER_FEED_ALLOW_HOSTS", "127.0.0.1"),
    ])
    .await;
    (nats, app)
}

type Range = (String, NaiveDate, NaiveDate);

fn date(s: &str) -> NaiveDate {
    s.parse().expect("a date")
}

/// Waits until the export adapter has applied every event of the property.
async fn export_caught_up(app: &TestApp, property: Uuid) {
    eventually(Duration::from_secs(30), || async {
        let (applied, head): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT sequence FROM ical_export_cursors WHERE property_id = $1),
                    (SELECT max(sequence) FROM events WHERE aggregate_id = $1::text)",
        )
        .bind(property)
        .fetch_one(&mut app.db().await)
        .await
        .expect("read the export's cursor");
        if applied.is_some() && applied == head {
            Ok(())
        } else {
            Err(format!("the export applied {applied:?} of {head:?} events"))
        }
    })
    .await
}

/// The export as bytes, with its status and content type.
async fn fetch_ics(app: &TestApp, url: &str) -> (StatusCode, String, String) {
    let response = app.client.get(url).send().await.expect("an answer");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = response.text().await.expect("a body");
    (status, content_type, text)
}

/// The ranges the availability API shows for the property in 2027-2028,
/// once the read side caught up.
async fn availability_ranges(app: &TestApp, admin: &str, property: Uuid) -> Vec<Value> {
    let mut reply = app
        .read_ok(
            &format!("/api/v1/availability?property_id={property}&from=2027-01-01&to=2028-12-31"),
            admin,
        )
        .await;
    match reply.body["ranges"].take() {
        Value::Array(ranges) => ranges,
        other => panic!("ranges: {other}"),
    }
}

/// The held ranges the availability API shows for the property, as UIDs.
async fn inventory(app: &TestApp, admin: &str, property: Uuid) -> BTreeSet<Range> {
    availability_ranges(app, admin, property)
        .await
        .iter()
        .map(|r| {
            (
                format!("{}@booking-ledger", r["id"].as_str().expect("an id")),
                date(r["start"].as_str().expect("a start")),
                date(r["end"].as_str().expect("an end")),
            )
        })
        .collect()
}

/// Parses the document with the `ical` crate and returns its events'
/// (UID, DTSTART, DTEND), checking each is an all-day event.
fn parse_with_ical_crate(text: &str) -> (Vec<ical::property::Property>, BTreeSet<Range>) {
    let mut calendars = ical::IcalParser::new(BufReader::new(text.as_bytes()));
    let calendar = calendars
        .next()
        .expect("one calendar")
        .expect("the document parses");
    assert!(calendars.next().is_none(), "exactly one VCALENDAR");
    let mut ranges = BTreeSet::new();
    for event in &calendar.events {
        let prop = |name: &str| {
            event
                .properties
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("{name} in {event:?}"))
        };
        let day = |name: &str| {
            let p = prop(name);
            let params = p.params.clone().unwrap_or_default();
            assert!(
                params
                    .iter()
                    .any(|(k, v)| k == "VALUE" && v == &vec!["DATE".to_owned()]),
                "{name} is VALUE=DATE: {p:?}"
            );
            NaiveDate::parse_from_str(p.value.as_deref().unwrap_or(""), "%Y%m%d").expect("a DATE")
        };
        assert!(prop("DTSTAMP")
            .value
            .as_deref()
            .is_some_and(|v| v.ends_with('Z')));
        let summary = prop("SUMMARY").value.clone().unwrap_or_default();
        assert!(
            ["Reserved", "Blocked"].contains(&summary.as_str()),
            "{summary}"
        );
        let uid = prop("UID").value.clone().expect("a UID");
        ranges.insert((uid, day("DTSTART"), day("DTEND")));
    }
    assert_eq!(ranges.len(), calendar.events.len(), "UIDs are unique");
    (calendar.properties, ranges)
}

#[tokio::test]
async fn the_export_lists_exactly_the_nights_the_inventory_holds() {
    let (_nats, app) = start().await;
    let (_, admin) = agency();
    let property = app.property(&admin, None).await;
    let other = app.property(&admin, None).await;

    let (kept, _) = app
        .booked(&admin, property, "2027-07-01", "2027-07-04")
        .await;
    let cancelled = app
        .reserve(&admin, property, "2027-07-10", "2027-07-12")
        .await;
    ok(app.cancel(&admin, cancelled.id()).await);
    let modified = app
        .reserve(&admin, property, "2027-07-20", "2027-07-23")
        .await;
    ok(app
        .edit_booking(
            &admin,
            modified.id(),
            json!({"check_in": "2027-07-21", "check_out": "2027-07-25"}),
        )
        .await);
    let tentative = created(
        app.hold(
            &admin,
            property,
            "2027-08-01",
            "2027-08-03",
            Some("2030-01-01T00:00:00Z"),
        )
        .await,
    );
    let block = created(
        app.block(&admin, property, "2027-09-01", "2027-09-05", "maintenance")
            .await,
    );
    let released = app
        .block(&admin, property, "2027-09-10", "2027-09-12", "owner_stay")
        .await;
    ok(app.release(&admin, released.id()).await);
    let elsewhere = app.reserve(&admin, other, "2027-07-01", "2027-07-04").await;
    assert_eq!(elsewhere.status, StatusCode::CREATED);

    let (_, url) = app.export_token(&admin, property).await;
    export_caught_up(&app, property).await;
    let (status, content_type, text) = fetch_ics(&app, &url).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(content_type, "text/calendar; charset=utf-8");

    // RFC 5545 §3.1: CRLF after every line, none longer than 75 octets.
    assert!(text.ends_with("\r\n"), "the document ends with CRLF");
    assert!(
        !text.replace("\r\n", "").contains(['\r', '\n']),
        "a bare CR or LF in {text:?}"
    );
    for line in text.split_terminator("\r\n") {
        assert!(line.len() <= 75, "{} octets: {line:?}", line.len());
    }
    assert!(
        text.contains("\r\n "),
        "the long calendar name is folded: {text}"
    );
    assert!(!text.contains("Ana"), "no guest data in the feed");

    let (properties, exported) = parse_with_ical_crate(&text);
    let value = |name: &str| {
        properties
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.value.clone())
    };
    assert_eq!(value("VERSION").as_deref(), Some("2.0"));
    assert!(value("PRODID").is_some_and(|p| !p.is_empty()));
    assert!(
        value("X-WR-CALNAME").is_some_and(|name| name.contains(&property.to_string())),
        "the folded name reads back whole"
    );

    let held = inventory(&app, &admin, property).await;
    let expected: BTreeSet<Range> = [
        (kept, "2027-07-01", "2027-07-04"),
        (modified.id(), "2027-07-21", "2027-07-25"),
        (tentative.id(), "2027-08-01", "2027-08-03"),
        (block.id(), "2027-09-01", "2027-09-05"),
    ]
    .into_iter()
    .map(|(id, s, e)| (format!("{id}@booking-ledger"), date(s), date(e)))
    .collect();
    assert_eq!(held, expected, "the inventory holds what was written");
    assert_eq!(exported, held, "the export equals the inventory");

    // A later change shows up too.
    let reply = app.cancel(&admin, kept).await;
    assert_eq!(reply.status, StatusCode::OK);
    export_caught_up(&app, property).await;
    let (_, _, text) = fetch_ics(&app, &url).await;
    let (_, exported) = parse_with_ical_crate(&text);
    assert_eq!(exported, inventory(&app, &admin, property).await);
    assert_eq!(exported.len(), 3);

    // The adapter's table falls behind the stream (as if events had been
    // missed): the next event is past its cursor + 1, so the property is
    // rebuilt from the log, not patched.
    let mut db = app.db().await;
    sqlx::query("DELETE FROM ical_export_ranges WHERE property_id = $1")
        .bind(property)
        .execute(&mut db)
        .await
        .expect("forget the ranges");
    sqlx::query("UPDATE ical_export_cursors SET sequence = 1 WHERE property_id = $1")
        .bind(property)
        .execute(&mut db)
        .await
        .expect("move the cursor back");
    let late = app
        .reserve(&admin, property, "2027-10-01", "2027-10-02")
        .await;
    assert_eq!(late.status, StatusCode::CREATED);
    export_caught_up(&app, property).await;
    let (_, _, text) = fetch_ics(&app, &url).await;
    let (_, exported) = parse_with_ical_crate(&text);
    assert_eq!(exported, inventory(&app, &admin, property).await);
    assert_eq!(exported.len(), 4, "rebuilt whole, with the new booking");
}

#[tokio::test]
async fn the_export_needs_the_current_secret_and_rotation_revokes_the_old_one() {
    let (_nats, app) = start().await;
    let (agency_id, admin) = agency();
    let property = app.property(&admin, None).await;
    let path = format!("/ical/{property}.ics");

    // No secret yet, none given, a wrong one: all the same 404.
    let reply = app.send("GET", &path, None, None, &[]).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (old, old_url) = app.export_token(&admin, property).await;
    assert!(
        old_url.ends_with(&format!("{path}?token={old}")),
        "{old_url}"
    );
    let reply = app.send("GET", &path, None, None, &[]).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "NOT_FOUND");
    let wrong = format!("{path}?token={}", "0".repeat(64));
    assert_error(
        &app.send("GET", &wrong, None, None, &[]).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    let unknown = format!("/ical/{}.ics?token={old}", Uuid::new_v4());
    assert_error(
        &app.send("GET", &unknown, None, None, &[]).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    let (status, _, _) = fetch_ics(&app, &old_url).await;
    assert_eq!(status, StatusCode::OK);

    // A manager may rotate it; the old URL stops working at once.
    let manager = token(agency_id, "manager", "manager-1");
    let (new, new_url) = app.export_token(&manager, property).await;
    assert_ne!(new, old);
    let (status, _, _) = fetch_ics(&app, &old_url).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the rotated-out secret");
    let (status, _, _) = fetch_ics(&app, &new_url).await;
    assert_eq!(status, StatusCode::OK);

    // Only the hash is stored.
    let stored: String =
        sqlx::query_scalar("SELECT token_hash FROM ical_tokens WHERE property_id = $1")
            .bind(property)
            .fetch_one(&mut app.db().await)
            .await
            .expect("the stored secret");
    assert_ne!(stored, new);
    assert!(!stored.contains(&new));

    // Staff may not; another agency's admin does not see the property.
    let staff = token(agency_id, "staff", "staff-1");
    let token_path = format!("/api/v1/properties/{property}/ical-token");
    let reply = app.post(&token_path, &staff, json!({})).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "FORBIDDEN");
    let (_, stranger) = agency();
    let reply = app.post(&token_path, &stranger, json!({})).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
    let (status, _, _) = fetch_ics(&app, &new_url).await;
    assert_eq!(status, StatusCode::OK, "refused requests rotate nothing");
}

// ------------------------------------------------------------------ import

/// A channel's feed with these VEVENT bodies (lines joined with CRLF).
fn feed(events: &[&str]) -> String {
    let mut text = String::from("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Some Channel//EN\r\n");
    for event in events {
        text.push_str("BEGIN:VEVENT\r\n");
        text.push_str(&event.replace('\n', "\r\n"));
        text.push_str("\r\nEND:VEVENT\r\n");
    }
    text.push_str("END:VCALENDAR\r\n");
    text
}

const LONG_UID: &str =
    "a-uid-long-enough-to-be-folded-by-the-channel-0123456789abcdef@channel.example";

/// The same long UID as the channel folds it.
fn folded_long_uid() -> String {
    let line = format!("UID:{LONG_UID}");
    format!("{}\n {}", &line[..75], &line[75..])
}

fn write_feed(dir: &std::path::Path, text: &str) -> PathBuf {
    let path = dir.join("feed.ics");
    std::fs::write(&path, text).expect("write the feed");
    path
}

/// Runs `ledger ical import` and returns its JSON report.
fn import_cli(app: &TestApp, property: Uuid, url: &str) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args([
            "ical",
            "import",
            "--property",
            &property.to_string(),
            "--url",
            url,
        ])
        .env("DATABASE_URL", &app.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ledger ical import");
    assert!(
        output.status.success(),
        "ledger ical import failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "a JSON report ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The property's unreleased blocks, as (external_ref, start, end), read
/// from the write side's own block route after the inventory caught up.
async fn imported_blocks(app: &TestApp, admin: &str, property: Uuid) -> BTreeSet<Range> {
    let mut blocks = BTreeSet::new();
    for range in availability_ranges(app, admin, property).await {
        if range["kind"] != "block" {
            continue;
        }
        let id = range["id"].as_str().expect("an id");
        let block = ok(app
            .get(&format!("/api/v1/availability/blocks/{id}"), admin)
            .await);
        assert_eq!(block.body["reason"], "other");
        blocks.insert((
            block.body["external_ref"]
                .as_str()
                .expect("an external_ref")
                .to_owned(),
            date(block.body["start"].as_str().expect("a start")),
            date(block.body["end"].as_str().expect("an end")),
        ));
    }
    blocks
}

fn uids(report: &Value, field: &str) -> BTreeSet<String> {
    report[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} in {report}"))
        .iter()
        .map(|u| u.as_str().expect("a UID").to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn ranges(items: &[(&str, &str, &str)]) -> BTreeSet<Range> {
    items
        .iter()
        .map(|(uid, s, e)| (uid.to_string(), date(s), date(e)))
        .collect()
}

/// A property and a confirmed booking of its nights of 20-21 July 2027,
/// which the feeds' `clash@channel` (21-22 July) runs into.
async fn property_with_a_stay(app: &TestApp, admin: &str) -> (Uuid, Uuid) {
    let property = app.property(admin, None).await;
    let (booked, _) = app
        .booked(admin, property, "2027-07-20", "2027-07-22")
        .await;
    (property, booked)
}

#[tokio::test]
async fn the_import_makes_the_blocks_match_the_feed_and_is_idempotent() {
    let (_nats, app) = start().await;
    let (_, admin) = agency();
    let (property, booked) = property_with_a_stay(&app, &admin).await;
    let dir = std::env::temp_dir().join(format!("ledger-ical-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a temp dir");

    let first = feed(&[
        "UID:a@channel\nDTSTART;VALUE=DATE:20270701\nDTEND;VALUE=DATE:20270704\nSUMMARY:Reserved",
        "UID:b@channel\nDTSTART;TZID=Europe/Lisbon:20270710T150000\nDTEND;TZID=Europe/Lisbon:20270712T100000",
        "UID:c@channel\nDTSTART;VALUE=DATE:20270801",
        "UID:gone@channel\nDTSTART;VALUE=DATE:20270901\nDTEND;VALUE=DATE:20270905\nSTATUS:CANCELLED",
        "UID:clash@channel\nDTSTART;VALUE=DATE:20270721\nDTEND;VALUE=DATE:20270723",
        &format!("{}\nDTSTART:20271001\nDTEND:20271003", folded_long_uid()),
    ]);
    let path = write_feed(&dir, &first);
    let report = import_cli(&app, property, path.to_str().expect("a path"));
    assert_eq!(
        uids(&report, "created"),
        set(&["a@channel", "b@channel", "c@channel", LONG_UID])
    );
    assert_eq!(report["cancelled"], 1);
    let skipped = report["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{report}");
    assert_eq!(skipped[0]["uid"], "clash@channel");
    assert_eq!(skipped[0]["conflicts"][0]["id"], booked.to_string());
    assert_eq!(
        imported_blocks(&app, &admin, property).await,
        ranges(&[
            ("a@channel", "2027-07-01", "2027-07-04"),
            ("b@channel", "2027-07-10", "2027-07-12"),
            ("c@channel", "2027-08-01", "2027-08-02"),
            (LONG_UID, "2027-10-01", "2027-10-03"),
        ])
    );

    // The channel moves a, drops b, adds d; the clash is still there.
    let second = feed(&[
        "UID:a@channel\nDTSTART;VALUE=DATE:20270702\nDTEND;VALUE=DATE:20270705",
        "UID:c@channel\nDTSTART;VALUE=DATE:20270801",
        "UID:d@channel\nDTSTART:20271101T140000Z\nDTEND:20271103T110000Z",
        "UID:clash@channel\nDTSTART;VALUE=DATE:20270721\nDTEND;VALUE=DATE:20270723",
        &format!("{}\nDTSTART:20271001\nDTEND:20271003", folded_long_uid()),
    ]);
    write_feed(&dir, &second);
    let url = format!("file://{}", path.display());
    // file:// names the same feed as the bare path: the same blocks.
    let report = import_cli(&app, property, &url);
    assert_eq!(uids(&report, "moved"), set(&["a@channel"]));
    assert_eq!(uids(&report, "released"), set(&["b@channel"]));
    assert_eq!(uids(&report, "created"), set(&["d@channel"]));
    assert_eq!(report["unchanged"], 2, "{report}");
    let expected = ranges(&[
        ("a@channel", "2027-07-02", "2027-07-05"),
        ("c@channel", "2027-08-01", "2027-08-02"),
        ("d@channel", "2027-11-01", "2027-11-03"),
        (LONG_UID, "2027-10-01", "2027-10-03"),
    ]);
    assert_eq!(imported_blocks(&app, &admin, property).await, expected);

    // Once more with the same feed: nothing is appended to the log.
    let events_before = app.property_events(property).await;
    let report = import_cli(&app, property, path.to_str().expect("a path"));
    assert_eq!(
        app.property_events(property).await,
        events_before,
        "{report}"
    );
    for field in ["created", "moved", "released"] {
        assert!(uids(&report, field).is_empty(), "{field} in {report}");
    }
    assert_eq!(report["unchanged"], 4);
    assert_eq!(imported_blocks(&app, &admin, property).await, expected);

    // A block made by hand is never the import's, even with an external_ref.
    created(
        app.post(
            "/api/v1/availability/blocks",
            &admin,
            json!({"property_id": property, "start": "2027-12-01", "end": "2027-12-03",
                   "reason": "other", "external_ref": "manual@desk"}),
        )
        .await,
    );
    write_feed(&dir, &feed(&[]));
    let report = import_cli(&app, property, path.to_str().expect("a path"));
    assert_eq!(uids(&report, "released").len(), 4, "{report}");
    assert_eq!(
        imported_blocks(&app, &admin, property).await,
        ranges(&[("manual@desk", "2027-12-01", "2027-12-03")])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn feeds_registered_by_an_admin_are_imported_by_the_service() {
    let (_nats, app) = start().await;
    let (agency_id, admin) = agency();
    let (property, _) = property_with_a_stay(&app, &admin).await;
    let channel = Channel::start(Answer::feed(feed(&[
        "UID:x@channel\nDTSTART;VALUE=DATE:20270601\nDTEND;VALUE=DATE:20270605",
        "UID:clash@channel\nDTSTART;VALUE=DATE:20270721\nDTEND;VALUE=DATE:20270723",
    ])))
    .await;
    let url = channel.url("127.0.0.1", "/calendar.ics");
    let feeds = format!("/api/v1/properties/{property}/ical-feeds");

    // Only an admin registers feeds, only http(s), within the limits.
    let manager = token(agency_id, "manager", "manager-1");
    let reply = app.post(&feeds, &manager, json!({"url": url})).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "FORBIDDEN");
    let reply = app
        .post(&feeds, &admin, json!({"url": "file:///etc/passwd"}))
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let reply = app
        .post(&feeds, &admin, json!({"url": url, "interval_minutes": 1}))
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let (_, stranger) = agency();
    let reply = app.post(&feeds, &stranger, json!({"url": url})).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");

    let reply = created(
        app.post(&feeds, &admin, json!({"url": url, "interval_minutes": 15}))
            .await,
    );
    let feed_id = reply.id();

    // The first run is due at once.
    let listed = eventually(Duration::from_secs(30), || async {
        let reply = ok(app.get(&feeds, &admin).await);
        let item = reply.body["items"][0].clone();
        if !item["last_run_at"].is_null() {
            Ok(item)
        } else {
            Err(format!("the feed did not run: {item}"))
        }
    })
    .await;
    assert_eq!(listed["id"], feed_id.to_string());
    assert_eq!(listed["interval_minutes"], 15);
    assert_eq!(listed["last_result"]["created"], json!(["x@channel"]));
    let error = listed["last_error"]
        .as_str()
        .expect("the skipped event is reported");
    assert!(error.contains("clash@channel"), "{error}");
    assert_eq!(
        imported_blocks(&app, &admin, property).await,
        ranges(&[("x@channel", "2027-06-01", "2027-06-05")])
    );

    ok(app.delete(&format!("{feeds}/{feed_id}"), &admin).await);
    let reply = app.get(&feeds, &admin).await;
    assert_eq!(reply.body["items"], json!([]));
    let reply = app.delete(&format!("{feeds}/{feed_id}"), &admin).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "NOT_FOUND");
}

#[tokio::test]
async fn a_failing_feed_is_reported_in_our_words_never_the_servers() {
    let (_nats, app) = start().await;
    let (_, admin) = agency();
    let cases = [
        (
            Answer::page("403 Internal Proxy Says No", "<h1>admin panel v1.2</h1>"),
            "the feed answered with an error (HTTP 403)",
        ),
        (
            Answer::page("200 OK", "<h1>admin panel v1.2</h1>"),
            "the feed is not an iCalendar file",
        ),
    ];
    for (answer, expected) in cases {
        let channel = Channel::start(answer).await;
        let property = app.property(&admin, None).await;
        register(&app, &admin, property, &channel.url("127.0.0.1", "/")).await;
        let items = feeds_when(&app, &admin, property, all_ran).await;
        assert_eq!(items[0]["last_error"], expected, "{items:?}");
        assert_eq!(channel.requests(), 1);
    }
    // Nothing listens on a port just freed: our words, not the socket's.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let url_closed = format!(
        "http://127.0.0.1:{}/",
        unused.local_addr().expect("an address").port()
    );
    drop(unused);
    let property = app.property(&admin, None).await;
    register(&app, &admin, property, &url_closed).await;
    let items = feeds_when(&app, &admin, property, all_ran).await;
    assert_eq!(
        items[0]["last_error"], "the feed could not be reached",
        "{items:?}"
    );
}

#[tokio::test]
async fn one_agencys_slow_feeds_do_not_hold_up_another_agencys() {
    const SLOW: Duration = Duration::from_secs(4);
    let (_nats, app) = start().await;
    let slow = Channel::start(Answer::feed(EMPTY_CALENDAR).after(SLOW)).await;
    let fast = Channel::start(Answer::feed(EMPTY_CALENDAR)).await;
    let (_, busy_admin) = agency();
    let (_, other_admin) = agency();
    let busy_property = app.property(&busy_admin, None).await;
    let other_property = app.property(&other_admin, None).await;
    // The busy agency's feeds are registered first: they are the most overdue.
    for n in 0..4 {
        let url = slow.url("127.0.0.1", &format!("/calendar-{n}.ics"));
        register(&app, &busy_admin, busy_property, &url).await;
    }
    register(
        &app,
        &other_admin,
        other_property,
        &fast.url("127.0.0.1", "/calendar.ics"),
    )
    .await;

    let ran_at = |item: &Value| -> DateTime<Utc> {
        item["last_run_at"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("a last_run_at in {item}"))
    };
    let other = feeds_when(&app, &other_admin, other_property, all_ran).await;
    let busy = feeds_when(&app, &busy_admin, busy_property, all_ran).await;
    let fast_done = ran_at(&other[0]);
    let slow_done = busy.iter().map(ran_at).max().expect("four feeds");
    assert!(
        fast_done + chrono::Duration::seconds(2) < slow_done,
        "the other agency's feed ran at {fast_done}, the busy agency's were done at {slow_done}"
    );
    assert!(busy.iter().all(|f| f["last_error"].is_null()), "{busy:?}");
    // Two of the busy agency's feeds ran at once, never more.
    assert_eq!(slow.most_at_once(), 2);
    assert_eq!(slow.requests(), 4);
}
