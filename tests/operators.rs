//! Platform operators and agency administration against the real binary:
//! operators run the /ops routes and nothing of an agency's API; an agency
//! admin keeps a read-only, redacted view of the projections; agencies are
//! created, suspended, reinstated and given feature flags through
//! /ops/agencies (and the `ledger agency` CLI), every change lands in the
//! agency history (`GET /ops/audit-log`), and suspension and flags hold on
//! every route, the `.ics` feed and the feed import job.

use crate::common;

use std::time::{Duration, Instant};

use common::{
    agency, answers, app_with_agency_property, assert_error, created, eventually, ledger,
    ledger_ok, ok, operator, spawn_app, spawn_app_with_env, token, token_with, with_status, Reply,
    TestApp, SECRET,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

const AGENCIES: &str = "/ops/agencies";
const HISTORY: &str = "/ops/audit-log";

/// A new agency with a property that has an iCal export secret: the
/// agency's id, its admin's token, the property and the `.ics` path with
/// its token.
async fn exported_agency(app: &TestApp) -> (Uuid, String, Uuid, String) {
    let (agency_id, admin) = agency();
    let property = app.property(&admin, None).await;
    let (secret, _) = app.export_token(&admin, property).await;
    let ics = format!("/ical/{property}.ics?token={secret}");
    (agency_id, admin, property, ics)
}

async fn ics_status(app: &TestApp, path: &str) -> StatusCode {
    app.send("GET", path, None, None, &[]).await.status
}

fn items(reply: &Reply) -> Vec<Value> {
    reply.body["items"].as_array().cloned().unwrap_or_default()
}

/// `POST /ops/agencies/{agency}/{step}` (suspend, reinstate) with `body`.
async fn agency_step(app: &TestApp, token: &str, agency: Uuid, step: &str, body: Value) -> Reply {
    app.post(&format!("{AGENCIES}/{agency}/{step}"), token, body)
        .await
}

/// `PUT /ops/agencies/{agency}/features` with `features`.
async fn set_features(app: &TestApp, token: &str, agency: Uuid, features: Value) -> Reply {
    app.put(&format!("{AGENCIES}/{agency}/features"), token, features)
        .await
}

#[tokio::test]
async fn operators_run_every_ops_route_and_nothing_of_an_agencys_api() {
    let (app, agency_id, _, property) = app_with_agency_property().await;
    let operator = operator();

    for path in ["/ops/projections", "/ops/current-commit", "/ops/env-sanity"] {
        let reply = app.get(path, &operator).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {:?}", reply.body);
    }
    let started = with_status(
        StatusCode::ACCEPTED,
        app.post("/ops/projections/views/replay", &operator, json!({}))
            .await,
    );
    assert!(started.body["replay_id"].is_string(), "{:?}", started.body);
    ok(app.get("/ops/projections/views/replay", &operator).await);
    let retried = with_status(
        StatusCode::ACCEPTED,
        app.post(
            "/ops/projections/inventory/parked/retry",
            &operator,
            json!({}),
        )
        .await,
    );
    assert_eq!(retried.body["still_parked"], json!([]));

    // Nothing under /api/v1, even with an agency_id in the token (ignored).
    let with_agency = token_with(
        json!({"sub": "op", "role": "operator", "agency_id": agency_id,
               "exp": common::now_secs() + 600}),
        SECRET,
    );
    let events = app.total_events().await;
    for caller in [&operator, &with_agency] {
        let replies = [
            app.get("/api/v1/properties", caller).await,
            app.get(&format!("/api/v1/properties/{property}"), caller)
                .await,
            app.post("/api/v1/properties", caller, json!({"name": "Op's"}))
                .await,
            app.reserve(caller, property, "2027-03-01", "2027-03-02")
                .await,
            app.get("/api/v1/audit-log", caller).await,
        ];
        for reply in &replies {
            assert_error(reply, StatusCode::FORBIDDEN, "FORBIDDEN");
        }
    }
    assert_eq!(app.total_events().await, events, "operators wrote nothing");
}

#[tokio::test]
async fn an_agency_admin_only_reads_the_ops_status_without_error_texts() {
    let app = spawn_app().await;
    let (agency_id, admin) = agency();
    app.property(&admin, None).await;

    let reply = ok(app.get("/ops/projections", &admin).await);
    let entries = reply.body.as_array().expect("a list");
    assert!(!entries.is_empty());
    for entry in entries {
        assert!(entry["last_error"].is_null(), "{entry}");
        for parked in entry["parked"].as_array().expect("a parked list") {
            assert!(parked["error"].is_null(), "{parked}");
        }
    }
    ok(app.get("/ops/current-commit", &admin).await);

    let refused = [
        app.post("/ops/projections/views/replay", &admin, json!({}))
            .await,
        app.get("/ops/projections/views/replay", &admin).await,
        app.post("/ops/projections/views/parked/retry", &admin, json!({}))
            .await,
        app.get("/ops/env-sanity", &admin).await,
        app.get(AGENCIES, &admin).await,
        app.post(AGENCIES, &admin, json!({"name": "Mine"})).await,
        app.get(&format!("{AGENCIES}/{agency_id}"), &admin).await,
        agency_step(&app, &admin, agency_id, "reinstate", json!({})).await,
        set_features(&app, &admin, agency_id, json!({"ical_export": true})).await,
        app.get(HISTORY, &admin).await,
    ];
    for reply in &refused {
        assert_error(reply, StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    let mut db = app.db().await;
    let replays: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_replays")
        .fetch_one(&mut db)
        .await
        .expect("count replays");
    assert_eq!(replays, 0, "the admin started no replay");
}

#[tokio::test]
async fn a_suspended_agency_is_locked_out_within_2_s_and_its_feed_is_gone_until_reinstated() {
    let app = spawn_app().await;
    let operator = operator();
    let (agency_id, admin, property, ics) = exported_agency(&app).await;
    let (_, other_admin, _, other_ics) = exported_agency(&app).await;
    assert_eq!(ics_status(&app, &ics).await, StatusCode::OK);
    let property_path = format!("/api/v1/properties/{property}");

    let reply = ok(agency_step(
        &app,
        &operator,
        agency_id,
        "suspend",
        json!({"reason": "unpaid"}),
    )
    .await);
    assert_eq!(reply.body["status"], "suspended");
    assert_eq!(reply.body["reason"], "unpaid");

    let reply = answers(StatusCode::FORBIDDEN, Duration::from_secs(2), || {
        app.get(&property_path, &admin)
    })
    .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "AGENCY_SUSPENDED");
    let staff = token(agency_id, "staff", "staff-1");
    let reply = app
        .reserve(&staff, property, "2027-03-01", "2027-03-02")
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "AGENCY_SUSPENDED");
    assert_eq!(ics_status(&app, &ics).await, StatusCode::NOT_FOUND);
    // Another agency is untouched.
    assert_eq!(ics_status(&app, &other_ics).await, StatusCode::OK);
    ok(app.get("/api/v1/properties", &other_admin).await);

    let reply = ok(agency_step(&app, &operator, agency_id, "reinstate", json!({})).await);
    assert_eq!(reply.body["status"], "active");
    ok(answers(StatusCode::OK, Duration::from_secs(2), || {
        app.get(&property_path, &admin)
    })
    .await);
    assert_eq!(ics_status(&app, &ics).await, StatusCode::OK);
}

#[tokio::test]
async fn a_suspension_made_in_another_process_holds_here_within_2_s() {
    let app = spawn_app().await;
    let (agency_id, admin, _, ics) = exported_agency(&app).await;
    // The CLI is another process on the same database.
    ledger_ok(
        &[
            "agency",
            "suspend",
            &agency_id.to_string(),
            "--reason",
            "cli",
        ],
        &[("DATABASE_URL", app.database_url.as_str())],
    );
    let started = Instant::now();
    let reply = answers(StatusCode::FORBIDDEN, Duration::from_secs(3), || {
        app.get("/api/v1/properties", &admin)
    })
    .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "AGENCY_SUSPENDED");
    assert!(
        started.elapsed() <= Duration::from_millis(2_100),
        "suspended after {:?}",
        started.elapsed()
    );
    assert_eq!(ics_status(&app, &ics).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn features_turned_off_refuse_their_routes() {
    let app = spawn_app().await;
    let operator = operator();
    let (agency_id, admin, property, ics) = exported_agency(&app).await;
    let feeds = format!("/api/v1/properties/{property}/ical-feeds");
    let token_path = format!("/api/v1/properties/{property}/ical-token");
    let put = |body: Value| set_features(&app, &operator, agency_id, body);

    let reply = ok(put(json!({"ical_export": false})).await);
    assert_eq!(
        reply.body["features"],
        json!({"ical_export": false, "ical_import": true})
    );
    assert_eq!(ics_status(&app, &ics).await, StatusCode::NOT_FOUND);
    let reply = app.post(&token_path, &admin, json!({})).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "FEATURE_DISABLED");
    let reply = app.get(&feeds, &admin).await;
    assert_eq!(reply.status, StatusCode::OK, "imports are still on");

    ok(put(json!({"ical_export": true, "ical_import": false})).await);
    assert_eq!(ics_status(&app, &ics).await, StatusCode::OK);
    let reply = app.get(&feeds, &admin).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "FEATURE_DISABLED");
    let reply = app
        .post(&feeds, &admin, json!({"url": "https://example.com/a.ics"}))
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "FEATURE_DISABLED");
    created(app.post(&token_path, &admin, json!({})).await);

    // Bad bodies are 400; an empty one changes nothing.
    for body in [json!({"ical_export": "no"}), json!({"ical_sync": false})] {
        let reply = put(body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    let reply = put(json!({})).await;
    assert_eq!(
        reply.body["features"],
        json!({"ical_export": true, "ical_import": false})
    );
    let reply = set_features(
        &app,
        &operator,
        Uuid::new_v4(),
        json!({"ical_import": true}),
    )
    .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "AGENCY_NOT_FOUND");
}

