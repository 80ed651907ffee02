//! How many idle live-update streams one `ledger serve` holds, at what
//! memory, and how long an event takes from commit to a stream's reader
//! while they are open (docs/benchmarks.md, "Live updates").
//!
//! Against a running ledger:
//! `LEDGER_URL=http://127.0.0.1:8080 LEDGER_PID=<pid> JWT_SECRET=... \
//!  cargo run --release -p ledger-api --example sse_streams -- 10000 200 20`
//! (idle streams, writes per second, seconds of writes). The idle streams
//! belong to one agency, the writes and the measuring streams to another:
//! every event still reaches every stream's filter through the one reader.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

const MEASURING_STREAMS: usize = 10;
const PROPERTIES: usize = 50;

fn token(agency: Uuid, role: &str) -> String {
    let secret = std::env::var("JWT_SECRET").expect("JWT_SECRET");
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    encode(
        &Header::default(),
        &json!({"sub": "bench", "agency_id": agency, "role": role, "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token")
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One idle stream: the request sent, the status line read, then nothing.
async fn open_idle(address: &str, token: &str) -> Option<TcpStream> {
    let mut socket = TcpStream::connect(address).await.ok()?;
    let request = format!(
        "GET /api/v1/stream HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 12];
    socket.read_exact(&mut head).await.ok()?;
    head.ends_with(b"200").then_some(socket)
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let idle = args.first().copied().unwrap_or(10_000);
    let rate = args.get(1).copied().unwrap_or(200);
    let seconds = args.get(2).copied().unwrap_or(20);
    let base = std::env::var("LEDGER_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let address = base.trim_start_matches("http://").to_owned();
    let pid = std::env::var("LEDGER_PID").unwrap_or_default();

    let before = rss_kib(&pid);
    let quiet = token(Uuid::new_v4(), "staff");
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(idle);
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..idle {
        let (address, quiet) = (address.clone(), quiet.clone());
        opening.spawn(async move { open_idle(&address, &quiet).await });
        if i % 500 == 499 {
            while let Some(done) = opening.join_next().await {
                sockets.extend(done.ok().flatten());
            }
        }
    }
    while let Some(done) = opening.join_next().await {
        sockets.extend(done.ok().flatten());
    }
    let held = sockets.len();
    // Let the server settle its buffers before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_streams = rss_kib(&pid);
    println!(
        "idle streams: {held} of {idle} open in {:.1} s; ledger RSS {} MiB before, {} MiB with them ({:.1} KiB per stream)",
        started.elapsed().as_secs_f64(),
        before / 1024,
        with_streams / 1024,
        (with_streams.saturating_sub(before)) as f64 / held.max(1) as f64
    );

    // Commit -> receipt, with the idle streams open.
    let agency = Uuid::new_v4();
    let admin = token(agency, "admin");
    let client = reqwest::Client::new();
    // Writes spread over properties, as a real agency's are: one
    // property's commands are decided one at a time.
    let mut properties = Vec::new();
    for _ in 0..PROPERTIES {
        let property: Value = client
            .post(format!("{base}/api/v1/properties"))
            .bearer_auth(&admin)
            .json(&json!({"name": "Bench"}))
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("a property");
        properties.push(property["id"].as_str().unwrap_or_default().to_owned());
    }
    let (latencies_tx, mut latencies_rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    for _ in 0..MEASURING_STREAMS {
        let response = client
            .get(format!("{base}/api/v1/stream"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("a measuring stream");
        let tx = latencies_tx.clone();
        tokio::spawn(async move {
            let mut response = response;
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let received = Utc::now();
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let data = block.lines().find_map(|l| l.strip_prefix("data:"));
                    let time = data
                        .and_then(|d| serde_json::from_str::<Value>(d.trim()).ok())
                        .and_then(|v| v["time"].as_str().map(str::to_owned))
                        .and_then(|t| t.parse::<DateTime<Utc>>().ok());
                    if let Some(time) = time {
                        let _ = tx.send(
                            (received - time).num_microseconds().unwrap_or(0) as f64 / 1000.0,
                        );
                    }
                }
            }
        });
    }
    drop(latencies_tx);
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    let mut writes = tokio::task::JoinSet::new();
    let first = chrono::NaiveDate::from_ymd_opt(2030, 1, 1).expect("a date");
    for i in 0..total {
        ticker.tick().await;
        let (client, base, admin, property_id) = (
            client.clone(),
            base.clone(),
            admin.clone(),
            properties[i % PROPERTIES].clone(),
        );
        let check_in = first + chrono::Days::new(2 * (i / PROPERTIES) as u64);
        writes.spawn(async move {
            client
                .post(format!("{base}/api/v1/bookings"))
                .bearer_auth(&admin)
                .json(&json!({
                    "property_id": property_id,
                    "check_in": check_in,
                    "check_out": check_in + chrono::Days::new(1),
                    "guest": {"name": "Bench Guest"},
                }))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    let mut created = 0;
    while let Some(done) = writes.join_next().await {
        created += usize::from(matches!(done, Ok(Ok(201))));
    }
    let expected = created * MEASURING_STREAMS;
    let mut latencies = Vec::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.len() < expected && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), latencies_rx.recv()).await {
            Ok(Some(ms)) => latencies.push(ms),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "commit -> receipt: {} writes at {rate}/s ({created} created), {} receipts on {MEASURING_STREAMS} streams; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        total,
        latencies.len(),
        at(0.50),
        at(0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "ledger RSS after the writes, {} idle streams still open: {} MiB",
        sockets.len(),
        rss_kib(&pid) / 1024
    );
}
