//! The `.ics` document the export serves: the held ranges of one property,
//! one all-day VEVENT each, saying nothing about the guest.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::text::{escape_text, push_line};
use crate::checksum::ChannelRange;
use crate::values::ClaimKind;

/// The domain part of every exported UID.
pub const UID_DOMAIN: &str = "booking-ledger";
pub const PRODID: &str = "-//Booking Ledger//iCal export 1.0//EN";

/// The VEVENT's SUMMARY: never anything about the guest.
fn summary(kind: ClaimKind) -> &'static str {
    match kind {
        ClaimKind::Booking => "Reserved",
        ClaimKind::Block => "Blocked",
    }
}

/// One held range of nights: a claim as channels see it (its status is what
/// the drift checksum covers), last changed at `changed_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRange {
    pub claim: ChannelRange,
    pub changed_at: DateTime<Utc>,
}

/// One all-day VEVENT over the nights `[start, end)`.
struct Vevent {
    uid: String,
    stamp: DateTime<Utc>,
    start: NaiveDate,
    end: NaiveDate,
    summary: &'static str,
}

/// The iCalendar document of a property's held nights: one all-day VEVENT
/// per booking or block on its single unit, CRLF line endings, lines folded
/// at 75 octets. Claims on room types are in their room type's document
/// ([`render_room_type`]), never here.
pub fn render(property_id: Uuid, ranges: &[ExportRange]) -> String {
    let events = ranges
        .iter()
        .filter(|r| r.claim.room_type_id.is_none())
        .map(|range| Vevent {
            uid: range.claim.id.to_string(),
            stamp: range.changed_at,
            start: range.claim.start,
            end: range.claim.end,
            summary: summary(range.claim.kind),
        });
    document(
        &format!("Booking Ledger, nights held at property {property_id}"),
        events,
    )
}

/// The nights of `[start, end)` on which the claims on `room_type_id` hold
/// all of its `units`, as maximal runs, each with the latest change of the
/// claims on it.
pub fn full_runs(
    ranges: &[ExportRange], room_type_id: Uuid, units: u32,
) -> Vec<(NaiveDate, NaiveDate, DateTime<Utc>)> {
    let mut nights: BTreeMap<NaiveDate, (u32, DateTime<Utc>)> = BTreeMap::new();
    for ExportRange { claim, changed_at } in ranges
        .iter()
        .filter(|r| r.claim.room_type_id == Some(room_type_id))
    {
        for night in claim.start.iter_days().take_while(|n| *n < claim.end) {
            let (taken, changed) = nights.entry(night).or_insert((0, *changed_at));
            *taken += claim.units.unwrap_or(1);
            *changed = (*changed).max(*changed_at);
        }
    }
    let mut runs: Vec<(NaiveDate, NaiveDate, DateTime<Utc>)> = Vec::new();
    for (night, (taken, changed)) in nights {
        if taken < units {
            continue;
        }
        match runs.last_mut() {
            Some((_, end, stamp)) if *end == night => {
                *end = night.succ_opt().unwrap_or(night);
                *stamp = (*stamp).max(changed);
            }
            _ => runs.push((night, night.succ_opt().unwrap_or(night), changed)),
        }
    }
    runs
}

/// The iCalendar document of one room type: a night is taken only when no
/// unit of it is free. One VEVENT per run of full nights, its UID the room
/// type and the run's first night (a run that grows or shrinks at its end
/// keeps its UID).
pub fn render_room_type(
    property_id: Uuid, room_type_id: Uuid, units: u32, ranges: &[ExportRange],
) -> String {
    let events = full_runs(ranges, room_type_id, units)
        .into_iter()
        .map(|(start, end, stamp)| Vevent {
            uid: format!("{room_type_id}-{}", start.format("%Y%m%d")),
            stamp,
            start,
            end,
            summary: "Full",
        });
    document(
        &format!(
            "Booking Ledger, full nights of room type {room_type_id} at property {property_id}"
        ),
        events,
    )
}