#[tokio::test]
async fn the_import_job_skips_feeds_of_agencies_with_imports_off_or_suspended() {
    // The feeds name a closed local port: only an allow-listed host may be local.
    let app = spawn_app_with_env(&[("LEDGER_FEED_ALLOW_HOSTS", "127.0.0.1")]).await;
    let operator = operator();
    let (off_agency, off_admin) = agency();
    let (suspended_agency, suspended_admin) = agency();
    let (_, on_admin) = agency();
    let off_property = app.property(&off_admin, None).await;
    let suspended_property = app.property(&suspended_admin, None).await;
    let on_property = app.property(&on_admin, None).await;
    ok(set_features(&app, &operator, off_agency, json!({"ical_import": false})).await);
    ok(agency_step(&app, &operator, suspended_agency, "suspend", json!({})).await);

    // Three due feeds; the two refused ones are the most overdue, so the job
    // takes them before the one that runs.
    let mut db = app.db().await;
    let url = "http://127.0.0.1:9/calendar.ics";
    let feeds = [
        (off_agency, off_property, "1 hour"),
        (suspended_agency, suspended_property, "1 hour"),
    ];
    let mut skipped = Vec::new();
    for (agency_id, property_id, overdue) in feeds {
        let feed: Uuid = sqlx::query_scalar(
            "INSERT INTO ical_feeds (feed_id, agency_id, property_id, url, interval_minutes,
                                     next_run_at)
             VALUES (gen_random_uuid(), $1, $2, $3, 60, now() - $4::interval)
             RETURNING feed_id",
        )
        .bind(agency_id)
        .bind(property_id)
        .bind(url)
        .bind(overdue)
        .fetch_one(&mut db)
        .await
        .expect("a feed");
        skipped.push(feed);
    }
    let reply = created(
        app.post(
            &format!("/api/v1/properties/{on_property}/ical-feeds"),
            &on_admin,
            json!({"url": url}),
        )
        .await,
    );
    let ran = reply.id();

    eventually(Duration::from_secs(30), || async {
        let row = sqlx::query("SELECT last_run_at FROM ical_feeds WHERE feed_id = $1")
            .bind(ran)
            .fetch_one(&mut app.db().await)
            .await
            .expect("the feed");
        let last: Option<chrono::DateTime<chrono::Utc>> = row.get("last_run_at");
        if last.is_some() {
            Ok(())
        } else {
            Err("the allowed feed never ran")
        }
    })
    .await;
    for feed in skipped {
        let row = sqlx::query(
            "SELECT last_run_at IS NULL AS never, next_run_at > now() AS postponed
               FROM ical_feeds WHERE feed_id = $1",
        )
        .bind(feed)
        .fetch_one(&mut db)
        .await
        .expect("the feed");
        assert!(row.get::<bool, _>("never"), "feed {feed} was run");
        assert!(row.get::<bool, _>("postponed"), "feed {feed} was not taken");
    }
}

