//! Properties: the register and update bodies, and the property view.

use chrono::{DateTime, Utc};
use ledger_domain::commands::{RegisterProperty, UpdateProperty};
use ledger_domain::{Property, PropertyCalendar};
use ledger_projections::views::PropertyRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{line, not_null, nullable, optional_line};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterPropertyBody {
    #[schema(schema_with = line::<1, 200>)]
    pub name: String,
    /// IANA time zone; `UTC` when absent.
    #[serde(default)]
    // Not `optional_line`: a `schema_with` schema drops the description.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub timezone: Option<String>,
    #[serde(default)]
    #[schema(schema_with = optional_line::<0, 255>)]
    pub owner_id: Option<String>,
    #[serde(default)]
    #[schema(schema_with = optional_line::<0, 255>)]
    pub external_ref: Option<String>,
}

impl RegisterPropertyBody {
    pub fn into_command(self, property_id: Uuid) -> RegisterProperty {
        RegisterProperty {
            property_id,
            name: self.name,
            timezone: self.timezone,
            owner_id: self.owner_id,
            external_ref: self.external_ref,
        }
    }
}

/// Any of the fields; `null` clears `owner_id` / `external_ref` and is
/// refused for `name` and `timezone`, which a property always has.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePropertyBody {
    #[serde(default, deserialize_with = "not_null")]
    #[schema(schema_with = line::<1, 200>)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(schema_with = line::<1, 64>)]
    pub timezone: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = optional_line::<0, 255>)]
    pub owner_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = optional_line::<0, 255>)]
    pub external_ref: Option<Option<String>>,
}

impl From<UpdatePropertyBody> for UpdateProperty {
    fn from(b: UpdatePropertyBody) -> Self {
        UpdateProperty {
            name: b.name,
            timezone: b.timezone,
            owner_id: b.owner_id,
            external_ref: b.external_ref,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PropertyView {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub name: String,
    pub timezone: String,
    pub owner_id: Option<String>,
    pub external_ref: Option<String>,
    pub archived: bool,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Global log position of the last event this reply reflects.
    pub position: i64,
}

impl PropertyView {
    pub fn new(p: &Property, position: i64) -> Self {
        PropertyView {
            id: p.id,
            agency_id: p.agency_id,
            name: p.details.name.clone(),
            timezone: p.details.timezone.clone(),
            owner_id: p.details.owner_id.clone(),
            external_ref: p.details.external_ref.clone(),
            archived: p.archived,
            version: p.version,
            created_at: p.created_at,
            updated_at: p.updated_at,
            position,
        }
    }
}

impl From<&PropertyRow> for PropertyView {
    fn from(row: &PropertyRow) -> Self {
        PropertyView::new(&row.to_domain(), row.position)
    }
}

/// The property of a calendar, after a command or for a read.
pub fn property_view(calendar: &PropertyCalendar, position: i64) -> Option<PropertyView> {
    calendar
        .property
        .as_ref()
        .map(|p| PropertyView::new(p, position))
}
