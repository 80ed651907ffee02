//! Reading a channel's iCal feed: the VEVENTs as ranges of nights.
//!
//! What counts (docs/ical.md): every VEVENT with a UID and a DTSTART.
//! DTSTART/DTEND are DATE or DATE-TIME; a DATE-TIME gives its calendar date as
//! written (TZID and `Z` are not converted: a check-in at 15:00 is on its
//! day wherever it is). The end is exclusive: the check-out day. Without
//! DTEND, a DURATION in days or weeks is used, else one night. An end on or
//! before the start is one night. `STATUS:CANCELLED` events are left out.
//! RRULEs are not expanded: a recurring event counts as its first occurrence.

use chrono::{Days, NaiveDate};
use sha2::{Digest, Sha256};

use super::text::{parse_line, unescape_text, unfold, ContentLine};

/// The longest `external_ref` the calendar accepts; longer UIDs are hashed.
const MAX_REF: usize = 255;

/// One VEVENT of a feed, as nights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    /// The UID (with `#<RECURRENCE-ID>` for an overridden occurrence),
    /// unescaped; `sha256:<hex>` of it when longer than 255 characters.
    pub uid: String,
    pub start: NaiveDate,
    pub end: NaiveDate,
}

/// A VEVENT that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unreadable {
    pub uid: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Feed {
    pub events: Vec<FeedEvent>,
    pub cancelled: usize,
    pub unreadable: Vec<Unreadable>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeedError {
    #[error("the feed is not an iCalendar file")]
    NotICalendar,
}

/// Parses a feed. Only a document that is not iCalendar at all is an error;
/// bad events are collected in [`Feed::unreadable`].
pub fn parse(text: &str) -> Result<Feed, FeedError> {
    let lines = unfold(text.trim_start_matches('\u{feff}'));
    let is_calendar = lines
        .iter()
        .filter_map(|l| parse_line(l))
        .any(|l| l.name == "BEGIN" && l.value.trim().eq_ignore_ascii_case("VCALENDAR"));
    if !is_calendar {
        return Err(FeedError::NotICalendar);
    }
    let mut feed = Feed::default();
    // Components open inside the current VEVENT (VALARM, ...): their
    // properties are not the event's.
    let mut nested = 0usize;
    let mut event: Option<Vec<ContentLine>> = None;
    for line in lines.iter().filter_map(|l| parse_line(l)) {
        let component = line.value.trim().to_ascii_uppercase();
        match (line.name.as_str(), event.as_mut()) {
            ("BEGIN", None) if component == "VEVENT" => event = Some(Vec::new()),
            ("BEGIN", Some(_)) => nested += 1,
            ("END", Some(_)) if nested > 0 => nested -= 1,
            ("END", Some(_)) if component == "VEVENT" => {
                if let Some(properties) = event.take() {
                    read_event(&properties, &mut feed);
                }
            }
            (_, Some(properties)) if nested == 0 => properties.push(line),
            _ => {}
        }
    }
    Ok(feed)
}

fn read_event(properties: &[ContentLine], feed: &mut Feed) {
    let get = |name: &str| properties.iter().find(|p| p.name == name);
    let uid = get("UID")
        .map(|p| unescape_text(p.value.trim()))
        .filter(|u| !u.is_empty())
        .map(|uid| match get("RECURRENCE-ID") {
            Some(recurrence) => format!("{uid}#{}", recurrence.value.trim()),
            None => uid,
        })
        .map(bounded_ref);
    let unreadable = |reason: &str| Unreadable {
        uid: uid.clone(),
        reason: reason.to_owned(),
    };
    if get("STATUS").is_some_and(|s| s.value.trim().eq_ignore_ascii_case("CANCELLED")) {
        feed.cancelled += 1;
        return;
    }
    let Some(uid) = uid.clone() else {
        feed.unreadable.push(unreadable("no UID"));
        return;
    };
    let Some(start) = get("DTSTART").and_then(|p| date(&p.value)) else {
        feed.unreadable
            .push(unreadable("no DTSTART, or not a DATE or DATE-TIME"));
        return;
    };
    let end = match get("DTEND") {
        Some(p) => match date(&p.value) {
            Some(end) => Some(end),
            None => {
                feed.unreadable
                    .push(unreadable("DTEND is not a DATE or DATE-TIME"));
                return;
            }
        },
        None => get("DURATION")
            .and_then(|p| duration_days(&p.value))
            .and_then(|days| start.checked_add_days(Days::new(days))),
    };
    let one_night = start.checked_add_days(Days::new(1));
    let Some(end) = end.filter(|end| *end > start).or(one_night) else {
        feed.unreadable
            .push(unreadable("the dates are out of range"));
        return;
    };
    feed.events.push(FeedEvent { uid, start, end });
}

/// The calendar date of a DATE (`20270701`) or DATE-TIME (`20270701T150000Z`).
fn date(value: &str) -> Option<NaiveDate> {
    let value = value.trim();
    let digits = value.get(..8)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match value.get(8..) {
        Some("") | None => {}
        Some(time) if time.starts_with(['T', 't']) => {}
        Some(_) => return None,
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

/// Whole days of a DURATION such as `P3D`, `P1W` or `P2DT12H` (hours and
/// less are dropped); `None` for a negative or unreadable one.
fn duration_days(value: &str) -> Option<u64> {
    let value = value.trim().strip_prefix('+').unwrap_or(value.trim());
    let body = value.strip_prefix('P')?;
    let date_part = body.split('T').next().unwrap_or("");
    if let Some(weeks) = date_part.strip_suffix('W') {
        return weeks.parse::<u64>().ok().map(|w| w * 7);
    }
    if date_part.is_empty() {
        return Some(0);
    }
    date_part.strip_suffix('D')?.parse().ok()
}

fn bounded_ref(uid: String) -> String {
    if uid.chars().count() <= MAX_REF {
        return uid;
    }
    format!("sha256:{}", hex::encode(Sha256::digest(uid.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().expect("a date")
    }

    fn feed(events: &str) -> Feed {
        parse(&format!(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\n{events}END:VCALENDAR\r\n"
        ))
        .expect("a calendar")
    }

    #[test]
    fn all_day_events_are_their_nights() {
        let f = feed("BEGIN:VEVENT\r\nUID:a@x\r\nDTSTART;VALUE=DATE:20270701\r\nDTEND;VALUE=DATE:20270704\r\nEND:VEVENT\r\n");
        assert_eq!(
            f.events,
            vec![FeedEvent {
                uid: "a@x".into(),
                start: d("2027-07-01"),
                end: d("2027-07-04")
            }]
        );
    }

    #[test]
    fn date_times_give_their_dates_and_a_missing_end_is_one_night() {
        let f = feed(
            "BEGIN:VEVENT\nUID:a\nDTSTART;TZID=Europe/Lisbon:20270701T150000\nDTEND:20270703T100000Z\nEND:VEVENT\n\
             BEGIN:VEVENT\nUID:b\nDTSTART:20270710\nEND:VEVENT\n",
        );
        assert_eq!(f.events[0].start, d("2027-07-01"));
        assert_eq!(f.events[0].end, d("2027-07-03"));
        assert_eq!(f.events[1].end, d("2027-07-11"));
    }

    #[test]
    fn a_duration_gives_the_end() {
        let f = feed("BEGIN:VEVENT\nUID:a\nDTSTART:20270701\nDURATION:P1W\nEND:VEVENT\n");
        assert_eq!(f.events[0].end, d("2027-07-08"));
    }

    #[test]
    fn cancelled_events_and_alarm_properties_are_left_out() {
        let f = feed(
            "BEGIN:VEVENT\nUID:a\nDTSTART:20270701\nSTATUS:CANCELLED\nEND:VEVENT\n\
             BEGIN:VEVENT\nUID:b\nDTSTART:20270701\nBEGIN:VALARM\nUID:alarm\nEND:VALARM\nEND:VEVENT\n",
        );
        assert_eq!(f.cancelled, 1);
        assert_eq!(f.events.len(), 1);
        assert_eq!(f.events[0].uid, "b");
    }

    #[test]
    fn events_without_uid_or_start_are_reported() {
        let f = feed(
            "BEGIN:VEVENT\nDTSTART:20270701\nEND:VEVENT\nBEGIN:VEVENT\nUID:x\nDTSTART:tomorrow\nEND:VEVENT\n",
        );
        assert!(f.events.is_empty());
        assert_eq!(f.unreadable.len(), 2);
        assert_eq!(f.unreadable[1].uid.as_deref(), Some("x"));
    }

    #[test]
    fn folded_uids_are_unfolded_and_unescaped() {
        let f = feed("BEGIN:VEVENT\r\nUID:abc\r\n def\\,g\r\nDTSTART:20270701\r\nEND:VEVENT\r\n");
        assert_eq!(f.events[0].uid, "abcdef,g");
    }

    #[test]
    fn very_long_uids_are_hashed_to_fit_an_external_ref() {
        let uid = "u".repeat(300);
        let f = feed(&format!(
            "BEGIN:VEVENT\nUID:{uid}\nDTSTART:20270701\nEND:VEVENT\n"
        ));
        assert!(f.events[0].uid.starts_with("sha256:"));
        assert!(f.events[0].uid.len() <= MAX_REF);
    }

    #[test]
    fn html_is_not_a_calendar() {
        assert_eq!(parse("<html></html>"), Err(FeedError::NotICalendar));
    }
}
