//! What a channel must hold for a property, and the one checksum that says
//! whether it does (docs/api.md "Channel resync and drift checks").
//!
//! A snapshot, a periodic checksum message, the checksum route (over the
//! `inventory_ranges` read model) and the channel kit (over an adapter's own
//! state) all describe the same thing: the active claims of a property in a
//! window of nights. They agree only if they compute the checksum the same
//! way, so it is defined here, once: the lowercase hex SHA-256 of one line
//! per range, `kind|id|start|end|status`, `\n`-joined, in start then id order.
//! A claim on a room type adds `|room_type_id|units` to its line: the units
//! it holds on each of its nights, so the lines sum to the per-night counts.

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::calendar::PropertyCalendar;
use crate::values::ClaimKind;

/// How many nights after "today" a snapshot and a checksum cover.
pub const WINDOW_DAYS: u64 = 550;

/// One active claim as channels see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRange {
    pub kind: ClaimKind,
    pub id: Uuid,
    pub start: NaiveDate,
    /// Exclusive: the morning the claim ends.
    pub end: NaiveDate,
    /// A booking's status (`tentative`, `confirmed`, `checked_in`), or
    /// `blocked` for a block.
    pub status: String,
    /// The room type the claim holds units of; absent on a single unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_type_id: Option<Uuid>,
    /// How many of the room type's units it holds on each night (a block
    /// may close several); absent on a single unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<u32>,
}

impl ChannelRange {
    /// A claim on the single unit.
    pub fn single(
        kind: ClaimKind, id: Uuid, start: NaiveDate, end: NaiveDate, status: String,
    ) -> Self {
        ChannelRange {
            kind,
            id,
            start,
            end,
            status,
            room_type_id: None,
            units: None,
        }
    }
}

/// The window a snapshot covers: from "today" in the property's time zone
/// for [`WINDOW_DAYS`] nights. An unknown time zone counts as UTC.
pub fn window(timezone: &str, now: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
    let today = match timezone.parse::<chrono_tz::Tz>() {
        Ok(zone) => now.with_timezone(&zone).date_naive(),
        Err(_) => now.date_naive(),
    };
    let to = today
        .checked_add_days(Days::new(WINDOW_DAYS))
        .unwrap_or(NaiveDate::MAX);
    (today, to)
}

/// The active claims of a calendar that end after `from` and start before
/// `to`, in start then id order.
/// Claims on room types included, with the units they hold.
pub fn ranges_in(calendar: &PropertyCalendar, from: NaiveDate, to: NaiveDate) -> Vec<ChannelRange> {
    let single = calendar.active_claims().map(|(kind, id, nights)| {
        ChannelRange::single(
            kind,
            id,
            nights.start,
            nights.end,
            calendar.claim_status(kind, id).to_owned(),
        )
    });
    let bookings = calendar
        .bookings
        .values()
        .filter(|b| b.status.is_active())
        .filter_map(|b| {
            Some(ChannelRange {
                room_type_id: Some(b.room_type_id?),
                units: Some(1),
                ..ChannelRange::single(
                    ClaimKind::Booking,
                    b.id,
                    b.nights.start,
                    b.nights.end,
                    b.status.as_str().to_owned(),
                )
            })
        });
    let blocks = calendar
        .blocks
        .values()
        .filter(|b| !b.released)
        .filter_map(|b| {
            Some(ChannelRange {
                room_type_id: Some(b.room_type_id?),
                units: Some(b.units),
                ..ChannelRange::single(
                    ClaimKind::Block,
                    b.id,
                    b.nights.start,
                    b.nights.end,
                    BLOCKED.to_owned(),
                )
            })
        });
    let ranges = single
        .chain(bookings)
        .chain(blocks)
        .filter(|r| r.end > from && r.start < to)
        .collect();
    in_canonical_order(ranges)
}

/// The status a block's range carries.
pub const BLOCKED: &str = "blocked";

/// Sorts ranges by start, then id: the order of the canonical text.
pub fn in_canonical_order(mut ranges: Vec<ChannelRange>) -> Vec<ChannelRange> {
    ranges.sort_by_key(|a| (a.start, a.id));
    ranges
}

