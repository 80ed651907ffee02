//! Tokens from an identity provider, secret checks at start-up, and the
//! limits that keep one client or tenant from hurting the others, against
//! the real binary. The identity provider is a tiny HTTP server of the test
//! that publishes a JWKS document built from the fixed test keys in
//! tests/fixtures/jwks/ (generated once with openssl; test-only).

use crate::common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Json, Router};
use common::{agency, assert_error, now_secs, spawn_app_with_env, token, Reply, TestApp};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const PROPERTIES: &str = "/api/v1/properties";

// ------------------------------------------------------------------ the IdP

/// A signing key of the test IdP and the `kid` it is published under.
#[derive(Clone)]
struct Signer {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
}

impl Signer {
    fn new(kid: &str, algorithm: Algorithm, fixture: &str) -> Self {
        let path = format!(
            "{}/../tests/fixtures/jwks/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        );
        let der = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_der(&der),
            Algorithm::ES256 => EncodingKey::from_ec_der(&der),
            _ => EncodingKey::from_ed_der(&der),
        };
        Self {
            kid: kid.to_owned(),
            algorithm,
            key,
        }
    }

    fn rsa(kid: &str) -> Self {
        Self::new(kid, Algorithm::RS256, "rsa-current.der")
    }

    /// The public half as a JWK, as an IdP publishes it.
    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.algorithm).expect("a JWK");
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).expect("a JWK as JSON")
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign a token")
    }
}

