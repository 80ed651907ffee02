//! A failure stays with its property. When a projection cannot apply an
//! event, the event's property is *parked* (a row of `projection_parked`):
//! its later events wait, in order, while the projection goes on with every
//! other property and its checkpoint moves past the parked property's
//! events. An operator removes the cause and asks for a [`retry`], which
//! applies the waiting events again.
//!
//! Each read model is a function of one property's events at a time (rows
//! are keyed by property, booking or block, and the EXCLUSION constraint of
//! `inventory_ranges` is per property), so leaving one property's events out
//! of a batch changes nothing for the others.
//!
//! A failure that is the database being unavailable (or a deadlock, a
//! cancelled statement, ...) parks nothing: it is not the property's fault,
//! so the batch is retried as a whole.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runner::{self, StepError};
use crate::tail::{self, Envelope};
use crate::Projection;

/// `exclusion_violation`: an event would give a property overlapping claims.
const EXCLUSION_VIOLATION: &str = "23P01";
/// The CHECK that a room type's night holds no more than its units
/// (migration 0013): the same line of defence, counted per night.
const CAPACITY_CHECK: &str = "inventory_nights_capacity";

/// Failures that say nothing about the event: the database unavailable, a
/// deadlock or serialization failure (class 40), out of resources (53), a
/// cancelled statement or lock wait (57014, 55P03). The batch is retried
/// whole instead of parking anything.
fn not_the_property(error: &sqlx::Error) -> bool {
    ledger_infra::db::is_unavailable(error)
        || matches!(error, sqlx::Error::Database(e) if e.code().is_some_and(|c| {
            c.starts_with("40") || c.starts_with("53") || c == "57014" || c == "55P03"
        }))
}

/// A parked property, as ops see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parked {
    pub agency_id: Uuid,
    pub property_id: Uuid,
    /// The first event of the property that is not applied.
    pub position: i64,
    pub error: String,
    pub parked_at: DateTime<Utc>,
}

/// How many times this process parked a property, by projection and cause.
pub struct Parkings {
    /// Indexed like [`Projection::ALL`]: `[any cause, exclusion violations]`.
    counts: [[AtomicU64; 2]; 3],
}

static PARKINGS: Parkings = Parkings {
    counts: [
        [AtomicU64::new(0), AtomicU64::new(0)],
        [AtomicU64::new(0), AtomicU64::new(0)],
        [AtomicU64::new(0), AtomicU64::new(0)],
    ],
};

/// Parkings in this process since it started: `(all, exclusion violations)`.
pub fn parkings(projection: Projection) -> (u64, u64) {
    let [all, exclusion] = &PARKINGS.counts[index(projection)];
    (
        all.load(Ordering::Relaxed),
        exclusion.load(Ordering::Relaxed),
    )
}

fn index(projection: Projection) -> usize {
    Projection::ALL
        .iter()
        .position(|p| *p == projection)
        .unwrap_or(0)
}

/// The properties parked for a checkpoint, by name.
pub(crate) async fn parked_properties(
    conn: &mut PgConnection, checkpoint: &str,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let ids = sqlx::query_scalar!(
        "SELECT property_id FROM projection_parked WHERE projection = $1",
        checkpoint,
    )
    .fetch_all(conn)
    .await?;
    Ok(ids.into_iter().collect())
}

/// Every parked property of the checkpoints named, by checkpoint name,
/// oldest parking first.
pub async fn parked(
    pool: &PgPool, checkpoints: &[&str],
) -> Result<Vec<(String, Parked)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT projection, agency_id, property_id, position, error, parked_at
           FROM projection_parked
          WHERE projection = ANY($1) ORDER BY parked_at, property_id",
        checkpoints as &[&str],
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let parked = Parked {
                agency_id: row.agency_id,
                property_id: row.property_id,
                position: row.position,
                error: row.error,
                parked_at: row.parked_at,
            };
            (row.projection, parked)
        })
        .collect())
}

/// Runs a savepoint command. Not a query macro: `undo` builds its commands
/// around the savepoint's name, an identifier no statement can take as an
/// argument.
async fn savepoint(conn: &mut PgConnection, command: &str) -> Result<(), sqlx::Error> {
    sqlx::query(command).execute(conn).await?;
    Ok(())
}

/// Rolls back to a savepoint and releases it, so that savepoints do not
/// pile up in the batch's transaction.
async fn undo(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    savepoint(conn, &format!("ROLLBACK TO SAVEPOINT {name}")).await?;
    savepoint(conn, &format!("RELEASE SAVEPOINT {name}")).await
}

/// Applies `events` (none of a parked property) inside a savepoint. Should
/// that fail, applies them property by property, and parks each property at
/// its first event that cannot be applied; the events before it stay
/// applied. Only a failure that is not the property's is an error.
pub(crate) async fn apply_or_park(
    conn: &mut PgConnection, projection: Projection, checkpoint: &str, events: &[Envelope],
) -> Result<(), StepError> {
    if events.is_empty() {
        return Ok(());
    }
    savepoint(conn, "SAVEPOINT ledger_batch").await?;
    match projection.apply(conn, events).await {
        Ok(()) => return Ok(savepoint(conn, "RELEASE SAVEPOINT ledger_batch").await?),
        Err(e) if not_the_property(&e) => return Err(retry_whole(events, e)),
        Err(_) => undo(conn, "ledger_batch").await?,
    }
    let mut order: Vec<Uuid> = Vec::new();
    let mut seen = HashSet::new();
    for e in events {
        if seen.insert(e.property_id) {
            order.push(e.property_id);
        }
    }
    for property in order {
        let mine: Vec<Envelope> = events
            .iter()
            .filter(|e| e.property_id == property)
            .cloned()
            .collect();
        if let Some((at, error)) = apply_property(conn, projection, &mine).await? {
            park(conn, projection, checkpoint, at, &error).await?;
        }
    }
    Ok(())
}

