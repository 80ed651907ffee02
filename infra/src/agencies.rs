//! Agency records: what an operator manages (name, active or suspended,
//! feature flags), and their history. Every change goes through [`change`]:
//! one transaction that updates the record and appends what happened to
//! `agency_history` (append-only, like the event log), so the record and its
//! history never disagree. The HTTP routes and the `ledger agency` CLI both
//! call this module.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Who made a change that no person asked for: an agency's first token.
pub const FIRST_USE: &str = "first-use";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = FeaturesView))]
pub struct Features {
    pub ical_export: bool,
    pub ical_import: bool,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            ical_export: true,
            ical_import: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = AgencyView))]
pub struct Agency {
    pub id: Uuid,
    pub name: Option<String>,
    /// `active` or `suspended`.
    pub status: String,
    pub reason: Option<String>,
    /// Stored as the columns `ical_export` and `ical_import`.
    pub features: Features,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Agency {
    pub fn is_suspended(&self) -> bool {
        self.status == SUSPENDED
    }
}

const ACTIVE: &str = "active";
const SUSPENDED: &str = "suspended";

/// A statement that reads agency records: the record's columns go between
/// `$head` and `$tail` (the macros take only literal text, so the column
/// list cannot be a `const`), and each row becomes an [`Agency`].
macro_rules! agency_query {
    ($head:literal, $tail:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query!(
            $head
                + " id, name, status, reason, ical_export, ical_import, created_at, updated_at "
                + $tail
            $(, $arg)*
        )
        .map(|row| Agency {
            id: row.id,
            name: row.name,
            status: row.status,
            reason: row.reason,
            features: Features {
                ical_export: row.ical_export,
                ical_import: row.ical_import,
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    };
}

/// A life-cycle change of an agency.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Suspend {
        reason: Option<String>,
    },
    Reinstate {
        reason: Option<String>,
    },
    SetFeatures {
        ical_export: Option<bool>,
        ical_import: Option<bool>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AgencyError {
    #[error("the agency has no record")]
    NotFound,
    #[error("an agency with this id already has a name")]
    AlreadyExists,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What `created` did: a new record, or the name given to a record that an
/// agency's first token made without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Named,
}

/// One entry of the agency history, in the audit log's shape.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub user_id: String,
    pub action: String,
    pub resource_type: &'static str,
    pub resource_id: Uuid,
    pub details: Value,
    pub created_at: DateTime<Utc>,
    pub position: i64,
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Agency>, sqlx::Error> {
    agency_query!("SELECT", "FROM agencies WHERE id = $1", id)
        .fetch_optional(pool)
        .await
}

/// Agencies in id order after `after`, at most `limit`.
pub async fn list(
    pool: &PgPool, after: Option<Uuid>, limit: i64,
) -> Result<Vec<Agency>, sqlx::Error> {
    agency_query!(
        "SELECT",
        "FROM agencies WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
        after,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// The agencies whose status or features differ from the defaults: all an
/// agency cache needs to hold.
pub async fn restricted(pool: &PgPool) -> Result<Vec<Agency>, sqlx::Error> {
    agency_query!(
        "SELECT",
        "FROM agencies WHERE status <> 'active' OR NOT ical_export OR NOT ical_import"
    )
    .fetch_all(pool)
    .await
}

/// Creates the record of agency `id` named `name`; an agency that got a
/// record without a name (from its first token) gets the name instead.
pub async fn create(
    pool: &PgPool, id: Uuid, name: &str, by: &str,
) -> Result<(Agency, Created), AgencyError> {
    let mut tx = pool.begin().await?;
    let inserted = agency_query!(
        "INSERT INTO agencies (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING",
        "",
        id,
        name,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (agency, created) = match inserted {
        Some(agency) => (agency, Created::New),
        None => {
            let unnamed = locked(&mut tx, id).await?.is_some_and(|a| a.name.is_none());
            if !unnamed {
                return Err(AgencyError::AlreadyExists);
            }
            let agency = agency_query!(
                "UPDATE agencies SET name = $2, updated_at = now() WHERE id = $1 RETURNING",
                "",
                id,
                name,
            )
            .fetch_one(&mut *tx)
            .await?;
            (agency, Created::Named)
        }
    };
    let action = match created {
        Created::New => "agency.create",
        Created::Named => "agency.name",
    };
    record(&mut tx, id, by, action, json!({ "name": name })).await?;
    tx.commit().await?;
    Ok((agency, created))
}

/// Makes sure agency `id` has a record (name null), for an agency whose
/// token is used before an operator created it. Returns whether it made one.
pub async fn ensure(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let made = sqlx::query!(
        "INSERT INTO agencies (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
        id
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if made {
        record(
            &mut tx,
            id,
            FIRST_USE,
            "agency.create",
            json!({ "name": null }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(made)
}

/// Applies a life-cycle change to agency `id` and records it. A change that
/// changes nothing (reinstating an active agency) records nothing.
pub async fn change(
    pool: &PgPool, id: Uuid, change: Change, by: &str,
) -> Result<Agency, AgencyError> {
    let mut tx = pool.begin().await?;
    let current = locked(&mut tx, id).await?.ok_or(AgencyError::NotFound)?;
    let mut next = current.clone();
    let (action, details) = match change {
        Change::Suspend { reason } => {
            next.status = SUSPENDED.into();
            next.reason = reason.clone();
            ("agency.suspend", json!({ "reason": reason }))
        }
        Change::Reinstate { .. } if !current.is_suspended() => return Ok(current),
        Change::Reinstate { reason } => {
            next.status = ACTIVE.into();
            next.reason = reason.clone();
            ("agency.reinstate", json!({ "reason": reason }))
        }
        Change::SetFeatures {
            ical_export,
            ical_import,
        } => {
            next.features.ical_export = ical_export.unwrap_or(current.features.ical_export);
            next.features.ical_import = ical_import.unwrap_or(current.features.ical_import);
            ("agency.features", json!({ "features": next.features }))
        }
    };
    if next == current {
        return Ok(current);
    }
    let updated = agency_query!(
        "UPDATE agencies SET status = $2, reason = $3, ical_export = $4, ical_import = $5,
                updated_at = now()
          WHERE id = $1 RETURNING",
        "",
        id,
        next.status,
        next.reason,
        next.features.ical_export,
        next.features.ical_import,
    )
    .fetch_one(&mut *tx)
    .await?;
    record(&mut tx, id, by, action, details).await?;
    tx.commit().await?;
    Ok(updated)
}

/// The agency history after `after` (a position), oldest first.
pub async fn history(
    pool: &PgPool, after: i64, limit: i64,
) -> Result<Vec<HistoryEntry>, sqlx::Error> {
    sqlx::query!(
        "SELECT position, id, agency_id, user_id, action, details, created_at
           FROM agency_history WHERE position > $1 ORDER BY position LIMIT $2",
        after,
        limit,
    )
    .map(|row| HistoryEntry {
        id: row.id,
        agency_id: row.agency_id,
        user_id: row.user_id,
        action: row.action,
        resource_type: "agency",
        resource_id: row.agency_id,
        details: row.details,
        created_at: row.created_at,
        position: row.position,
    })
    .fetch_all(pool)
    .await
}

async fn locked(conn: &mut PgConnection, id: Uuid) -> Result<Option<Agency>, sqlx::Error> {
    agency_query!("SELECT", "FROM agencies WHERE id = $1 FOR UPDATE", id)
        .fetch_optional(conn)
        .await
}

async fn record(
    conn: &mut PgConnection, agency_id: Uuid, by: &str, action: &str, details: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO agency_history (id, agency_id, user_id, action, details)
         VALUES ($1, $2, $3, $4, $5)",
        Uuid::now_v7(),
        agency_id,
        by,
        action,
        details,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The agency of a property that has an iCal export secret.
pub async fn of_ical_export(pool: &PgPool, property_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT agency_id FROM ical_tokens WHERE property_id = $1",
        property_id
    )
    .fetch_optional(pool)
    .await
}
