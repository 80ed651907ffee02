//! The Ops Console: a static page (HTML, CSS, hand-written ES modules under
//! `api/console/`) compiled into the binary and served at `/console/`. It
//! talks to the service only through the public routes with the token the
//! user pastes; this module adds no route beyond the files themselves.
//!
//! Every response carries a strict Content-Security-Policy (nothing inline,
//! nothing from another origin), `nosniff` and `no-referrer`, so a script
//! injected into the page through data could neither run nor leak the
//! token. `LEDGER_CONSOLE=off` leaves the routes out (404).

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use include_dir::{include_dir, Dir};

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::state::AppState;

/// The page's files, compiled in (debug builds too, so tests serve what
/// production serves).
static FILES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/console");

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'none'";

/// The console's routes, or none when `LEDGER_CONSOLE=off`.
pub fn routes(config: &ServeConfig) -> Router<AppState> {
    if !config.console {
        return Router::new();
    }
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(|| async { file("index.html") }))
        .route(
            "/console/{*path}",
            get(|Path(path): Path<String>| async move { file(&path) }),
        )
}

fn file(path: &str) -> Response {
    let (Some(content_type), Some(found)) = (content_type(path), FILES.get_file(path)) else {
        return ApiError::NotFound.into_response();
    };
    let mut response = found.contents().into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    // The files change with the binary; a browser asks again each time.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The type of each kind of file the console ships; any other is not served.
fn content_type(path: &str) -> Option<&'static str> {
    let extension = path.rsplit_once('.')?.1;
    Some(match extension {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_file_has_a_content_type() {
        for file in FILES.files() {
            let path = file.path().to_string_lossy();
            assert!(content_type(&path).is_some(), "{path} has a type");
        }
        assert!(FILES.get_file("index.html").is_some());
    }
}
