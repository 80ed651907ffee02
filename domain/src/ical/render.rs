//! The `.ics` document the export serves: the held ranges of one property,
//! one all-day VEVENT each, saying nothing about the guest.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::text::{escape_text, push_line};
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

/// One held range of nights `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRange {
    pub ref_id: Uuid,
    pub kind: ClaimKind,
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub changed_at: DateTime<Utc>,
    /// The booking's status, or `blocked` (what the drift checksum covers).
    pub status: String,
}

/// The iCalendar document of a property's held nights: one all-day VEVENT
/// per booking or block, CRLF line endings, lines folded at 75 octets.
pub fn render(property_id: Uuid, ranges: &[ExportRange]) -> String {
    let mut out = String::with_capacity(256 + ranges.len() * 200);
    let line = |out: &mut String, text: &str| push_line(out, text);
    line(&mut out, "BEGIN:VCALENDAR");
    line(&mut out, "VERSION:2.0");
    line(&mut out, &format!("PRODID:{PRODID}"));
    line(&mut out, "CALSCALE:GREGORIAN");
    line(&mut out, "METHOD:PUBLISH");
    line(
        &mut out,
        &format!(
            "X-WR-CALNAME:{}",
            escape_text(&format!(
                "Booking Ledger, nights held at property {property_id}"
            ))
        ),
    );
    for range in ranges {
        line(&mut out, "BEGIN:VEVENT");
        line(&mut out, &format!("UID:{}@{UID_DOMAIN}", range.ref_id));
        line(
            &mut out,
            &format!("DTSTAMP:{}", range.changed_at.format("%Y%m%dT%H%M%SZ")),
        );
        line(
            &mut out,
            &format!("DTSTART;VALUE=DATE:{}", range.start.format("%Y%m%d")),
        );
        line(
            &mut out,
            &format!("DTEND;VALUE=DATE:{}", range.end.format("%Y%m%d")),
        );
        line(&mut out, &format!("SUMMARY:{}", summary(range.kind)));
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
            ref_id: Uuid::nil(),
            kind: ClaimKind::Booking,
            start: NaiveDate::from_ymd_opt(2027, 7, 1).expect("a date"),
            end: NaiveDate::from_ymd_opt(2027, 7, 4).expect("a date"),
            changed_at: DateTime::from_timestamp(0, 0).expect("the epoch"),
            status: "confirmed".into(),
        };
        let text = render(Uuid::nil(), std::slice::from_ref(&range));
        assert!(text.contains("DTSTAMP:19700101T000000Z\r\n"));
        assert!(text.split_terminator("\r\n").all(|l| l.len() <= 75));
        assert!(!text.replace("\r\n", "").contains('\n'));
        let parsed = feed::parse(&text).expect("a calendar");
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.events[0].start, range.start);
        assert_eq!(parsed.events[0].end, range.end);
        assert_eq!(
            parsed.events[0].uid,
            format!("{}@{UID_DOMAIN}", Uuid::nil())
        );
    }
}
