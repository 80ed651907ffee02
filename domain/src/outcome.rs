//! What a decided command did, and the state its events lead to, told
//! without touching the calendar they were decided on: a caller appends the
//! events first and folds them into its own copy only once they are in the
//! log (docs/product.md invariant 7: no cache runs ahead of the log).

use std::collections::BTreeMap;

use cqrs_es::Aggregate;
use uuid::Uuid;

use crate::calendar::PropertyCalendar;
use crate::commands::CalendarCommand;
use crate::events::CalendarEvent;

/// What a command did, as its caller reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A property, booking or block with this id now exists.
    Created(Uuid),
    /// An existing record changed.
    Changed,
    /// A channel sent this booking before: nothing new, the first booking stands.
    AlreadyRecorded(Uuid),
    /// Nothing to change: the state already is what the command asks.
    Unchanged,
}

impl PropertyCalendar {
    /// The outcome of `command` when [`PropertyCalendar::decide`] gave `events`
    /// on this calendar.
    pub fn outcome(&self, command: &CalendarCommand, events: &[CalendarEvent]) -> Outcome {
        if events.is_empty() {
            if let CalendarCommand::ReserveStay(reserve) = command {
                let first = reserve.inbound_key().and_then(|(channel, external_ref)| {
                    self.booking_from_channel(channel, external_ref)
                });
                if let Some(first) = first {
                    return Outcome::AlreadyRecorded(first.id);
                }
            }
            return Outcome::Unchanged;
        }
        match command {
            CalendarCommand::RegisterProperty(register) => Outcome::Created(register.property_id),
            CalendarCommand::ReserveStay(reserve) => Outcome::Created(reserve.booking_id),
            CalendarCommand::BlockNights(block) => Outcome::Created(block.block_id),
            CalendarCommand::CreateRoomType(create) => Outcome::Created(create.room_type_id),
            _ => Outcome::Changed,
        }
    }

    /// The property and the bookings, blocks and room types that `events` touch, with
    /// the events applied: enough to show what a command did, at the cost of
    /// copying only those records, never the whole calendar.
    pub fn preview(&self, events: &[CalendarEvent]) -> PropertyCalendar {
        let touched = |id: &Uuid| events.iter().any(|e| e.subject() == Some(*id));
        let mut preview = PropertyCalendar::from_parts(
            self.property.clone(),
            touched_only(&self.bookings, touched),
            touched_only(&self.blocks, touched),
        );
        preview.room_types = touched_only(&self.room_types, touched);
        for event in events {
            preview.apply(event.clone());
        }
        preview
    }
}

/// The records of `records` that `touched` names, copied.
fn touched_only<T: Clone>(
    records: &BTreeMap<Uuid, T>, touched: impl Fn(&Uuid) -> bool,
) -> BTreeMap<Uuid, T> {
    records
        .iter()
        .filter(|(id, _)| touched(id))
        .map(|(id, record)| (*id, record.clone()))
        .collect()
}
