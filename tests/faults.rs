//! Fault drill "PostgreSQL down" (docs/quality.md R4, docs/api.md "Health and ops"):
//! with the database stopped, liveness stays 200, readiness and the routes
//! that need the database answer 503 `DATABASE_UNAVAILABLE` fast, and the same
//! ledger process recovers by itself once PostgreSQL is back.
//!
//! The second drill freezes PostgreSQL instead (SIGSTOP of the postmaster
//! and every backend): the server still accepts TCP connections but never
//! answers, which is what a hung host or a network partition looks like.
//! The same answers are due, and the same recovery once it thaws (SIGCONT).
//!
//! The tests run their own PostgreSQL cluster (tests/common/pg.rs: initdb
//! into a temporary directory, a free port, its own socket directory) and
//! its own nats-server, so stopping them touches nothing else.

use crate::common;

use std::time::{Duration, Instant};

use common::nats::NatsServer;
use common::pg::PgServer;
use common::{agency, assert_error, create_database, reservation, spawn_app_on, Reply, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// How fast a reply must come while PostgreSQL is down (the contract says
/// about 1 s; the margin absorbs a loaded CI machine).
const FAST: Duration = Duration::from_secs(2);

/// Readiness probes per path while the database is down.
const ROUNDS: usize = 4;

/// One request, with how long it took; a request that hangs fails the test
/// with the path named instead of waiting for the client's own timeout.
async fn timed(
    app: &TestApp, method: &str, path: &str, token: Option<&str>, body: Option<&Value>,
) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        app.send(method, path, token, body, &[]),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {path} got no answer in 10 s"));
    (reply, started.elapsed())
}

/// Liveness while the database is out (`when` says how, for the log): 200
/// `{"status": "ok"}` within [`FAST`].
async fn live_fast(app: &TestApp, path: &str, when: &str) {
    let (reply, took) = timed(app, "GET", path, None, None).await;
    eprintln!("{when}: GET {path} -> {} in {took:?}", reply.status);
    assert_eq!(reply.status, StatusCode::OK, "{path}: {:?}", reply.body);
    assert_eq!(reply.body["status"], "ok", "{path}: {:?}", reply.body);
    assert!(took < FAST, "GET {path} took {took:?} ({when})");
}

/// A request (`method path`) that needs the database while it is out: 503
/// `DATABASE_UNAVAILABLE` within [`FAST`].
async fn unavailable_fast(
    app: &TestApp, (method, path): (&str, &str), token: Option<&str>, body: Option<&Value>,
    when: &str,
) {
    let (reply, took) = timed(app, method, path, token, body).await;
    eprintln!(
        "{when}: {method} {path} -> {} {} in {took:?}",
        reply.status, reply.body
    );
    assert_error(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
    );
    assert!(took < FAST, "{method} {path} took {took:?} ({when})");
}

