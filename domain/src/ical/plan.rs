//! What an iCal import changes on a calendar (docs/ical.md): which blocks
//! belong to a feed, and the releases, moves and new blocks that make them
//! match the feed's events. Pure: the import job issues the steps as
//! ordinary commands.
//!
//! Which blocks belong to a feed: unreleased blocks with reason `other`, an
//! `external_ref` (the event's UID) and the note [`source_note`] of the
//! feed's URL. Blocks made by hand, or by another feed of the property, are
//! never touched.

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::feed::FeedEvent;
use crate::values::BlockReason;
use crate::PropertyCalendar;

/// The note on every block imported from `source`: it marks the block as
/// this feed's. A hash, because feed URLs often carry a secret.
pub fn source_note(source: &str) -> String {
    let source = source.trim();
    let source = source.strip_prefix("file://").unwrap_or(source);
    let digest = hex::encode(Sha256::digest(source.as_bytes()));
    format!("iCal import, feed {}", &digest[..16])
}

/// One change the import makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The UID left the feed (or the block is a second copy of a UID).
    Release { block_id: Uuid, uid: String },
    /// The UID's dates changed: released, then blocked again.
    Move { block_id: Uuid, event: FeedEvent },
    /// A UID not imported yet.
    Block { event: FeedEvent },
}

/// What the import does to `calendar` to match `events`. Past events
/// (ending on or before `today`) are neither imported nor released: feeds
/// drop their past, and history is not rewritten.
pub fn plan(
    calendar: &PropertyCalendar, events: &[FeedEvent], note: &str, today: NaiveDate,
) -> (Vec<Step>, usize) {
    let mut wanted: BTreeMap<&str, &FeedEvent> = BTreeMap::new();
    for event in events.iter().filter(|e| e.end > today) {
        wanted.entry(event.uid.as_str()).or_insert(event);
    }
    let mut releases = Vec::new();
    let mut moves = Vec::new();
    let mut unchanged = 0;
    let mut seen: HashSet<&str> = HashSet::new();
    let owned = calendar.blocks.values().filter(|b| {
        !b.released && b.reason == BlockReason::Other && b.note.as_deref() == Some(note)
    });
    for block in owned {
        let Some(uid) = block.external_ref.as_deref() else {
            continue;
        };
        let release = Step::Release {
            block_id: block.id,
            uid: uid.to_owned(),
        };
        if !seen.insert(uid) {
            releases.push(release);
            continue;
        }
        match wanted.get(uid) {
            Some(event) if (event.start, event.end) == (block.nights.start, block.nights.end) => {
                unchanged += 1
            }
            Some(event) => moves.push(Step::Move {
                block_id: block.id,
                event: (*event).clone(),
            }),
            None if block.nights.end <= today => unchanged += 1,
            None => releases.push(release),
        }
    }
    let blocks = wanted
        .into_iter()
        .filter(|(uid, _)| !seen.contains(uid))
        .map(|(_, event)| Step::Block {
            event: event.clone(),
        });
    // Releases first, so the nights they free can take moved and new events.
    let steps = releases.into_iter().chain(moves).chain(blocks).collect();
    (steps, unchanged)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::values::Nights;
    use crate::Block;
    use chrono::DateTime;

    use super::*;

    const NOTE: &str = "iCal import, feed 0123456789abcdef";

    fn d(s: &str) -> NaiveDate {
        s.parse().expect("a date")
    }

    fn event(uid: &str, start: &str, end: &str) -> FeedEvent {
        FeedEvent {
            uid: uid.into(),
            start: d(start),
            end: d(end),
        }
    }

    fn block(uid: &str, start: &str, end: &str, note: &str) -> Block {
        Block {
            id: Uuid::now_v7(),
            property_id: Uuid::nil(),
            nights: Nights::block(d(start), d(end)).expect("nights"),
            reason: BlockReason::Other,
            note: Some(note.into()),
            external_ref: Some(uid.into()),
            released: false,
            created_at: DateTime::from_timestamp(0, 0).expect("a time"),
            released_at: None,
            room_type_id: None,
            units: 1,
        }
    }

    fn calendar(blocks: Vec<Block>) -> PropertyCalendar {
        let blocks: BTreeMap<Uuid, Block> = blocks.into_iter().map(|b| (b.id, b)).collect();
        PropertyCalendar::from_parts(None, BTreeMap::new(), blocks)
    }

    #[test]
    fn new_uids_are_blocked_and_matching_ones_left_alone() {
        let cal = calendar(vec![block("a", "2027-07-01", "2027-07-03", NOTE)]);
        let events = [
            event("a", "2027-07-01", "2027-07-03"),
            event("b", "2027-08-01", "2027-08-02"),
        ];
        let (steps, unchanged) = plan(&cal, &events, NOTE, d("2027-01-01"));
        assert_eq!(unchanged, 1);
        assert_eq!(
            steps,
            vec![Step::Block {
                event: events[1].clone()
            }]
        );
    }

    #[test]
    fn moved_and_vanished_uids_are_moved_and_released_releases_first() {
        let a = block("a", "2027-07-01", "2027-07-03", NOTE);
        let b = block("b", "2027-08-01", "2027-08-02", NOTE);
        let (a_id, b_id) = (a.id, b.id);
        let cal = calendar(vec![a, b]);
        let events = [event("a", "2027-07-02", "2027-07-05")];
        let (steps, _) = plan(&cal, &events, NOTE, d("2027-01-01"));
        assert_eq!(
            steps,
            vec![
                Step::Release {
                    block_id: b_id,
                    uid: "b".into()
                },
                Step::Move {
                    block_id: a_id,
                    event: events[0].clone()
                },
            ]
        );
    }

    #[test]
    fn blocks_of_other_feeds_or_made_by_hand_are_not_touched() {
        let other = block(
            "x",
            "2027-07-01",
            "2027-07-03",
            "iCal import, feed ffffffffffffffff",
        );
        let mut by_hand = block("y", "2027-09-01", "2027-09-03", NOTE);
        by_hand.reason = BlockReason::Maintenance;
        let cal = calendar(vec![other, by_hand]);
        let (steps, unchanged) = plan(&cal, &[], NOTE, d("2027-01-01"));
        assert!(steps.is_empty(), "{steps:?}");
        assert_eq!(unchanged, 0);
    }

    #[test]
    fn the_past_is_neither_imported_nor_released() {
        let cal = calendar(vec![block("old", "2026-01-01", "2026-01-03", NOTE)]);
        let events = [event("older", "2025-12-01", "2025-12-03")];
        let (steps, unchanged) = plan(&cal, &events, NOTE, d("2026-06-01"));
        assert!(steps.is_empty(), "{steps:?}");
        assert_eq!(unchanged, 1);
    }

    #[test]
    fn the_note_names_the_feed_without_its_url() {
        let note = source_note("https://example.com/feed.ics?s=secret");
        assert!(!note.contains("secret"));
        assert_eq!(note, source_note(" https://example.com/feed.ics?s=secret "));
        assert_ne!(note, source_note("https://example.com/other.ics"));
        assert_eq!(source_note("file:///tmp/a.ics"), source_note("/tmp/a.ics"));
    }
}
