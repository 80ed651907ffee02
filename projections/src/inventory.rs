//! `inventory_ranges`: one row per active booking or unreleased block;
//! `inventory_room_types` and `inventory_nights`, the units each room type
//! has and holds per night (migration 0013). The batch is folded in memory
//! (rows it touches are read first), then written as deletes followed by
//! inserts, so the EXCLUSION constraint sees only the batch's final state,
//! never a transient overlap; each night's count moves once, by the batch's
//! net change, straight to its final units, so its CHECK never sees a
//! transient overfill either.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDate;
use chrono::{DateTime, Utc};
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
    room_type_id: Option<Uuid>,
    units: i32,
}

impl Range {
    /// Adds (or, with `sign` -1, takes away) the units the range holds on
    /// each of its nights, when it is a room type's.
    fn count(&self, sign: i32, nights: &mut BTreeMap<(Uuid, NaiveDate), i32>) {
        let Some(room_type) = self.room_type_id else {
            return;
        };
        for night in self.start.iter_days().take_while(|d| *d < self.end) {
            *nights.entry((room_type, night)).or_default() += sign * self.units;
        }
    }
}

#[derive(Debug, Clone)]
struct RoomType {
    agency_id: Uuid,
    property_id: Uuid,
    name: String,
    units: i32,
    external_ref: Option<String>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    position: i64,
}

pub async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    events: &[Envelope],
) -> Result<(), sqlx::Error> {
    let table = format!("{schema}.inventory_ranges");
    let types_table = format!("{schema}.inventory_room_types");
    let nights_table = format!("{schema}.inventory_nights");
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
                    upper(during) AS end_night, status, position, room_type_id, units
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
                room_type_id: row.try_get("room_type_id")?,
                units: row.try_get("units")?,
            }),
        );
    }
    let before: Vec<Range> = ranges.values().flatten().cloned().collect();
    let mut room_types = load_room_types(conn, &types_table, events, &before).await?;
    let mut changed_types: HashSet<Uuid> = HashSet::new();
    for envelope in events {
        if let Some(id) = fold_room_type(&mut room_types, envelope) {
            changed_types.insert(id);
        }
        fold(&mut ranges, envelope);
    }
    // The net change of every room type's nights over the batch.
    let mut nights: BTreeMap<(Uuid, NaiveDate), i32> = BTreeMap::new();
    for range in &before {
        range.count(-1, &mut nights);
    }
    for range in ranges.values().flatten() {
        range.count(1, &mut nights);
    }
    nights.retain(|_, delta| *delta != 0);

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
    write_room_types(conn, &types_table, &room_types, &changed_types).await?;
    if !live.is_empty() {
        insert_ranges(conn, &table, &live).await?;
    }
    write_nights(conn, &nights_table, &room_types, &changed_types, &nights).await
}

async fn insert_ranges(
    conn: &mut PgConnection,
    table: &str,
    live: &[(Uuid, Range)],
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO {table} (ref_id, agency_id, property_id, kind, during, status, position,
                              room_type_id, units)
         SELECT r, a, p, k, daterange(s, e), st, pos, rt, u
           FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::date[], $6::date[],
                       $7::text[], $8::bigint[], $9::uuid[], $10::int[])
                AS x(r, a, p, k, s, e, st, pos, rt, u)"
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
    .bind(live.iter().map(|(_, r)| r.room_type_id).collect::<Vec<_>>())
    .bind(live.iter().map(|(_, r)| r.units).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the event is the first of its booking, block or room type.
fn creates(event: &CalendarEvent) -> bool {
    matches!(
        event,
        CalendarEvent::BookingReserved { .. }
            | CalendarEvent::AvailabilityBlocked { .. }
            | CalendarEvent::RoomTypeCreated { .. }
    )
}

/// The room types the batch changes or counts nights of, as they stand
/// before it (those it creates are folded in from their event).
async fn load_room_types(
    conn: &mut PgConnection,
    table: &str,
    events: &[Envelope],
    before: &[Range],
) -> Result<HashMap<Uuid, RoomType>, sqlx::Error> {
    let mut wanted: HashSet<Uuid> = before.iter().filter_map(|r| r.room_type_id).collect();
    for envelope in events {
        match &envelope.event {
            CalendarEvent::RoomTypeUpdated { room_type_id, .. }
            | CalendarEvent::BookingReserved {
                room_type_id: Some(room_type_id),
                ..
            }
            | CalendarEvent::AvailabilityBlocked {
                room_type_id: Some(room_type_id),
                ..
            } => {
                wanted.insert(*room_type_id);
            }
            _ => {}
        }
    }
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(&format!(
        "SELECT room_type_id, agency_id, property_id, name, units, external_ref, version,
                created_at, updated_at, position
           FROM {table} WHERE room_type_id = ANY($1)"
    ))
    .bind(wanted.into_iter().collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("room_type_id")?,
                RoomType {
                    agency_id: row.try_get("agency_id")?,
                    property_id: row.try_get("property_id")?,
                    name: row.try_get("name")?,
                    units: row.try_get("units")?,
                    external_ref: row.try_get("external_ref")?,
                    version: row.try_get("version")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    position: row.try_get("position")?,
                },
            ))
        })
        .collect()
}