/// The error of a batch that rolls back whole, to be tried again.
fn retry_whole(events: &[Envelope], source: sqlx::Error) -> StepError {
    StepError::Apply {
        after: events.first().map_or(0, |e| e.position - 1),
        source,
    }
}

/// Applies one property's events in order; on a failure, the event it
/// stopped at and the error (the events before it stay applied).
async fn apply_property<'a>(
    conn: &mut PgConnection, projection: Projection, events: &'a [Envelope],
) -> Result<Option<(&'a Envelope, sqlx::Error)>, StepError> {
    if events.is_empty() {
        return Ok(None);
    }
    savepoint(conn, "SAVEPOINT ledger_property").await?;
    match projection.apply(conn, events).await {
        Ok(()) => {
            savepoint(conn, "RELEASE SAVEPOINT ledger_property").await?;
            return Ok(None);
        }
        Err(e) if not_the_property(&e) => return Err(retry_whole(events, e)),
        Err(_) => undo(conn, "ledger_property").await?,
    }
    for event in events {
        savepoint(conn, "SAVEPOINT ledger_event").await?;
        match projection.apply(conn, std::slice::from_ref(event)).await {
            Ok(()) => savepoint(conn, "RELEASE SAVEPOINT ledger_event").await?,
            Err(e) if not_the_property(&e) => return Err(retry_whole(events, e)),
            Err(e) => {
                undo(conn, "ledger_event").await?;
                return Ok(Some((event, e)));
            }
        }
    }
    // The whole failed but every event applied on its own: keep those.
    Ok(None)
}

/// Parks (or keeps parked, with the new error) the property of `event`.
async fn park(
    conn: &mut PgConnection, projection: Projection, checkpoint: &str, event: &Envelope,
    error: &sqlx::Error,
) -> Result<(), sqlx::Error> {
    let exclusion = matches!(error, sqlx::Error::Database(e)
        if e.code().as_deref() == Some(EXCLUSION_VIOLATION)
            || e.constraint() == Some(CAPACITY_CHECK));
    let text = format!("event at position {}: {error}", event.position);
    let what = if exclusion {
        // Invariant 1's second line of defence fired: the write side let
        // overlapping claims (or more claims than a room type has units)
        // through, or someone wrote into the read model.
        "EXCLUSION VIOLATION in inventory_ranges or inventory_nights"
    } else {
        "cannot apply an event"
    };
    tracing::error!(
        projection = checkpoint,
        agency_id = %event.meta.agency_id,
        property_id = %event.property_id,
        position = event.position,
        %error,
        "{what}; property parked"
    );
    sqlx::query!(
        "INSERT INTO projection_parked (projection, property_id, agency_id, position, error)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (projection, property_id)
         DO UPDATE SET position = excluded.position, error = excluded.error, parked_at = now()",
        checkpoint,
        event.property_id,
        event.meta.agency_id,
        event.position,
        &text,
    )
    .execute(conn)
    .await?;
    let [all, exclusions] = &PARKINGS.counts[index(projection)];
    all.fetch_add(1, Ordering::Relaxed);
    if exclusion {
        exclusions.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// What a retry did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Retried {
    /// Properties whose waiting events all applied: no longer parked.
    pub released: Vec<Uuid>,
    /// Properties that still cannot be applied (with the new error).
    pub still_parked: Vec<Uuid>,
}

/// Applies every parked property's waiting events of a live projection
/// again, in order, up to its checkpoint, in one transaction under the
/// projection's lock. What applies is no longer parked; what fails stays
/// parked with the new error (the events before it stay applied).
pub async fn retry(pool: &PgPool, projection: Projection) -> Result<Retried, StepError> {
    let checkpoint = projection.name();
    let mut tx = pool.begin().await?;
    runner::lock(&mut tx, checkpoint).await?;
    let upto = tail::load_checkpoint(&mut tx, checkpoint).await?;
    let rows = sqlx::query!(
        "SELECT property_id, position FROM projection_parked
          WHERE projection = $1 ORDER BY position FOR UPDATE",
        checkpoint,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut retried = Retried::default();
    for row in rows {
        let property = row.property_id;
        let events = tail::read_property(&mut tx, property, row.position, upto).await?;
        match apply_property(&mut tx, projection, &events).await? {
            None => {
                tracing::info!(projection = checkpoint, %property, "parked property released");
                retried.released.push(property);
            }
            Some((event, error)) => {
                park(&mut tx, projection, checkpoint, event, &error).await?;
                retried.still_parked.push(property);
            }
        }
    }
    // One statement for all that applied, in the same transaction.
    sqlx::query!(
        "DELETE FROM projection_parked WHERE projection = $1 AND property_id = ANY($2)",
        checkpoint,
        &retried.released,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(retried)
}

/// Hands a replay's parked properties to the live projection it replaces
/// (inside the swap's transaction).
pub(crate) async fn hand_over(
    conn: &mut PgConnection, live: &str, shadow: &str,
) -> Result<(), sqlx::Error> {
    forget(&mut *conn, live).await?;
    sqlx::query!(
        "UPDATE projection_parked SET projection = $1 WHERE projection = $2",
        live,
        shadow,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Forgets a replay's parked properties (a new replay starts from 0).
pub(crate) async fn forget(conn: &mut PgConnection, checkpoint: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM projection_parked WHERE projection = $1",
        checkpoint,
    )
    .execute(conn)
    .await?;
    Ok(())
}
