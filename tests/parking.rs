//! A failure stays with its property (invariant 8, drill R10): one
//! property's events are made unappliable on purpose; only that property is
//! parked, every other agency's writes are read back promptly, ops and
//! readiness say `degraded` (readiness without any error text), and a retry
//! after the fix applies the waiting events in order.

use crate::common;

use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const OPS: &str = "/ops/projections";
/// Generous on a shared machine; the target (P4) is p99 <= 50 ms.
const READ_BOUND: Duration = Duration::from_secs(2);

fn entry<'a>(ops: &'a Value, name: &str) -> &'a Value {
    ops.as_array()
        .and_then(|items| items.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {ops}"))
}

/// Reserves, then reads the booking back with `min_position`; returns the
/// booking's id, its position and how long commit -> visible took.
async fn reserve_and_read(
    app: &TestApp, token: &str, property: Uuid, check_in: &str, check_out: &str,
) -> (Uuid, i64, Duration) {
    let reply = created(app.reserve(token, property, check_in, check_out).await);
    let committed = Instant::now();
    let (id, position) = (reply.id(), reply.body["position"].as_i64().unwrap_or(0));
    let read = app
        .get(
            &format!("/api/v1/bookings/{id}?min_position={position}"),
            token,
        )
        .await;
    let took = committed.elapsed();
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    assert_eq!(read.body["id"], id.to_string());
    (id, position, took)
}

/// `count` reserves on the properties given in turn (one night each, from
/// `first_night` days after 1 January 2031 on), each read back with `min_position` within the bound; the
/// commit -> visible times, sorted.
async fn others_read_back(
    app: &TestApp, properties: [(&String, Uuid); 2], first_night: u64, count: usize,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for (i, (token, property)) in properties.into_iter().cycle().take(count).enumerate() {
        let check_in = NaiveDate::from_ymd_opt(2031, 1, 1).unwrap_or_default()
            + Days::new(first_night + i as u64);
        let check_out = check_in + Days::new(1);
        let (_, _, took) = reserve_and_read(
            app,
            token,
            property,
            &check_in.to_string(),
            &check_out.to_string(),
        )
        .await;
        assert!(
            took < READ_BOUND,
            "a read of another property took {took:?}"
        );
        latencies.push(took);
    }
    latencies.sort();
    latencies
}

