//! Room types over HTTP (docs/api.md "Room types") against the real
//! binary: a 12-unit room type takes exactly 12 overlapping bookings under
//! concurrency and the 13th is 409 naming the full nights; the error codes
//! of room types; bookings and blocks naming their room type.

use crate::common;

use common::{agency, app_with_property, assert_error, spawn_app, Reply, TestApp};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const BOOKINGS: &str = "/api/v1/bookings";
const BLOCKS: &str = "/api/v1/availability/blocks";

fn room_types(property: Uuid) -> String {
    format!("/api/v1/properties/{property}/room-types")
}

/// `POST .../room-types`: a room type of `units` units named `name`.
async fn add_room_type(
    app: &TestApp, token: &str, property: Uuid, name: &str, units: u32,
) -> Reply {
    let body = json!({"name": name, "units": units});
    app.post(&room_types(property), token, body).await
}

async fn room_type(app: &TestApp, token: &str, property: Uuid, units: u32) -> Uuid {
    let reply = add_room_type(app, token, property, "Double", units).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["units"], units);
    assert_eq!(reply.body["property_id"], property.to_string());
    reply.id()
}

fn stay(property: Uuid, room_type: Option<Uuid>, check_in: &str, check_out: &str) -> Value {
    let mut body = json!({
        "property_id": property,
        "check_in": check_in,
        "check_out": check_out,
        "guest": {"name": "Ana Guest"},
    });
    if let Some(room_type) = room_type {
        body["room_type_id"] = json!(room_type);
    }
    body
}

/// A 409 `BOOKING_CONFLICT` naming the `nights` that are full.
#[track_caller]
fn assert_full(reply: &Reply, nights: Value) {
    assert_error(reply, StatusCode::CONFLICT, "BOOKING_CONFLICT");
    assert_eq!(reply.body["error"]["details"]["nights"], nights);
}

/// Books `[check_in, check_out)` of `property`, in `room_type` if given.
async fn book(
    app: &TestApp, token: &str, property: Uuid, room_type: Option<Uuid>, check_in: &str,
    check_out: &str,
) -> Reply {
    let body = stay(property, room_type, check_in, check_out);
    app.post(BOOKINGS, token, body).await
}

#[tokio::test]
async fn a_twelve_unit_room_type_takes_twelve_concurrent_bookings_and_names_the_full_nights() {
    let (app, admin, property) = app_with_property().await;
    let double = room_type(&app, &admin, property, 12).await;
    let body = stay(property, Some(double), "2027-03-01", "2027-03-04");
    let requests = (0..40).map(|_| {
        app.client
            .post(format!("{}{BOOKINGS}", app.base))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    });
    let mut created = 0;
    for response in join_all(requests).await {
        let response = response.expect("answered");
        let status = response.status();
        let reply: Value = response.json().await.expect("a JSON body");
        match status {
            StatusCode::CREATED => {
                created += 1;
                assert_eq!(reply["room_type_id"], double.to_string());
            }
            StatusCode::CONFLICT => {
                assert_eq!(reply["error"]["code"], "BOOKING_CONFLICT", "{reply}");
                let nights = &reply["error"]["details"]["nights"];
                assert_eq!(
                    nights,
                    &json!([
                        {"date": "2027-03-01", "units": 12, "taken": 12},
                        {"date": "2027-03-02", "units": 12, "taken": 12},
                        {"date": "2027-03-03", "units": 12, "taken": 12},
                    ]),
                    "{reply}"
                );
            }
            other => panic!("{other}: {reply}"),
        }
    }
    assert_eq!(created, 12);
    assert_eq!(app.count_events("booking.reserved").await, 12);

    // The 13th, overlapping one night only, names that night.
    let double_stay =
        |check_in, check_out| book(&app, &admin, property, Some(double), check_in, check_out);
    let reply = double_stay("2027-03-03", "2027-03-06").await;
    assert_full(
        &reply,
        json!([{"date": "2027-03-03", "units": 12, "taken": 12}]),
    );
    let reply = double_stay("2027-03-04", "2027-03-06").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);

    // Fewer units than a night holds.
    let path = format!("{}/{double}", room_types(property));
    let reply = app.patch(&path, &admin, json!({"units": 11})).await;
    assert_error(&reply, StatusCode::CONFLICT, "CAPACITY_EXCEEDED");
    assert_eq!(reply.body["error"]["details"]["nights"][0]["taken"], 12);
    let reply = app.patch(&path, &admin, json!({"units": 13})).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["version"], 2);
    let list = app.get(&room_types(property), &admin).await;
    assert_eq!(list.status, StatusCode::OK, "{:?}", list.body);
    assert_eq!(list.body["data"][0]["units"], 13);
}

#[tokio::test]
async fn room_types_answer_with_their_error_codes() {
    let app = spawn_app().await;
    let (_, admin) = agency();
    let single = app.property(&admin, None).await;
    let reply = book(&app, &admin, single, None, "2027-05-01", "2027-05-03").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let reply = add_room_type(&app, &admin, single, "Double", 2).await;
    assert_error(
        &reply,
        StatusCode::CONFLICT,
        "PROPERTY_HAS_SINGLE_UNIT_CLAIMS",
    );

    let hotel = app.property(&admin, None).await;
    let double = room_type(&app, &admin, hotel, 2).await;
    // Either id of the path that is not a UUID: 400, naming it.
    for path in [
        format!("{}/not-a-uuid", room_types(hotel)),
        format!("/api/v1/properties/not-a-uuid/room-types/{double}"),
    ] {
        let reply = app.patch(&path, &admin, json!({"units": 3})).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("\"not-a-uuid\" is not a UUID"),
            "{message}"
        );
    }
    // A booking names a room type exactly when its property has them.
    let unknown = Some(Uuid::new_v4());
    let invalid = (StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let not_found = (StatusCode::NOT_FOUND, "ROOM_TYPE_NOT_FOUND");
    for (case, property, room_type, (status, code)) in [
        ("a room type in a single unit", single, unknown, invalid),
        ("no room type in a hotel", hotel, None, invalid),
        ("an unknown room type", hotel, unknown, not_found),
    ] {
        let reply = book(
            &app,
            &admin,
            property,
            room_type,
            "2027-06-01",
            "2027-06-03",
        )
        .await;
        assert_eq!(reply.status, status, "{case}: {:?}", reply.body);
        assert_error(&reply, status, code);
    }
    let reply = app
        .patch(
            &format!("{}/{}", room_types(hotel), Uuid::new_v4()),
            &admin,
            json!({"units": 3}),
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "ROOM_TYPE_NOT_FOUND");
    let reply = add_room_type(&app, &admin, hotel, "Huge", 1001).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");

    // A block closes both units; the booking that finds none names the night.
    let reply = app
        .post(
            BLOCKS,
            &admin,
            json!({"property_id": hotel, "start": "2027-06-10", "end": "2027-06-11",
                   "reason": "maintenance", "room_type_id": double, "units": 2}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["units"], 2);
    let reply = book(
        &app,
        &admin,
        hotel,
        Some(double),
        "2027-06-09",
        "2027-06-11",
    )
    .await;
    assert_full(
        &reply,
        json!([{"date": "2027-06-10", "units": 2, "taken": 2}]),
    );

    // Another agency sees no room types of this property.
    let (_, stranger) = agency();
    let reply = app.get(&room_types(hotel), &stranger).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
}
