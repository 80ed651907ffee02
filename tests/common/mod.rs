//! Shared helpers of the black-box tests: each test starts the real `ledger`
//! binary on a free port against a fresh PostgreSQL database and talks HTTP.
#![allow(dead_code)]

pub mod nats;
pub mod pg;
pub mod stream;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

pub const SECRET: &str = "test-secret-for-the-ledger-integration-tests";

pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/ledger".to_owned())
}

/// A connection to the server's maintenance database, to create and drop test databases.
async fn maintenance() -> PgConnection {
    let options = PgConnectOptions::from_str(&server_url())
        .expect("DATABASE_URL parses")
        .database("postgres");
    options
        .connect()
        .await
        .expect("PostgreSQL is reachable (run scripts/test.sh, which starts it)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct TestApp {
    pub base: String,
    pub port: u16,
    pub database_url: String,
    pub db_name: String,
    pub client: reqwest::Client,
    child: Option<Child>,
    log: PathBuf,
    /// Extra environment of the ledger process (e.g. `NATS_URL`), set on
    /// every (re)start after the defaults, so it can override them.
    pub env: Vec<(String, String)>,
}

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

pub async fn spawn_app() -> TestApp {
    spawn_app_with_env(&[]).await
}

/// `spawn_app` with extra environment for the ledger process.
pub async fn spawn_app_with_env(env: &[(&str, &str)]) -> TestApp {
    let db_name = format!("ledger_test_{}", Uuid::new_v4().simple());
    let mut conn = maintenance().await;
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&mut conn)
        .await
        .expect("create the test database");
    let database_url = PgConnectOptions::from_str(&server_url())
        .expect("DATABASE_URL parses")
        .database(&db_name)
        .to_url_lossy()
        .to_string();
    spawn_app_on(&database_url, &db_name, env).await
}

