//! The front end's half of the contract (docs/api.md "For browser front ends"):
//! CORS preflights and headers, conditional writes (`ETag`, `If-Match`,
//! `If-None-Match`), and live updates over Server-Sent Events.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const ORIGIN: &str = "https://desk.example.test";

// ------------------------------------------------------------------ CORS

async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, format!("{}{path}", app.base))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "authorization,content-type,idempotency-key,if-match",
        )
        .send()
        .await
        .expect("the preflight is answered")
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn listed(list: &str) -> Vec<String> {
    list.split(',').map(|s| s.trim().to_owned()).collect()
}

#[tokio::test]
async fn a_preflight_from_a_listed_origin_answers_204_with_the_routes_methods() {
    // A rate limit of one request an hour: preflights are no agency's requests.
    let app = spawn_app_with_env(&[
        (
            "LEDGER_CORS_ORIGINS",
            &format!("https://other.example.test,{ORIGIN}"),
        ),
        ("LEDGER_RATE_LIMIT", "1/h"),
    ])
    .await;
    for _ in 0..3 {
        let reply = preflight(&app, "/api/v1/bookings", ORIGIN, "POST").await;
        assert_eq!(reply.status(), StatusCode::NO_CONTENT);
        assert_eq!(header(&reply, "access-control-allow-origin"), ORIGIN);
        let methods = listed(&header(&reply, "access-control-allow-methods"));
        assert!(
            methods.contains(&"post".into()) && methods.contains(&"get".into()),
            "{methods:?}"
        );
        assert!(!methods.contains(&"patch".into()), "{methods:?}");
        let headers = listed(&header(&reply, "access-control-allow-headers"));
        for name in [
            "authorization",
            "content-type",
            "idempotency-key",
            "if-match",
            "x-request-id",
        ] {
            assert!(headers.contains(&name.into()), "{name} in {headers:?}");
        }
        assert!(!header(&reply, "x-request-id").is_empty());
    }

    let id = Uuid::new_v4();
    let one = preflight(&app, &format!("/api/v1/bookings/{id}"), ORIGIN, "PATCH").await;
    assert_eq!(one.status(), StatusCode::NO_CONTENT);
    let methods = listed(&header(&one, "access-control-allow-methods"));
    assert!(
        methods.contains(&"patch".into()) && methods.contains(&"get".into()),
        "{methods:?}"
    );
    let headers = listed(&header(&one, "access-control-allow-headers"));
    assert!(headers.contains(&"if-none-match".into()), "{headers:?}");

    let stream = preflight(&app, "/api/v1/stream", ORIGIN, "GET").await;
    assert_eq!(stream.status(), StatusCode::NO_CONTENT);
    assert!(
        listed(&header(&stream, "access-control-allow-headers")).contains(&"last-event-id".into())
    );

    let action = preflight(
        &app,
        &format!("/api/v1/bookings/{id}/cancel"),
        ORIGIN,
        "POST",
    )
    .await;
    assert_eq!(action.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&action, "access-control-allow-methods"), "post");
}

