//! `inventory_ranges`: one row per active booking or unreleased block. The
//! batch is folded in memory (rows it touches are read first), then written
//! as deletes followed by inserts, so the EXCLUSION constraint sees only the
//! batch's final state, never a transient overlap.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use ledger_domain::claims::{claim_change, ClaimChange};
use ledger_domain::values::ClaimKind;
use ledger_domain::CalendarEvent;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::tail::Envelope;

#[derive(Debug, Clone)]
struct Range {
    agency_id: Uuid,
    property_id: Uuid,
    kind: ClaimKind,
    start: NaiveDate,
    end: NaiveDate,
    status: String,
    position: i64,
}

pub async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    events: &[Envelope],
) -> Result<(), sqlx::Error> {
    let table = format!("{schema}.inventory_ranges");
    // Rows to read first: every ref the batch touches, except those it
    // creates (a ref's first event creates it, so no row can exist yet).
    // A replay is mostly creations, and then reads and deletes nothing.
    let mut seen = HashSet::new();
    let mut touched: Vec<Uuid> = Vec::new();
    for envelope in events {
        let Some(id) = envelope.event.subject() else {
            continue;
        };
        if seen.insert(id) && !creates(&envelope.event) {
            touched.push(id);
        }
    }
    if seen.is_empty() {
        return Ok(());
    }
    let mut ranges: HashMap<Uuid, Option<Range>> = HashMap::with_capacity(seen.len());
    let existing = if touched.is_empty() {
        Vec::new()
    } else {
        sqlx::query(&format!(
            "SELECT ref_id, agency_id, property_id, kind, lower(during) AS start_night,
                    upper(during) AS end_night, status, position
               FROM {table} WHERE ref_id = ANY($1)"
        ))
        .bind(&touched)
        .fetch_all(&mut *conn)
        .await?
    };
    for row in existing {
        ranges.insert(
            row.try_get("ref_id")?,
            Some(Range {
                agency_id: row.try_get("agency_id")?,
                property_id: row.try_get("property_id")?,
                kind: row.try_get("kind")?,
                start: row.try_get("start_night")?,
                end: row.try_get("end_night")?,
                status: row.try_get("status")?,
                position: row.try_get("position")?,
            }),
        );
    }
    for envelope in events {
        fold(&mut ranges, envelope);
    }

    if !touched.is_empty() {
        sqlx::query(&format!("DELETE FROM {table} WHERE ref_id = ANY($1)"))
            .bind(&touched)
            .execute(&mut *conn)
            .await?;
    }
    let live: Vec<(Uuid, Range)> = ranges
        .into_iter()
        .filter_map(|(id, range)| range.map(|r| (id, r)))
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO {table} (ref_id, agency_id, property_id, kind, during, status, position)
         SELECT r, a, p, k, daterange(s, e), st, pos
           FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::date[], $6::date[],
                       $7::text[], $8::bigint[]) AS x(r, a, p, k, s, e, st, pos)"
    ))
    .bind(live.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(live.iter().map(|(_, r)| r.agency_id).collect::<Vec<_>>())
    .bind(live.iter().map(|(_, r)| r.property_id).collect::<Vec<_>>())
    .bind(live.iter().map(|(_, r)| r.kind).collect::<Vec<_>>())
    .bind(live.iter().map(|(_, r)| r.start).collect::<Vec<_>>())
    .bind(live.iter().map(|(_, r)| r.end).collect::<Vec<_>>())
    .bind(
        live.iter()
            .map(|(_, r)| r.status.clone())
            .collect::<Vec<_>>(),
    )
    .bind(live.iter().map(|(_, r)| r.position).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether the event is the first of its booking or block.
fn creates(event: &CalendarEvent) -> bool {
    matches!(
        event,
        CalendarEvent::BookingReserved { .. } | CalendarEvent::AvailabilityBlocked { .. }
    )
}

/// Folds one event with the domain's rule of held nights.
fn fold(ranges: &mut HashMap<Uuid, Option<Range>>, envelope: &Envelope) {
    let Some(change) = claim_change(&envelope.event) else {
        return;
    };
    let position = envelope.position;
    let mut update = |id: Uuid, change: &dyn Fn(&mut Range)| {
        if let Some(Some(range)) = ranges.get_mut(&id) {
            change(range);
            range.position = position;
        }
    };
    match change {
        ClaimChange::Hold {
            kind,
            id,
            nights,
            status,
        } => {
            let range = Range {
                agency_id: envelope.meta.agency_id,
                property_id: envelope.property_id,
                kind,
                start: nights.start,
                end: nights.end,
                status: status.into(),
                position,
            };
            ranges.insert(id, Some(range));
        }
        ClaimChange::Move { id, nights } => update(id, &|r| {
            r.start = nights.start;
            r.end = nights.end;
        }),
        ClaimChange::Restatus { id, status } => update(id, &|r| r.status = status.into()),
        ClaimChange::Release { id, .. } => {
            ranges.insert(id, None);
        }
    }
}
