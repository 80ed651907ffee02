//! Invariant 5: a command answered 2xx is durable, even if the process dies
//! the moment after the response.

use crate::common;

use common::{agency, assert_error, spawn_process};
use reqwest::StatusCode;
use sqlx::Row;

#[tokio::test]
async fn a_booking_acknowledged_with_201_survives_kill_9_right_after() {
    let mut app = spawn_process().await;
    let (_, admin) = agency();
    let property = app.property(&admin, None).await;

    let (booking, position) = app
        .booked(&admin, property, "2027-03-01", "2027-03-05")
        .await;
    app.kill();

    let row = sqlx::query(
        "SELECT event_type, payload::jsonb->>'booking_id' AS booking FROM events WHERE position = $1",
    )
    .bind(position)
    .fetch_one(&mut app.db().await)
    .await
    .expect("the acknowledged event is in the log");
    assert_eq!(row.get::<String, _>("event_type"), "booking.reserved");
    assert_eq!(row.get::<String, _>("booking"), booking.to_string());

    app.start().await;
    let reply = app
        .read_ok(&format!("/api/v1/bookings/{booking}"), &admin)
        .await;
    assert_eq!(reply.body["status"], "confirmed");
    // The restarted service still holds the nights.
    let again = app
        .reserve(&admin, property, "2027-03-04", "2027-03-06")
        .await;
    assert_error(&again, StatusCode::CONFLICT, "BOOKING_CONFLICT");
}

#[tokio::test]
async fn every_write_acknowledged_before_a_kill_9_mid_load_is_in_the_log() {
    let _heavy = common::heavy().await;
    let mut app = spawn_process().await;
    let (_, admin) = agency();
    let property = app.property(&admin, None).await;

    // Reserves of distinct nights in flight; the process is killed after the
    // 40th answer, while others are still being handled.
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        let client = app.client.clone();
        let url = format!("{}/api/v1/bookings", app.base);
        let admin = admin.clone();
        in_flight.spawn(async move {
            let start =
                chrono::NaiveDate::from_ymd_opt(2028, 1, 1).unwrap() + chrono::Days::new(i * 2);
            let body = serde_json::json!({
                "property_id": property,
                "check_in": start.to_string(),
                "check_out": (start + chrono::Days::new(1)).to_string(),
                "guest": {"name": "Load Guest"},
            });
            let response = client
                .post(url)
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .ok()?;
            if response.status() != StatusCode::CREATED {
                return None;
            }
            let body: serde_json::Value = response.json().await.ok()?;
            body["id"].as_str().map(str::to_owned)
        });
    }
    let mut acknowledged = Vec::new();
    let mut answered = 0;
    while let Some(result) = in_flight.join_next().await {
        answered += 1;
        if let Ok(Some(id)) = result {
            acknowledged.push(id);
        }
        if answered == 40 {
            app.kill();
        }
    }
    assert!(
        acknowledged.len() >= 40,
        "at least the first answers were 201s"
    );

    let logged: Vec<String> = sqlx::query(
        "SELECT payload::jsonb->>'booking_id' AS booking FROM events WHERE event_type = 'booking.reserved'",
    )
    .fetch_all(&mut app.db().await)
    .await
    .expect("read the log")
    .into_iter()
    .map(|row| row.get("booking"))
    .collect();
    for booking in &acknowledged {
        assert!(
            logged.contains(booking),
            "acknowledged booking {booking} is missing"
        );
    }
}