#[tokio::test]
async fn a_listed_origins_replies_expose_the_headers_a_front_end_reads() {
    let app = spawn_app_with_env(&[("LEDGER_CORS_ORIGINS", ORIGIN)]).await;
    let (_, admin) = agency();
    let from_the_desk = [("origin", ORIGIN)];
    let created = app
        .post_with(
            routes::PROPERTIES,
            &admin,
            json!({"name": "Casa"}),
            &from_the_desk,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let get = |name: &str| {
        created
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    assert_eq!(get("access-control-allow-origin"), ORIGIN);
    let exposed = listed(&get("access-control-expose-headers"));
    for name in ["x-request-id", "x-ledger-position", "etag", "retry-after"] {
        assert!(exposed.contains(&name.into()), "{name} in {exposed:?}");
    }
}

#[tokio::test]
async fn an_unlisted_origin_gets_no_cors_headers_and_never_a_5xx() {
    let app = spawn_app_with_env(&[("LEDGER_CORS_ORIGINS", ORIGIN)]).await;
    let (_, admin) = agency();
    for origin in [
        "https://evil.example.test",
        "null",
        "https://desk.example.test.evil",
    ] {
        let reply = preflight(&app, "/api/v1/bookings", origin, "POST").await;
        assert!(
            reply.status().as_u16() < 500,
            "{origin}: {}",
            reply.status()
        );
        assert!(
            !reply
                .headers()
                .keys()
                .any(|name| name.as_str().starts_with("access-control-")),
            "{origin}: {:?}",
            reply.headers()
        );
        let read = app
            .send(
                "GET",
                "/api/v1/properties",
                Some(&admin),
                None,
                &[("origin", origin)],
            )
            .await;
        assert_eq!(read.status, StatusCode::OK);
        assert!(read.headers.get("access-control-allow-origin").is_none());
    }
    // An unknown route from a listed origin is not a 5xx either.
    let unknown = preflight(&app, "/api/v1/nothing-here", ORIGIN, "GET").await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn without_listed_origins_no_reply_carries_cors_headers() {
    let app = spawn_app().await;
    let reply = preflight(&app, "/api/v1/bookings", ORIGIN, "POST").await;
    assert!(reply.status().as_u16() < 500);
    assert!(reply.headers().get("access-control-allow-origin").is_none());
}

// ------------------------------------------------------- conditional writes

fn etag(reply: &Reply) -> &str {
    reply
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A property of a new agency with one booking of `[check_in, check_out)`:
/// the app, the admin's token, the property and the booking's path.
async fn app_with_booking_path(check_in: &str, check_out: &str) -> (TestApp, String, Uuid, String) {
    let (app, _, admin, property, (booking, _)) = app_with_booking(check_in, check_out).await;
    (app, admin, property, format!("/api/v1/bookings/{booking}"))
}

/// A GET of `path` that the client already holds at `etag` (`If-None-Match`).
async fn get_if_none_match(app: &TestApp, path: &str, token: &str, etag: &str) -> Reply {
    let headers = [("if-none-match", etag)];
    app.send("GET", path, Some(token), None, &headers).await
}

async fn patch_if(app: &TestApp, path: &str, token: &str, version: &str, body: Value) -> Reply {
    app.send(
        "PATCH",
        path,
        Some(token),
        Some(&body),
        &[("if-match", version)],
    )
    .await
}

#[tokio::test]
async fn of_two_edits_from_the_same_version_exactly_one_wins() {
    let (app, admin, property) = app_with_property().await;
    let booking = app
        .reserve(&admin, property, "2031-03-01", "2031-03-04")
        .await;
    assert_eq!(booking.status, StatusCode::CREATED);
    assert_eq!(etag(&booking), "\"1\"");
    let path = format!("/api/v1/bookings/{}", booking.id());

    let (first, second) = tokio::join!(
        patch_if(
            &app,
            &path,
            &admin,
            "\"1\"",
            json!({"notes": "late arrival"})
        ),
        patch_if(
            &app,
            &path,
            &admin,
            "\"1\"",
            json!({"notes": "early arrival"})
        ),
    );
    let (winner, loser) = match (first.status, second.status) {
        (StatusCode::OK, StatusCode::PRECONDITION_FAILED) => (first, second),
        (StatusCode::PRECONDITION_FAILED, StatusCode::OK) => (second, first),
        other => panic!(
            "exactly one edit wins: {other:?} {:?} {:?}",
            first.body, second.body
        ),
    };
    assert_eq!(etag(&winner), "\"2\"");
    assert_error(&loser, StatusCode::PRECONDITION_FAILED, "VERSION_MISMATCH");
    let current = &loser.body["error"]["details"]["current"];
    assert_eq!(current["version"], 2);
    assert_eq!(current["notes"], winner.body["notes"]);
    assert_eq!(current["id"], winner.body["id"]);
    assert_eq!(app.count_events("booking.modified").await, 1);
}

#[tokio::test]
async fn a_channel_booking_leaves_versions_alone_and_a_stale_version_is_refused() {
    let (app, admin, property, booking_path) =
        app_with_booking_path("2031-05-01", "2031-05-03").await;
    let property_path = format!("/api/v1/properties/{property}");
    let seen = app.read(&property_path, &admin).await;
    assert_eq!(etag(&seen), "\"1\"");

    // A channel books other nights of the same property meanwhile.
    created(
        app.reserve_with(
            &admin,
            property,
            "2031-06-01",
            "2031-06-05",
            json!({"channel": "airbnb", "external_ref": "HMABC123"}),
        )
        .await,
    );

    // Neither the booking's nor the property's version moved.
    ok(patch_if(&app, &booking_path, &admin, "\"1\"", json!({"adults": 3})).await);
    let renamed = ok(patch_if(
        &app,
        &property_path,
        &admin,
        "\"1\"",
        json!({"name": "Casa Nova"}),
    )
    .await);
    assert_eq!(etag(&renamed), "\"2\"");

    // Now the first version is stale: refused, with the property as it is.
    let events = app.property_events(property).await;
    let stale = patch_if(
        &app,
        &property_path,
        &admin,
        "\"1\"",
        json!({"name": "Casa Velha"}),
    )
    .await;
    assert_error(&stale, StatusCode::PRECONDITION_FAILED, "VERSION_MISMATCH");
    assert_eq!(stale.body["error"]["details"]["current"]["version"], 2);
    assert_eq!(
        stale.body["error"]["details"]["current"]["name"],
        "Casa Nova"
    );
    for action in [
        format!("{property_path}/archive"),
        format!("{booking_path}/cancel"),
    ] {
        let stale = [("if-match", "\"1\"")];
        let reply = app.post_with(&action, &admin, json!({}), &stale).await;
        assert_error(&reply, StatusCode::PRECONDITION_FAILED, "VERSION_MISMATCH");
    }
    assert_eq!(
        app.property_events(property).await,
        events,
        "nothing appended"
    );

    for malformed in ["1", "W/\"2\"", "\"two\"", "\"1\", \"2\""] {
        let reply = patch_if(
            &app,
            &property_path,
            &admin,
            malformed,
            json!({"name": "X"}),
        )
        .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
}

#[tokio::test]
async fn a_412_is_kept_for_its_idempotency_key() {
    let (app, admin, property) = app_with_property().await;
    let path = format!("/api/v1/properties/{property}");
    let headers = [("if-match", "\"7\""), ("idempotency-key", "edit-42")];
    let body = json!({"name": "Casa"});
    let first = app
        .send("PATCH", &path, Some(&admin), Some(&body), &headers)
        .await;
    assert_error(&first, StatusCode::PRECONDITION_FAILED, "VERSION_MISMATCH");
    let again = app
        .send("PATCH", &path, Some(&admin), Some(&body), &headers)
        .await;
    assert_eq!(again.status, StatusCode::PRECONDITION_FAILED);
    // The first reply itself, as kept: its request id, not the retry's.
    assert_eq!(again.body, first.body);
    assert_ne!(
        again.headers.get("x-request-id"),
        first.headers.get("x-request-id")
    );
}

#[tokio::test]
async fn get_by_id_answers_304_while_the_version_is_the_one_named() {
    let (app, admin, property, path) = app_with_booking_path("2031-07-01", "2031-07-02").await;
    let first = app.read(&path, &admin).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(etag(&first), "\"1\"");

    let cached = get_if_none_match(&app, &path, &admin, "\"1\"").await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    assert_eq!(etag(&cached), "\"1\"");

    let cancel = app.post(&format!("{path}/cancel"), &admin, json!({})).await;
    assert_eq!(cancel.status, StatusCode::OK);
    let head = app.head().await;
    let current = format!("{path}?min_position={head}");
    let changed = get_if_none_match(&app, &current, &admin, "\"1\"").await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(etag(&changed), "\"2\"");
    assert_eq!(changed.body["status"], "cancelled");

    let property_path = format!("/api/v1/properties/{property}");
    let seen = app.read(&property_path, &admin).await;
    let cached = get_if_none_match(&app, &property_path, &admin, etag(&seen)).await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
}

// ----------------------------------------------------------- live updates

#[derive(Debug, Clone)]
struct SseEvent {
    id: i64,
    event: String,
    data: Value,
}

/// A minimal Server-Sent Events reader over a reqwest response.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(app: &TestApp, path: &str, token: &str, headers: &[(&str, &str)]) -> Sse {
        let mut request = app
            .client
            .get(format!("{}{path}", app.base))
            .bearer_auth(token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the stream opens");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Sse {
            response,
            buffer: String::new(),
        }
    }

    /// The next event within `within`, or `None`.
    async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(SseEvent {
                    id: id.unwrap_or(-1),
                    event,
                    data: serde_json::from_str(&data).unwrap_or(Value::Null),
                });
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(_) | Err(_) => return None,
            }
        }
    }

    /// Events until `count` are read (panics past 15 s).
    async fn take(&mut self, count: usize) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while events.len() < count {
            let event = self.next(Duration::from_secs(15)).await.unwrap_or_else(|| {
                panic!(
                    "only {} of {count} events arrived: {events:?}",
                    events.len()
                )
            });
            events.push(event);
        }
        events
    }
}

