//! `audit_log`: one row per event, saying who did what to which resource.

use ledger_domain::CalendarEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::tail::Envelope;

/// The audit action and resource type of an event.
pub fn action(event: &CalendarEvent) -> (&'static str, &'static str) {
    match event {
        CalendarEvent::PropertyRegistered { .. } => ("property.create", "property"),
        CalendarEvent::PropertyUpdated { .. } => ("property.update", "property"),
        CalendarEvent::PropertyArchived { .. } => ("property.archive", "property"),
        CalendarEvent::RoomTypeCreated { .. } => ("room_type.create", "room_type"),
        CalendarEvent::RoomTypeUpdated { .. } => ("room_type.update", "room_type"),
        CalendarEvent::BookingReserved { .. } => ("booking.create", "booking"),
        CalendarEvent::BookingModified { .. } => ("booking.modify", "booking"),
        CalendarEvent::BookingConfirmed { .. } => ("booking.confirm", "booking"),
        CalendarEvent::BookingCancelled { .. } => ("booking.cancel", "booking"),
        CalendarEvent::BookingCheckedIn { .. } => ("booking.check_in", "booking"),
        CalendarEvent::BookingCheckedOut { .. } => ("booking.check_out", "booking"),
        CalendarEvent::BookingNoShow { .. } => ("booking.no_show", "booking"),
        CalendarEvent::BookingHoldExpired { .. } => ("booking.expire_hold", "booking"),
        CalendarEvent::AvailabilityBlocked { .. } => ("block.create", "block"),
        CalendarEvent::AvailabilityReleased { .. } => ("block.release", "block"),
    }
}

pub async fn apply(conn: &mut PgConnection, events: &[Envelope]) -> Result<(), sqlx::Error> {
    let mut ids = Vec::with_capacity(events.len());
    let mut agencies = Vec::with_capacity(events.len());
    let mut users = Vec::with_capacity(events.len());
    let mut actions = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut resources: Vec<Uuid> = Vec::with_capacity(events.len());
    let mut details = Vec::with_capacity(events.len());
    let mut created = Vec::with_capacity(events.len());
    let mut positions = Vec::with_capacity(events.len());
    for e in events {
        let (action, resource_type) = action(&e.event);
        ids.push(e.event_id);
        agencies.push(e.meta.agency_id);
        users.push(e.meta.user_id.clone());
        actions.push(action);
        types.push(resource_type);
        resources.push(e.event.subject().unwrap_or(e.property_id));
        details.push(e.event.payload().to_string());
        created.push(e.recorded_at);
        positions.push(e.position);
    }
    sqlx::query!("INSERT INTO audit_log
                (id, agency_id, user_id, action, resource_type, resource_id, details, created_at, position)
         SELECT i, a, u, ac, t, r, d::jsonb, c, p
           FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::uuid[],
                       $7::text[], $8::timestamptz[], $9::bigint[]) AS x(i, a, u, ac, t, r, d, c, p)",
        &ids,
        &agencies,
        &users,
        &actions as &[&str],
        &types as &[&str],
        &resources,
        &details,
        &created,
        &positions,
    )
    .execute(conn)
    .await?;
    Ok(())
}
