//! A channel's feed server for the black-box tests of the iCal import: it
//! answers every request with the [`Answer`] it holds, and counts the
//! requests it saw and the most it was serving at once.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the channel answers.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status line after `HTTP/1.1 `, e.g. `200 OK`.
    pub status: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long the channel takes before it answers.
    pub delay: Duration,
}

impl Answer {
    /// A calendar, at once.
    pub fn feed(body: impl Into<String>) -> Answer {
        Answer {
            status: "200 OK".into(),
            headers: vec![("content-type".into(), "text/calendar".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// A redirect to `location`.
    pub fn redirect(location: impl Into<String>) -> Answer {
        Answer {
            status: "302 Found".into(),
            headers: vec![("location".into(), location.into())],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    /// Any status line and body, as text/html.
    pub fn page(status: &str, body: &str) -> Answer {
        Answer {
            status: status.into(),
            headers: vec![("content-type".into(), "text/html".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

pub struct Channel {
    pub port: u16,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
    serving: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

impl Channel {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start(answer: Answer) -> Channel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the channel");
        let port = listener.local_addr().expect("an address").port();
        let channel = Channel {
            port,
            answer: Arc::new(Mutex::new(answer)),
            requests: Arc::default(),
            serving: Arc::default(),
            most_at_once: Arc::default(),
        };
        let (answer, requests, serving, most) = (
            channel.answer.clone(),
            channel.requests.clone(),
            channel.serving.clone(),
            channel.most_at_once.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let answer = answer.lock().expect("the answer").clone();
                let (requests, serving, most) = (requests.clone(), serving.clone(), most.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let now = serving.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(answer.delay).await;
                    let mut response = format!("HTTP/1.1 {}\r\n", answer.status);
                    for (name, value) in &answer.headers {
                        response.push_str(&format!("{name}: {value}\r\n"));
                    }
                    response.push_str(&format!(
                        "content-length: {}\r\nconnection: close\r\n\r\n{}",
                        answer.body.len(),
                        answer.body
                    ));
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                    serving.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        channel
    }

    /// `http://<host>:<port><path>`.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().expect("the answer") = answer;
    }

    /// Requests the channel has read so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The most requests it was answering at the same time.
    pub fn most_at_once(&self) -> usize {
        self.most_at_once.load(Ordering::SeqCst)
    }
}

/// A calendar with no events.
pub const EMPTY_CALENDAR: &str =
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Some Channel//EN\r\nEND:VCALENDAR\r\n";

/// The property's feeds as listed, once `done` holds for them (polled,
/// 60 s at most).
pub async fn feeds_when(
    app: &crate::common::TestApp, admin: &str, property: uuid::Uuid,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let reply = app
            .get(&format!("/api/v1/properties/{property}/ical-feeds"), admin)
            .await;
        assert_eq!(reply.status, reqwest::StatusCode::OK, "{:?}", reply.body);
        let items = reply.body["items"].as_array().cloned().unwrap_or_default();
        if done(&items) {
            return items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feeds did not get there in 60 s: {items:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every feed listed has run at least once.
pub fn all_ran(items: &[serde_json::Value]) -> bool {
    !items.is_empty() && items.iter().all(|f| !f["last_run_at"].is_null())
}

/// Registers `url` as a feed of the property; asserts the 201.
pub async fn register(
    app: &crate::common::TestApp, admin: &str, property: uuid::Uuid, url: &str,
) -> uuid::Uuid {
    let reply = app
        .post(
            &format!("/api/v1/properties/{property}/ical-feeds"),
            admin,
            serde_json::json!({ "url": url }),
        )
        .await;
    assert_eq!(
        reply.status,
        reqwest::StatusCode::CREATED,
        "{:?}",
        reply.body
    );
    reply.id()
}