fn agency_of(event: &SseEvent) -> String {
    event.data["source"]
        .as_str()
        .and_then(|s| s.split('/').nth(2))
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn a_stream_carries_its_own_agencys_events_only_in_order() {
    let app = spawn_app().await;
    let (mine, admin) = agency();
    let (_, other) = agency();
    let mut stream = Sse::open(&app, "/api/v1/stream", &admin, &[]).await;

    let theirs = app.property(&other, None).await;
    app.reserve(&other, theirs, "2031-01-01", "2031-01-03")
        .await;
    let property = app.property(&admin, None).await;
    let b1 = app
        .reserve(&admin, property, "2031-01-01", "2031-01-03")
        .await;
    let b2 = app
        .reserve(&admin, property, "2031-01-05", "2031-01-07")
        .await;
    app.reserve(&other, theirs, "2031-02-01", "2031-02-03")
        .await;

    let events = stream.take(3).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "property.registered",
            "booking.reserved",
            "booking.reserved"
        ]
    );
    assert!(
        events.iter().all(|e| agency_of(e) == mine.to_string()),
        "{events:?}"
    );
    assert_eq!(events[1].data["subject"], b1.body["id"]);
    assert_eq!(events[2].data["subject"], b2.body["id"]);
    assert_eq!(events[2].data["type"], "ledger.booking.reserved");
    for event in &events {
        assert_eq!(event.data["ledgerposition"], event.id);
        assert_eq!(event.data["specversion"], "1.0");
    }
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e.data["ledgersequence"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(sequences, [1, 2, 3]);
    // The other agency's last write is not delivered here.
    assert!(stream.next(Duration::from_millis(700)).await.is_none());
}

