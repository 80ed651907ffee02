//! Values every layer can hold (docs/api.md, docs/product.md invariant 8, docs/quality.md
//! R5/R9): generated texts, dates and numbers through every write route are
//! either refused with a 400 naming the field or accepted, and whatever is
//! accepted is applied by every projection and published to NATS. Then the
//! probes that once got through, one regression test each.
//!
//! `R9_CASES=500 cargo test -p ledger-api --test values` for a longer run.

use crate::common;

use std::time::Duration;

use chrono::NaiveDate;
use common::nats::NatsServer;
use common::routes::{BOOKINGS, PROPERTIES};
use common::{
    agency, app_with_property, assert_error, operator, reservation, spawn_app, spawn_app_with_env,
    Reply, TestApp,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;

/// A ledger publishing to a private nats-server (the app is dropped first).
async fn start() -> (NatsServer, TestApp) {
    let nats = NatsServer::start();
    let app = spawn_app_with_env(&[("NATS_URL", &nats.url)]).await;
    (nats, app)
}

// ------------------------------------------------------------ generators

/// Any Unicode, with the characters that once broke a layer made likely.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[a-zé \\t\\n\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{200b}\\u{fffe}\\u{10ffff}]{0,12}",
        1 => ".{190,260}",
        1 => "[a-zA-Z ]{1,20}",
    ]
}

fn optional_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        4 => text().prop_map(Value::from),
    ]
}

/// A date as a client might send it: mostly in or near the ledger's
/// years, sometimes thousands of years away, sometimes not a date at all.
fn date() -> impl Strategy<Value = Value> {
    let year = prop_oneof![
        6 => 1895i32..2205,
        2 => -10_000i32..12_001,
        1 => -262_000i32..262_000,
    ];
    let parts = (year, 0u32..14, 0u32..33).prop_map(|(y, m, d)| {
        let year = if (0..=9999).contains(&y) {
            format!("{y:04}")
        } else {
            format!("{y:+05}")
        };
        Value::from(format!("{year}-{m:02}-{d:02}"))
    });
    prop_oneof![
        8 => parts,
        1 => text().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
    ]
}

/// The two ends of a stay or block: mostly a start in or near the ledger's
/// years with an end a few nights later (so some get through), sometimes
/// two unrelated dates.
fn range() -> impl Strategy<Value = (Value, Value)> {
    let near = (1895i32..2205, 1u32..=12, 1u32..=28, -3i64..370).prop_map(|(y, m, d, nights)| {
        let start = NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default();
        let end = start
            .checked_add_signed(chrono::Duration::days(nights))
            .unwrap_or(start);
        (Value::from(start.to_string()), Value::from(end.to_string()))
    });
    prop_oneof![7 => near, 3 => (date(), date())]
}

/// An e-mail address, or not one.
fn email() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(Value::Null),
        2 => "[a-z]{1,8}@[a-z]{1,8}\\.[a-z]{2,3}".prop_map(Value::from),
        1 => text().prop_map(Value::from),
    ]
}

/// Numbers of every size and kind, where the contract wants small integers.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (0i64..60).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| json!(f)),
        1 => Just(Value::Null),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    property: Value,
    reserve: Value,
    modify: Value,
    block: Value,
    reason: Value,
}

