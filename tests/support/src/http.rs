use std::future::Future;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::eventually;
use crate::routes::{BLOCKS, BOOKINGS, PROPERTIES};

/// One HTTP reply: status, JSON body (Null when empty or not JSON), headers.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn id(&self) -> Uuid {
        self.body["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("reply has no id: {:?}", self))
    }
}

/// Asserts that `reply` is an error of the contract: the status, the code, a
/// message, and a `request_id` equal to the `x-request-id` header.
#[track_caller]
pub fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "status of {:?}", reply.body);
    assert_eq!(reply.code(), code, "code of {:?}", reply.body);
    let error = &reply.body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message in {:?}",
        reply.body
    );
    let header = reply
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no x-request-id header on {:?}", reply));
    assert_eq!(
        error["request_id"].as_str(),
        Some(header),
        "request_id of {:?}",
        reply.body
    );
}

/// A client of one running ledger at `base` (`http://127.0.0.1:port`).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> Api {
        Api {
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
        }
    }

    /// A request to `path` with an optional bearer token and extra headers.
    pub fn request(
        &self, method: &str, path: &str, token: Option<&str>, headers: &[(&str, &str)],
    ) -> RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
    }

    pub async fn send(
        &self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.request(method, path, token, headers);
        if let Some(body) = body {
            request = request.json(body);
        }
        answer(request).await
    }

    /// Sends `body` as raw bytes (not necessarily JSON) with the given headers.
    pub async fn send_bytes(
        &self, method: &str, path: &str, token: Option<&str>, body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        answer(self.request(method, path, token, headers).body(body)).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send("GET", path, Some(token), None, &[]).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send("POST", path, Some(token), Some(&body), &[]).await
    }

    /// A POST with extra headers (`Idempotency-Key`, `Origin`, ...).
    pub async fn post_with(
        &self, path: &str, token: &str, body: Value, headers: &[(&str, &str)],
    ) -> Reply {
        self.send("POST", path, Some(token), Some(&body), headers)
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send("PATCH", path, Some(token), Some(&body), &[])
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send("PUT", path, Some(token), Some(&body), &[]).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.send("DELETE", path, Some(token), None, &[]).await
    }

    /// A GET of `path` as it comes (for bodies that are not JSON, and
    /// streams), failing only when nothing answers.
    pub async fn raw_get(&self, path: &str) -> reqwest::Response {
        let url = format!("{}{path}", self.base);
        let sent = self.client.get(url).send().await;
        sent.unwrap_or_else(|e| panic!("GET {path} is answered: {e}"))
    }

    /// GETs `path` until `done` holds for its body, for at most `within`;
    /// returns that body.
    pub async fn poll(
        &self, path: &str, token: Option<&str>, within: Duration, done: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(within, || async {
            let reply = self.send("GET", path, token, None, &[]).await;
            if done(&reply.body) {
                Ok(reply.body)
            } else {
                Err(format!(
                    "{path} never got there: {} {}",
                    reply.status, reply.body
                ))
            }
        })
        .await
    }

    /// Registers a property and returns its id.
    pub async fn property(&self, token: &str, owner_id: Option<&str>) -> Uuid {
        let body = json!({"name": "Sea View", "timezone": "Europe/Lisbon", "owner_id": owner_id});
        created(self.post(PROPERTIES, token, body).await).id()
    }

    /// `PATCH`es `property` with `changes` and returns the reply.
    pub async fn edit_property(&self, token: &str, property: Uuid, changes: Value) -> Reply {
        let path = format!("{PROPERTIES}/{property}");
        self.patch(&path, token, changes).await
    }

    /// `PATCH`es `booking` with `changes` and returns the reply.
    pub async fn edit_booking(&self, token: &str, booking: Uuid, changes: Value) -> Reply {
        let path = format!("{BOOKINGS}/{booking}");
        self.patch(&path, token, changes).await
    }

    /// A new iCal export secret of `property`: `(token, url)`.
    pub async fn export_token(&self, token: &str, property: Uuid) -> (String, String) {
        let path = format!("{PROPERTIES}/{property}/ical-token");
        let reply = created(self.post(&path, token, json!({})).await);
        let text = |field: &str| reply.body[field].as_str().expect(field).to_owned();
        (text("token"), text("url"))
    }

    /// Reserves `[check_in, check_out)` and returns the reply.
    pub async fn reserve(
        &self, token: &str, property: Uuid, check_in: &str, check_out: &str,
    ) -> Reply {
        self.reserve_with(token, property, check_in, check_out, json!({}))
            .await
    }

    /// Reserves `[check_in, check_out)`, which must be created; returns the
    /// booking's id and the position of its event.
    pub async fn booked(
        &self, token: &str, property: Uuid, check_in: &str, check_out: &str,
    ) -> (Uuid, i64) {
        let reply = created(self.reserve(token, property, check_in, check_out).await);
        let position = reply.body["position"].as_i64();
        let position = position.unwrap_or_else(|| panic!("no position in {:?}", reply.body));
        (reply.id(), position)
    }

    /// Reserves a booking with any extra fields merged into the default body.
    pub async fn reserve_with(
        &self, token: &str, property: Uuid, check_in: &str, check_out: &str, extra: Value,
    ) -> Reply {
        let mut body = reservation(property, check_in, check_out);
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                body.insert(key.clone(), value.clone());
            }
        }
        self.post(BOOKINGS, token, body).await
    }

    /// Reserves `[check_in, check_out)` as a tentative booking held until
    /// `expires_at` (RFC 3339), or for the default hold when None; returns
    /// the reply.
    pub async fn hold(
        &self, token: &str, property: Uuid, check_in: &str, check_out: &str,
        expires_at: Option<&str>,
    ) -> Reply {
        let mut tentative = json!({"status": "tentative"});
        if let Some(expires_at) = expires_at {
            tentative["hold_expires_at"] = json!(expires_at);
        }
        self.reserve_with(token, property, check_in, check_out, tentative)
            .await
    }

    /// Confirms a tentative `booking` and returns the reply.
    pub async fn confirm(&self, token: &str, booking: Uuid) -> Reply {
        self.act(token, booking, "confirm").await
    }

    /// Cancels `booking` without a reason and returns the reply.
    pub async fn cancel(&self, token: &str, booking: Uuid) -> Reply {
        self.act(token, booking, "cancel").await
    }

    /// Cancels `booking` for `reason` and returns the reply.
    pub async fn cancel_for(&self, token: &str, booking: Uuid, reason: &str) -> Reply {
        let path = format!("{BOOKINGS}/{booking}/cancel");
        self.post(&path, token, json!({"reason": reason})).await
    }

    /// Releases (deletes) `block` and returns the reply.
    pub async fn release(&self, token: &str, block: Uuid) -> Reply {
        self.delete(&format!("{BLOCKS}/{block}"), token).await
    }

    /// `POST /api/v1/bookings/{booking}/{action}` (confirm, cancel, check-in,
    /// check-out, no-show) with an empty body.
    pub async fn act(&self, token: &str, booking: Uuid, action: &str) -> Reply {
        let path = format!("{BOOKINGS}/{booking}/{action}");
        self.post(&path, token, json!({})).await
    }

    /// Blocks `[start, end)` for `reason` and returns the reply.
    pub async fn block(
        &self, token: &str, property: Uuid, start: &str, end: &str, reason: &str,
    ) -> Reply {
        self.post(
            BLOCKS,
            token,
            json!({"property_id": property, "start": start, "end": end, "reason": reason}),
        )
        .await
    }
}