#[tokio::test]
async fn a_resumed_stream_gets_exactly_the_events_in_between_even_across_a_restart() {
    let mut app = spawn_process().await;
    let (_, admin) = agency();
    let mut stream = Sse::open(&app, "/api/v1/stream", &admin, &[]).await;
    let property = app.property(&admin, None).await;
    let first = stream.take(1).await.remove(0);
    drop(stream);

    let mut written = Vec::new();
    let stays = [
        ("2031-08-01", "2031-08-02"),
        ("2031-08-03", "2031-08-04"),
        ("2031-08-05", "2031-08-06"),
    ];
    for (check_in, check_out) in stays {
        let reply = created(app.reserve(&admin, property, check_in, check_out).await);
        written.push(reply.body["position"].as_i64().unwrap_or(0));
    }
    app.kill();
    app.start().await;

    let last = first.id.to_string();
    let mut resumed = Sse::open(&app, "/api/v1/stream", &admin, &[("last-event-id", &last)]).await;
    let missed: Vec<i64> = resumed.take(3).await.iter().map(|e| e.id).collect();
    assert_eq!(missed, written);
    let later = app
        .reserve(&admin, property, "2031-09-01", "2031-09-02")
        .await;
    let next = resumed.take(1).await.remove(0);
    assert_eq!(
        Some(next.id),
        later.body["position"].as_i64(),
        "no double, no gap"
    );

    // ?from_position= does the same for clients that cannot set the header.
    let mut by_query = Sse::open(
        &app,
        &format!("/api/v1/stream?from_position={}", written[1]),
        &admin,
        &[],
    )
    .await;
    let ids: Vec<i64> = by_query.take(2).await.iter().map(|e| e.id).collect();
    assert_eq!(ids, [written[2], next.id]);
}

