//! Resync and drift-check requests (docs/api.md "Channel resync and drift
//! checks"; docs/channels.md).
//!
//! A request is a row of `resync_requests`. Nothing here publishes: the
//! active NATS publisher (`crate::publisher`) takes pending rows between its
//! batches of events and publishes each snapshot or checksum in log order
//! with the property's events, a few per batch (a token bucket), so that a
//! resync of every property never holds live events back for long.
//!
//! Requests come from the HTTP routes, `ledger resync`, the periodic
//! checksum round ([`queue_checksums`]) and, over NATS, from channel
//! adapters ([`answer_requests`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use futures::StreamExt;
use ledger_domain::PropertyCalendar;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::nats::Client;

/// Adapters ask for a snapshot of a property with a NATS request on
/// `ledger-resync.<agency_id>.<property_id>` (outside the `LEDGER` stream's
/// `ledger.>`); any serving process answers `{as_of_position}`.
pub const REQUEST_PREFIX: &str = "ledger-resync";
/// The queue group the serving processes answer in: one answer per request.
const QUEUE: &str = "ledger";

pub fn request_subject(agency_id: Uuid, property_id: Uuid) -> String {
    format!("{REQUEST_PREFIX}.{agency_id}.{property_id}")
}

/// What a resync request is answered with: the snapshot to come holds the
/// property's log at least up to this global position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    pub as_of_position: i64,
}

/// A request the publisher has still to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub id: i64,
    pub property_id: Uuid,
    pub kind: RequestKind,
    /// The publisher serves it once it has published the property this far.
    pub min_sequence: i64,
}

/// Stored as `snapshot` or `checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RequestKind {
    Snapshot,
    Checksum,
}

/// Asks for a snapshot of one property, as of at least what the log holds
/// now.
pub async fn request_snapshot(pool: &PgPool, property_id: Uuid) -> Result<Requested, sqlx::Error> {
    let as_of_position = sqlx::query_scalar!(
        r#"WITH head AS (
             SELECT coalesce(max(sequence), 0) AS sequence, coalesce(max(position), 0) AS position
               FROM events WHERE aggregate_type = $1 AND aggregate_id = $2)
         INSERT INTO resync_requests (property_id, kind, min_sequence)
         SELECT $3, 'snapshot', sequence FROM head
         RETURNING (SELECT position FROM head) AS "position!""#,
        PropertyCalendar::TYPE,
        property_id.to_string(),
        property_id,
    )
    .fetch_one(pool)
    .await?;
    Ok(Requested { as_of_position })
}

/// The agency a property belongs to, read from its first event; `None` for
/// a property the log does not know.
pub async fn agency_of(pool: &PgPool, property_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    let agency: Option<String> = sqlx::query_scalar!(
        "SELECT metadata->>'agency_id' FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence LIMIT 1",
        PropertyCalendar::TYPE,
        property_id.to_string(),
    )
    .fetch_optional(pool)
    .await?
    .flatten();
    Ok(agency.and_then(|a| a.parse().ok()))
}

