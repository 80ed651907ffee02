//! A property's raw event history.

use chrono::{DateTime, Utc};
use ledger_infra::StoredEvent;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// One stored event of a property's raw history.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub position: i64,
    pub sequence: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

impl From<StoredEvent> for EventView {
    fn from(e: StoredEvent) -> Self {
        EventView {
            position: e.position,
            sequence: e.sequence,
            event_id: e.event_id,
            event_type: e.event_type,
            event_version: e.event_version,
            payload: e.payload,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
        }
    }
}