#[tokio::test]
async fn an_owner_streams_only_their_own_properties() {
    let app = spawn_app().await;
    let (agency_id, admin) = agency();
    let owner = token(agency_id, "owner", "owner-7");
    let theirs = app.property(&admin, Some("owner-7")).await;
    let not_theirs = app.property(&admin, Some("owner-8")).await;

    let mut stream = Sse::open(&app, "/api/v1/stream", &owner, &[]).await;
    app.reserve(&admin, not_theirs, "2031-10-01", "2031-10-03")
        .await;
    let (booked, _) = app.booked(&admin, theirs, "2031-10-01", "2031-10-03").await;
    app.reserve(&admin, not_theirs, "2031-10-05", "2031-10-07")
        .await;
    // A new stream starts at the reader's horizon, which a transaction still
    // open elsewhere can hold a little behind: the properties' registrations
    // may come first. Whatever comes is about the owner's property only.
    let source = format!("/agencies/{agency_id}/properties/{theirs}");
    loop {
        let event = stream.take(1).await.remove(0);
        assert_eq!(event.data["source"], source.as_str(), "{event:?}");
        if event.event == "booking.reserved" {
            assert_eq!(event.data["subject"], booked.to_string());
            break;
        }
    }
    assert!(stream.next(Duration::from_millis(700)).await.is_none());

    let refused = app
        .get(&format!("/api/v1/stream?property_id={not_theirs}"), &owner)
        .await;
    assert_error(&refused, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
    let operator = app.get("/api/v1/stream", &operator()).await;
    assert_error(&operator, StatusCode::FORBIDDEN, "FORBIDDEN");
    let bad = app.get("/api/v1/stream?from_position=-3", &admin).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
}

#[tokio::test]
async fn a_stream_ends_with_token_expired_when_its_token_expires() {
    let app = spawn_app().await;
    let agency_id = Uuid::new_v4();
    let short = token_with(
        json!({"sub": "staff-1", "agency_id": agency_id, "role": "staff", "exp": now_secs() + 2}),
        SECRET,
    );
    // The token in the query, as an EventSource sends it.
    let response = app
        .raw_get(&format!("/api/v1/stream?access_token={short}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = Sse {
        response,
        buffer: String::new(),
    };
    let last = stream
        .next(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(last.event, "token_expired");
    assert!(
        stream.next(Duration::from_secs(2)).await.is_none(),
        "the stream ended"
    );
}

#[tokio::test]
async fn open_streams_end_when_the_service_is_told_to_stop() {
    let app = spawn_process().await;
    let (_, admin) = agency();
    let mut stream = Sse::open(&app, "/api/v1/stream", &admin, &[]).await;
    let pid = app.pid().expect("the ledger runs") as i32;
    // SAFETY: a plain kill(2) of the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(
        stream.next(Duration::from_secs(10)).await.is_none(),
        "the stream ended"
    );
    eventually(Duration::from_secs(10), || async {
        match app.is_running() {
            true => Err("graceful shutdown waited on the stream"),
            false => Ok(()),
        }
    })
    .await;
}