/// Starts a resync of one property, one agency's properties or every
/// property: one request per property, served in the background.
pub async fn start_job(
    pool: &PgPool, agency_id: Option<Uuid>, property_id: Option<Uuid>,
) -> Result<Uuid, sqlx::Error> {
    let job_id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let queued = sqlx::query!(
        "INSERT INTO resync_requests (property_id, kind, job_id)
         SELECT property_id, 'snapshot', $1 FROM properties_view
          WHERE ($2::uuid IS NULL OR agency_id = $2) AND ($3::uuid IS NULL OR property_id = $3)
          ORDER BY property_id",
        job_id,
        agency_id,
        property_id,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query!(
        "INSERT INTO resync_jobs (job_id, agency_id, property_id, total) VALUES ($1, $2, $3, $4)",
        job_id,
        agency_id,
        property_id,
        queued as i64,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(job_id)
}

/// How far a resync job is (`GET /ops/resync/{job_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobProgress {
    /// `running` or `finished`.
    pub state: &'static str,
    pub processed: i64,
    pub total: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A resync job and what its requests have done so far.
struct JobRow {
    total: i64,
    started_at: DateTime<Utc>,
    processed: i64,
    last_done: Option<DateTime<Utc>>,
}

pub async fn progress(pool: &PgPool, job_id: Uuid) -> Result<Option<JobProgress>, sqlx::Error> {
    let row = sqlx::query_as!(
        JobRow,
        r#"SELECT j.total, j.started_at,
                (SELECT count(*) FROM resync_requests r WHERE r.job_id = j.job_id AND r.done_at IS NOT NULL) AS "processed!",
                (SELECT max(done_at) FROM resync_requests r WHERE r.job_id = j.job_id) AS last_done
           FROM resync_jobs j WHERE j.job_id = $1"#,
        job_id,
    )
    .fetch_optional(pool)
    .await?;
    let Some(JobRow {
        total,
        started_at,
        processed,
        last_done,
    }) = row
    else {
        return Ok(None);
    };
    let finished = processed >= total;
    Ok(Some(JobProgress {
        state: if finished { "finished" } else { "running" },
        processed,
        total,
        started_at,
        finished_at: finished.then(|| last_done.unwrap_or(started_at)),
    }))
}

/// Queues a checksum request for every property with claims near the
/// window, when a round is due: at most once per `interval` whatever the
/// number of processes (the round's row is locked, and its `last_run_at`
/// says when the last one ran), and not while the last round is still being
/// served. Returns how many were queued.
pub async fn queue_checksums(pool: &PgPool, interval: Duration) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let due: Option<Option<bool>> = sqlx::query_scalar!(
        "SELECT last_run_at + make_interval(secs => $1) <= now()
           FROM checksum_rounds WHERE name = 'availability' FOR UPDATE SKIP LOCKED",
        interval.as_secs_f64(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    match due {
        Some(Some(true)) => {}
        // Never run: the first round comes one interval after the first
        // publisher started, not at once.
        Some(None) => {
            round_ran(&mut tx).await?;
            tx.commit().await?;
            return Ok(0);
        }
        _ => return Ok(0),
    }
    let unfinished = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM resync_requests WHERE kind = 'checksum' AND done_at IS NULL) AS "unfinished!""#,
    )
    .fetch_one(&mut *tx)
    .await?;
    if unfinished {
        return Ok(0);
    }
    // Every time zone's "today" lies within a day of UTC's: the window here
    // is a little wider than any property's, and the publisher skips a
    // property that turns out to hold nothing in its own.
    let queued = sqlx::query!(
        "INSERT INTO resync_requests (property_id, kind)
         SELECT DISTINCT property_id, 'checksum' FROM inventory_ranges
          WHERE upper(during) > current_date - 1 AND lower(during) < current_date + 552",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    round_ran(&mut tx).await?;
    tx.commit().await?;
    Ok(queued)
}

/// Records that a checksum round ran now.
async fn round_ran(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE checksum_rounds SET last_run_at = now() WHERE name = 'availability'")
        .execute(conn)
        .await?;
    Ok(())
}

/// The oldest pending requests, at most `limit`.
pub async fn pending(conn: &mut PgConnection, limit: i64) -> Result<Vec<Pending>, sqlx::Error> {
    sqlx::query_as!(
        Pending,
        r#"SELECT id, property_id, kind AS "kind: RequestKind", min_sequence FROM resync_requests
          WHERE done_at IS NULL ORDER BY id LIMIT $1"#,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// Marks requests served.
pub async fn finish(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE resync_requests SET done_at = now() WHERE id = ANY($1)",
        ids
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Answers adapters' resync requests on `ledger-resync.<agency>.<property>`
/// until the connection ends (every serving process, in one queue group).
/// The property must be the named agency's: NATS permissions let an
/// agency's user publish under its own agency only (docs/security-nats.md).
pub async fn answer_requests(pool: PgPool, client: Client) {
    loop {
        match client
            .queue_subscribe(format!("{REQUEST_PREFIX}.*.*"), QUEUE.to_owned())
            .await
        {
            Ok(mut requests) => {
                while let Some(message) = requests.next().await {
                    let answer = answer(&pool, message.subject.as_str()).await;
                    if let Some(reply) = message.reply {
                        let body = serde_json::to_vec(&answer).unwrap_or_default();
                        if let Err(error) = client.publish(reply, body.into()).await {
                            tracing::debug!(%error, "could not answer a resync request");
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "cannot subscribe to resync requests yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn answer(pool: &PgPool, subject: &str) -> serde_json::Value {
    let mut tokens = subject.split('.').skip(1);
    let ids = (
        tokens.next().and_then(|t| t.parse::<Uuid>().ok()),
        tokens.next().and_then(|t| t.parse::<Uuid>().ok()),
    );
    let (Some(agency_id), Some(property_id)) = ids else {
        return serde_json::json!({"error": {"code": "VALIDATION_ERROR",
            "message": "the subject is ledger-resync.<agency_id>.<property_id>"}});
    };
    match agency_of(pool, property_id).await {
        Ok(Some(owner)) if owner == agency_id => match request_snapshot(pool, property_id).await {
            Ok(requested) => serde_json::json!(requested),
            Err(error) => {
                tracing::warn!(%error, %property_id, "resync request not recorded");
                serde_json::json!({"error": {"code": "DATABASE_UNAVAILABLE",
                    "message": "the ledger cannot record the request now"}})
            }
        },
        Ok(_) => serde_json::json!({"error": {"code": "PROPERTY_NOT_FOUND",
            "message": "no such property in this agency"}}),
        Err(error) => {
            tracing::warn!(%error, "resync request not checked");
            serde_json::json!({"error": {"code": "DATABASE_UNAVAILABLE",
                    "message": "the ledger cannot record the request now"}})
        }
    }
}