impl TestApp {
    /// Starts (or restarts) `ledger serve` on this app's port and database.
    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ledger"))
            .arg("serve")
            .env("DATABASE_URL", &self.database_url)
            .env("JWT_SECRET", SECRET)
            .env("LEDGER_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("LEDGER_METRICS_LISTEN", "127.0.0.1:0")
            .env("LEDGER_DB_POOL_SIZE", "16")
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the ledger binary");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "ledger exited with {status}: {}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
            let ok = self
                .client
                .get(format!("{}/health", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "ledger did not come up in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9: no graceful shutdown, nothing flushed by the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn db(&self) -> PgConnection {
        PgConnection::connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
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

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send("GET", path, Some(token), None, &[]).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send("POST", path, Some(token), Some(&body), &[]).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send("PATCH", path, Some(token), Some(&body), &[])
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.send("DELETE", path, Some(token), None, &[]).await
    }

    /// Registers a property and returns its id.
    pub async fn property(&self, token: &str, owner_id: Option<&str>) -> Uuid {
        let reply = self
            .post(
                "/api/v1/properties",
                token,
                json!({"name": "Sea View", "timezone": "Europe/Lisbon", "owner_id": owner_id}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.id()
    }

    /// Reserves `[check_in, check_out)` and returns the reply.
    pub async fn reserve(
        &self,
        token: &str,
        property: Uuid,
        check_in: &str,
        check_out: &str,
    ) -> Reply {
        self.post(
            "/api/v1/bookings",
            token,
            json!({
                "property_id": property,
                "check_in": check_in,
                "check_out": check_out,
                "guest": {"name": "Ana Guest", "email": "ana@example.com"},
            }),
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
        let db_name = self.db_name.clone();
        // Drop the database from a thread with its own runtime: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let mut conn = maintenance().await;
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            });
        })
        .join();
    }
}

/// A token signed like the service's own, with any claims.
pub fn token_with(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode a token")
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A valid one-hour token for a user of `agency` with `role`.
pub fn token(agency: Uuid, role: &str, sub: &str) -> String {
    token_with(
        json!({"sub": sub, "agency_id": agency, "role": role, "exp": now_secs() + 3600}),
        SECRET,
    )
}

/// An agency of its own for one test, with an admin token.
pub fn agency() -> (Uuid, String) {
    let agency = Uuid::new_v4();
    (agency, token(agency, "admin", "admin-1"))
}

/// A valid one-hour token of a platform operator (no agency).
pub fn operator() -> String {
    token_with(
        json!({"sub": "operator-1", "role": "operator", "exp": now_secs() + 3600}),
        SECRET,
    )
}

// ------------------------------------------------------------------ added helpers
// (used by write_side.rs and auth.rs; the helpers above are unchanged)

impl TestApp {
    /// Sends `body` as raw bytes (not necessarily JSON) with the given headers.
    pub async fn send_bytes(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
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

    /// Blocks `[start, end)` for `reason` and returns the reply.
    pub async fn block(
        &self,
        token: &str,
        property: Uuid,
        start: &str,
        end: &str,
        reason: &str,
    ) -> Reply {
        self.post(
            "/api/v1/availability/blocks",
            token,
            json!({"property_id": property, "start": start, "end": end, "reason": reason}),
        )
        .await
    }

    /// Reserves a booking with any extra fields merged into the default body.
    pub async fn reserve_with(
        &self,
        token: &str,
        property: Uuid,
        check_in: &str,
        check_out: &str,
        extra: Value,
    ) -> Reply {
        let mut body = json!({
            "property_id": property,
            "check_in": check_in,
            "check_out": check_out,
            "guest": {"name": "Ana Guest", "email": "ana@example.com"},
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                body.insert(key.clone(), value.clone());
            }
        }
        self.post("/api/v1/bookings", token, body).await
    }

    /// The position of the last committed event (0 for an empty log).
    pub async fn head(&self) -> i64 {
        sqlx::query_scalar("SELECT coalesce(max(position), 0)::bigint FROM events")
            .fetch_one(&mut self.db().await)
            .await
            .expect("read the log's head")
    }

    /// A GET that reads its own writes: `?min_position=` is the log's head,
    /// so the projections behind the read routes have caught up.
    pub async fn read(&self, path: &str, token: &str) -> Reply {
        let head = self.head().await;
        let separator = if path.contains('?') { '&' } else { '?' };
        self.get(&format!("{path}{separator}min_position={head}"), token)
            .await
    }

    /// How many events of `event_type` the whole log holds.
    pub async fn count_events(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(&mut self.db().await)
            .await
            .expect("count events")
    }

    /// How many events one property's stream holds.
    pub async fn property_events(&self, property: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
            .bind(property.to_string())
            .fetch_one(&mut self.db().await)
            .await
            .expect("count a property's events")
    }

    /// How many events the whole log holds.
    pub async fn total_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&mut self.db().await)
            .await
            .expect("count all events")
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

/// Unpadded base64url, as in JWTs (for hand-made tokens).
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A token with any header and claims, signed with `signature` as given
/// (e.g. empty for `alg: none`).
pub fn raw_token(header: Value, claims: Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

// ------------------------------------------------------------------ added helpers
// (used by faults.rs; the helpers above are unchanged)

/// `spawn_app_with_env` against a database that already exists at
/// `database_url` (e.g. on a private PostgreSQL a test starts and stops
/// itself), instead of a fresh database created on the shared server.
/// `db_name` must be unique: dropping the app runs `DROP DATABASE IF EXISTS`
/// of that name on the shared server, a no-op for a name that only exists
/// on the private one.
pub async fn spawn_app_on(database_url: &str, db_name: &str, env: &[(&str, &str)]) -> TestApp {
    let port = free_port();
    let log = std::env::temp_dir().join(format!("{db_name}.log"));
    let mut app = TestApp {
        base: format!("http://127.0.0.1:{port}"),
        port,
        database_url: database_url.to_owned(),
        db_name: db_name.to_owned(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client"),
        child: None,
        log,
        env: env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
    };
    app.start().await;
    app
}

impl TestApp {
    /// The process id of the running ledger, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the ledger process this app started is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// What the ledger process wrote to stderr so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