/// Folds a room type's own events; the id of the room type it changed.
fn fold_room_type(room_types: &mut HashMap<Uuid, RoomType>, envelope: &Envelope) -> Option<Uuid> {
    match &envelope.event {
        CalendarEvent::RoomTypeCreated {
            room_type_id,
            property_id,
            name,
            units,
            external_ref,
            at,
        } => {
            room_types.insert(
                *room_type_id,
                RoomType {
                    agency_id: envelope.meta.agency_id,
                    property_id: *property_id,
                    name: name.clone(),
                    units: i32::try_from(*units).unwrap_or(i32::MAX),
                    external_ref: external_ref.clone(),
                    version: 1,
                    created_at: *at,
                    updated_at: *at,
                    position: envelope.position,
                },
            );
            Some(*room_type_id)
        }
        CalendarEvent::RoomTypeUpdated {
            room_type_id,
            name,
            units,
            external_ref,
            at,
            ..
        } => {
            let room_type = room_types.get_mut(room_type_id)?;
            room_type.name = name.clone();
            room_type.units = i32::try_from(*units).unwrap_or(i32::MAX);
            room_type.external_ref = external_ref.clone();
            room_type.version += 1;
            room_type.updated_at = *at;
            room_type.position = envelope.position;
            Some(*room_type_id)
        }
        _ => None,
    }
}

async fn write_room_types(
    conn: &mut PgConnection,
    table: &str,
    room_types: &HashMap<Uuid, RoomType>,
    changed: &HashSet<Uuid>,
) -> Result<(), sqlx::Error> {
    for id in changed {
        let t = &room_types[id];
        sqlx::query(&format!(
            "INSERT INTO {table} (room_type_id, agency_id, property_id, name, units, external_ref,
                                  version, created_at, updated_at, position)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (room_type_id) DO UPDATE SET name = EXCLUDED.name,
                 units = EXCLUDED.units, external_ref = EXCLUDED.external_ref,
                 version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
                 position = EXCLUDED.position"
        ))
        .bind(id)
        .bind(t.agency_id)
        .bind(t.property_id)
        .bind(&t.name)
        .bind(t.units)
        .bind(&t.external_ref)
        .bind(t.version)
        .bind(t.created_at)
        .bind(t.updated_at)
        .bind(t.position)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Moves each night by its net change, to the room type's final units, then
/// gives the other nights of a room type whose units changed their new
/// units, and drops the nights that hold nothing any more.
async fn write_nights(
    conn: &mut PgConnection,
    table: &str,
    room_types: &HashMap<Uuid, RoomType>,
    changed_types: &HashSet<Uuid>,
    nights: &BTreeMap<(Uuid, NaiveDate), i32>,
) -> Result<(), sqlx::Error> {
    if !nights.is_empty() {
        // A night of a room type the projection does not have cannot be
        // counted: the CHECK (0 units) parks the property loudly.
        let units_of = |id: &Uuid| room_types.get(id).map_or(0, |t| t.units);
        let owner = |id: &Uuid| {
            room_types
                .get(id)
                .map_or((Uuid::nil(), Uuid::nil()), |t| (t.agency_id, t.property_id))
        };
        // An update of the nights that have a row, then an insert of the
        // others: with INSERT ... ON CONFLICT the CHECKs would judge the
        // proposed row (a bare delta, maybe negative) before the conflict.
        let rows = (
            nights.keys().map(|(r, _)| *r).collect::<Vec<_>>(),
            nights.keys().map(|(_, n)| *n).collect::<Vec<_>>(),
            nights.keys().map(|(r, _)| owner(r).0).collect::<Vec<_>>(),
            nights.keys().map(|(r, _)| owner(r).1).collect::<Vec<_>>(),
            nights.keys().map(|(r, _)| units_of(r)).collect::<Vec<_>>(),
            nights.values().copied().collect::<Vec<_>>(),
        );
        sqlx::query(&format!(
            "WITH x AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::date[], $3::uuid[], $4::uuid[], $5::int[],
                                      $6::int[]) AS x(r, n, a, p, u, d)),
             moved AS (
                 UPDATE {table} t SET taken = t.taken + x.d, units = x.u
                   FROM x WHERE t.room_type_id = x.r AND t.night = x.n
                 RETURNING t.room_type_id, t.night)
             INSERT INTO {table} (room_type_id, night, agency_id, property_id, units, taken)
             SELECT x.r, x.n, x.a, x.p, x.u, x.d FROM x
              WHERE NOT EXISTS (SELECT 1 FROM moved m WHERE m.room_type_id = x.r AND m.night = x.n)"
        ))
        .bind(rows.0)
        .bind(rows.1)
        .bind(rows.2)
        .bind(rows.3)
        .bind(rows.4)
        .bind(rows.5)
        .execute(&mut *conn)
        .await?;
    }
    if !changed_types.is_empty() {
        let ids: Vec<Uuid> = changed_types.iter().copied().collect();
        sqlx::query(&format!(
            "UPDATE {table} n SET units = x.u
               FROM UNNEST($1::uuid[], $2::int[]) AS x(r, u)
              WHERE n.room_type_id = x.r AND n.units <> x.u"
        ))
        .bind(&ids)
        .bind(
            ids.iter()
                .map(|id| room_types[id].units)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    if !nights.is_empty() {
        let ids: Vec<Uuid> = nights.keys().map(|(r, _)| *r).collect();
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE room_type_id = ANY($1) AND taken = 0"
        ))
        .bind(&ids)
        .execute(conn)
        .await?;
    }
    Ok(())
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
            room_type_id,
            units,
        } => {
            let range = Range {
                agency_id: envelope.meta.agency_id,
                property_id: envelope.property_id,
                kind,
                start: nights.start,
                end: nights.end,
                status: status.into(),
                position,
                room_type_id,
                units: i32::try_from(units).unwrap_or(i32::MAX),
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
