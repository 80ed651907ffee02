//! The Ops Console as the binary serves it: the page and its files with
//! their types and security headers, and `LEDGER_CONSOLE=off` removing it.
//! What the page does in a browser is tested by scripts/browser-tests.sh.

use crate::common;

use common::{spawn_app, spawn_app_with_env, Reply, TestApp};
use reqwest::StatusCode;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'none'";

/// The raw text of a GET (the console's files are not JSON).
async fn fetch(app: &TestApp, path: &str) -> (Reply, String) {
    let response = app.raw_get(path).await;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (
        Reply {
            status,
            body,
            headers,
        },
        text,
    )
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_console_page_is_served_with_a_strict_content_security_policy() {
    let app = spawn_app().await;
    let (reply, html) = fetch(&app, "/console/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(header(&reply, "content-type").starts_with("text/html"));
    assert_eq!(header(&reply, "content-security-policy"), CSP);
    assert_eq!(header(&reply, "x-content-type-options"), "nosniff");
    assert_eq!(header(&reply, "referrer-policy"), "no-referrer");
    assert!(html.contains(r#"<script type="module" src="console.js"></script>"#));
    // Nothing inline that the policy would have to allow.
    assert!(!html.contains("<style"), "no inline style element");
    assert!(!html.contains(" style="), "no style attribute");
    assert!(!html.contains("<script>"), "no inline script");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no outside file"
    );
}

#[tokio::test]
async fn the_console_files_have_their_content_types() {
    let app = spawn_app().await;
    for (path, kind) in [
        ("/console/console.js", "text/javascript"),
        ("/console/api.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let (reply, text) = fetch(&app, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(header(&reply, "content-type").starts_with(kind), "{path}");
        assert_eq!(header(&reply, "x-content-type-options"), "nosniff");
        assert_eq!(header(&reply, "content-security-policy"), CSP, "{path}");
        assert!(!text.is_empty(), "{path} has content");
    }
    let (missing, _) = fetch(&app, "/console/nothing-here.js").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let (outside, _) = fetch(&app, "/console/%2e%2e/Cargo.toml").await;
    assert_eq!(outside.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_console_without_a_trailing_slash_redirects_to_the_page() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let response = client
        .get(format!("{}/console", app.base))
        .send()
        .await
        .expect("answered");
    assert!(response.status().is_redirection());
    assert_eq!(
        response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some("/console/")
    );
}

#[tokio::test]
async fn ledger_console_off_removes_the_console() {
    let app = spawn_app_with_env(&[("LEDGER_CONSOLE", "off")]).await;
    for path in ["/console/", "/console/console.js", "/console"] {
        let (reply, _) = fetch(&app, path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
    }
    let (health, _) = fetch(&app, "/health").await;
    assert_eq!(health.status, StatusCode::OK, "the API still serves");
}