/// The test's identity provider: serves `/jwks.json` and counts its fetches.
struct Idp {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(signers: &[&Signer]) -> Self {
        let keys = Arc::new(Mutex::new(
            signers.iter().map(|s| s.jwk()).collect::<Vec<_>>(),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let app = Router::new().route(
            "/jwks.json",
            get({
                let (keys, fetches) = (keys.clone(), fetches.clone());
                move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let keys = keys.lock().expect("the keys").clone();
                    Json(json!({ "keys": keys }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the IdP");
        let address: SocketAddr = listener.local_addr().expect("the IdP's address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{address}/jwks.json"),
            keys,
            fetches,
        }
    }

    /// Publishes `signer`'s key too (a key rotation).
    fn publish(&self, signer: &Signer) {
        self.keys.lock().expect("the keys").push(signer.jwk());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn claims(agency: Uuid, role: &str) -> Value {
    json!({"sub": "idp-user", "agency_id": agency, "role": role, "exp": now_secs() + 3600})
}

async fn spawn_with_idp(idp: &Idp, env: &[(&str, &str)]) -> TestApp {
    let mut all = vec![("JWT_JWKS_URL", idp.url.as_str())];
    all.extend_from_slice(env);
    spawn_app_with_env(&all).await
}

#[track_caller]
fn assert_401(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {:?}",
        reply.body
    );
    assert_error(reply, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
}

// ------------------------------------------------------------------ JWKS

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_of_the_published_keys_are_accepted() {
    let rsa = Signer::rsa("rsa-1");
    let ec = Signer::new("ec-1", Algorithm::ES256, "ec-p256.der");
    let ed = Signer::new("ed-1", Algorithm::EdDSA, "ed25519.der");
    let idp = Idp::start(&[&rsa, &ec, &ed]).await;
    let app = spawn_with_idp(&idp, &[]).await;
    let agency = Uuid::new_v4();

    let property = app
        .property(&rsa.sign(&claims(agency, "admin")), None)
        .await;
    for signer in [&rsa, &ec, &ed] {
        let reply = app
            .read(
                &format!("{PROPERTIES}/{property}"),
                &signer.sign(&claims(agency, "staff")),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{:?}: {:?}",
            signer.algorithm,
            reply.body
        );
    }
    // The service's own HS256 tokens still work beside the IdP's.
    let (_, admin) = common::agency();
    assert_eq!(app.get(PROPERTIES, &admin).await.status, StatusCode::OK);
}

#[tokio::test]
async fn tokens_not_signed_by_the_published_key_of_their_kid_are_401() {
    let rsa = Signer::rsa("rsa-1");
    let ec = Signer::new("ec-1", Algorithm::ES256, "ec-p256.der");
    let idp = Idp::start(&[&rsa, &ec]).await;
    let app = spawn_with_idp(&idp, &[]).await;
    let (agency, _) = agency();
    let claims = claims(agency, "admin");

    // Signed by a key the IdP never published, under a published kid.
    let stranger = Signer::new("rsa-1", Algorithm::RS256, "rsa-stranger.der");
    assert_401(
        &app.get(PROPERTIES, &stranger.sign(&claims)).await,
        "stranger key",
    );

    // RS256 with the EC key's kid: the key decides the algorithm.
    let mismatched = Signer::new("ec-1", Algorithm::RS256, "rsa-current.der");
    assert_401(
        &app.get(PROPERTIES, &mismatched.sign(&claims)).await,
        "kid of another algorithm",
    );

    // RS/HS confusion: the RSA public key used as an HS256 secret, with and
    // without the RSA key's kid.
    let public_jwk = rsa.jwk();
    let public_pem = rsa_public_pem();
    for secret in [
        public_pem.as_bytes(),
        public_jwk["n"].as_str().unwrap_or("").as_bytes(),
    ] {
        for kid in [Some("rsa-1".to_owned()), None] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = kid.clone();
            let forged = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
                .expect("sign");
            assert_401(
                &app.get(PROPERTIES, &forged).await,
                &format!("HS256 confusion, kid {kid:?}"),
            );
        }
    }

    // alg none with a published kid.
    let unsigned = common::raw_token(json!({"alg": "none", "kid": "rsa-1"}), claims.clone(), "");
    assert_401(&app.get(PROPERTIES, &unsigned).await, "alg none");

    // The real key still works, so the 401s above are about the tokens.
    assert_eq!(
        app.get(PROPERTIES, &rsa.sign(&claims)).await.status,
        StatusCode::OK
    );
}

/// The PEM of rsa-current's public key, as anyone can derive from the JWKS.
fn rsa_public_pem() -> String {
    let path = format!(
        "{}/../tests/fixtures/jwks/rsa-current.der",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new("openssl")
        .args(["rsa", "-inform", "DER", "-in", &path, "-pubout"])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        // Without openssl, the JWK's modulus (tried too) stands for the key.
        _ => String::from("-----BEGIN PUBLIC KEY-----"),
    }
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_keys_at_most_once_a_minute() {
    let current = Signer::rsa("rsa-1");
    let idp = Idp::start(&[&current]).await;
    let app = spawn_with_idp(&idp, &[]).await;
    let (agency, _) = agency();
    let claims = claims(agency, "admin");

    let first = app.get(PROPERTIES, &current.sign(&claims)).await;
    assert_eq!(
        first.status,
        StatusCode::OK,
        "{:?}\n{}",
        first.body,
        app.log_text()
    );
    assert_eq!(idp.fetches(), 1, "the first IdP token fetches the keys");

    // Rotation: the IdP publishes a new key; its first token refetches.
    let next = Signer::new("rsa-2", Algorithm::RS256, "rsa-next.der");
    idp.publish(&next);
    assert_eq!(
        app.get(PROPERTIES, &next.sign(&claims)).await.status,
        StatusCode::OK
    );
    assert_eq!(idp.fetches(), 2, "an unknown kid refetches the keys");
    // The old key is cached: no fetch.
    assert_eq!(
        app.get(PROPERTIES, &current.sign(&claims)).await.status,
        StatusCode::OK
    );
    assert_eq!(idp.fetches(), 2);

    // Within the minute, unknown kids are 401 at once and fetch nothing,
    // even one the IdP has meanwhile published.
    let late = Signer::new("rsa-3", Algorithm::RS256, "rsa-stranger.der");
    idp.publish(&late);
    let started = Instant::now();
    for signer in [&late, &Signer::rsa("never-published")] {
        for _ in 0..5 {
            assert_401(
                &app.get(PROPERTIES, &signer.sign(&claims)).await,
                "unknown kid",
            );
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "unknown kids do not stall"
    );
    assert_eq!(idp.fetches(), 2, "at most one refetch a minute");
}

#[tokio::test]
async fn iss_and_aud_must_match_and_claims_may_be_nested() {
    let rsa = Signer::rsa("rsa-1");
    let idp = Idp::start(&[&rsa]).await;
    let app = spawn_with_idp(
        &idp,
        &[
            ("JWT_ISSUER", "https://idp.example.test/"),
            ("JWT_AUDIENCE", "ledger"),
            ("JWT_AGENCY_CLAIM", "app_metadata.agency_id"),
            ("JWT_ROLE_CLAIM", "app_metadata.roles"),
        ],
    )
    .await;
    let agency = Uuid::new_v4();
    let nested = |iss: &str, aud: Value| {
        json!({
            "sub": "idp-user", "iss": iss, "aud": aud, "exp": now_secs() + 3600,
            "app_metadata": {"agency_id": agency, "roles": ["viewer", "admin"]},
        })
    };
    let good = nested("https://idp.example.test/", json!(["ledger", "other"]));
    let property = app.property(&rsa.sign(&good), None).await;
    app.read_ok(&format!("{PROPERTIES}/{property}"), &rsa.sign(&good))
        .await;

    let wrong_iss = nested("https://evil.example.test/", json!("ledger"));
    assert_401(
        &app.get(PROPERTIES, &rsa.sign(&wrong_iss)).await,
        "wrong iss",
    );
    let wrong_aud = nested("https://idp.example.test/", json!("someone-else"));
    assert_401(
        &app.get(PROPERTIES, &rsa.sign(&wrong_aud)).await,
        "wrong aud",
    );
    let mut no_aud = good.clone();
    no_aud.as_object_mut().map(|c| c.remove("aud"));
    assert_401(&app.get(PROPERTIES, &rsa.sign(&no_aud)).await, "no aud");
    // The claims at the top level are not where the configuration says.
    let flat = json!({
        "sub": "idp-user", "iss": "https://idp.example.test/", "aud": "ledger",
        "exp": now_secs() + 3600, "agency_id": agency, "role": "admin",
    });
    assert_401(
        &app.get(PROPERTIES, &rsa.sign(&flat)).await,
        "claims not nested",
    );

    // HS256 tokens are held to the same iss/aud.
    assert_401(
        &app.get(PROPERTIES, &token(agency, "admin", "u")).await,
        "HS256 without iss/aud",
    );
    let hs = common::token_with(good, common::SECRET);
    assert_eq!(app.get(PROPERTIES, &hs).await.status, StatusCode::OK);
}

// ------------------------------------------------------------------ secrets

/// Runs `ledger serve` with `env` and returns its exit success and stderr;
/// fails the test if it is still running after 20 s.
fn serve_exit(env: &[(&str, &str)]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .arg("serve")
        .env_remove("JWT_SECRET")
        .env_remove("JWT_JWKS_URL")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .env("LEDGER_LISTEN", "127.0.0.1:0")
        .env("LEDGER_METRICS_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the ledger binary");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return (status.success(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ledger serve did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_refuses_the_published_example_secret_a_short_one_and_no_key_at_all() {
    let example = include_str!("../.env.example")
        .lines()
        .find_map(|line| line.strip_prefix("JWT_SECRET="))
        .expect(".env.example has a JWT_SECRET line");

    let (ok, stderr) = serve_exit(&[("JWT_SECRET", example)]);
    assert!(!ok, "the .env.example secret is refused");
    assert!(
        stderr.contains(".env.example"),
        "the reason is given: {stderr}"
    );

    let (ok, stderr) = serve_exit(&[("JWT_SECRET", "0123456789")]);
    assert!(!ok, "a 10-byte secret is refused");
    assert!(
        stderr.contains("at least 32 bytes"),
        "the reason is given: {stderr}"
    );

    let (ok, stderr) = serve_exit(&[("JWT_JWKS_URL", "")]);
    assert!(!ok, "an empty JWT_JWKS_URL is refused");
    assert!(
        stderr.contains("JWT_JWKS_URL must be an http(s) URL"),
        "{stderr}"
    );

    let (ok, stderr) = serve_exit(&[]);
    assert!(!ok, "neither JWT_SECRET nor JWT_JWKS_URL is refused");
    assert!(
        stderr.contains("JWT_SECRET") && stderr.contains("JWT_JWKS_URL"),
        "{stderr}"
    );
}

// ------------------------------------------------------------------ limits

/// Sends a POST whose body trickles in one byte every 200 ms and returns
/// the raw answer (status line, headers and body).
async fn trickle_post(app: &TestApp, token: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let head = format!(
        "POST {PROPERTIES} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 200\r\n\r\n{{"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..199 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|length| body.len() >= length) {
                break;
            }
        }
    }
    trickle.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_client_trickling_its_body_is_answered_busy_within_the_body_timeout() {
    let app = spawn_app_with_env(&[("LEDGER_BODY_TIMEOUT", "1s")]).await;
    let (_, admin) = agency();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), trickle_post(&app, &admin))
        .await
        .expect("an answer, not a held connection");
    let elapsed = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"code\":\"BUSY\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_get_busy_at_once() {
    let app = Arc::new(spawn_app_with_env(&[("LEDGER_MAX_IN_FLIGHT", "2")]).await);
    let (_, admin) = agency();
    // Four reads at once that would each wait 5 s for a position the log
    // never reaches: two hold the two slots, two are shed at once.
    let reads: Vec<_> = (0..4)
        .map(|_| {
            let (app, admin) = (app.clone(), admin.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let reply = app
                    .get(&format!("{PROPERTIES}?min_position=999999999"), &admin)
                    .await;
                (reply, started.elapsed())
            })
        })
        .collect();
    let mut shed = 0;
    for read in reads {
        let (reply, elapsed) = read.await.expect("a read");
        if reply.code() == "BUSY" {
            assert_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "BUSY");
            assert_eq!(
                reply
                    .headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
                Some("1")
            );
            assert!(
                elapsed < Duration::from_secs(2),
                "shed after {elapsed:?}, not at once"
            );
            shed += 1;
        } else {
            assert_error(
                &reply,
                StatusCode::SERVICE_UNAVAILABLE,
                "PROJECTION_LAGGING",
            );
        }
    }
    assert_eq!(shed, 2, "the two reads past the cap are shed");
    // The slots are free again.
    assert_eq!(app.get(PROPERTIES, &admin).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_agency_over_its_rate_gets_429_while_another_agency_passes() {
    // Per minute, so that a slow machine cannot refill the bucket mid-test.
    let app = spawn_app_with_env(&[("LEDGER_RATE_LIMIT", "5/m,burst=5")]).await;
    let (_, busy_agency) = agency();
    let (_, quiet_agency) = agency();
    for n in 1..=5 {
        let reply = app.get(PROPERTIES, &busy_agency).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {n}: {:?}",
            reply.body
        );
    }
    let limited = app.get(PROPERTIES, &busy_agency).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    let retry_after: u64 = limited
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=12).contains(&retry_after), "Retry-After {retry_after}");

    assert_eq!(
        app.get(PROPERTIES, &quiet_agency).await.status,
        StatusCode::OK
    );
    // Requests without a valid token are not counted against any agency.
    assert_401(&app.get(PROPERTIES, "not-a-token").await, "garbage token");
}
