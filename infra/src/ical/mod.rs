//! The iCal channel's I/O (RFC 5545), the reference channel adapter
//! (docs/ical.md):
//! - [`export`]: follows the stream with the channel kit into a table of held
//!   nights per property (rendered by `ledger_domain::ical::render`);
//! - [`fetch`]: fetches a feed by URL, only from public addresses (or
//!   allow-listed hosts), with errors in our own words;
//! - the per-property secrets of the export URLs and the table of feeds
//!   `ledger serve` imports periodically (this module).
//!
//! Parsing a feed and planning what an import changes are pure
//! (`ledger_domain::ical`); the import job that runs the feeds is
//! `ledger_projections::jobs::ical_import`.

pub mod export;
pub mod fetch;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// A new export secret: 64 hex digits (244 random bits from two UUIDv4s).
pub fn new_token() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// What is stored of a token: its SHA-256, in hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates or replaces the property's export secret; returns the new token.
/// The old one stops working at once.
pub async fn rotate_token(
    pool: &PgPool, agency_id: Uuid, property_id: Uuid, created_by: &str,
) -> Result<String, sqlx::Error> {
    let token = new_token();
    sqlx::query!(
        "INSERT INTO ical_tokens (property_id, agency_id, token_hash, created_by)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (property_id) DO UPDATE SET token_hash = EXCLUDED.token_hash,
             created_by = EXCLUDED.created_by, created_at = now()",
        property_id,
        agency_id,
        hash_token(&token),
        created_by,
    )
    .execute(pool)
    .await?;
    Ok(token)
}

/// Whether `token` is the property's current export secret.
pub async fn token_matches(
    pool: &PgPool, property_id: Uuid, token: &str,
) -> Result<bool, sqlx::Error> {
    let stored = sqlx::query_scalar!(
        "SELECT token_hash FROM ical_tokens WHERE property_id = $1",
        property_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(stored
        .is_some_and(|stored| constant_time_eq(stored.as_bytes(), hash_token(token).as_bytes())))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A feed `ledger serve` imports into a property every `interval_minutes`.
// Also the contract's view of a feed (`FeedView`), which names the feed
// `id` and leaves out the agency (the caller's own).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = FeedView))]
pub struct FeedRow {
    #[serde(rename = "id")]
    pub feed_id: Uuid,
    #[serde(skip_serializing)]
    pub agency_id: Uuid,
    pub property_id: Uuid,
    pub url: String,
    pub interval_minutes: i32,
    pub created_at: DateTime<Utc>,
    pub next_run_at: DateTime<Utc>,
    pub last_run_at: Option<DateTime<Utc>>,
    /// Why the last run failed, or which feed events it skipped.
    pub last_error: Option<String>,
    /// The last run's report: created, moved, released, skipped.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub last_result: Option<Value>,
}

/// A statement that reads feeds into [`FeedRow`]s: the feed's columns go
/// between `$head` and `$tail` (the macros take only literal text, so the
/// column list cannot be a `const`).
macro_rules! feed_query {
    ($head:literal, $tail:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            FeedRow,
            $head
                + " feed_id, agency_id, property_id, url, interval_minutes, created_at,
                    next_run_at, last_run_at, last_error, last_result "
                + $tail
            $(, $arg)*
        )
    };
}

/// Adds a feed, due at `now`; the same URL again only changes its interval.
/// The schedule's times (`now` here and in [`claim_due_feed`] and
/// [`record_run`]) are the application clock's, not the database's.
pub async fn add_feed(
    pool: &PgPool, agency_id: Uuid, property_id: Uuid, url: &str, interval_minutes: i32,
    now: DateTime<Utc>,
) -> Result<FeedRow, sqlx::Error> {
    feed_query!(
        "INSERT INTO ical_feeds (feed_id, agency_id, property_id, url, interval_minutes, next_run_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (property_id, url) DO UPDATE SET interval_minutes = EXCLUDED.interval_minutes
         RETURNING",
        "",
        Uuid::now_v7(),
        agency_id,
        property_id,
        url,
        interval_minutes,
        now,
    )
    .fetch_one(pool)
    .await
}

pub async fn list_feeds(pool: &PgPool, property_id: Uuid) -> Result<Vec<FeedRow>, sqlx::Error> {
    feed_query!(
        "SELECT",
        "FROM ical_feeds WHERE property_id = $1 ORDER BY feed_id",
        property_id,
    )
    .fetch_all(pool)
    .await
}

/// Removes a feed of the property; `None` when there is no such feed.
/// The blocks it imported stay (docs/ical.md).
pub async fn delete_feed(
    pool: &PgPool, property_id: Uuid, feed_id: Uuid,
) -> Result<Option<FeedRow>, sqlx::Error> {
    feed_query!(
        "DELETE FROM ical_feeds WHERE property_id = $1 AND feed_id = $2 RETURNING",
        "",
        property_id,
        feed_id,
    )
    .fetch_optional(pool)
    .await
}

/// Takes the feed that is most overdue at `now`, if any, and moves its next
/// run one interval ahead, so that no other process takes it meanwhile.
/// Feeds of the `busy_agencies` (those at their cap of concurrent imports)
/// wait.
pub async fn claim_due_feed(
    pool: &PgPool, busy_agencies: &[Uuid], now: DateTime<Utc>,
) -> Result<Option<FeedRow>, sqlx::Error> {
    feed_query!(
        "UPDATE ical_feeds SET next_run_at = $2 + make_interval(mins => interval_minutes)
          WHERE feed_id = (SELECT feed_id FROM ical_feeds WHERE next_run_at <= $2
                              AND agency_id <> ALL($1)
                            ORDER BY next_run_at LIMIT 1 FOR UPDATE SKIP LOCKED)
          RETURNING",
        "",
        busy_agencies,
        now,
    )
    .fetch_optional(pool)
    .await
}

/// Records how a feed's run went.
pub async fn record_run(
    pool: &PgPool, feed_id: Uuid, last_error: Option<&str>, last_result: Option<&Value>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE ical_feeds SET last_run_at = $4, last_error = $2, last_result = $3
          WHERE feed_id = $1",
        feed_id,
        last_error,
        last_result,
        now,
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_stored_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
        assert!(constant_time_eq(
            hash_token(&a).as_bytes(),
            hash_token(&a).as_bytes()
        ));
        assert!(!constant_time_eq(
            hash_token(&a).as_bytes(),
            hash_token(&b).as_bytes()
        ));
    }
}
