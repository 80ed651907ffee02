//! `GET /metrics` on its own listener (`LEDGER_METRICS_LISTEN`), in the
//! Prometheus text format: HTTP responses by status class, each tailer's
//! position and lag, parked properties, the head of the log, whether
//! PostgreSQL and NATS answer, and each durable consumer's pending count and
//! ack floor. A handful of series, so they are written out directly.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use ledger_projections::parking;
use ledger_projections::runner::Status;
use ledger_projections::Projection;

use crate::routes::health;
use crate::state::AppState;

/// Responses by status class: 1xx .. 5xx.
#[derive(Default)]
pub struct HttpCounters {
    classes: [AtomicU64; 5],
}

impl HttpCounters {
    fn record(&self, status: u16) {
        if let Some(counter) = self.classes.get(usize::from(status / 100).wrapping_sub(1)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts every response of the API router.
pub async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.http.record(response.status().as_u16());
    response
}

/// Serves `/metrics` until the process ends. A listener that cannot be bound
/// is logged, not fatal: the API matters more than its metrics.
pub async fn serve(state: AppState) {
    let address = state.config.metrics_listen;
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(%address, %error, "cannot listen for /metrics; serving without them");
            return;
        }
    };
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(address = %bound, "metrics on /metrics");
    }
    let router = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Err(error) = axum::serve(listener, router).await {
        tracing::warn!(%error, "the metrics listener stopped");
    }
}

/// A per-tailer gauge: its name, its help text and its value.
type TailerSeries = (&'static str, &'static str, fn(&Status) -> i64);

async fn metrics(State(state): State<AppState>) -> Response {
    let (db, nats) = tokio::join!(
        health::database_answers(&state),
        health::nats_answers(&state)
    );
    let mut out = String::new();
    header(
        &mut out,
        "ledger_http_responses_total",
        "counter",
        "API responses by status class.",
    );
    for (i, counter) in state.http.classes.iter().enumerate() {
        let _ = writeln!(
            out,
            "ledger_http_responses_total{{class=\"{}xx\"}} {}",
            i + 1,
            counter.load(Ordering::Relaxed)
        );
    }
    gauge(
        &mut out,
        "ledger_database_up",
        "Whether PostgreSQL answers.",
        db,
    );
    gauge(
        &mut out,
        "ledger_nats_up",
        "Whether NATS is connected.",
        nats,
    );
    if db {
        if let Ok(statuses) = ledger_projections::runner::statuses(&state.pool).await {
            let head = statuses.first().map_or(0, |s| s.checkpoint.head_position);
            header(
                &mut out,
                "ledger_log_head_position",
                "gauge",
                "The last position in the event log.",
            );
            let _ = writeln!(out, "ledger_log_head_position {head}");
            let series: [TailerSeries; 4] = [
                (
                    "ledger_tailer_position",
                    "Every event at or below it is applied (projections) or published (publisher).",
                    |s| s.checkpoint.position,
                ),
                (
                    "ledger_tailer_lag",
                    "Events between the head of the log and the tailer's position.",
                    |s| s.checkpoint.lag,
                ),
                (
                    "ledger_tailer_failed",
                    "1 when the tailer stopped at an event it cannot apply.",
                    |s| i64::from(s.checkpoint.status == "failed"),
                ),
                (
                    "ledger_projection_parked_properties",
                    "Properties whose events wait because one of them cannot be applied.",
                    |s| s.parked.len() as i64,
                ),
            ];
            for (metric, help, value) in series {
                header(&mut out, metric, "gauge", help);
                for s in &statuses {
                    let _ = writeln!(
                        out,
                        "{metric}{{name=\"{}\"}} {}",
                        s.checkpoint.name,
                        value(s)
                    );
                }
            }
        }
    }
    parkings(&mut out);
    if nats {
        consumer_lags(&mut out, &state).await;
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
        .into_response()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, up: bool) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {}", u8::from(up));
}

/// A per-consumer gauge: its name, its help text and its value.
type ConsumerSeries = (
    &'static str,
    &'static str,
    fn(&ledger_infra::channel::ConsumerLag) -> u64,
);

/// Every durable consumer of the event stream: what it has still to take
/// and what it has taken without acknowledging yet.
async fn consumer_lags(out: &mut String, state: &AppState) {
    let Some(client) = state.nats.as_ref() else {
        return;
    };
    let Ok(consumers) = ledger_infra::channel::consumers(client).await else {
        return;
    };
    let series: [ConsumerSeries; 3] = [
        (
            "ledger_consumer_pending",
            "Messages of the stream not yet delivered to the durable consumer.",
            |c| c.pending,
        ),
        (
            "ledger_consumer_ack_pending",
            "Messages delivered to the durable consumer and not yet acknowledged.",
            |c| c.ack_pending,
        ),
        (
            "ledger_consumer_ack_floor",
            "Stream sequence below which the durable consumer acknowledged everything.",
            |c| c.ack_floor,
        ),
    ];
    for (metric, help, value) in series {
        header(out, metric, "gauge", help);
        for c in &consumers {
            let _ = writeln!(out, "{metric}{{consumer=\"{}\"}} {}", c.name, value(c));
        }
    }
}

/// Properties this process parked, by projection and cause.
fn parkings(out: &mut String) {
    header(
        out,
        "ledger_projection_parkings_total",
        "counter",
        "Properties parked by this process since it started, by projection and cause.",
    );
    for projection in Projection::ALL {
        let (all, exclusion) = parking::parkings(projection);
        let name = projection.name();
        let _ = writeln!(
            out,
            "ledger_projection_parkings_total{{name=\"{name}\",cause=\"exclusion_violation\"}} {exclusion}"
        );
        let _ = writeln!(
            out,
            "ledger_projection_parkings_total{{name=\"{name}\",cause=\"other\"}} {}",
            all - exclusion
        );
    }
}
