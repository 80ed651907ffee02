//! Load and consumer checks shared by the tests of the event stream
//! (stream.rs, cluster.rs): writers reserving under load, the publisher's
//! progress, and a channel-kit consumer that must see every event once, in
//! log order, with no gap per property.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, NaiveDate};
use ledger_infra::channel::{ChannelConsumer, ChannelError, Delivery, LedgerEvent};
use reqwest::StatusCode;
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use super::{agency, eventually, TestApp};

/// Waits until `count` writes were acknowledged, as `acknowledged` counts
/// them (the loads of these tests and of the drills).
pub async fn acknowledged(within: Duration, count: usize, acknowledged: impl Fn() -> usize) {
    eventually(within, || async {
        match acknowledged() {
            done if done >= count => Ok(()),
            done => Err(format!("only {done} of {count} writes acknowledged")),
        }
    })
    .await
}

/// Waits until the publisher's checkpoint is the head of the log; returns it.
pub async fn published(app: &TestApp, timeout: Duration) -> i64 {
    eventually(timeout, || async {
        let (position, head): (i64, i64) = sqlx::query_as(
            "SELECT position, (SELECT coalesce(max(position), 0) FROM events)
               FROM projection_checkpoints WHERE name = 'publisher'",
        )
        .fetch_one(&mut app.db().await)
        .await
        .expect("read the publisher's checkpoint");
        if position == head {
            Ok(head)
        } else {
            Err(format!("the publisher is at {position} of {head}"))
        }
    })
    .await
}

/// The next delivery of the kit, within `timeout`; `None` when nothing came.
pub async fn next(consumer: &mut ChannelConsumer, timeout: Duration) -> Option<Delivery> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Err(_) => return None,
            Ok(None) => panic!("the subscription ended"),
            Ok(Some(Ok(delivery))) => return Some(delivery),
            // A pull that failed (e.g. a missed heartbeat): the consumer goes on.
            Ok(Some(Err(ChannelError::Nats(error)))) => eprintln!("pull failed: {error}"),
            Ok(Some(Err(error))) => panic!("{error}"),
        }
    }
}

/// Receives and acks `count` events, asserting that no delivery reports a
/// gap; then asserts nothing more arrives.
pub async fn receive_all(consumer: &mut ChannelConsumer, count: usize) -> Vec<LedgerEvent> {
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        let delivery = next(consumer, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("only {} of {count} events arrived", received.len()));
        assert_eq!(delivery.gap, None, "after {} events", received.len());
        received.push(delivery.event.clone());
        delivery.ack().await.expect("ack");
    }
    if let Some(extra) = next(consumer, Duration::from_millis(500)).await {
        panic!("an event beyond the log: {:?}", extra.event.cloud);
    }
    received
}

/// Every event once; per property in log order (ascending positions) and `1, 2, 3, ...`.
#[track_caller]
pub fn assert_in_log_order(events: &[LedgerEvent]) {
    let ids: HashSet<Uuid> = events.iter().map(LedgerEvent::id).collect();
    assert_eq!(ids.len(), events.len(), "an event id arrived twice");
    // The order the stream promises is per property (below). Across
    // properties it is the tail's (txid, position) order: a position is
    // taken when a row is inserted, and a transaction that took a lower one
    // can get its transaction id, and so its place in the tail, after
    // another's. Per property the primary key serialises the appends, so
    // there positions do ascend.
    // The last (position, sequence) of each property.
    let mut last: HashMap<Uuid, (i64, i64)> = HashMap::new();
    for event in events {
        let (position, sequence) = last
            .insert(event.property_id, (event.position(), event.sequence()))
            .unwrap_or((0, 0));
        assert!(
            position < event.position(),
            "property {}: position {} arrived after {position}",
            event.property_id,
            event.position()
        );
        assert_eq!(
            event.sequence(),
            sequence + 1,
            "property {} jumped from {sequence}",
            event.property_id
        );
    }
}

/// Writers reserving one-night stays, round robin over `properties`, until
/// stopped. Connection failures (the ledger being killed) are counted, not fatal.
pub struct Load {
    acknowledged: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stays: Stays,
    writers: tokio::task::JoinSet<()>,
}

/// The one-night stays the writers of a load take in turn until it stops:
/// the i-th is on property i mod n, two nights after the one before it
/// there, so no two overlap.
#[derive(Clone)]
pub struct Stays {
    properties: Arc<[Uuid]>,
    next: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Stays {
    pub fn new(properties: &[Uuid]) -> Stays {
        Stays {
            properties: properties.into(),
            next: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The next stay's property and night; None once the load stopped.
    pub fn next_stay(&self) -> Option<(Uuid, NaiveDate)> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.properties.len();
        let first = NaiveDate::from_ymd_opt(2030, 1, 1).expect("a date");
        Some((
            self.properties[i % count],
            first + Days::new(2 * (i / count) as u64),
        ))
    }

    /// Every writer ends at its next turn.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Load {
    pub fn start(app: &TestApp, token: &str, properties: &[Uuid], writers: usize) -> Load {
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let stays = Stays::new(properties);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..writers {
            let (client, token) = (app.client.clone(), token.to_owned());
            let url = format!("{}/api/v1/bookings", app.base);
            let (acknowledged, refused, stays) =
                (acknowledged.clone(), refused.clone(), stays.clone());
            tasks.spawn(async move {
                while let Some((property, night)) = stays.next_stay() {
                    let body = json!({
                        "property_id": property,
                        "check_in": night.to_string(),
                        "check_out": (night + Days::new(1)).to_string(),
                        "guest": {"name": "Stream Guest"},
                    });
                    let reply = client.post(&url).bearer_auth(&token).json(&body).send();
                    match reply.await {
                        Ok(r) if r.status() == StatusCode::CREATED => {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            });
        }
        Load {
            acknowledged,
            refused,
            stays,
            writers: tasks,
        }
    }

    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// `writers` writers over `properties` new properties of a new agency,
    /// once `warm_up` of their writes were acknowledged.
    pub async fn on_new_properties(
        app: &TestApp, properties: usize, writers: usize, warm_up: usize,
    ) -> Load {
        let (_, admin) = agency();
        let properties = self::properties(app, &admin, properties).await;
        let load = Load::start(app, &admin, &properties, writers);
        load.until(warm_up).await;
        load
    }

    /// Waits until `count` writes were acknowledged.
    pub async fn until(&self, count: usize) {
        acknowledged(Duration::from_secs(30), count, || self.acknowledged()).await
    }

    /// Stops the writers; returns (acknowledged, refused).
    pub async fn finish(mut self) -> (usize, usize) {
        self.stays.stop();
        while self.writers.join_next().await.is_some() {}
        (self.acknowledged(), self.refused.load(Ordering::Relaxed))
    }
}

pub async fn properties(app: &TestApp, token: &str, count: usize) -> Vec<Uuid> {
    let registered = futures::future::join_all((0..count).map(|_| app.property(token, None))).await;
    assert_eq!(registered.len(), count);
    registered
}