#[tokio::test]
async fn agencies_are_created_listed_and_their_history_kept_in_order() {
    let app = spawn_app().await;
    let operator = operator();

    // An agency whose token is used first gets a record without a name.
    let (first_use, admin) = agency();
    app.property(&admin, None).await;
    let reply = ok(app.get(&format!("{AGENCIES}/{first_use}"), &operator).await);
    assert!(reply.body["name"].is_null(), "{:?}", reply.body);
    assert_eq!(reply.body["status"], "active");
    assert_eq!(
        reply.body["features"],
        json!({"ical_export": true, "ical_import": true})
    );
    // Naming it later is 200 (it already existed).
    let reply = ok(app
        .post(
            AGENCIES,
            &operator,
            json!({"id": first_use, "name": "Early Bird"}),
        )
        .await);
    assert_eq!(reply.body["name"], "Early Bird");

    let reply = created(
        app.post(AGENCIES, &operator, json!({"name": "Sunny Lets"}))
            .await,
    );
    let agency_id = reply.id();
    assert_eq!(reply.body["status"], "active");
    assert!(reply.body["reason"].is_null());
    assert!(reply.body["created_at"].is_string() && reply.body["updated_at"].is_string());
    let chosen = Uuid::new_v4();
    let reply = created(
        app.post(AGENCIES, &operator, json!({"id": chosen, "name": "Chosen"}))
            .await,
    );
    assert_eq!(reply.id(), chosen);
    let again = app
        .post(AGENCIES, &operator, json!({"id": chosen, "name": "Twice"}))
        .await;
    assert_error(&again, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    for body in [
        json!({}),
        json!({"name": ""}),
        json!({"name": "x".repeat(201)}),
        json!({"name": "a\u{0}b"}),
        json!({"name": "ok", "plan": "gold"}),
        json!({"id": "acme", "name": "ok"}),
    ] {
        let reply = app.post(AGENCIES, &operator, body.clone()).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    let unknown = Uuid::new_v4();
    for reply in [
        app.get(&format!("{AGENCIES}/{unknown}"), &operator).await,
        agency_step(&app, &operator, unknown, "suspend", json!({})).await,
        agency_step(&app, &operator, unknown, "reinstate", json!({})).await,
    ] {
        assert_error(&reply, StatusCode::NOT_FOUND, "AGENCY_NOT_FOUND");
    }
    let reply = app.get(&format!("{AGENCIES}/not-a-uuid"), &operator).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");

    // The life cycle of one agency.
    for (step, reason, status) in [
        ("suspend", "unpaid", "suspended"),
        ("reinstate", "paid", "active"),
    ] {
        let body = json!({"reason": reason});
        let reply = agency_step(&app, &operator, agency_id, step, body).await;
        assert_eq!(reply.body["status"], status, "{step}: {:?}", reply.body);
    }
    ok(set_features(&app, &operator, agency_id, json!({"ical_import": false})).await);
    // Reinstating an active agency changes nothing and records nothing.
    ok(agency_step(&app, &operator, agency_id, "reinstate", json!({})).await);

    // Listed, one page at a time.
    let mut listed = Vec::new();
    let mut path = format!("{AGENCIES}?limit=1");
    loop {
        let reply = ok(app.get(&path, &operator).await);
        let page = items(&reply);
        assert!(page.len() <= 1);
        listed.extend(page);
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("{AGENCIES}?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    let ids: Vec<&str> = listed.iter().filter_map(|a| a["id"].as_str()).collect();
    for id in [first_use, agency_id, chosen] {
        assert!(ids.contains(&id.to_string().as_str()), "{id} in {ids:?}");
    }
    assert_eq!(ids.len(), 3, "{ids:?}");

    // The history, oldest first, in the audit log's shape.
    let reply = ok(app.get(&format!("{HISTORY}?limit=500"), &operator).await);
    let history = items(&reply);
    let of = |agency: Uuid| -> Vec<(String, Value)> {
        history
            .iter()
            .filter(|e| e["agency_id"] == agency.to_string())
            .map(|e| {
                (
                    e["action"].as_str().unwrap_or("").to_owned(),
                    e["details"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        of(agency_id),
        vec![
            ("agency.create".into(), json!({"name": "Sunny Lets"})),
            ("agency.suspend".into(), json!({"reason": "unpaid"})),
            ("agency.reinstate".into(), json!({"reason": "paid"})),
            (
                "agency.features".into(),
                json!({"features": {"ical_export": true, "ical_import": false}})
            ),
        ]
    );
    let first: Vec<String> = of(first_use).into_iter().map(|(a, _)| a).collect();
    assert_eq!(first, ["agency.create", "agency.name"]);
    let positions: Vec<i64> = history
        .iter()
        .filter_map(|e| e["position"].as_i64())
        .collect();
    assert_eq!(positions.len(), history.len());
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let entry = history
        .iter()
        .find(|e| e["action"] == "agency.suspend")
        .expect("a suspension");
    assert_eq!(entry["resource_type"], "agency");
    assert_eq!(entry["resource_id"], agency_id.to_string());
    assert_eq!(entry["user_id"], "operator-1");
    for field in ["id", "created_at"] {
        assert!(entry[field].is_string(), "{field}: {entry}");
    }
    // Cursor pagination walks the same entries.
    let page = app.get(&format!("{HISTORY}?limit=2"), &operator).await;
    let cursor = page.body["next_cursor"]
        .as_str()
        .expect("more than 2 entries");
    let rest = app
        .get(&format!("{HISTORY}?limit=500&cursor={cursor}"), &operator)
        .await;
    assert_eq!(items(&page).len() + items(&rest).len(), history.len());
    assert_eq!(items(&rest)[0], history[2]);

    // The history is append-only.
    let mut db = app.db().await;
    for statement in [
        "UPDATE agency_history SET action = 'x'",
        "DELETE FROM agency_history",
    ] {
        let refused = sqlx::query(statement).execute(&mut db).await;
        assert!(refused.is_err(), "{statement} was allowed");
    }
}

/// What a `ledger agency ...` command printed: the agency's record.
fn ledger_json(args: &[&str], envs: &[(&str, &str)]) -> Value {
    serde_json::from_str(&ledger_ok(args, envs)).expect("JSON on stdout")
}

#[tokio::test]
async fn the_cli_mints_operator_tokens_and_administers_agencies_as_the_routes_do() {
    let app = spawn_app().await;
    let db = [("DATABASE_URL", app.database_url.as_str())];

    let minted = ledger_ok(
        &["token", "--role", "operator", "--sub", "ops-cli"],
        &[("JWT_SECRET", SECRET)],
    );
    ok(app.get(AGENCIES, &minted).await);
    let out = ledger(
        &["token", "--role", "admin", "--sub", "x"],
        &[("JWT_SECRET", SECRET)],
    );
    assert!(!out.status.success(), "an admin token needs --agency");

    let created = ledger_json(&["agency", "create", "--name", "From the CLI"], &db);
    let id = created["id"].as_str().expect("an id").to_owned();
    assert_eq!(created["status"], "active");
    let features = ledger_json(&["agency", "features", &id, "--ical-export", "false"], &db);
    assert_eq!(
        features["features"],
        json!({"ical_export": false, "ical_import": true})
    );
    let reply = app.get(&format!("{AGENCIES}/{id}"), &minted).await;
    assert_eq!(reply.body["name"], "From the CLI");
    assert_eq!(reply.body["features"]["ical_export"], false);
    let out = ledger(&["agency", "suspend", &Uuid::new_v4().to_string()], &db);
    assert!(!out.status.success(), "an agency without a record");

    let history = app.get(HISTORY, &minted).await;
    let actions: Vec<(String, String)> = items(&history)
        .iter()
        .map(|e| (e["action"].to_string(), e["user_id"].to_string()))
        .collect();
    let expected: Vec<(String, String)> = [("agency.create", "cli"), ("agency.features", "cli")]
        .iter()
        .map(|(a, u)| (json!(a).to_string(), json!(u).to_string()))
        .collect();
    assert_eq!(actions, expected);
}
