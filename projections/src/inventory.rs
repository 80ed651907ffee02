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
use ledger_domain::claims::{claim_change, ClaimChange};
use ledger_domain::values::ClaimKind;
use ledger_domain::{CalendarEvent, RoomType};
use sqlx::PgConnection;
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

/// The room types a batch touches, folded with the domain's own rule, and
/// what their rows add: the agency and the position of the last change.
#[derive(Debug, Default)]
struct RoomTypes {
    types: BTreeMap<Uuid, RoomType>,
    rows: HashMap<Uuid, (Uuid, i64)>,
}

impl RoomTypes {
    fn units(&self, id: &Uuid) -> i32 {
        self.types
            .get(id)
            .map_or(0, |t| i32::try_from(t.units).unwrap_or(i32::MAX))
    }
}

pub async fn apply(conn: &mut PgConnection, events: &[Envelope]) -> Result<(), sqlx::Error> {
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
    if !touched.is_empty() {
        let existing = sqlx::query!(
            r#"SELECT ref_id, agency_id, property_id, kind AS "kind: ClaimKind",
                    lower(during) AS "start!", upper(during) AS "end!", status, position,
                    room_type_id, units
               FROM inventory_ranges WHERE ref_id = ANY($1)"#,
            &touched,
        )
        .fetch_all(&mut *conn)
        .await?;
        for row in existing {
            let range = Range {
                agency_id: row.agency_id,
                property_id: row.property_id,
                kind: row.kind,
                start: row.start,
                end: row.end,
                status: row.status,
                position: row.position,
                room_type_id: row.room_type_id,
                units: row.units,
            };
            ranges.insert(row.ref_id, Some(range));
        }
    }
    let before: Vec<Range> = ranges.values().flatten().cloned().collect();
    let mut room_types = load_room_types(conn, events, &before).await?;
    let mut changed_types: HashSet<Uuid> = HashSet::new();
    for envelope in events {
        if let Some(id) = RoomType::fold(&mut room_types.types, &envelope.event) {
            room_types
                .rows
                .insert(id, (envelope.meta.agency_id, envelope.position));
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
        sqlx::query!(
            "DELETE FROM inventory_ranges WHERE ref_id = ANY($1)",
            &touched
        )
        .execute(&mut *conn)
        .await?;
    }
    let live: Vec<(Uuid, Range)> = ranges
        .into_iter()
        .filter_map(|(id, range)| range.map(|r| (id, r)))
        .collect();
    write_room_types(conn, &room_types, &changed_types).await?;
    if !live.is_empty() {
        insert_ranges(conn, &live).await?;
    }
    write_nights(conn, &room_types, &changed_types, &nights).await
}

async fn insert_ranges(conn: &mut PgConnection, live: &[(Uuid, Range)]) -> Result<(), sqlx::Error> {
    let kinds: Vec<ClaimKind> = live.iter().map(|(_, r)| r.kind).collect();
    let room_types: Vec<Option<Uuid>> = live.iter().map(|(_, r)| r.room_type_id).collect();
    sqlx::query!("INSERT INTO inventory_ranges (ref_id, agency_id, property_id, kind, during, status, position,
                              room_type_id, units)
         SELECT r, a, p, k, daterange(s, e), st, pos, rt, u
           FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::date[], $6::date[],
                       $7::text[], $8::bigint[], $9::uuid[], $10::int[])
                AS x(r, a, p, k, s, e, st, pos, rt, u)",
        &live.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        &live.iter().map(|(_, r)| r.agency_id).collect::<Vec<_>>(),
        &live.iter().map(|(_, r)| r.property_id).collect::<Vec<_>>(),
        &kinds as &[ClaimKind],
        &live.iter().map(|(_, r)| r.start).collect::<Vec<_>>(),
        &live.iter().map(|(_, r)| r.end).collect::<Vec<_>>(),
        &live.iter().map(|(_, r)| r.status.clone()).collect::<Vec<_>>(),
        &live.iter().map(|(_, r)| r.position).collect::<Vec<_>>(),
        &room_types as &[Option<Uuid>],
        &live.iter().map(|(_, r)| r.units).collect::<Vec<_>>(),
    )
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
    conn: &mut PgConnection, events: &[Envelope], before: &[Range],
) -> Result<RoomTypes, sqlx::Error> {
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
    let mut room_types = RoomTypes::default();
    if wanted.is_empty() {
        return Ok(room_types);
    }
    let rows = sqlx::query!(
        "SELECT room_type_id, agency_id, property_id, name, units, external_ref, version,
                created_at, updated_at, position
           FROM inventory_room_types WHERE room_type_id = ANY($1)",
        &wanted.into_iter().collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let id = row.room_type_id;
        room_types.types.insert(
            id,
            RoomType {
                id,
                property_id: row.property_id,
                name: row.name,
                units: u32::try_from(row.units).unwrap_or(0),
                external_ref: row.external_ref,
                version: u64::try_from(row.version).unwrap_or(0),
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
        );
        room_types.rows.insert(id, (row.agency_id, row.position));
    }
    Ok(room_types)
}

async fn write_room_types(
    conn: &mut PgConnection, room_types: &RoomTypes, changed: &HashSet<Uuid>,
) -> Result<(), sqlx::Error> {
    for id in changed {
        let (Some(t), Some((agency_id, position))) =
            (room_types.types.get(id), room_types.rows.get(id))
        else {
            continue;
        };
        sqlx::query!("INSERT INTO inventory_room_types (room_type_id, agency_id, property_id, name, units, external_ref,
                                  version, created_at, updated_at, position)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (room_type_id) DO UPDATE SET name = EXCLUDED.name,
                 units = EXCLUDED.units, external_ref = EXCLUDED.external_ref,
                 version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
                 position = EXCLUDED.position",
            id,
            agency_id,
            t.property_id,
            &t.name,
            room_types.units(id),
            t.external_ref.as_deref(),
            i64::try_from(t.version).unwrap_or(i64::MAX),
            t.created_at,
            t.updated_at,
            position,
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Moves each night by its net change, to the room type's final units, then
/// gives the other nights of a room type whose units changed their new
/// units, and drops the nights that hold nothing any more.
async fn write_nights(
    conn: &mut PgConnection, room_types: &RoomTypes, changed_types: &HashSet<Uuid>,
    nights: &BTreeMap<(Uuid, NaiveDate), i32>,
) -> Result<(), sqlx::Error> {
    if !nights.is_empty() {
        // A night of a room type the projection does not have cannot be
        // counted: the CHECK (0 units) parks the property loudly.
        let units_of = |id: &Uuid| room_types.units(id);
        let owner = |id: &Uuid| {
            let agency = room_types.rows.get(id).map_or(Uuid::nil(), |r| r.0);
            let property = room_types
                .types
                .get(id)
                .map_or(Uuid::nil(), |t| t.property_id);
            (agency, property)
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
        sqlx::query!("WITH x AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::date[], $3::uuid[], $4::uuid[], $5::int[],
                                      $6::int[]) AS x(r, n, a, p, u, d)),
             moved AS (
                 UPDATE inventory_nights t SET taken = t.taken + x.d, units = x.u
                   FROM x WHERE t.room_type_id = x.r AND t.night = x.n
                 RETURNING t.room_type_id, t.night)
             INSERT INTO inventory_nights (room_type_id, night, agency_id, property_id, units, taken)
             SELECT x.r, x.n, x.a, x.p, x.u, x.d FROM x
              WHERE NOT EXISTS (SELECT 1 FROM moved m WHERE m.room_type_id = x.r AND m.night = x.n)",
            &rows.0,
            &rows.1,
            &rows.2,
            &rows.3,
            &rows.4,
            &rows.5,
        )
        .execute(&mut *conn)
        .await?;
    }
    if !changed_types.is_empty() {
        let ids: Vec<Uuid> = changed_types.iter().copied().collect();
        sqlx::query!(
            "UPDATE inventory_nights n SET units = x.u
               FROM UNNEST($1::uuid[], $2::int[]) AS x(r, u)
              WHERE n.room_type_id = x.r AND n.units <> x.u",
            &ids,
            &ids.iter()
                .map(|id| room_types.units(id))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    if !nights.is_empty() {
        let ids: Vec<Uuid> = nights.keys().map(|(r, _)| *r).collect();
        sqlx::query!(
            "DELETE FROM inventory_nights WHERE room_type_id = ANY($1) AND taken = 0",
            &ids,
        )
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
        ClaimChange::Hold(hold) => {
            let range = Range {
                agency_id: envelope.meta.agency_id,
                property_id: envelope.property_id,
                kind: hold.kind,
                start: hold.nights.start,
                end: hold.nights.end,
                status: hold.status.into(),
                position,
                room_type_id: hold.room_type_id,
                units: i32::try_from(hold.units).unwrap_or(i32::MAX),
            };
            ranges.insert(hold.id, Some(range));
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