fn document(name: &str, events: impl Iterator<Item = Vevent>) -> String {
    let mut out = String::with_capacity(1024);
    let line = |out: &mut String, text: &str| push_line(out, text);
    line(&mut out, "BEGIN:VCALENDAR");
    line(&mut out, "VERSION:2.0");
    line(&mut out, &format!("PRODID:{PRODID}"));
    line(&mut out, "CALSCALE:GREGORIAN");
    line(&mut out, "METHOD:PUBLISH");
    line(&mut out, &format!("X-WR-CALNAME:{}", escape_text(name)));
    for event in events {
        line(&mut out, "BEGIN:VEVENT");
        line(&mut out, &format!("UID:{}@{UID_DOMAIN}", event.uid));
        line(
            &mut out,
            &format!("DTSTAMP:{}", event.stamp.format("%Y%m%dT%H%M%SZ")),
        );
        line(
            &mut out,
            &format!("DTSTART;VALUE=DATE:{}", event.start.format("%Y%m%d")),
        );
        line(
            &mut out,
            &format!("DTEND;VALUE=DATE:{}", event.end.format("%Y%m%d")),
        );
        line(&mut out, &format!("SUMMARY:{}", event.summary));
        line(&mut out, "TRANSP:OPAQUE");
        line(&mut out, "END:VEVENT");
    }
    line(&mut out, "END:VCALENDAR");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ical::feed;

    #[test]
    fn the_document_reads_back_as_its_ranges() {
        let range = ExportRange {
            claim: ChannelRange::single(
                ClaimKind::Booking,
                Uuid::nil(),
                NaiveDate::from_ymd_opt(2027, 7, 1).expect("a date"),
                NaiveDate::from_ymd_opt(2027, 7, 4).expect("a date"),
                "confirmed".into(),
            ),
            changed_at: DateTime::from_timestamp(0, 0).expect("the epoch"),
        };
        let text = render(Uuid::nil(), std::slice::from_ref(&range));
        assert!(text.contains("DTSTAMP:19700101T000000Z\r\n"));
        assert!(text.split_terminator("\r\n").all(|l| l.len() <= 75));
        assert!(!text.replace("\r\n", "").contains('\n'));
        let parsed = feed::parse(&text).expect("a calendar");
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.events[0].start, range.claim.start);
        assert_eq!(parsed.events[0].end, range.claim.end);
        assert_eq!(
            parsed.events[0].uid,
            format!("{}@{UID_DOMAIN}", Uuid::nil())
        );
    }

    #[test]
    fn a_room_type_night_is_full_only_when_its_claims_hold_every_unit() {
        let day = |d: u32| NaiveDate::from_ymd_opt(2027, 7, d).expect("a date");
        let double = Uuid::from_u128(7);
        let claim = |id: u128, start: u32, end: u32, units: u32| ExportRange {
            claim: ChannelRange {
                room_type_id: Some(double),
                units: Some(units),
                ..ChannelRange::single(
                    ClaimKind::Booking,
                    Uuid::from_u128(id),
                    day(start),
                    day(end),
                    "confirmed".into(),
                )
            },
            changed_at: DateTime::from_timestamp(id as i64, 0).expect("a time"),
        };
        // Two units: nights 2..4 hold 2, night 5 holds 2 again, night 4 holds 1.
        let ranges = [claim(1, 1, 6, 1), claim(2, 2, 4, 1), claim(3, 5, 7, 1)];
        let runs = full_runs(&ranges, double, 2);
        let stamp = |s: i64| DateTime::from_timestamp(s, 0).expect("a time");
        assert_eq!(
            runs,
            vec![(day(2), day(4), stamp(2)), (day(5), day(6), stamp(3))]
        );
        assert!(full_runs(&ranges, Uuid::nil(), 1).is_empty());
        let text = render_room_type(Uuid::nil(), double, 2, &ranges);
        let parsed = feed::parse(&text).expect("a calendar");
        assert_eq!(parsed.events.len(), 2);
        assert_eq!(parsed.events[1].start, day(5));
        // The property's own document leaves room types out.
        let property = feed::parse(&render(Uuid::nil(), &ranges)).expect("a calendar");
        assert!(property.events.is_empty());
    }
}
