//! The event stream per tenant: a nats-server configured with the block
//! `ledger nats-permissions` prints lets an agency's user consume that
//! agency's events through the channel kit, and nothing more: no consumer
//! on another agency's subjects, no plain subscription to them or to other
//! users' inboxes, no publishing on `ledger.>`.

use crate::common;

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use common::nats::NatsServer;
use common::{agency, created, eventually, spawn_app_with_env};
use ledger_infra::channel::{agency_durable, Binding, ChannelConsumer};
use ledger_infra::nats::{agency_inbox_prefix, connect_now_to, Endpoint};
use tokio::sync::mpsc;
use uuid::Uuid;

const PUBLISHER_PASSWORD: &str = "publisher-password-for-tests";
const AGENCY_USER: &str = "agency-a";
const AGENCY_PASSWORD: &str = "agency-password-for-tests";

/// The server's configuration: the ledger's own user (everything) and the
/// block the binary prints for agency `a`, pasted as an operator would.
fn server_config(a: Uuid) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["nats-permissions", "--agency", &a.to_string()])
        .args(["--user", AGENCY_USER, "--password", AGENCY_PASSWORD])
        .args(["--durable", "adapter", "--durable", "spare"])
        .output()
        .expect("run ledger nats-permissions");
    assert!(output.status.success(), "{output:?}");
    let block = String::from_utf8(output.stdout).expect("UTF-8");
    format!(
        "authorization {{\n  users = [\n    {{ user: \"ledger\", password: \"{PUBLISHER_PASSWORD}\" }}\n{block}  ]\n}}\n"
    )
}

fn url(nats: &NatsServer, user: &str, password: &str) -> String {
    format!("nats://{user}:{password}@127.0.0.1:{}", nats.port)
}

/// Server errors (permission violations) the client is told about.
async fn watched_client(
    nats: &NatsServer, a: Uuid,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (errors, received) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(
        AGENCY_USER.into(),
        AGENCY_PASSWORD.into(),
    )
    .custom_inbox_prefix(agency_inbox_prefix(a))
    .event_callback(move |event| {
        let errors = errors.clone();
        async move {
            if let async_nats::Event::ServerError(error) = event {
                let _ = errors.send(error.to_string());
            }
        }
    })
    .connect(format!("127.0.0.1:{}", nats.port))
    .await
    .expect("the agency's user logs in");
    (client, received)
}

/// Waits for a permission violation that names `subject`.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, kind: &str, subject: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut others = Vec::new();
    loop {
        let error = tokio::time::timeout_at(deadline, errors.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("no permission violation for {kind} to {subject}; only {others:?}")
            })
            .expect("the client is alive");
        let lower = error.to_lowercase();
        if lower.contains(&format!("permissions violation for {kind}")) && error.contains(subject) {
            return;
        }
        others.push(error);
    }
}

#[tokio::test]
async fn an_agency_user_consumes_its_own_events_and_nothing_else() {
    let (a, admin_a) = agency();
    let (b, admin_b) = agency();
    let nats = NatsServer::start_with_config(&server_config(a));
    let publisher_url = url(&nats, "ledger", PUBLISHER_PASSWORD);
    let app = spawn_app_with_env(&[("NATS_URL", publisher_url.as_str())]).await;

    let property_a = app.property(&admin_a, None).await;
    created(
        app.reserve(&admin_a, property_a, "2031-05-01", "2031-05-03")
            .await,
    );
    app.property(&admin_b, None).await;

    // The ledger logs in with the credentials in NATS_URL and publishes all three.
    let admin = connect_now_to(&Endpoint::url(&publisher_url), "test-admin")
        .await
        .expect("the publisher's user logs in");
    let js = jetstream::new(admin.clone());
    eventually(Duration::from_secs(20), || async {
        let published = match js.get_stream("LEDGER").await {
            Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if published >= 3 {
            Ok(())
        } else {
            Err(format!("the ledger did not publish: {}", app.log_text()))
        }
    })
    .await;

    // Agency A's adapter: credentials in the URL, its own inbox prefix.
    let endpoint = Endpoint::url(url(&nats, AGENCY_USER, AGENCY_PASSWORD))
        .inbox_prefix(agency_inbox_prefix(a));
    let client = connect_now_to(&endpoint, "agency-a-adapter")
        .await
        .expect("the agency's user logs in");
    let mut events = ChannelConsumer::bind(&client, Binding::for_agency(a, "adapter"))
        .await
        .expect("the agency's user binds its own durable");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("A's events arrive")
            .expect("the subscription is open")
            .expect("a ledger event");
        assert_eq!(delivery.event.agency_id, a, "{:?}", delivery.event.cloud);
        seen.push(delivery.event.cloud.event_type.clone());
        delivery.ack().await.expect("the agency's user may ack");
    }
    assert_eq!(
        seen,
        ["ledger.property.registered", "ledger.booking.reserved"]
    );
    // Nothing else is waiting for it: B's event is not in its consumer.
    let durable = agency_durable(a, "adapter");
    eventually(Duration::from_secs(10), || async {
        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_stream("LEDGER")
            .await
            .expect("the stream")
            .get_consumer(&durable)
            .await
            .expect("A's durable");
        let info = consumer.info().await.expect("consumer info");
        assert_eq!(info.num_pending, 0, "{info:?}");
        if info.num_ack_pending == 0 {
            Ok(())
        } else {
            Err(format!("acks not seen: {info:?}"))
        }
    })
    .await;

    // The same user, reaching for agency B or for the stream itself.
    let (client, mut errors) = watched_client(&nats, a).await;
    let spare = agency_durable(a, "spare");
    let binding = Binding::new(spare.clone()).agency(b);
    let filter = binding.filter_subject();
    assert!(filter.starts_with(&format!("ledger.{b}.")), "{filter}");
    let on_b = ChannelConsumer::bind(&client, binding).await;
    assert!(on_b.is_err(), "a consumer on B's subjects was created");
    violation(
        &mut errors,
        "publish",
        &format!("$JS.API.CONSUMER.CREATE.LEDGER.{spare}.{filter}\""),
    )
    .await;
    let stream = js.get_stream("LEDGER").await.expect("the stream");
    assert!(
        stream.consumer_info(&spare).await.is_err(),
        "no such consumer"
    );

    let _b_events = client
        .subscribe(format!("ledger.{b}.>"))
        .await
        .expect("the subscribe is sent");
    violation(&mut errors, "subscription", &format!("ledger.{b}.>")).await;
    let _inboxes = client.subscribe("_INBOX.>").await.expect("sent");
    violation(&mut errors, "subscription", "_INBOX.>").await;

    let forged = format!("ledger.{a}.{property_a}.booking.cancelled");
    client
        .publish(forged.clone(), "{}".into())
        .await
        .expect("the publish is sent");
    client.flush().await.expect("flushed");
    violation(&mut errors, "publish", &forged).await;
    assert!(
        stream
            .get_last_raw_message_by_subject(&forged)
            .await
            .is_err(),
        "the forged event reached the stream"
    );
}