fn case() -> impl Strategy<Value = Case> {
    let property = (
        text(),
        prop_oneof![
            Just(Value::Null),
            Just(json!("Europe/Lisbon")),
            text().prop_map(Value::from)
        ],
        optional_text(),
        optional_text(),
    )
        .prop_map(|(name, timezone, owner_id, external_ref)| {
            json!({"name": name, "timezone": timezone, "owner_id": owner_id, "external_ref": external_ref})
        });
    let guest = || {
        (text(), email(), optional_text())
            .prop_map(|(name, email, phone)| json!({"name": name, "email": email, "phone": phone}))
    };
    let price = || {
        prop_oneof![
            Just(Value::Null),
            (
                number(),
                prop_oneof![Just(json!("EUR")), text().prop_map(Value::from)]
            )
                .prop_map(
                    |(amount, currency)| json!({"amount_minor": amount, "currency": currency})
                ),
        ]
    };
    let reserve = (
        range(),
        guest(),
        (number(), number()),
        price(),
        optional_text(),
        optional_text(),
    )
        .prop_map(
            |((check_in, check_out), guest, (adults, children), price, notes, external_ref)| {
                json!({
                    "check_in": check_in, "check_out": check_out, "guest": guest,
                    "adults": adults, "children": children, "price": price,
                    "notes": notes, "external_ref": external_ref,
                })
            },
        );
    let modify = (range(), guest(), optional_text(), price()).prop_map(
        |((check_in, check_out), guest, notes, price)| {
            json!({"check_in": check_in, "check_out": check_out, "guest": guest,
                   "notes": notes, "price": price})
        },
    );
    let block = (range(), optional_text(), optional_text()).prop_map(
        |((start, end), note, external_ref)| {
            json!({"start": start, "end": end, "reason": "maintenance",
                   "note": note, "external_ref": external_ref})
        },
    );
    (property, reserve, modify, block, optional_text()).prop_map(
        |(property, reserve, modify, block, reason)| Case {
            property,
            reserve,
            modify,
            block,
            reason: json!({ "reason": reason }),
        },
    )
}