/// Polls `/readyz` until it answers 200, for at most `limit`; returns how
/// long that took and the last reply.
async fn until_ready(app: &TestApp, limit: Duration) -> (Duration, Reply) {
    let started = Instant::now();
    loop {
        let (reply, _) = timed(app, "GET", "/readyz", None, None).await;
        if reply.status == StatusCode::OK || started.elapsed() > limit {
            return (started.elapsed(), reply);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Before a drill: the app is ready and writes work. Returns an agency
/// admin's token, a property and a booking of it.
async fn ready_with_a_booking(app: &TestApp) -> (String, Uuid, Uuid) {
    let (waited, ready) = until_ready(app, Duration::from_secs(30)).await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "ready before the drill: {ready:?}"
    );
    assert_eq!(ready.body["db"], "ok", "{:?}", ready.body);
    eprintln!("ready 200 before the drill after {waited:?}");
    let (_, token) = agency();
    let property = app.property(&token, None).await;
    let (first, _) = app
        .booked(&token, property, "2027-06-01", "2027-06-03")
        .await;
    (token, property, first)
}

/// A reservation, [`timed`].
async fn reserve(
    app: &TestApp, token: &str, property: Uuid, check_in: &str, check_out: &str,
) -> (Reply, Duration) {
    let body = reservation(property, check_in, check_out);
    timed(app, "POST", "/api/v1/bookings", Some(token), Some(&body)).await
}

#[tokio::test]
async fn postgres_down_answers_503_fast_and_recovers_without_restart() {
    let _heavy = common::heavy().await;
    // The ledger is declared last so that it is killed before the servers.
    let (mut pg, nats, app) = private_stack().await;
    let pid = app.pid().expect("the ledger runs");

    let (token, property, first_booking) = ready_with_a_booking(&app).await;

    // Down.
    pg.stop();
    eprintln!("PostgreSQL stopped (pg_ctl -m immediate stop)");

    for path in ["/health", "/healthz"] {
        live_fast(&app, path, "DB down").await;
    }

    // Several rounds: the first probes meet the pool's idle connections that
    // the stop broke (they fail at once), the later ones have to open new
    // connections against a closed port (the pool retries until its 1 s
    // acquire timeout): both must answer 503 fast.
    for round in 1..=ROUNDS {
        for path in ["/health/ready", "/readyz"] {
            let when = format!("DB down (round {round})");
            unavailable_fast(&app, ("GET", path), None, None, &when).await;
        }
    }

    let writes = [
        (
            "POST",
            "/api/v1/bookings".to_owned(),
            Some(reservation(property, "2027-07-01", "2027-07-04")),
        ),
        (
            "POST",
            "/api/v1/properties".to_owned(),
            Some(json!({"name": "Hill House", "timezone": "Europe/Lisbon"})),
        ),
        (
            "POST",
            format!("/api/v1/bookings/{first_booking}/confirm"),
            None,
        ),
    ];
    for (method, path, body) in &writes {
        unavailable_fast(&app, (method, path), Some(&token), body.as_ref(), "DB down").await;
    }
    let when = "DB down, after the writes";
    unavailable_fast(&app, ("GET", "/readyz"), None, None, when).await;
    assert!(
        app.is_running(),
        "the ledger exited with the database down:\n{}",
        app.log_text()
    );

    // Back: the same process recovers by itself.
    pg.restart();
    eprintln!("PostgreSQL started again on port {}", pg.port);
    let (waited, ready) = until_ready(&app, Duration::from_secs(30)).await;
    eprintln!(
        "after the restart: /readyz -> {} after {waited:?}",
        ready.status
    );
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "/readyz not 200 within 30 s of PostgreSQL's restart: {:?}\n{}",
        ready.body,
        app.log_text()
    );
    assert_eq!(ready.body["db"], "ok", "{:?}", ready.body);

    let (reply, took) = reserve(&app, &token, property, "2027-07-01", "2027-07-04").await;
    eprintln!("after the restart: reserve -> {} in {took:?}", reply.status);
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let second = reply.id();
    let (reply, _) = timed(
        &app,
        "POST",
        "/api/v1/properties",
        Some(&token),
        Some(&json!({"name": "Hill House", "timezone": "Europe/Lisbon"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);

    // The read side caught up too: a read of the new booking at the log's head.
    app.read_ok(&format!("/api/v1/bookings/{second}"), &token)
        .await;

    assert!(app.is_running(), "the ledger exited:\n{}", app.log_text());
    came_through((pg, nats, app), pid);
}

/// How a drill ends: the ledger is the process that started it, never
/// restarted and never panicking; then the stack goes down, the ledger first.
fn came_through((pg, nats, app): (PgServer, NatsServer, TestApp), pid: u32) {
    assert_eq!(app.pid(), Some(pid), "the ledger was not restarted");
    let log = app.log_text();
    assert!(!log.contains("panicked"), "the ledger panicked:\n{log}");
    drop(app);
    drop(nats);
    drop(pg);
}

/// A database on a fresh private cluster, a private nats-server and a ledger
/// on them; the ledger is declared last so that it is killed first.
async fn private_stack() -> (PgServer, NatsServer, TestApp) {
    let pg = PgServer::start();
    let mut admin = PgConnection::connect(&pg.url("postgres"))
        .await
        .expect("connect to the private PostgreSQL");
    let db_name = create_database(&mut admin, "ledger_fault").await;
    admin.close().await.expect("close the admin connection");
    let nats = NatsServer::start();
    let app = spawn_app_on(&pg.url(&db_name), &db_name, &[("NATS_URL", &nats.url)]).await;
    (pg, nats, app)
}

#[tokio::test]
async fn a_hanging_postgres_answers_503_fast_and_recovers_when_it_thaws() {
    let _heavy = common::heavy().await;
    let (pg, nats, app) = private_stack().await;
    let pid = app.pid().expect("the ledger runs");
    let (token, property, first_booking) = ready_with_a_booking(&app).await;
    let head = app.head().await;
    // The pool now holds open connections: those are the ones a frozen
    // server leaves hanging (a stopped server's sockets accept, never answer).

    let frozen = pg.freeze();
    eprintln!(
        "PostgreSQL frozen (SIGSTOP to {} processes)",
        frozen.pids.len()
    );

    let read = format!("/api/v1/bookings/{first_booking}?min_position={head}");
    for round in 1..=ROUNDS {
        let when = format!("DB frozen (round {round})");
        live_fast(&app, "/healthz", &when).await;
        let requests = [
            ("GET", "/readyz".to_owned(), None, None),
            (
                "POST",
                "/api/v1/bookings".to_owned(),
                Some(token.as_str()),
                Some(reservation(property, "2027-07-01", "2027-07-04")),
            ),
            ("GET", read.clone(), Some(token.as_str()), None),
        ];
        for (method, path, token, body) in &requests {
            unavailable_fast(&app, (method, path), *token, body.as_ref(), &when).await;
        }
    }
    assert!(
        app.is_running(),
        "the ledger exited with the database frozen:\n{}",
        app.log_text()
    );

    frozen.thaw();
    eprintln!("PostgreSQL thawed (SIGCONT)");
    let thawed = Instant::now();
    let deadline = thawed + Duration::from_secs(30);
    let created = loop {
        let (reply, _) = reserve(&app, &token, property, "2027-08-01", "2027-08-04").await;
        if reply.status == StatusCode::CREATED {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded within 30 s of the thaw: {:?}\n{}",
            reply.body,
            app.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "after the thaw: a reserve succeeded {:?} later",
        thawed.elapsed()
    );
    app.read_ok(&format!("/api/v1/bookings/{}", created.id()), &token)
        .await;
    let (_, ready) = until_ready(&app, Duration::from_secs(30)).await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    came_through((pg, nats, app), pid);
}