async fn metrics(listen: &str) -> String {
    reqwest::get(format!("http://{listen}/metrics"))
        .await
        .expect("the metrics listener answers")
        .text()
        .await
        .expect("a metrics body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unappliable_property_is_parked_while_every_other_goes_on() {
    let listen = format!("127.0.0.1:{}", free_port());
    let app = spawn_process_with_env(&[("LEDGER_METRICS_LISTEN", &listen)]).await;
    let (agency_a, admin_a) = agency();
    let (_, admin_b) = agency();
    let stuck = app.property(&admin_a, None).await;
    let neighbour = app.property(&admin_a, None).await;
    let elsewhere = app.property(&admin_b, None).await;

    // The same reads before anything is parked, for comparison.
    let baseline =
        others_read_back(&app, [(&admin_a, neighbour), (&admin_b, elsewhere)], 0, 20).await;

    // bookings_view refuses every row of one property.
    let mut db = app.db().await;
    sqlx::query(&format!(
        "CREATE FUNCTION refuse_property() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.property_id = '{stuck}'::uuid THEN
                 RAISE EXCEPTION 'refused on purpose: guest Ana Guest';
             END IF;
             RETURN NEW;
         END $$"
    ))
    .execute(&mut db)
    .await
    .expect("create the refusing function");
    sqlx::query(
        "CREATE TRIGGER refuse_property BEFORE INSERT OR UPDATE ON bookings_view
         FOR EACH ROW EXECUTE FUNCTION refuse_property()",
    )
    .execute(&mut db)
    .await
    .expect("create the refusing trigger");

    let reserved = created(
        app.reserve(&admin_a, stuck, "2030-03-01", "2030-03-04")
            .await,
    );
    let (waiting, parked_at) = (reserved.id(), reserved.body["position"].clone());
    // A later event of the same property: it waits behind the first.
    ok(app.cancel(&admin_a, waiting).await);

    // Everyone else's writes are read back within the bound.
    let parked_reads = others_read_back(
        &app,
        [(&admin_a, neighbour), (&admin_b, elsewhere)],
        100,
        20,
    )
    .await;
    println!(
        "commit -> visible: p50 {:?}, max {:?} with nothing parked; p50 {:?}, max {:?} with a property parked ({} reads each)",
        baseline[baseline.len() / 2],
        baseline[baseline.len() - 1],
        parked_reads[parked_reads.len() / 2],
        parked_reads[parked_reads.len() - 1],
        parked_reads.len()
    );

    // The parked property's booking is not in the view: its events wait.
    let missing = app
        .read(&format!("/api/v1/bookings/{waiting}"), &admin_a)
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "BOOKING_NOT_FOUND");

    // Operators see which property waits and why.
    let ops = app
        .poll(OPS, Some(&operator()), Duration::from_secs(15), |body| {
            entry(body, "views")["status"] == "degraded"
        })
        .await;
    let views = entry(&ops, "views");
    let parked = views["parked"].as_array().expect("a parked list");
    assert_eq!(parked.len(), 1, "{views}");
    assert_eq!(parked[0]["agency_id"], agency_a.to_string());
    assert_eq!(parked[0]["property_id"], stuck.to_string());
    assert_eq!(parked[0]["position"], parked_at);
    assert!(parked[0]["parked_at"].is_string(), "{views}");
    assert!(
        parked[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("refused on purpose")),
        "{views}"
    );
    // The agency's admin sees its own parked property, without the error
    // text; another agency's admin sees none of it.
    let seen_by_a = app.get(OPS, &admin_a).await;
    let views_a = entry(&seen_by_a.body, "views");
    assert_eq!(views_a["parked"][0]["property_id"], stuck.to_string());
    assert!(views_a["parked"][0]["error"].is_null(), "{views_a}");
    assert!(views_a["last_error"].is_null(), "{views_a}");
    let seen_by_b = app.get(OPS, &admin_b).await;
    assert_eq!(entry(&seen_by_b.body, "views")["parked"], json!([]));
    for name in ["inventory", "audit"] {
        assert_eq!(entry(&ops, name)["status"], "running", "{ops}");
        assert_eq!(entry(&ops, name)["parked"], json!([]), "{ops}");
    }

    // Readiness says degraded, with no error text at all.
    for path in ["/health/ready", "/readyz"] {
        let ready = ok(app.send("GET", path, None, None, &[]).await);
        assert_eq!(ready.body["status"], "degraded", "{:?}", ready.body);
        assert_eq!(
            entry(&ready.body["projections"], "views")["status"],
            "degraded"
        );
        assert_eq!(entry(&ready.body["projections"], "views")["parked"], 1);
        let text = ready.body.to_string();
        assert!(
            !text.contains("error") && !text.contains("refused") && !text.contains("Ana"),
            "{text}"
        );
    }

    let scraped = metrics(&listen).await;
    assert!(
        scraped.contains("ledger_projection_parked_properties{name=\"views\"} 1"),
        "{scraped}"
    );
    assert!(
        scraped.contains("ledger_projection_parkings_total{name=\"views\",cause=\"other\"} 1"),
        "{scraped}"
    );

    // Unknown projections are 404, as for replay.
    let unknown = app
        .post("/ops/projections/nope/parked/retry", &operator(), json!({}))
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "NOT_FOUND");

    // After the fix, a retry applies the waiting events, in order.
    sqlx::query("DROP TRIGGER refuse_property ON bookings_view")
        .execute(&mut db)
        .await
        .expect("drop the refusing trigger");
    let refused = app
        .post("/ops/projections/views/parked/retry", &admin_a, json!({}))
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "FORBIDDEN");
    let retried = with_status(
        StatusCode::ACCEPTED,
        app.post(
            "/ops/projections/views/parked/retry",
            &operator(),
            json!({}),
        )
        .await,
    );
    assert_eq!(retried.body["released"], json!([stuck]));
    assert_eq!(retried.body["still_parked"], json!([]));
    let booking = app
        .read_ok(&format!("/api/v1/bookings/{waiting}"), &admin_a)
        .await;
    assert_eq!(booking.body["status"], "cancelled", "{:?}", booking.body);

    let ops = app.get(OPS, &admin_a).await;
    assert_eq!(
        entry(&ops.body, "views")["status"],
        "running",
        "{:?}",
        ops.body
    );
    assert_eq!(entry(&ops.body, "views")["parked"], json!([]));
    let ready = app.send("GET", "/health/ready", None, None, &[]).await;
    for p in ready.body["projections"].as_array().expect("projections") {
        assert_eq!(p["parked"], 0, "{p}");
    }
    assert_eq!(
        entry(&ready.body["projections"], "views")["status"],
        "running"
    );
    if ready.body["nats"] == "ok" {
        assert_eq!(ready.body["status"], "ok", "{:?}", ready.body);
    }
    assert!(metrics(&listen)
        .await
        .contains("ledger_projection_parked_properties{name=\"views\"} 0"),);
}
