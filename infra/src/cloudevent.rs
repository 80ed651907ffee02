//! The document every event is published as: CloudEvents 1.0, structured
//! JSON mode, with the ledger extensions (docs/api.md "Event stream on NATS
//! JetStream"). The publisher writes it; the channel kit and `ledger tail`
//! read it. Nothing here talks to NATS.

use chrono::{DateTime, NaiveDate, Utc};
use ledger_domain::checksum::ChannelRange;
use ledger_domain::CalendarEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::tail::Envelope;

pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE: &str = "application/json";
/// The first token of every subject, and the prefix of every `type`.
pub const PREFIX: &str = "ledger";

/// One published event, field for field as consumers receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    /// The event's stable id: the same on every republish, and the `Nats-Msg-Id`.
    pub id: Uuid,
    /// `/agencies/<agency_id>/properties/<property_id>`.
    pub source: String,
    /// `ledger.<event_type>`, e.g. `ledger.booking.reserved`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The booking or block the event is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the event was recorded in the log.
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    /// Global position in the log.
    pub ledgerposition: i64,
    /// Position in the property's own stream: 1, 2, 3, ... with no gaps.
    pub ledgersequence: i64,
    /// The room type the event names (`data.room_type_id`, or the room type
    /// a `room_type.*` event is about); absent on a single-unit property.
    /// An attribute so that a consumer (or a broker's CloudEvents filter)
    /// can pick one room type's events without decoding `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledgerroomtypeid: Option<Uuid>,
    /// The event's payload (its current version, after upcasting).
    pub data: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudEventError {
    #[error("not a ledger CloudEvent: {0}")]
    Json(#[from] serde_json::Error),
    #[error("source {0:?} is not /agencies/<uuid>/properties/<uuid>")]
    Source(String),
    #[error("type {0:?} is not ledger.<event_type>")]
    Type(String),
    #[error("data of {event_type} does not decode: {reason}")]
    Data { event_type: String, reason: String },
}

impl CloudEvent {
    /// The document for one event of the log.
    pub fn from_envelope(envelope: &Envelope) -> CloudEvent {
        let event = &envelope.event;
        CloudEvent {
            specversion: SPEC_VERSION.to_owned(),
            id: envelope.event_id,
            source: source(envelope.meta.agency_id, envelope.property_id),
            event_type: format!("{PREFIX}.{}", event.kind()),
            subject: event.subject().map(|id| id.to_string()),
            time: envelope.recorded_at,
            datacontenttype: CONTENT_TYPE.to_owned(),
            ledgerposition: envelope.position,
            ledgersequence: envelope.sequence,
            ledgerroomtypeid: event.room_type_id(),
            data: event.payload(),
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<CloudEvent, CloudEventError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// `(agency_id, property_id)`, read back from `source`.
    pub fn origin(&self) -> Result<(Uuid, Uuid), CloudEventError> {
        let bad = || CloudEventError::Source(self.source.clone());
        let rest = self.source.strip_prefix("/agencies/").ok_or_else(bad)?;
        let (agency, property) = rest.split_once("/properties/").ok_or_else(bad)?;
        Ok((
            agency.parse().map_err(|_| bad())?,
            property.parse().map_err(|_| bad())?,
        ))
    }

    /// The event type without the `ledger.` prefix, e.g. `booking.reserved`.
    pub fn kind(&self) -> Result<&str, CloudEventError> {
        self.event_type
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or_else(|| CloudEventError::Type(self.event_type.clone()))
    }

    /// `data` decoded as the domain event it carries.
    pub fn decode(&self) -> Result<CalendarEvent, CloudEventError> {
        let kind = self.kind()?;
        CalendarEvent::from_stored(kind, self.data.clone()).map_err(|e| CloudEventError::Data {
            event_type: kind.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// The `<event_type>` of availability snapshots (docs/api.md "Channel resync and
/// drift checks"): not an event of the log, a picture of the property's
/// active claims as of `ledgersequence`.
pub const SNAPSHOT: &str = "availability.snapshot";
/// The `<event_type>` of the periodic drift checksums.
pub const CHECKSUM: &str = "availability.checksum";

/// `data` of an availability snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotData {
    pub property_id: Uuid,
    pub as_of_position: i64,
    pub as_of_sequence: i64,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub ranges: Vec<ChannelRange>,
    pub checksum: String,
}

/// `data` of a drift checksum message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksumData {
    pub property_id: Uuid,
    pub as_of_sequence: i64,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub checksum: String,
}

impl CloudEvent {
    /// A snapshot or checksum message of a property: `ledgerposition` and
    /// `ledgersequence` are those of the last event it takes into account,
    /// so it sits in the property's sequence where it was taken.
    pub fn availability(
        agency_id: Uuid, property_id: Uuid, kind: &str, position: i64, sequence: i64, data: Value,
    ) -> CloudEvent {
        CloudEvent {
            specversion: SPEC_VERSION.to_owned(),
            id: Uuid::new_v4(),
            source: source(agency_id, property_id),
            event_type: format!("{PREFIX}.{kind}"),
            subject: None,
            time: Utc::now(),
            datacontenttype: CONTENT_TYPE.to_owned(),
            ledgerposition: position,
            ledgersequence: sequence,
            ledgerroomtypeid: None,
            data,
        }
    }
}

pub fn source(agency_id: Uuid, property_id: Uuid) -> String {
    format!("/agencies/{agency_id}/properties/{property_id}")
}

/// `ledger.<agency_id>.<property_id>.<event_type>`.
pub fn subject(agency_id: Uuid, property_id: Uuid, event_type: &str) -> String {
    format!("{PREFIX}.{agency_id}.{property_id}.{event_type}")
}

/// The subject filter for one agency, one property (of any agency, or of
/// one), or everything.
pub fn filter(agency_id: Option<Uuid>, property_id: Option<Uuid>) -> String {
    let token = |id: Option<Uuid>| id.map_or_else(|| "*".to_owned(), |id| id.to_string());
    match (agency_id, property_id) {
        (None, None) => format!("{PREFIX}.>"),
        (agency, property) => format!("{PREFIX}.{}.{}.>", token(agency), token(property)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_cover_one_agency_one_property_or_everything() {
        let a = Uuid::nil();
        let p = Uuid::max();
        assert_eq!(filter(None, None), "ledger.>");
        assert_eq!(filter(Some(a), None), format!("ledger.{a}.*.>"));
        assert_eq!(filter(None, Some(p)), format!("ledger.*.{p}.>"));
        assert_eq!(filter(Some(a), Some(p)), format!("ledger.{a}.{p}.>"));
        assert_eq!(
            subject(a, p, "booking.reserved"),
            format!("ledger.{a}.{p}.booking.reserved")
        );
    }

    #[test]
    fn origin_and_kind_read_back_what_the_publisher_wrote() {
        let (a, p) = (Uuid::new_v4(), Uuid::new_v4());
        let event = CloudEvent {
            specversion: SPEC_VERSION.into(),
            id: Uuid::new_v4(),
            source: source(a, p),
            event_type: "ledger.booking.confirmed".into(),
            subject: None,
            time: Utc::now(),
            datacontenttype: CONTENT_TYPE.into(),
            ledgerposition: 7,
            ledgersequence: 3,
            ledgerroomtypeid: None,
            data: Value::Null,
        };
        assert_eq!(event.origin().ok(), Some((a, p)));
        assert_eq!(event.kind().ok(), Some("booking.confirmed"));
        let json = serde_json::to_value(&event).expect("serialises");
        assert_eq!(json["type"], "ledger.booking.confirmed");
        assert!(
            json.get("subject").is_none(),
            "no subject when there is none"
        );
        assert!(
            json.get("ledgerroomtypeid").is_none(),
            "no room type attribute on a single-unit property"
        );
    }
}