/// `body` with `extra`'s fields added.
fn with(mut body: Value, extra: Value) -> Value {
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

// ------------------------------------------------------------ checks

/// A write's reply is an answer the contract allows: a success, a 400
/// naming what was wrong, or (for nights already taken) a 409.
fn allowed(route: &str, sent: &Value, reply: &Reply) -> Result<(), TestCaseError> {
    let ok = reply.status.is_success()
        || (reply.status == StatusCode::BAD_REQUEST && reply.code() == "VALIDATION_ERROR")
        || (reply.status == StatusCode::CONFLICT && reply.code() == "BOOKING_CONFLICT");
    prop_assert!(
        ok,
        "{route} answered {} {}\nto {sent}",
        reply.status,
        reply.body
    );
    Ok(())
}

/// Waits until every projection and the publisher have applied the log up
/// to `position`, running, with no error; fails the case if one stops.
async fn applied_everywhere(app: &TestApp, position: i64) -> Result<(), TestCaseError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ops = app.get("/ops/projections", &operator()).await;
        prop_assert_eq!(ops.status, StatusCode::OK, "{}", ops.body);
        let entries = ops.body.as_array().cloned().unwrap_or_default();
        prop_assert!(
            entries.iter().any(|p| p["name"] == "publisher"),
            "no publisher in {}",
            ops.body
        );
        for entry in &entries {
            prop_assert!(
                entry["status"] == "running" && entry["last_error"].is_null(),
                "a checkpoint stopped at position {position}: {entry}"
            );
            let parked = entry["parked"].as_array().map_or(0, Vec::len);
            prop_assert_eq!(parked, 0, "parked: {}", entry);
        }
        let caught_up = entries
            .iter()
            .all(|p| p["position"].as_i64().is_some_and(|at| at >= position));
        if caught_up {
            return Ok(());
        }
        prop_assert!(
            Instant::now() < deadline,
            "not at {position} within 15 s: {}",
            ops.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every write of one case; returns the highest position an accepted one
/// got and how many of its generated writes were accepted.
async fn run_case(app: &TestApp, admin: &str, case: &Case) -> Result<(i64, usize), TestCaseError> {
    let mut position = 0;
    let at = |reply: &Reply| reply.body["position"].as_i64().unwrap_or(0);
    let mut accepted = 0;
    let registered = app
        .post("/api/v1/properties", admin, case.property.clone())
        .await;
    allowed("register", &case.property, &registered)?;
    position = position.max(at(&registered));
    accepted += usize::from(registered.status.is_success());
    let property = if registered.status.is_success() {
        registered.id()
    } else {
        let fallback = app.property(admin, None).await;
        let read = app
            .read(&format!("/api/v1/properties/{fallback}"), admin)
            .await;
        position = position.max(at(&read));
        fallback
    };
    let reserve = with(case.reserve.clone(), json!({ "property_id": property }));
    let reserved = app.post("/api/v1/bookings", admin, reserve.clone()).await;
    allowed("reserve", &reserve, &reserved)?;
    position = position.max(at(&reserved));
    accepted += usize::from(reserved.status.is_success());
    if reserved.status.is_success() {
        let booking = reserved.id();
        let read = app
            .get(
                &format!("/api/v1/bookings/{booking}?min_position={position}"),
                admin,
            )
            .await;
        prop_assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        prop_assert_eq!(&read.body["guest"], &reserved.body["guest"]);
        prop_assert_eq!(&read.body["notes"], &reserved.body["notes"]);
        let path = format!("/api/v1/bookings/{booking}");
        let modified = app.patch(&path, admin, case.modify.clone()).await;
        allowed("modify", &case.modify, &modified)?;
        position = position.max(at(&modified));
        accepted += usize::from(modified.status.is_success());
        let cancelled = app
            .post(&format!("{path}/cancel"), admin, case.reason.clone())
            .await;
        allowed("cancel", &case.reason, &cancelled)?;
        position = position.max(at(&cancelled));
        accepted += usize::from(cancelled.status.is_success());
    }
    let block = with(case.block.clone(), json!({ "property_id": property }));
    let blocked = app
        .post("/api/v1/availability/blocks", admin, block.clone())
        .await;
    allowed("block", &block, &blocked)?;
    position = position.max(at(&blocked));
    accepted += usize::from(blocked.status.is_success());
    Ok((position, accepted))
}

/// R9: generated values through register, reserve, modify, cancel and
/// block; every accepted write is read back, applied by every projection
/// and published.
#[test]
fn generated_values_are_refused_or_held_by_every_layer() {
    let cases = std::env::var("R9_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (_nats, app) = runtime.block_on(start());
    let (_, admin) = agency();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&case(), |case| {
        runtime.block_on(async {
            let (position, writes) = run_case(&app, &admin, &case).await?;
            accepted.fetch_add(writes, std::sync::atomic::Ordering::Relaxed);
            let reads = [
                "/api/v1/properties".to_owned(),
                "/api/v1/audit-log".to_owned(),
                "/api/v1/availability/search?from=2000-01-01&to=2000-02-01".to_owned(),
            ];
            for read in reads {
                let separator = if read.contains('?') { '&' } else { '?' };
                let reply = app
                    .get(&format!("{read}{separator}min_position={position}"), &admin)
                    .await;
                prop_assert_eq!(reply.status, StatusCode::OK, "{}: {}", read, reply.body);
            }
            applied_everywhere(&app, position).await
        })
    });
    if let Err(failure) = result {
        panic!("{failure}\n{}", app.log_text());
    }
    // Generated writes that got through: without them the run proved only
    // that refusals are 400s.
    let accepted = accepted.into_inner();
    eprintln!("R9: {cases} cases, {accepted} generated writes accepted");
    assert!(accepted > 0, "no generated write was accepted");
}

// ------------------------------------------------------------ regressions

fn field(reply: &Reply) -> &str {
    reply.body["error"]["details"]["field"]
        .as_str()
        .unwrap_or("")
}

#[track_caller]
fn assert_refused(reply: &Reply, expected_field: &str) {
    assert_error(reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(field(reply), expected_field, "{}", reply.body);
    let message = reply.body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(expected_field), "{}", reply.body);
}

#[tokio::test]
async fn a_nul_in_the_guest_name_is_refused_naming_guest_name() {
    let (app, admin, property) = app_with_property().await;
    let reply = app
        .post(
            "/api/v1/bookings",
            &admin,
            json!({"property_id": property, "check_in": "2030-01-01", "check_out": "2030-01-03",
                   "guest": {"name": "x\u{0}"}}),
        )
        .await;
    assert_refused(&reply, "guest.name");
    assert_eq!(app.property_events(property).await, 1, "nothing appended");
}

/// A guest or price of the wrong JSON type is refused under the contract's
/// schema names, whatever the types behind them are called in the code.
#[tokio::test]
async fn a_guest_or_price_of_the_wrong_type_is_refused_under_its_schema_name() {
    let (app, admin, property) = app_with_property().await;
    for (field, value, schema) in [
        ("guest", json!("Ana"), "GuestDto"),
        ("price", json!(12), "PriceDto"),
    ] {
        let mut body = json!({"property_id": property, "check_in": "2030-01-01",
                              "check_out": "2030-01-03", "guest": {"name": "Ana"}});
        body[field] = value;
        let reply = app.post("/api/v1/bookings", &admin, body).await;
        assert_refused(&reply, field);
        let message = reply.body["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(&format!("expected struct {schema} ")),
            "{}",
            reply.body
        );
    }
    assert_eq!(app.property_events(property).await, 1, "nothing appended");
}

/// Ranges with a date outside the calendar (1900-01-01 to 2199-12-31), or
/// no date at all, and which of their ends (0 the first, 1 the last) every
/// route that takes a range must name when it refuses them.
const OUTSIDE_THE_CALENDAR: [(&str, &str, usize); 7] = [
    ("-5000-01-01", "-5000-01-03", 0),
    ("+12000-01-01", "+12000-01-03", 0),
    ("1899-12-31", "1900-01-02", 0),
    ("2199-12-30", "2200-01-02", 1),
    ("2000-01-01", "+12000-01-01", 1),
    ("2000-13-01", "2001-01-01", 0),
    // Beyond what a date type can hold at all: the parse names the field.
    ("+999999-01-01", "2030-01-02", 0),
];

#[tokio::test]
async fn stays_and_blocks_far_outside_the_calendar_are_refused_naming_the_field() {
    let (app, admin, property) = app_with_property().await;
    for (first, last, end) in OUTSIDE_THE_CALENDAR {
        let reply = app.reserve(&admin, property, first, last).await;
        assert_refused(&reply, ["check_in", "check_out"][end]);
        let reply = app
            .block(&admin, property, first, last, "maintenance")
            .await;
        assert_refused(&reply, ["start", "end"][end]);
    }
    let (booking, _) = app
        .booked(&admin, property, "2030-01-01", "2030-01-03")
        .await;
    let reply = app
        .edit_booking(&admin, booking, json!({"check_in": "-5000-01-01"}))
        .await;
    assert_refused(&reply, "check_in");
    let reply = app
        .hold(
            &admin,
            property,
            "2031-01-01",
            "2031-01-03",
            Some("2500-01-01T00:00:00Z"),
        )
        .await;
    assert_refused(&reply, "hold_expires_at");
    // The calendar's edges themselves are held by every layer.
    let edge = app
        .reserve(&admin, property, "2199-12-29", "2199-12-31")
        .await;
    assert_eq!(edge.status, StatusCode::CREATED, "{}", edge.body);
    let early = app
        .reserve(&admin, property, "1900-01-01", "1900-01-02")
        .await;
    assert_eq!(early.status, StatusCode::CREATED, "{}", early.body);
    let read = app
        .read(&format!("/api/v1/bookings/{}", edge.id()), &admin)
        .await;
    assert_eq!(read.body["check_out"], "2199-12-31");
}

#[tokio::test]
async fn read_queries_with_dates_outside_the_calendar_are_400_naming_the_field() {
    let (app, admin, property) = app_with_property().await;
    for (from, to, end) in OUTSIDE_THE_CALENDAR {
        let named = ["from", "to"][end];
        let query = format!("from={from}&to={to}").replace('+', "%2B");
        for path in [
            format!("/api/v1/bookings?{query}"),
            format!("/api/v1/availability?property_id={property}&{query}"),
            format!("/api/v1/availability/search?{query}"),
        ] {
            let reply = app.get(&path, &admin).await;
            assert_refused(&reply, named);
        }
    }
}

#[tokio::test]
async fn text_filters_of_the_audit_log_refuse_control_characters() {
    let app = spawn_app().await;
    let (_, admin) = agency();
    for name in ["user_id", "action", "resource_type"] {
        let reply = app
            .get(&format!("/api/v1/audit-log?{name}=a%00b"), &admin)
            .await;
        assert_refused(&reply, name);
    }
}

#[tokio::test]
async fn control_characters_in_one_line_fields_are_refused_naming_the_field() {
    let (app, admin, property) = app_with_property().await;
    let mut noted = reservation(property, "2030-02-01", "2030-02-03");
    noted["notes"] = json!("bell\u{7}");
    let (booking, _) = app
        .booked(&admin, property, "2030-01-01", "2030-01-03")
        .await;
    for (path, body, named) in [
        (
            PROPERTIES.to_owned(),
            json!({"name": "Sea\u{1b}View"}),
            "name",
        ),
        (PROPERTIES.to_owned(), json!({"name": "Sea\nView"}), "name"),
        (
            PROPERTIES.to_owned(),
            json!({"name": "Sea View", "owner_id": "o\u{85}"}),
            "owner_id",
        ),
        (
            format!("{BOOKINGS}/{booking}/cancel"),
            json!({"reason": "no\tshow"}),
            "reason",
        ),
        (BOOKINGS.to_owned(), noted, "notes"),
    ] {
        let reply = app.post(&path, &admin, body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert_refused(&reply, named);
    }
}

#[tokio::test]
async fn tab_and_newline_in_notes_and_note_are_accepted_and_read_back() {
    let (app, admin, property) = app_with_property().await;
    let notes = "late arrival\n\tkey under the mat\nüñíçødé ✓";
    let reserved = app
        .reserve_with(
            &admin,
            property,
            "2030-01-01",
            "2030-01-03",
            json!({ "notes": notes }),
        )
        .await;
    assert_eq!(reserved.status, StatusCode::CREATED, "{}", reserved.body);
    let read = app
        .read(&format!("/api/v1/bookings/{}", reserved.id()), &admin)
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["notes"], notes);
    let note = "boiler\n\tservice";
    let blocked = app
        .post(
            "/api/v1/availability/blocks",
            &admin,
            json!({"property_id": property, "start": "2030-03-01", "end": "2030-03-02",
                   "reason": "maintenance", "note": note}),
        )
        .await;
    assert_eq!(blocked.status, StatusCode::CREATED, "{}", blocked.body);
    assert_eq!(blocked.body["note"], note);
    let audit = app.read("/api/v1/audit-log", &admin).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
}

#[tokio::test]
async fn null_for_a_field_that_cannot_be_empty_is_refused_naming_it() {
    let (app, admin, property) = app_with_property().await;
    let path = format!("/api/v1/properties/{property}");
    for name in ["name", "timezone"] {
        let reply = app.patch(&path, &admin, json!({ name: null })).await;
        assert_refused(&reply, name);
    }
    let booking = app
        .reserve(&admin, property, "2030-01-01", "2030-01-03")
        .await
        .id();
    let path = format!("/api/v1/bookings/{booking}");
    for name in ["check_in", "check_out", "guest", "adults", "children"] {
        let reply = app.patch(&path, &admin, json!({ name: null })).await;
        assert_refused(&reply, name);
    }
    // Nullable fields still clear.
    let cleared = app.patch(&path, &admin, json!({"notes": null})).await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.body);
}

#[tokio::test]
async fn an_idempotency_key_outside_printable_ascii_is_refused() {
    let app = spawn_app().await;
    let (_, admin) = agency();
    let long = "k".repeat(256);
    for key in ["", "tab\there", long.as_str()] {
        let keyed = [("idempotency-key", key)];
        let reply = app
            .post_with(PROPERTIES, &admin, json!({"name": "Sea View"}), &keyed)
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        let message = reply.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("Idempotency-Key"), "{}", reply.body);
    }
}

