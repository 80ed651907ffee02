//! `inventory_ranges`: one row per active booking or unreleased block. The
//! batch is folded in memory (rows it touches are read first), then written
//! as deletes followed by inserts, so the EXCLUSION constraint sees only the
//! batch's final state, never a transient overlap.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use ledger_domain::CalendarEvent;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::tail::Envelope;

#[derive(Debug, Clone)]
struct Range {
    agency_id: Uuid,
    property_id: Uuid,
    kind: &'static str,
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
        let kind: String = row.try_get("kind")?;
        ranges.insert(
            row.try_get("ref_id")?,
            Some(Range {
                agency_id: row.try_get("agency_id")?,
                property_id: row.try_get("property_id")?,
                kind: if kind == "block" { "block" } else { "booking" },
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

fn fold(ranges: &mut HashMap<Uuid, Option<Range>>, envelope: &Envelope) {
    let position = envelope.position;
    let claim = |kind, property_id, start, end, status: &str| Range {
        agency_id: envelope.meta.agency_id,
        property_id,
        kind,
        start,
        end,
        status: status.to_owned(),
        position,
    };
    let mut update = |id: Uuid, change: &dyn Fn(&mut Range)| {
        if let Some(Some(range)) = ranges.get_mut(&id) {
            change(range);
            range.position = position;
        }
    };
    match &envelope.event {
        CalendarEvent::BookingReserved {
            booking_id,
            property_id,
            status,
            check_in,
            check_out,
            ..
        } => {
            let range = status.is_active().then(|| {
                claim(
                    "booking",
                    *property_id,
                    *check_in,
                    *check_out,
                    status.as_str(),
                )
            });
            ranges.insert(*booking_id, range);
        }
        CalendarEvent::BookingModified {
            booking_id,
            check_in,
            check_out,
            ..
        } => update(*booking_id, &|r| {
            r.start = *check_in;
            r.end = *check_out;
        }),
        CalendarEvent::BookingConfirmed { booking_id, .. } => {
            update(*booking_id, &|r| r.status = "confirmed".into())
        }
        CalendarEvent::BookingCheckedIn { booking_id, .. } => {
            update(*booking_id, &|r| r.status = "checked_in".into())
        }
        CalendarEvent::BookingCancelled { booking_id, .. }
        | CalendarEvent::BookingCheckedOut { booking_id, .. }
        | CalendarEvent::BookingNoShow { booking_id, .. }
        | CalendarEvent::BookingHoldExpired { booking_id, .. } => {
            ranges.insert(*booking_id, None);
        }
        CalendarEvent::AvailabilityBlocked {
            block_id,
            property_id,
            start,
            end,
            ..
        } => {
            ranges.insert(
                *block_id,
                Some(claim("block", *property_id, *start, *end, "blocked")),
            );
        }
        CalendarEvent::AvailabilityReleased { block_id, .. } => {
            ranges.insert(*block_id, None);
        }
        CalendarEvent::PropertyRegistered { .. }
        | CalendarEvent::PropertyUpdated { .. }
        | CalendarEvent::PropertyArchived { .. } => {}
    }
}
