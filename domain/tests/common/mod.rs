//! What the calendar's and the room types' tests share: the agency and
//! property every scenario runs on, its clock and nights, and a session that
//! decides and folds commands one by one as the command bus does.

use chrono::{DateTime, Days, NaiveDate, TimeDelta, TimeZone, Utc};
use cqrs_es::Aggregate;
use ledger_domain::{
    Actor, CalendarCommand, CalendarError, CalendarEvent, Command, PropertyCalendar,
};
use proptest::sample::Index;
use uuid::Uuid;

pub const AGENCY: Uuid = Uuid::from_u128(0xA6E0);
pub const PROPERTY: Uuid = Uuid::from_u128(0x960);

/// `hours` after the fixed instant every scenario starts at.
pub fn at(hours: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 9, 0, 0).unwrap() + TimeDelta::hours(hours)
}

/// The night `n` days after 1 July 2025.
pub fn day(n: u64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 7, 1).unwrap() + Days::new(n)
}

/// A calendar driven command by command, as the aggregate is in production:
/// `actor` decides each command at `now`, then every emitted event is applied
/// in order and kept in `log`.
pub struct Session {
    pub calendar: PropertyCalendar,
    pub log: Vec<CalendarEvent>,
    pub now: DateTime<Utc>,
    actor: Actor,
    next_id: u128,
}

impl Session {
    /// A session at `at(0)` on the calendar these events fold into.
    pub fn new(actor: Actor, history: Vec<CalendarEvent>) -> Self {
        Self {
            calendar: PropertyCalendar::replay(history.clone()),
            log: history,
            now: at(0),
            actor,
            next_id: 0x1000,
        }
    }

    /// An id no earlier one of this session had.
    pub fn fresh_id(&mut self) -> Uuid {
        self.next_id += 1;
        Uuid::from_u128(self.next_id)
    }

    pub fn run(&mut self, action: CalendarCommand) -> Result<Vec<CalendarEvent>, CalendarError> {
        let command = Command {
            actor: self.actor.clone(),
            now: self.now,
            action,
            expected_version: None,
        };
        let events = self.calendar.decide(&command)?;
        for event in &events {
            self.calendar.apply(event.clone());
        }
        self.log.extend(events.clone());
        Ok(events)
    }

    /// The booking a random step picks, when there is one.
    pub fn pick_booking(&self, index: &Index) -> Option<Uuid> {
        pick(self.calendar.bookings.keys(), index)
    }

    /// The block a random step picks, when there is one.
    pub fn pick_block(&self, index: &Index) -> Option<Uuid> {
        pick(self.calendar.blocks.keys(), index)
    }
}

fn pick<'a>(ids: impl ExactSizeIterator<Item = &'a Uuid>, index: &Index) -> Option<Uuid> {
    let len = ids.len();
    (len > 0)
        .then(|| ids.copied().nth(index.index(len)))
        .flatten()
}