/// The body of a reservation of `[check_in, check_out)` with the tests'
/// usual guest, the least `POST /api/v1/bookings` takes.
pub fn reservation(property: Uuid, check_in: &str, check_out: &str) -> Value {
    json!({
        "property_id": property,
        "check_in": check_in,
        "check_out": check_out,
        "guest": {"name": "Ana Guest", "email": "ana@example.com"},
    })
}

/// Asks `ask` until it answers `status`, for at most `within` (what a
/// refresh or another process makes visible); returns that reply.
pub async fn answers<F, Fut>(status: StatusCode, within: Duration, mut ask: F) -> Reply
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Reply>,
{
    eventually(within, || {
        let reply = ask();
        async move {
            let reply = reply.await;
            if reply.status == status {
                Ok(reply)
            } else {
                Err(format!(
                    "{} instead of {status}: {}",
                    reply.status, reply.body
                ))
            }
        }
    })
    .await
}

/// `reply`, once asserted to be 201 Created.
pub fn created(reply: Reply) -> Reply {
    with_status(StatusCode::CREATED, reply)
}

/// `reply`, once asserted to be 200 OK.
pub fn ok(reply: Reply) -> Reply {
    with_status(StatusCode::OK, reply)
}

/// `reply`, once asserted to have `status`.
pub fn with_status(status: StatusCode, reply: Reply) -> Reply {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    reply
}

async fn answer(request: RequestBuilder) -> Reply {
    let response = request.send().await.expect("the request is answered");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        body,
        headers,
    }
}