/// The canonical text: one `kind|id|start|end|status` line per range
/// (`kind|id|start|end|status|room_type_id|units` for a claim on a room
/// type), in start then id order, joined with `\n` (no trailing newline).
pub fn canonical_text(ranges: &[ChannelRange]) -> String {
    let mut sorted: Vec<&ChannelRange> = ranges.iter().collect();
    sorted.sort_by_key(|a| (a.start, a.id));
    sorted
        .iter()
        .map(|r| {
            let line = format!(
                "{}|{}|{}|{}|{}",
                r.kind.as_str(),
                r.id,
                r.start,
                r.end,
                r.status
            );
            match r.room_type_id {
                Some(room_type) => format!("{line}|{room_type}|{}", r.units.unwrap_or(1)),
                None => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The drift checksum: lowercase hex SHA-256 of [`canonical_text`].
pub fn checksum(ranges: &[ChannelRange]) -> String {
    hex::encode(Sha256::digest(canonical_text(ranges).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(kind: ClaimKind, id: u128, start: (i32, u32, u32), nights: u64) -> ChannelRange {
        let start = NaiveDate::from_ymd_opt(start.0, start.1, start.2).expect("a date");
        ChannelRange::single(
            kind,
            Uuid::from_u128(id),
            start,
            start + Days::new(nights),
            match kind {
                ClaimKind::Block => BLOCKED,
                ClaimKind::Booking => "confirmed",
            }
            .into(),
        )
    }

    #[test]
    fn a_claim_on_a_room_type_names_it_and_its_units_on_its_line() {
        let single = range(ClaimKind::Booking, 1, (2027, 7, 10), 2);
        let block = ChannelRange {
            room_type_id: Some(Uuid::from_u128(9)),
            units: Some(3),
            ..range(ClaimKind::Block, 2, (2027, 7, 1), 3)
        };
        assert_eq!(
            canonical_text(&[single, block]),
            "block|00000000-0000-0000-0000-000000000002|2027-07-01|2027-07-04|blocked\
             |00000000-0000-0000-0000-000000000009|3\n\
             booking|00000000-0000-0000-0000-000000000001|2027-07-10|2027-07-12|confirmed"
        );
    }

    #[test]
    fn the_canonical_text_is_one_line_per_range_in_start_then_id_order() {
        let late = range(ClaimKind::Booking, 1, (2027, 7, 10), 2);
        let early = range(ClaimKind::Block, 2, (2027, 7, 1), 3);
        let text = canonical_text(&[late, early]);
        assert_eq!(
            text,
            "block|00000000-0000-0000-0000-000000000002|2027-07-01|2027-07-04|blocked\n\
             booking|00000000-0000-0000-0000-000000000001|2027-07-10|2027-07-12|confirmed"
        );
    }

    #[test]
    fn the_checksum_does_not_depend_on_the_order_given() {
        let a = range(ClaimKind::Booking, 1, (2027, 7, 10), 2);
        let b = range(ClaimKind::Block, 2, (2027, 7, 1), 3);
        assert_eq!(
            checksum(&[a.clone(), b.clone()]),
            checksum(&[b.clone(), a.clone()])
        );
        let mut changed = a.clone();
        changed.status = "checked_in".into();
        assert_ne!(checksum(&[a, b.clone()]), checksum(&[changed, b]));
    }

    #[test]
    fn the_checksum_of_nothing_is_the_sha256_of_the_empty_text() {
        assert_eq!(
            checksum(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_window_starts_today_in_the_property_time_zone() {
        let now = DateTime::parse_from_rfc3339("2027-01-01T23:30:00Z")
            .expect("a time")
            .with_timezone(&Utc);
        let (from, to) = window("Asia/Tokyo", now);
        assert_eq!(from, NaiveDate::from_ymd_opt(2027, 1, 2).expect("a date"));
        assert_eq!(to, from + Days::new(WINDOW_DAYS));
        assert_eq!(window("UTC", now).0, now.date_naive());
    }
}