#[tokio::test]
async fn the_openapi_document_lists_the_health_aliases_and_the_value_limits() {
    let app = spawn_app().await;
    let doc = app.send("GET", "/openapi.json", None, None, &[]).await;
    assert_eq!(doc.status, StatusCode::OK);
    for path in ["/healthz", "/readyz", "/health", "/health/ready"] {
        assert!(doc.body["paths"][path]["get"].is_object(), "{path} missing");
    }
    let params = &doc.body["paths"]["/api/v1/bookings/{id}"]["patch"]["parameters"];
    let declares_id = params
        .as_array()
        .is_some_and(|all| all.iter().any(|p| p["name"] == "id" && p["in"] == "path"));
    assert!(declares_id, "{params}");
    let schemas = &doc.body["components"]["schemas"];
    let reserve = &schemas["ReserveBody"]["properties"];
    assert!(reserve["check_in"]["pattern"].is_string(), "{reserve}");
    assert_eq!(schemas["GuestDto"]["properties"]["name"]["maxLength"], 200);
    assert!(schemas["BlockBody"]["properties"]["note"]["pattern"].is_string());
    let ids: Vec<&Value> = doc.body["paths"]
        .as_object()
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(|item| item.get("get").and_then(|get| get.get("operationId")))
        .collect();
    let mut unique = ids.clone();
    unique.sort_by_key(|id| id.to_string());
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "operationIds are unique");
}
