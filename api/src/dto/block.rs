//! Blocks: the block body and the block view.

use chrono::{DateTime, NaiveDate, Utc};
use ledger_domain::commands::BlockNights;
use ledger_domain::values::BlockReason;
use ledger_domain::{Block, PropertyCalendar};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::optional_notes;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockBody {
    pub property_id: Uuid,
    /// A date from 1900-01-01 to 2199-12-31.
    #[schema(pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    pub start: NaiveDate,
    /// Exclusive: the first night that is not blocked (at most 366 nights
    /// after start).
    #[schema(pattern = r"^(19[0-9]{2}|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$")]
    pub end: NaiveDate,
    pub reason: BlockReason,
    #[serde(default)]
    #[schema(schema_with = optional_notes::<2000>)]
    pub note: Option<String>,
    /// The channel's id for what the block mirrors (an iCal `UID`).
    #[serde(default)]
    // Not `optional_line`: a `schema_with` schema drops the description.
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub external_ref: Option<String>,
    /// Required on a property with room types, refused elsewhere.
    #[serde(default)]
    pub room_type_id: Option<Uuid>,
    /// How many units of the room type the block closes: 1 when absent, at
    /// most the room type's units; only 1 on a single-unit property.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub units: Option<u32>,
}

impl BlockBody {
    pub fn into_command(self, block_id: Uuid) -> BlockNights {
        BlockNights {
            block_id,
            start: self.start,
            end: self.end,
            reason: self.reason,
            note: self.note,
            external_ref: self.external_ref,
            room_type_id: self.room_type_id,
            units: self.units,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BlockView {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub property_id: Uuid,
    pub start: NaiveDate,
    pub end: NaiveDate,
    #[schema(value_type = String)]
    pub reason: BlockReason,
    pub note: Option<String>,
    pub external_ref: Option<String>,
    /// On a property with room types only, with the units it closes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_type_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<u32>,
    pub released: bool,
    pub created_at: DateTime<Utc>,
    pub position: i64,
}

impl BlockView {
    pub fn new(agency_id: Uuid, b: &Block, position: i64) -> Self {
        BlockView {
            id: b.id,
            agency_id,
            property_id: b.property_id,
            start: b.nights.start,
            end: b.nights.end,
            reason: b.reason,
            note: b.note.clone(),
            external_ref: b.external_ref.clone(),
            room_type_id: b.room_type_id,
            units: b.room_type_id.map(|_| b.units),
            released: b.released,
            created_at: b.created_at,
            position,
        }
    }
}

/// A block of a calendar, after a command or for a read.
pub fn block_view(calendar: &PropertyCalendar, id: Uuid, position: i64) -> Option<BlockView> {
    let property = calendar.property.as_ref()?;
    let block = calendar.blocks.get(&id)?;
    Some(BlockView::new(property.agency_id, block, position))
}
