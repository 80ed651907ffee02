//! R11 (docs/quality.md): feed URLs naming loopback, private, link-local and
//! metadata addresses are never fetched: named directly (refused at
//! registration), by a DNS name that resolves inside when the feed runs,
//! or by a redirect from an allowed channel. Each case has a channel of the
//! test's own listening where the URL points, and asserts it saw nothing.

use crate::channel;
use crate::common;

use channel::{all_ran, feeds_when, register, Answer, Channel, EMPTY_CALENDAR};
use common::{agency, app_with_property, assert_error, spawn_app, spawn_app_with_env};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn feed_urls_naming_inside_addresses_are_refused_at_registration() {
    let (app, admin, property) = app_with_property().await;
    let inside = Channel::start(Answer::feed(EMPTY_CALENDAR)).await;
    let feeds = format!("/api/v1/properties/{property}/ical-feeds");
    let port = inside.port;
    let urls = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::1]:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://192.168.1.1/feed.ics".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://0.0.0.0/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        "http://[fd00::1]/".to_owned(),
        "http://[fe80::1]/".to_owned(),
        format!("http://localhost:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("https://localhost:{port}/"),
        "ftp://example.com/feed.ics".to_owned(),
    ];
    for url in &urls {
        let reply = app.post(&feeds, &admin, json!({ "url": url })).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(
            reply.body["error"]["details"]["field"], "url",
            "{url}: {:?}",
            reply.body
        );
    }
    let listed = app.get(&feeds, &admin).await;
    assert_eq!(listed.body["items"], json!([]));
    assert_eq!(inside.requests(), 0, "nothing was fetched");
}

#[tokio::test]
async fn a_name_that_resolves_inside_when_the_feed_runs_is_not_fetched() {
    let app = spawn_app().await;
    let inside = Channel::start(Answer::feed(EMPTY_CALENDAR)).await;
    let (agency_id, admin) = agency();
    let property = app.property(&admin, None).await;
    // As if `localhost` had resolved to a public address at registration:
    // the row is written directly, and the name resolves inside now.
    let mut db = app.db().await;
    sqlx::query(
        "INSERT INTO ical_feeds (feed_id, agency_id, property_id, url, interval_minutes)
         VALUES ($1, $2, $3, $4, 60)",
    )
    .bind(Uuid::now_v7())
    .bind(agency_id)
    .bind(property)
    .bind(inside.url("localhost", "/calendar.ics"))
    .execute(&mut db)
    .await
    .expect("insert the feed");

    let items = feeds_when(&app, &admin, property, all_ran).await;
    assert_eq!(items[0]["last_error"], "address not allowed", "{items:?}");
    assert_eq!(inside.requests(), 0, "the inside channel saw no request");
}

#[tokio::test]
async fn a_redirect_from_an_allowed_channel_to_an_inside_address_is_not_followed() {
    let inside = Channel::start(Answer::feed(EMPTY_CALENDAR)).await;
    let allowed = Channel::start(Answer::redirect(inside.url("127.0.0.1", "/"))).await;
    // `localhost` is allow-listed (an on-premises channel); 127.0.0.1 is not.
    let app = spawn_app_with_env(&[("LEDGER_FEED_ALLOW_HOSTS", "localhost")]).await;
    let (_, admin) = agency();
    let property = app.property(&admin, None).await;
    register(
        &app,
        &admin,
        property,
        &allowed.url("localhost", "/calendar.ics"),
    )
    .await;

    let items = feeds_when(&app, &admin, property, all_ran).await;
    assert_eq!(items[0]["last_error"], "address not allowed", "{items:?}");
    assert_eq!(allowed.requests(), 1, "the allowed channel was asked");
    assert_eq!(inside.requests(), 0, "the redirect was not followed");

    // The same redirect by name (`localhost` again, allowed) is followed:
    // the refusal above is the address check, not redirects as such.
    allowed.answer(Answer::redirect(inside.url("localhost", "/")));
    let other = app.property(&admin, None).await;
    register(&app, &admin, other, &allowed.url("localhost", "/other.ics")).await;
    let items = feeds_when(&app, &admin, other, all_ran).await;
    assert!(items[0]["last_error"].is_null(), "{items:?}");
    assert_eq!(inside.requests(), 1);
}
