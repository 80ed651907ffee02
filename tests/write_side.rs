//! The write routes of docs/api.md against the real binary: every command's success
//! and its error codes, the contract's error format for axum's own rejections,
//! request ids, Idempotency-Key, concurrency (invariant 1), health and docs.

use crate::common;

use std::time::{Duration, Instant};

use common::{
    agency, app_with_agency_property, app_with_booking, app_with_property, assert_error, created,
    free_port, ok, reservation, spawn_app, spawn_app_at, spawn_app_with_env, spawn_process, token,
    with_status, Reply, TestApp,
};
use futures::future::join_all;
use ledger_infra::{Clock, ManualClock};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const PROPERTIES: &str = "/api/v1/properties";
const BOOKINGS: &str = "/api/v1/bookings";
const BLOCKS: &str = "/api/v1/availability/blocks";

fn booking_path(id: Uuid, action: &str) -> String {
    if action.is_empty() {
        format!("{BOOKINGS}/{id}")
    } else {
        format!("{BOOKINGS}/{id}/{action}")
    }
}

/// Reserves and returns the booking's id, asserting a 201.
async fn booked(
    app: &TestApp, token: &str, property: Uuid, check_in: &str, check_out: &str,
) -> Uuid {
    let reply = created(app.reserve(token, property, check_in, check_out).await);
    reply.id()
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

/// A tentative booking of 1-5 March 2027 held until `until`, which must
/// be created.
async fn tentative(app: &TestApp, token: &str, property: Uuid, until: &str) -> Reply {
    created(
        app.hold(token, property, "2027-03-01", "2027-03-05", Some(until))
            .await,
    )
}

/// Every status change a booking has.
const ACTIONS: [&str; 5] = ["confirm", "cancel", "check-in", "check-out", "no-show"];

/// Each of `actions` on `booking` is refused with `status` and `code`.
async fn refused_actions(
    app: &TestApp, token: &str, booking: Uuid, actions: &[&str], (status, code): (StatusCode, &str),
) {
    for action in actions {
        let reply = app.act(token, booking, action).await;
        assert_eq!(reply.code(), code, "{action}: {:?}", reply.body);
        assert_error(&reply, status, code);
    }
}

const INVALID_TRANSITION: (StatusCode, &str) = (StatusCode::CONFLICT, "INVALID_STATE_TRANSITION");

/// A 409 `BOOKING_CONFLICT` that names `conflicts`.
#[track_caller]
fn assert_conflicts(reply: &Reply, conflicts: Value) {
    assert_error(reply, StatusCode::CONFLICT, "BOOKING_CONFLICT");
    assert_eq!(
        reply.body["error"]["details"]["conflicts"], conflicts,
        "{:?}",
        reply.body
    );
}

/// Each field of `expected` has its value in `body`.
#[track_caller]
fn assert_fields(body: &Value, expected: Value) {
    for (field, value) in expected.as_object().expect("an object of fields") {
        assert_eq!(&body[field], value, "{field} of {body}");
    }
}

/// `POST /api/v1/properties` with `body` sent as it is.
async fn register_raw(
    app: &TestApp, token: &str, body: impl Into<Vec<u8>>, headers: &[(&str, &str)],
) -> Reply {
    app.send_bytes("POST", PROPERTIES, Some(token), body.into(), headers)
        .await
}

/// `count` copies of one POST with the same Idempotency-Key, all at once;
/// each must be 201. The ids they name, consecutive repeats removed.
async fn same_key_at_once(
    app: &TestApp, token: &str, path: &str, key: &str, body: &Value, count: usize,
) -> Vec<String> {
    let requests = (0..count).map(|_| {
        app.client
            .post(format!("{}{path}", app.base))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(body)
            .send()
    });
    let mut ids = Vec::new();
    for response in join_all(requests).await {
        let response = response.expect("answered");
        assert_eq!(response.status(), StatusCode::CREATED);
        let reply: Value = response.json().await.expect("a JSON body");
        ids.push(reply["id"].as_str().expect("an id").to_owned());
    }
    ids.dedup();
    ids
}

// ------------------------------------------------------------------ properties

#[tokio::test]
async fn registering_a_property_returns_201_and_the_property() {
    let app = spawn_app().await;
    let (agency_id, admin) = agency();

    let reply = created(app
        .post(
            PROPERTIES,
            &admin,
            json!({"name": "Sea View", "timezone": "Europe/Lisbon", "owner_id": "owner-7", "external_ref": "PMS-1"}),
        )
        .await);
    let p = &reply.body;
    assert_fields(
        p,
        json!({"agency_id": agency_id, "name": "Sea View", "timezone": "Europe/Lisbon",
               "owner_id": "owner-7", "external_ref": "PMS-1", "archived": false, "version": 1}),
    );
    assert!(
        p["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{p}"
    );
    assert!(p["updated_at"].is_string());
    assert!(p["position"].as_i64().is_some_and(|n| n > 0), "{p}");
    let id = reply.id();

    // Only the name is required; the time zone defaults to UTC.
    let minimal = created(app.post(PROPERTIES, &admin, json!({"name": "Loft"})).await);
    assert_eq!(minimal.body["timezone"], "UTC");
    assert_eq!(minimal.body["owner_id"], Value::Null);
    assert_eq!(minimal.body["external_ref"], Value::Null);
    assert!(minimal.body["position"].as_i64() > p["position"].as_i64());

    // GET by id gives the same property, to the microsecond and position:
    // the read model holds what the write answered.
    let read = app.read_ok(&format!("{PROPERTIES}/{id}"), &admin).await;
    assert_eq!(read.body, *p);
    assert!(
        header(&read, "x-ledger-position").is_some(),
        "reads carry x-ledger-position"
    );

    let missing = app
        .read(&format!("{PROPERTIES}/{}", Uuid::new_v4()), &admin)
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
    let not_uuid = app.read(&format!("{PROPERTIES}/not-a-uuid"), &admin).await;
    assert_error(&not_uuid, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
}

#[tokio::test]
async fn registering_a_property_refuses_bad_bodies_and_writes_nothing() {
    let app = spawn_app().await;
    let (_, admin) = agency();
    let long_name = "x".repeat(201);
    let bad_bodies = [
        json!({}),
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": 42}),
        json!({"name": long_name}),
        json!({"name": "Sea View", "timezone": "Mars/Olympus_Mons"}),
        json!({"name": "Sea View", "colour": "blue"}),
        json!({"name": "Sea View", "owner_id": 7}),
        json!({"name": "Sea View", "external_ref": "r".repeat(256)}),
        json!("Sea View"),
        json!(null),
    ];
    for body in bad_bodies {
        let reply = app.post(PROPERTIES, &admin, body.clone()).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert!(reply.body["error"]["message"].is_string(), "{body}");
    }
    assert_eq!(
        app.total_events().await,
        0,
        "a refused command appends nothing"
    );
}

/// Bodies are JSON objects with named fields: an array is a wrong type, not
/// the fields in declaration order (serde's derived `visit_seq` accepts it).
#[tokio::test]
async fn json_arrays_are_not_accepted_as_bodies_or_objects() {
    let app = spawn_app().await;
    let (_, admin) = agency();
    let reply = app.post(PROPERTIES, &admin, json!(["Sea View"])).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let reply = app
        .post(
            PROPERTIES,
            &admin,
            json!(["Sea View", "Europe/Lisbon", null, null]),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(app.count_events("property.registered").await, 0);

    let property = app.property(&admin, None).await;
    for tuple in [
        json!({"guest": ["Ana", null, null]}),
        json!({"price": [100, "EUR"]}),
    ] {
        let reply = app
            .reserve_with(&admin, property, "2027-03-01", "2027-03-02", tuple)
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    assert_eq!(app.count_events("booking.reserved").await, 0);
}

#[tokio::test]
async fn updating_a_property() {
    let app = spawn_app().await;
    let (_, admin) = agency();
    let property = app.property(&admin, Some("owner-1")).await;
    let path = format!("{PROPERTIES}/{property}");

    let reply = ok(app
        .edit_property(
            &admin,
            property,
            json!({"name": "Sea View II", "timezone": "Europe/Paris"}),
        )
        .await);
    assert_eq!(reply.body["id"], property.to_string());
    assert_eq!(reply.body["name"], "Sea View II");
    assert_eq!(reply.body["timezone"], "Europe/Paris");
    assert_eq!(
        reply.body["owner_id"], "owner-1",
        "fields not sent are kept"
    );
    assert_eq!(reply.body["version"], 2);
    let position = reply.body["position"].as_i64().expect("a position");

    // null clears the owner and the external reference.
    let reply = ok(app
        .edit_property(
            &admin,
            property,
            json!({"owner_id": null, "external_ref": "X-9"}),
        )
        .await);
    assert_eq!(reply.body["owner_id"], Value::Null);
    assert_eq!(reply.body["external_ref"], "X-9");
    assert_eq!(reply.body["version"], 3);
    assert!(reply.body["position"].as_i64().expect("a position") > position);

    for bad in [
        json!({"timezone": "Nowhere/Special"}),
        json!({"name": ""}),
        json!({"archived": true}),
        json!({"name": ["a"]}),
    ] {
        let reply = app.edit_property(&admin, property, bad).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    let missing = app
        .edit_property(&admin, Uuid::new_v4(), json!({"name": "Other"}))
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
    let not_uuid = app
        .patch(
            &format!("{PROPERTIES}/42"),
            &admin,
            json!({"name": "Other"}),
        )
        .await;
    assert_error(&not_uuid, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");

    let read = app.read(&path, &admin).await;
    assert_eq!(read.body["name"], "Sea View II");
    assert_eq!(read.body["version"], 3);
}

#[tokio::test]
async fn an_archived_property_refuses_every_command() {
    let (app, admin, property) = app_with_property().await;
    let booking = booked(&app, &admin, property, "2027-03-01", "2027-03-05").await;
    let block = created(
        app.block(&admin, property, "2027-04-01", "2027-04-03", "maintenance")
            .await,
    );
    let block = block.id();

    let archive = format!("{PROPERTIES}/{property}/archive");
    let bad = app.post(&archive, &admin, json!({"really": true})).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");

    let reply = ok(app.post(&archive, &admin, json!({})).await);
    assert_eq!(reply.body["archived"], true);
    assert_eq!(reply.body["id"], property.to_string());
    assert!(reply.body["position"].as_i64().is_some());
    let events = app.property_events(property).await;

    let refused = [
        app.post(&archive, &admin, json!({})).await,
        app.edit_property(&admin, property, json!({"name": "New"}))
            .await,
        app.reserve(&admin, property, "2027-05-01", "2027-05-03")
            .await,
        app.block(&admin, property, "2027-06-01", "2027-06-03", "other")
            .await,
        app.edit_booking(&admin, booking, json!({"notes": "late"}))
            .await,
        app.act(&admin, booking, "cancel").await,
        app.act(&admin, booking, "check-in").await,
        app.release(&admin, block).await,
    ];
    for reply in &refused {
        assert_error(reply, StatusCode::CONFLICT, "PROPERTY_ARCHIVED");
    }
    assert_eq!(
        app.property_events(property).await,
        events,
        "nothing was appended"
    );

    let read = app.read(&format!("{PROPERTIES}/{property}"), &admin).await;
    assert_eq!(
        read.status,
        StatusCode::OK,
        "an archived property can still be read"
    );
    assert_eq!(read.body["archived"], true);

    let missing = app
        .post(
            &format!("{PROPERTIES}/{}/archive", Uuid::new_v4()),
            &admin,
            json!({}),
        )
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
}

// ------------------------------------------------------------------ bookings

#[tokio::test]
async fn reserving_returns_201_and_the_booking() {
    let (app, agency_id, admin, property) = app_with_agency_property().await;

    let reply = created(app
        .post(
            BOOKINGS,
            &admin,
            json!({
                "property_id": property,
                "check_in": "2027-03-01",
                "check_out": "2027-03-05",
                "guest": {"name": "Ana Guest", "email": "ana@example.com", "phone": "+351 910 000 000"},
                "adults": 2,
                "children": 1,
                "channel": "airbnb",
                "external_ref": "HM123",
                "price": {"amount_minor": 48000, "currency": "EUR"},
                "notes": "late arrival",
            }),
        )
        .await);
    let b = &reply.body;
    assert_eq!(b["agency_id"], agency_id.to_string());
    assert_eq!(b["property_id"], property.to_string());
    assert_eq!(b["status"], "confirmed", "confirmed by default");
    assert_eq!(b["check_in"], "2027-03-01");
    assert_eq!(b["check_out"], "2027-03-05");
    assert_eq!(b["nights"], 4);
    assert_eq!(b["guest"]["name"], "Ana Guest");
    assert_eq!(b["guest"]["email"], "ana@example.com");
    assert_eq!(b["guest"]["phone"], "+351 910 000 000");
    assert_eq!(b["adults"], 2);
    assert_eq!(b["children"], 1);
    assert_eq!(b["channel"], "airbnb");
    assert_eq!(b["external_ref"], "HM123");
    assert_eq!(
        b["price"],
        json!({"amount_minor": 48000, "currency": "EUR"})
    );
    assert_eq!(b["notes"], "late arrival");
    assert_eq!(b["hold_expires_at"], Value::Null);
    assert_eq!(b["version"], 1);
    assert!(b["created_at"].is_string() && b["updated_at"].is_string());
    assert!(b["position"].as_i64().is_some_and(|n| n > 0));
    let id = reply.id();

    let read = app.read_ok(&booking_path(id, ""), &admin).await;
    for field in [
        "id",
        "property_id",
        "status",
        "check_in",
        "check_out",
        "nights",
        "guest",
        "price",
        "channel",
    ] {
        assert_eq!(read.body[field], b[field], "{field}");
    }
    assert!(header(&read, "x-ledger-position").is_some());

    // Defaults: one adult, no children, direct channel.
    let plain = created(
        app.reserve(&admin, property, "2027-03-10", "2027-03-11")
            .await,
    );
    assert_eq!(plain.body["adults"], 1);
    assert_eq!(plain.body["children"], 0);
    assert_eq!(plain.body["channel"], "direct");
    assert_eq!(plain.body["nights"], 1);
    assert_eq!(plain.body["price"], Value::Null);

    // The longest stay is 366 nights.
    let year = created(
        app.reserve(&admin, property, "2028-01-01", "2029-01-01")
            .await,
    );
    assert_eq!(year.body["nights"], 366);

    // Neither an unknown id nor a property's is a booking.
    for id in [Uuid::new_v4(), property] {
        let reply = app.read(&booking_path(id, ""), &admin).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "BOOKING_NOT_FOUND");
    }
    let not_uuid = app.read(&format!("{BOOKINGS}/abc"), &admin).await;
    assert_error(&not_uuid, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
}

#[tokio::test]
async fn reserving_refuses_bad_bodies_and_dates() {
    let (app, admin, property) = app_with_property().await;
    let past = "2020-01-01T00:00:00Z";
    let cases: Vec<(&str, &str, Value)> = vec![
        ("2027-03-05", "2027-03-05", json!({})),
        ("2027-03-05", "2027-03-04", json!({})),
        ("2027-01-01", "2028-01-03", json!({})),
        ("2027-02-30", "2027-03-02", json!({})),
        ("01/03/2027", "2027-03-02", json!({})),
        ("2027-03-01T00:00:00Z", "2027-03-02", json!({})),
        ("2027-03-01", "2027-03-02", json!({"guest": {"name": ""}})),
        (
            "2027-03-01",
            "2027-03-02",
            json!({"guest": {"name": "A", "email": "not-an-email"}}),
        ),
        (
            "2027-03-01",
            "2027-03-02",
            json!({"guest": {"name": "A", "age": 30}}),
        ),
        ("2027-03-01", "2027-03-02", json!({"guest": "Ana"})),
        ("2027-03-01", "2027-03-02", json!({"adults": 0})),
        ("2027-03-01", "2027-03-02", json!({"adults": 51})),
        ("2027-03-01", "2027-03-02", json!({"adults": -1})),
        ("2027-03-01", "2027-03-02", json!({"adults": "two"})),
        ("2027-03-01", "2027-03-02", json!({"children": 51})),
        (
            "2027-03-01",
            "2027-03-02",
            json!({"price": {"amount_minor": -1, "currency": "EUR"}}),
        ),
        (
            "2027-03-01",
            "2027-03-02",
            json!({"price": {"amount_minor": 100, "currency": "eur"}}),
        ),
        (
            "2027-03-01",
            "2027-03-02",
            json!({"price": {"amount_minor": 1.5, "currency": "EUR"}}),
        ),
        ("2027-03-01", "2027-03-02", json!({"status": "cancelled"})),
        ("2027-03-01", "2027-03-02", json!({"status": "checked_in"})),
        (
            "2027-03-01",
            "2027-03-02",
            json!({"hold_expires_at": "2099-01-01T00:00:00Z"}),
        ),
        (
            "2027-03-01",
            "2027-03-02",
            json!({"status": "tentative", "hold_expires_at": past}),
        ),
        (
            "2027-03-01",
            "2027-03-02",
            json!({"status": "tentative", "hold_expires_at": "soon"}),
        ),
        ("2027-03-01", "2027-03-02", json!({"channel": "expedia"})),
        (
            "2027-03-01",
            "2027-03-02",
            json!({"notes": "n".repeat(2001)}),
        ),
        (
            "2027-03-01",
            "2027-03-02",
            json!({"external_ref": "r".repeat(256)}),
        ),
        ("2027-03-01", "2027-03-02", json!({"discount": 10})),
        (
            "2027-03-01",
            "2027-03-02",
            json!({"property_id": "not-a-uuid"}),
        ),
    ];
    for (check_in, check_out, extra) in cases {
        let reply = app
            .reserve_with(&admin, property, check_in, check_out, extra.clone())
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert!(
            reply.body["error"]["message"].is_string(),
            "{check_in}..{check_out} {extra}"
        );
    }
    // Required fields missing.
    for body in [
        json!({"property_id": property, "check_in": "2027-03-01", "check_out": "2027-03-02"}),
        json!({"property_id": property, "check_in": "2027-03-01", "guest": {"name": "A"}}),
        json!({"check_in": "2027-03-01", "check_out": "2027-03-02", "guest": {"name": "A"}}),
    ] {
        let reply = app.post(BOOKINGS, &admin, body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    // check_out <= check_in names the field.
    let reply = app
        .reserve(&admin, property, "2027-03-05", "2027-03-01")
        .await;
    assert_eq!(
        reply.body["error"]["details"]["field"], "check_out",
        "{:?}",
        reply.body
    );

    assert_eq!(
        app.count_events("booking.reserved").await,
        0,
        "no refused reserve appended an event"
    );

    let missing = app
        .reserve(&admin, Uuid::new_v4(), "2027-03-01", "2027-03-02")
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
}

#[tokio::test]
async fn a_single_night_overlap_conflicts_with_details_and_back_to_back_is_allowed() {
    let (app, admin, property) = app_with_property().await;
    let first = booked(&app, &admin, property, "2027-03-01", "2027-03-05").await;

    // Each names the stay it runs into.
    let taken =
        json!([{"kind": "booking", "id": first, "start": "2027-03-01", "end": "2027-03-05"}]);
    for (check_in, check_out) in [
        // Its last night (03-04), its first (03-01).
        ("2027-03-04", "2027-03-06"),
        ("2027-02-27", "2027-03-02"),
        // Inside and around.
        ("2027-03-02", "2027-03-03"),
        ("2027-02-01", "2027-04-01"),
        ("2027-03-01", "2027-03-05"),
    ] {
        let reply = app.reserve(&admin, property, check_in, check_out).await;
        assert_conflicts(&reply, taken.clone());
    }

    // Back to back on both sides: the check-out day is free for the next arrival.
    let after = booked(&app, &admin, property, "2027-03-05", "2027-03-08").await;
    let before = booked(&app, &admin, property, "2027-02-25", "2027-03-01").await;

    // A range over several claims lists them all, in night order.
    let reply = app
        .reserve(&admin, property, "2027-02-28", "2027-03-06")
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "BOOKING_CONFLICT");
    let ids: Vec<&str> = reply.body["error"]["details"]["conflicts"]
        .as_array()
        .expect("a list of conflicts")
        .iter()
        .map(|c| c["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        ids,
        [before.to_string(), first.to_string(), after.to_string()]
    );

    // A tentative booking holds its nights too.
    let tentative = created(
        app.hold(&admin, property, "2027-06-01", "2027-06-03", None)
            .await,
    );
    assert_eq!(tentative.body["status"], "tentative");
    let reply = app
        .reserve(&admin, property, "2027-06-02", "2027-06-04")
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "BOOKING_CONFLICT");

    // Another property's calendar is independent.
    let other = app.property(&admin, None).await;
    booked(&app, &admin, other, "2027-03-01", "2027-03-05").await;

    assert_eq!(app.count_events("booking.reserved").await, 5);
}

#[tokio::test]
async fn cancelling_frees_the_nights_and_cancelled_is_final() {
    let (app, admin, property) = app_with_property().await;
    let booking = booked(&app, &admin, property, "2027-03-01", "2027-03-05").await;

    // A reason too long, a field the route does not know.
    for bad in [json!({"reason": "r".repeat(501)}), json!({"why": "no"})] {
        let reply = app
            .post(&booking_path(booking, "cancel"), &admin, bad)
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }

    let reply = ok(app
        .post(
            &booking_path(booking, "cancel"),
            &admin,
            json!({"reason": "guest asked"}),
        )
        .await);
    assert_eq!(reply.body["status"], "cancelled");
    assert_eq!(reply.body["id"], booking.to_string());
    assert_eq!(reply.body["version"], 2);

    // The nights are free at once.
    booked(&app, &admin, property, "2027-03-01", "2027-03-05").await;

    refused_actions(&app, &admin, booking, &ACTIONS, INVALID_TRANSITION).await;
    let reply = app
        .edit_booking(&admin, booking, json!({"notes": "again"}))
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "INVALID_STATE_TRANSITION");

    // An empty body is accepted like {} on action routes.
    let other = booked(&app, &admin, property, "2027-04-01", "2027-04-02").await;
    let reply = ok(app
        .send(
            "POST",
            &booking_path(other, "cancel"),
            Some(&admin),
            None,
            &[],
        )
        .await);
    assert_eq!(reply.body["status"], "cancelled");
}

#[tokio::test]
async fn the_booking_life_cycle_and_its_invalid_transitions() {
    let (app, admin, property) = app_with_property().await;

    // tentative -> confirmed
    let hold = "2099-01-01T00:00:00Z";
    let reply = tentative(&app, &admin, property, hold).await;
    assert_eq!(reply.body["status"], "tentative");
    assert!(reply.body["hold_expires_at"]
        .as_str()
        .is_some_and(|t| t.starts_with("2099-01-01")));
    let booking = reply.id();
    refused_actions(
        &app,
        &admin,
        booking,
        &["check-in", "check-out", "no-show"],
        INVALID_TRANSITION,
    )
    .await;
    let reply = ok(app.act(&admin, booking, "confirm").await);
    assert_eq!(reply.body["status"], "confirmed");
    assert_eq!(reply.body["hold_expires_at"], Value::Null);
    assert_eq!(reply.body["version"], 2);

    // confirmed -> checked_in -> checked_out
    refused_actions(
        &app,
        &admin,
        booking,
        &["confirm", "check-out"],
        INVALID_TRANSITION,
    )
    .await;
    let reply = ok(app.act(&admin, booking, "check-in").await);
    assert_eq!(reply.body["status"], "checked_in");
    refused_actions(
        &app,
        &admin,
        booking,
        &["confirm", "cancel", "check-in", "no-show"],
        INVALID_TRANSITION,
    )
    .await;
    // A checked-in guest still holds the nights.
    let reply = app
        .reserve(&admin, property, "2027-03-04", "2027-03-06")
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "BOOKING_CONFLICT");

    let reply = ok(app.act(&admin, booking, "check-out").await);
    assert_eq!(reply.body["status"], "checked_out");
    assert_eq!(reply.body["version"], 4);
    // A checked-out stay no longer holds its nights.
    booked(&app, &admin, property, "2027-03-04", "2027-03-06").await;
    refused_actions(&app, &admin, booking, &ACTIONS, INVALID_TRANSITION).await;
    let reply = app
        .edit_booking(&admin, booking, json!({"adults": 3}))
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "INVALID_STATE_TRANSITION");

    // confirmed -> no_show, which frees the nights.
    let guest = booked(&app, &admin, property, "2027-05-01", "2027-05-03").await;
    let reply = ok(app.act(&admin, guest, "no-show").await);
    assert_eq!(reply.body["status"], "no_show");
    refused_actions(&app, &admin, guest, &ACTIONS, INVALID_TRANSITION).await;
    booked(&app, &admin, property, "2027-05-01", "2027-05-03").await;

    // Unknown bookings, on every route.
    let unknown = Uuid::new_v4();
    let not_found = (StatusCode::NOT_FOUND, "BOOKING_NOT_FOUND");
    refused_actions(&app, &admin, unknown, &ACTIONS, not_found).await;
    let reply = app
        .edit_booking(&admin, unknown, json!({"notes": "x"}))
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "BOOKING_NOT_FOUND");
    let reply = app.act(&admin, booking, "teleport").await;
    assert_error(&reply, StatusCode::NOT_FOUND, "NOT_FOUND");
    let reply = app
        .post(
            &booking_path(booking, "confirm"),
            &admin,
            json!({"force": true}),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
}

#[tokio::test]
async fn an_expired_hold_cannot_be_confirmed_and_frees_its_nights() {
    let clock = ManualClock::at(chrono::Utc::now());
    let app = spawn_app_at(&clock).await;
    let (_, admin) = agency();
    let property = app.property(&admin, None).await;
    let expires = clock.now() + chrono::Duration::milliseconds(1500);
    let reply = tentative(&app, &admin, property, &expires.to_rfc3339()).await;
    let hold = reply.id();
    let reply = app
        .reserve(&admin, property, "2027-03-02", "2027-03-03")
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "BOOKING_CONFLICT");

    clock.advance(chrono::Duration::seconds(2));
    let reply = app.act(&admin, hold, "confirm").await;
    assert_error(&reply, StatusCode::CONFLICT, "INVALID_STATE_TRANSITION");
    let reply = app
        .reserve(&admin, property, "2027-03-02", "2027-03-03")
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "an expired hold frees its nights: {:?}",
        reply.body
    );
    let read = app.read_ok(&booking_path(hold, ""), &admin).await;
    assert_eq!(read.body["status"], "cancelled", "{:?}", read.body);
}

#[tokio::test]
async fn modifying_a_booking() {
    let (app, admin, property) = app_with_property().await;
    let booking = booked(&app, &admin, property, "2027-03-01", "2027-03-05").await;
    let neighbour = booked(&app, &admin, property, "2027-03-08", "2027-03-10").await;
    let path = booking_path(booking, "");
    let modify = |changes| app.edit_booking(&admin, booking, changes);

    // Shifting over its own nights is fine; up to the neighbour's arrival too.
    let reply = ok(modify(json!({"check_in": "2027-03-03", "check_out": "2027-03-08"})).await);
    assert_eq!(reply.body["check_in"], "2027-03-03");
    assert_eq!(reply.body["check_out"], "2027-03-08");
    assert_eq!(reply.body["nights"], 5);
    assert_eq!(reply.body["version"], 2);
    assert_eq!(reply.body["status"], "confirmed");
    // The released nights are free again.
    booked(&app, &admin, property, "2027-03-01", "2027-03-03").await;

    let reply = ok(modify(json!({"guest": {"name": "Bo Guest"}, "adults": 3, "children": 2, "price": {"amount_minor": 100, "currency": "GBP"}, "notes": "cot"}))
        .await);
    assert_eq!(reply.body["guest"]["name"], "Bo Guest");
    assert_eq!(reply.body["adults"], 3);
    assert_eq!(reply.body["children"], 2);
    assert_eq!(reply.body["price"]["currency"], "GBP");
    assert_eq!(reply.body["notes"], "cot");
    assert_eq!(
        reply.body["check_in"], "2027-03-03",
        "dates not sent are kept"
    );
    let reply = ok(modify(json!({"price": null, "notes": null})).await);
    assert_eq!(reply.body["price"], Value::Null);
    assert_eq!(reply.body["notes"], Value::Null);

    // One night into the neighbour's stay.
    let reply = modify(json!({"check_out": "2027-03-09"})).await;
    assert_conflicts(
        &reply,
        json!([{"kind": "booking", "id": neighbour, "start": "2027-03-08", "end": "2027-03-10"}]),
    );
    for bad in [
        json!({"check_out": "2027-03-03"}),
        json!({"check_in": "2027-03-09"}),
        json!({"check_in": "2027-13-01"}),
        json!({"adults": 0}),
        json!({"guest": {"name": ""}}),
        json!({"status": "cancelled"}),
        json!({"property_id": property}),
    ] {
        let reply = modify(bad.clone()).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    let read = app.read(&path, &admin).await;
    assert_eq!(read.body["check_in"], "2027-03-03");
    assert_eq!(read.body["check_out"], "2027-03-08");
}

// ------------------------------------------------------------------ blocks

#[tokio::test]
async fn blocks_are_created_conflict_and_are_released() {
    let (app, agency_id, admin, property) = app_with_agency_property().await;
    let booking = booked(&app, &admin, property, "2027-03-01", "2027-03-05").await;

    let reply = app
        .post(
            BLOCKS,
            &admin,
            json!({"property_id": property, "start": "2027-03-05", "end": "2027-03-10", "reason": "maintenance", "note": "paint"}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "back to back with a stay: {:?}",
        reply.body
    );
    let b = &reply.body;
    assert_fields(
        b,
        json!({"agency_id": agency_id, "property_id": property, "start": "2027-03-05",
               "end": "2027-03-10", "reason": "maintenance", "note": "paint", "released": false}),
    );
    assert!(b["created_at"].is_string() && b["position"].as_i64().is_some());
    let block = reply.id();

    // Booking over a block, block over a booking.
    let reply = app
        .reserve(&admin, property, "2027-03-09", "2027-03-11")
        .await;
    assert_conflicts(
        &reply,
        json!([{"kind": "block", "id": block, "start": "2027-03-05", "end": "2027-03-10"}]),
    );
    let reply = app
        .block(&admin, property, "2027-03-04", "2027-03-05", "owner_stay")
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "BOOKING_CONFLICT");
    assert_eq!(
        reply.body["error"]["details"]["conflicts"][0]["kind"],
        "booking"
    );
    assert_eq!(
        reply.body["error"]["details"]["conflicts"][0]["id"],
        booking.to_string()
    );
    booked(&app, &admin, property, "2027-03-10", "2027-03-11").await;

    for bad in [
        json!({"property_id": property, "start": "2027-05-01", "end": "2027-05-01", "reason": "other"}),
        json!({"property_id": property, "start": "2027-05-02", "end": "2027-05-01", "reason": "other"}),
        json!({"property_id": property, "start": "2027-01-01", "end": "2028-01-03", "reason": "other"}),
        json!({"property_id": property, "start": "2027-05-01", "end": "2027-05-03", "reason": "party"}),
        json!({"property_id": property, "start": "2027-05-01", "end": "2027-05-03"}),
        json!({"property_id": property, "start": "2027-05-01", "end": "2027-05-03", "reason": "other", "colour": 1}),
        json!({"property_id": property, "start": "2027-05-01", "end": "2027-05-03", "reason": "other", "note": "n".repeat(2001)}),
        json!({"property_id": property, "start": "May 1", "end": "2027-05-03", "reason": "other"}),
    ] {
        let reply = app.post(BLOCKS, &admin, bad).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    let missing = app
        .block(&admin, Uuid::new_v4(), "2027-05-01", "2027-05-03", "other")
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");

    let read = app.read_ok(&format!("{BLOCKS}/{block}"), &admin).await;
    assert_eq!(read.body["id"], block.to_string());

    let reply = ok(app.release(&admin, block).await);
    assert_eq!(reply.body["released"], true);
    assert_eq!(reply.body["id"], block.to_string());
    // Released nights are free.
    booked(&app, &admin, property, "2027-03-05", "2027-03-10").await;

    // Released once; then a second release, ids of no block, not an id.
    for (case, reply, status, code) in [
        (
            "again",
            app.release(&admin, block).await,
            StatusCode::CONFLICT,
            "INVALID_STATE_TRANSITION",
        ),
        (
            "unknown",
            app.release(&admin, Uuid::new_v4()).await,
            StatusCode::NOT_FOUND,
            "BLOCK_NOT_FOUND",
        ),
        (
            "a booking as a block",
            app.release(&admin, booking).await,
            StatusCode::NOT_FOUND,
            "BLOCK_NOT_FOUND",
        ),
        (
            "a block as a booking",
            app.act(&admin, block, "cancel").await,
            StatusCode::NOT_FOUND,
            "BOOKING_NOT_FOUND",
        ),
        (
            "not a UUID",
            app.delete(&format!("{BLOCKS}/zzz"), &admin).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        ),
    ] {
        assert_eq!(reply.code(), code, "{case}: {:?}", reply.body);
        assert_error(&reply, status, code);
    }
}

// ------------------------------------------------------------------ HTTP edges

#[tokio::test]
async fn axum_rejections_come_in_the_contract_format() {
    let app = spawn_app().await;
    let (_, admin) = agency();
    let json_type = [("content-type", "application/json")];

    let malformed = register_raw(&app, &admin, b"{\"name\": \"Sea", &json_type).await;
    assert_error(&malformed, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let not_json = register_raw(&app, &admin, b"name=Sea", &json_type).await;
    assert_error(&not_json, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");

    // A JSON body under another content type (or none) is refused.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let reply = register_raw(
            &app,
            &admin,
            br#"{"name": "Sea View"}"#,
            &[("content-type", content_type)],
        )
        .await;
        assert!(
            reply.status == StatusCode::BAD_REQUEST
                || reply.status == StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}: {:?}",
            reply
        );
        if reply.status == StatusCode::BAD_REQUEST {
            assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        }
        assert!(reply.body["error"]["request_id"].is_string(), "{reply:?}");
    }
    let untyped = register_raw(&app, &admin, br#"{"name": "Sea View"}"#, &[]).await;
    assert!(untyped.status.is_client_error(), "{untyped:?}");
    assert!(untyped.body["error"]["code"].is_string(), "{untyped:?}");

    for path in [
        "/nope",
        "/api/v1/nope",
        "/api/v2/properties",
        "/api/v1/bookings/x/y/z",
    ] {
        let reply = app.read(path, &admin).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    let reply = app.send("GET", "/nope", None, None, &[]).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "NOT_FOUND");

    for (method, path) in [
        ("DELETE", PROPERTIES.to_owned()),
        ("PUT", format!("{BOOKINGS}/{}", Uuid::new_v4())),
        ("POST", "/health".to_owned()),
        ("GET", format!("{BOOKINGS}/{}/confirm", Uuid::new_v4())),
    ] {
        let reply = app.send(method, &path, Some(&admin), None, &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {reply:?}"
        );
        assert!(!reply.code().is_empty(), "{method} {path}: {reply:?}");
        assert_eq!(
            reply.body["error"]["request_id"].as_str(),
            header(&reply, "x-request-id"),
            "{reply:?}"
        );
    }

    let big = json!({"name": "x".repeat(70 * 1024)});
    let reply = app.post(PROPERTIES, &admin, big.clone()).await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    let reply = app
        .post_with(
            PROPERTIES,
            &admin,
            big.clone(),
            &[("idempotency-key", "big-1")],
        )
        .await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    // Exactly 64 KiB is not refused for its size (the name is too long);
    // one byte more is.
    let sized = |len: usize| {
        let mut body = br#"{"name":""#.to_vec();
        body.resize(len - 2, b'x');
        body.extend_from_slice(br#""}"#);
        assert_eq!(body.len(), len);
        body
    };
    let reply = register_raw(&app, &admin, sized(64 * 1024), &json_type).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let reply = register_raw(&app, &admin, sized(64 * 1024 + 1), &json_type).await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");

    // Other ways for a body to be malformed.
    for body in [
        br#"{"name": "a"} trailing"#.to_vec(),
        br#"{"name": "a", "name": "b"}"#.to_vec(),
        b"{\"name\": \"\xff\xfe\"}".to_vec(),
        b"null".to_vec(),
    ] {
        let reply = register_raw(&app, &admin, body, &json_type).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    // A charset parameter is fine.
    let reply = register_raw(
        &app,
        &admin,
        br#"{"name": "Charset"}"#,
        &[("content-type", "application/json; charset=utf-8")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(app.total_events().await, 1);
}

#[tokio::test]
async fn every_response_carries_x_request_id_and_echoes_the_one_sent() {
    let (app, admin, property) = app_with_property().await;

    let mut replies = vec![
        app.send("GET", "/health", None, None, &[]).await,
        app.send("GET", "/health/ready", None, None, &[]).await,
        app.send("GET", "/openapi.json", None, None, &[]).await,
        app.read(&format!("{PROPERTIES}/{property}"), &admin).await,
        app.post(PROPERTIES, &admin, json!({"name": "Two"})).await,
        app.post(PROPERTIES, &admin, json!({})).await,
        app.send("POST", PROPERTIES, None, Some(&json!({"name": "x"})), &[])
            .await,
        app.read("/nope", &admin).await,
        app.send("DELETE", "/health", None, None, &[]).await,
        app.post(PROPERTIES, &admin, json!({"name": "x".repeat(70 * 1024)}))
            .await,
        app.reserve(&admin, property, "2027-03-01", "2027-03-02")
            .await,
        app.reserve(&admin, property, "2027-03-01", "2027-03-02")
            .await,
    ];
    let docs = app.raw_get("/docs/").await;
    assert!(
        docs.headers().contains_key("x-request-id"),
        "/docs/ has x-request-id"
    );
    for reply in replies.drain(..) {
        let id =
            header(&reply, "x-request-id").unwrap_or_else(|| panic!("no x-request-id: {reply:?}"));
        assert!(!id.is_empty());
        if !reply.status.is_success() {
            assert_eq!(
                reply.body["error"]["request_id"].as_str(),
                Some(id),
                "{reply:?}"
            );
        }
    }
    // Two requests get two ids.
    let a = app.send("GET", "/health", None, None, &[]).await;
    let b = app.send("GET", "/health", None, None, &[]).await;
    assert_ne!(header(&a, "x-request-id"), header(&b, "x-request-id"));

    // A request id sent by the client comes back, in the header and the error body.
    let sent = "client-req-42";
    let reply = app
        .post_with(
            PROPERTIES,
            &admin,
            json!({"name": "Three"}),
            &[("x-request-id", sent)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(header(&reply, "x-request-id"), Some(sent));
    let reply = app
        .post_with(PROPERTIES, &admin, json!({}), &[("x-request-id", sent)])
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(header(&reply, "x-request-id"), Some(sent));
    let reply = app
        .send("GET", "/nope", None, None, &[("x-request-id", sent)])
        .await;
    assert_eq!(header(&reply, "x-request-id"), Some(sent));
    assert_eq!(reply.body["error"]["request_id"], sent);
    let reply = app
        .send("GET", "/health", None, None, &[("x-request-id", sent)])
        .await;
    assert_eq!(header(&reply, "x-request-id"), Some(sent));

    // An unusable id (too long) is replaced by a generated one.
    let long = "r".repeat(200);
    let reply = app
        .send(
            "GET",
            "/nope",
            None,
            None,
            &[("x-request-id", long.as_str())],
        )
        .await;
    let id = header(&reply, "x-request-id").expect("an x-request-id");
    assert!(!id.is_empty() && id != long);
    assert_eq!(reply.body["error"]["request_id"], id);
}

// ------------------------------------------------------------------ Idempotency-Key

#[tokio::test]
async fn an_idempotency_key_replays_the_first_reply_and_refuses_another_body() {
    let (app, agency_id, admin, property) = app_with_agency_property().await;
    let body = reservation(property, "2027-03-01", "2027-03-05");
    let key = [("idempotency-key", "reserve-0001")];

    let first = created(app.post_with(BOOKINGS, &admin, body.clone(), &key).await);
    let second = created(app.post_with(BOOKINGS, &admin, body.clone(), &key).await);
    assert_eq!(second.body, first.body, "the same reply, position included");
    assert_eq!(
        app.count_events("booking.reserved").await,
        1,
        "appended once"
    );

    // The same key with another body, or on another route.
    let mut other = body.clone();
    other["check_out"] = json!("2027-03-06");
    let reply = app.post_with(BOOKINGS, &admin, other.clone(), &key).await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "IDEMPOTENCY_KEY_REUSED",
    );
    let reply = app
        .post_with(PROPERTIES, &admin, json!({"name": "Other"}), &key)
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "IDEMPOTENCY_KEY_REUSED",
    );
    assert_eq!(app.count_events("booking.reserved").await, 1);
    assert_eq!(app.count_events("property.registered").await, 1);

    // Keys are scoped per agency: another agency's request with the same key is its own.
    let other_agency = Uuid::new_v4();
    let stranger = token(other_agency, "admin", "admin-2");
    assert_ne!(other_agency, agency_id);
    created(
        app.post_with(PROPERTIES, &stranger, json!({"name": "Theirs"}), &key)
            .await,
    );

    // Status changes and deletes replay too.
    let booking = first.id();
    let cancel_key = [("idempotency-key", "cancel-0001")];
    let path = booking_path(booking, "cancel");
    let c1 = ok(app.post_with(&path, &admin, json!({}), &cancel_key).await);
    let c2 = app.post_with(&path, &admin, json!({}), &cancel_key).await;
    assert_eq!(
        c2.status,
        StatusCode::OK,
        "a replay, not INVALID_STATE_TRANSITION: {:?}",
        c2.body
    );
    assert_eq!(c2.body, c1.body);
    assert_eq!(app.count_events("booking.cancelled").await, 1);

    let block = app
        .block(&admin, property, "2027-04-01", "2027-04-02", "other")
        .await
        .id();
    let release_key = [("idempotency-key", "release-0001")];
    let block_path = format!("{BLOCKS}/{block}");
    let r1 = app
        .send("DELETE", &block_path, Some(&admin), None, &release_key)
        .await;
    let r2 = app
        .send("DELETE", &block_path, Some(&admin), None, &release_key)
        .await;
    assert_eq!(r1.status, StatusCode::OK, "{:?}", r1.body);
    assert_eq!((r2.status, &r2.body), (r1.status, &r1.body));

    // Keys must be 1 to 255 printable ASCII characters.
    let long = "k".repeat(256);
    let reply = app
        .post_with(
            PROPERTIES,
            &admin,
            json!({"name": "Z"}),
            &[("idempotency-key", long.as_str())],
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let longest = "k".repeat(255);
    created(
        app.post_with(
            PROPERTIES,
            &admin,
            json!({"name": "Z"}),
            &[("idempotency-key", longest.as_str())],
        )
        .await,
    );
}

#[tokio::test]
async fn an_idempotent_reply_is_replayed_after_a_restart() {
    let mut app = spawn_process().await;
    let (_, admin) = agency();
    let property = app.property(&admin, None).await;
    let body = reservation(property, "2027-03-01", "2027-03-05");
    let key = [("idempotency-key", "survives-restarts")];
    let first = created(app.post_with(BOOKINGS, &admin, body.clone(), &key).await);
    app.kill();
    app.start().await;
    let again = created(app.post_with(BOOKINGS, &admin, body.clone(), &key).await);
    assert_eq!(again.body, first.body);
    assert_eq!(app.count_events("booking.reserved").await, 1);
}

#[tokio::test]
async fn fifty_concurrent_requests_with_one_key_make_one_booking() {
    let (app, admin, property) = app_with_property().await;
    let body = reservation(property, "2027-03-01", "2027-03-05");
    let ids = same_key_at_once(&app, &admin, BOOKINGS, "one-key-for-fifty", &body, 50).await;
    assert_eq!(ids.len(), 1, "every reply names the same booking");
    assert_eq!(app.count_events("booking.reserved").await, 1);

    // Concurrent registrations with one key (each would be its own property).
    let twin = json!({"name": "Twin"});
    let ids = same_key_at_once(&app, &admin, PROPERTIES, "one-key-for-twenty", &twin, 20).await;
    assert_eq!(ids.len(), 1, "every reply names the same property");
    assert_eq!(app.count_events("property.registered").await, 2);
}

// ------------------------------------------------------------------ invariant 1

#[tokio::test]
async fn two_hundred_concurrent_overlapping_reserves_give_one_201() {
    let (app, admin, property) = app_with_property().await;
    let requests = (0..200u64).map(|i| {
        // All overlap the night of 2027-03-10.
        let start = chrono::NaiveDate::from_ymd_opt(2027, 3, 10).expect("a date")
            - chrono::Days::new(i % 5);
        let end = chrono::NaiveDate::from_ymd_opt(2027, 3, 11).expect("a date")
            + chrono::Days::new(i % 3);
        app.client
            .post(format!("{}{BOOKINGS}", app.base))
            .bearer_auth(&admin)
            .json(&json!({
                "property_id": property,
                "check_in": start.to_string(),
                "check_out": end.to_string(),
                "guest": {"name": format!("Guest {i}")},
            }))
            .send()
    });
    let mut created = 0;
    let mut conflicts = 0;
    for response in join_all(requests).await {
        let response = response.expect("answered");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {
                assert_eq!(body["error"]["code"], "BOOKING_CONFLICT", "{body}");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((created, conflicts), (1, 199));
    assert_eq!(app.count_events("booking.reserved").await, 1);
}

// ------------------------------------------------------------------ health and docs

#[tokio::test]
async fn health_readiness_openapi_and_docs() {
    let app = spawn_app().await;
    for path in ["/health", "/healthz"] {
        let reply = app.send("GET", path, None, None, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.body["status"], "ok", "{path}");
    }
    for path in ["/health/ready", "/readyz"] {
        let reply = app.send("GET", path, None, None, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {:?}", reply.body);
        assert_eq!(reply.body["db"], "ok", "{path}");
        let status = reply.body["status"].as_str().unwrap_or_default();
        assert!(
            ["ok", "degraded"].contains(&status),
            "{path}: {:?}",
            reply.body
        );
        assert!(reply.body.get("nats").is_some(), "{path}: {:?}", reply.body);
        assert!(
            reply.body.get("projections").is_some(),
            "{path}: {:?}",
            reply.body
        );
    }

    let response = app.raw_get("/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = serde_json::from_slice(&response.bytes().await.expect("a body"))
        .expect("/openapi.json is JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "{}",
        doc["openapi"]
    );
    let paths = &doc["paths"];
    for (path, method) in [
        ("/api/v1/properties", "post"),
        ("/api/v1/properties/{id}", "patch"),
        ("/api/v1/properties/{id}", "get"),
        ("/api/v1/properties/{id}/archive", "post"),
        ("/api/v1/bookings", "post"),
        ("/api/v1/bookings/{id}", "patch"),
        ("/api/v1/bookings/{id}", "get"),
        ("/api/v1/bookings/{id}/confirm", "post"),
        ("/api/v1/bookings/{id}/cancel", "post"),
        ("/api/v1/bookings/{id}/check-in", "post"),
        ("/api/v1/bookings/{id}/check-out", "post"),
        ("/api/v1/bookings/{id}/no-show", "post"),
        ("/api/v1/availability/blocks", "post"),
        ("/api/v1/availability/blocks/{id}", "delete"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is in /openapi.json"
        );
    }
    // Every parameter sits where the route reads it: a path parameter is a
    // segment of its path, and the read filters are query parameters (the
    // query structs once lacked `parameter_in = Query` and were published as
    // path parameters that no path has).
    let operations = paths
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("a path item");
            item.iter().map(move |(method, op)| (path, method, op))
        });
    let mut query_parameters = 0;
    for (path, method, op) in operations {
        for parameter in op["parameters"].as_array().into_iter().flatten() {
            let name = parameter["name"].as_str().expect("a parameter name");
            let place = parameter["in"].as_str().expect("where the parameter is");
            let in_path = path.contains(&format!("{{{name}}}"));
            assert_eq!(
                place == "path",
                in_path,
                "{method} {path}: parameter {name} is in {place}"
            );
            query_parameters += usize::from(place == "query");
        }
    }
    assert!(query_parameters > 0, "no query parameter at all");
    let filters = &paths["/api/v1/availability"]["get"]["parameters"];
    for name in ["property_id", "from", "to"] {
        let parameter = filters
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("availability has {name}: {filters}"));
        assert_eq!(parameter["in"], "query", "{parameter}");
        assert_eq!(parameter["required"], true, "{parameter}");
    }

    let response = app.raw_get("/docs/").await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = response.text().await.expect("a body");
    assert!(html.to_lowercase().contains("<html"), "{html}");
    // /docs (no slash) leads there too.
    let response = app.raw_get("/docs").await;
    assert_eq!(response.status(), StatusCode::OK);
}

// ------------------------------------------------------------------ inbound channels

#[tokio::test]
async fn an_inbound_booking_sent_twice_returns_the_first_booking() {
    let (app, admin, property) = app_with_property().await;
    let inbound = json!({"channel": "airbnb", "external_ref": "HM-4242"});
    let send = || {
        app.reserve_with(
            &admin,
            property,
            "2027-05-01",
            "2027-05-04",
            inbound.clone(),
        )
    };
    let first = created(send().await);
    assert_eq!(first.body["channel"], "airbnb");
    assert_eq!(first.body["external_ref"], "HM-4242");

    // The channel sends it again (a retry, a re-sync): the first booking, 200.
    let again = ok(send().await);
    assert_eq!(again.id(), first.id());
    assert_eq!(app.count_events("booking.reserved").await, 1);

    // Another channel's booking with the same ref is a booking of its own.
    let other = app
        .reserve_with(
            &admin,
            property,
            "2027-05-03",
            "2027-05-05",
            json!({"channel": "vrbo", "external_ref": "HM-4242"}),
        )
        .await;
    assert_error(&other, StatusCode::CONFLICT, "BOOKING_CONFLICT");
    // The same ref on another property is another booking too.
    let elsewhere = app.property(&admin, None).await;
    let there = created(
        app.reserve_with(&admin, elsewhere, "2027-05-01", "2027-05-04", inbound)
            .await,
    );
    assert_ne!(there.id(), first.id());
}

// ------------------------------------------------------------------ metrics

#[tokio::test]
async fn metrics_count_responses_and_report_each_tailer() {
    let listen = format!("127.0.0.1:{}", free_port());
    let app = spawn_app_with_env(&[("LEDGER_METRICS_LISTEN", &listen)]).await;
    let (_, admin) = agency();
    let property = app.property(&admin, None).await;
    let missing = app
        .get(&format!("{BOOKINGS}/{}", Uuid::now_v7()), &admin)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let reserved = app
        .reserve(&admin, property, "2027-06-01", "2027-06-03")
        .await;
    assert_eq!(reserved.status, StatusCode::CREATED);

    let url = format!("http://{listen}/metrics");
    let mut text = String::new();
    for _ in 0..100 {
        if let Ok(response) = app.client.get(&url).send().await {
            text = response.text().await.unwrap_or_default();
            if !text.is_empty() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert!(value("ledger_http_responses_total{class=\"2xx\"}") >= 2.0);
    assert!(value("ledger_http_responses_total{class=\"4xx\"}") >= 1.0);
    assert_eq!(value("ledger_database_up"), 1.0);
    assert!(value("ledger_log_head_position") >= 2.0);
    for name in ["inventory", "views", "audit", "publisher"] {
        value(&format!("ledger_tailer_lag{{name=\"{name}\"}}"));
        assert_eq!(
            value(&format!("ledger_tailer_failed{{name=\"{name}\"}}")),
            0.0
        );
    }
    // Only on the metrics listener.
    let on_api = app.send("GET", "/metrics", None, None, &[]).await;
    assert_error(&on_api, StatusCode::NOT_FOUND, "NOT_FOUND");
}

#[tokio::test]
async fn a_refusal_decided_from_state_is_the_first_reply_for_its_key() {
    let (app, _, admin, property, (taken, _)) = app_with_booking("2027-04-01", "2027-04-05").await;
    let body = json!({
        "property_id": property,
        "check_in": "2027-04-02",
        "check_out": "2027-04-03",
        "guest": {"name": "Bo Guest"},
    });
    let key = [("idempotency-key", "refused-0001")];
    let refused = app.post_with(BOOKINGS, &admin, body.clone(), &key).await;
    assert_error(&refused, StatusCode::CONFLICT, "BOOKING_CONFLICT");

    // The nights come free, but the key keeps its first answer.
    ok(app.cancel(&admin, taken).await);
    let retry = with_status(
        StatusCode::CONFLICT,
        app.post_with(BOOKINGS, &admin, body.clone(), &key).await,
    );
    assert_eq!(retry.body, refused.body, "the same reply as the first time");
    assert_eq!(app.count_events("booking.reserved").await, 1);

    // A booking id never given out is 404 on every try; a 400 is not kept.
    let missing = format!("{BOOKINGS}/{}/confirm", Uuid::now_v7());
    let key = [("idempotency-key", "missing-0001")];
    let reply = app.post_with(&missing, &admin, json!({}), &key).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "BOOKING_NOT_FOUND");
    let key = [("idempotency-key", "invalid-0001")];
    let mut bad = body.clone();
    bad["check_out"] = json!("2027-04-01");
    let reply = app.post_with(BOOKINGS, &admin, bad.clone(), &key).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    // Not kept: the corrected request with the same key is decided afresh.
    created(app.post_with(BOOKINGS, &admin, body.clone(), &key).await);
    let mut db = app.db().await;
    let kept: Vec<(String, i16)> =
        sqlx::query_as("SELECT key, status_code FROM idempotency_keys ORDER BY key")
            .fetch_all(&mut db)
            .await
            .expect("read the kept replies");
    assert!(
        kept.contains(&("refused-0001".to_owned(), 409)),
        "the 409 is kept: {kept:?}"
    );
    assert!(
        kept.contains(&("invalid-0001".to_owned(), 201)),
        "the corrected request's reply is kept: {kept:?}"
    );
}

#[tokio::test]
async fn idempotency_keys_expire_after_their_ttl() {
    let app = spawn_app_with_env(&[("LEDGER_IDEMPOTENCY_TTL", "1s")]).await;
    let (_, admin) = agency();
    let key = [("idempotency-key", "short-lived-0001")];
    let first = created(
        app.post_with(PROPERTIES, &admin, json!({"name": "First"}), &key)
            .await,
    );
    // Past the TTL the key is free again: another body is decided afresh.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = app
            .post_with(PROPERTIES, &admin, json!({"name": "Second"}), &key)
            .await;
        if reply.status == StatusCode::CREATED {
            assert_ne!(reply.id(), first.id());
            break;
        }
        assert_error(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "IDEMPOTENCY_KEY_REUSED",
        );
        assert!(Instant::now() < deadline, "the key never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.count_events("property.registered").await, 2);
}
