//! Properties: the register and update bodies. The property view is the
//! read model's row, `ledger_projections::views::PropertyRow`.

use ledger_domain::commands::{RegisterProperty, UpdateProperty};
use ledger_domain::PropertyCalendar;
use ledger_projections::views::PropertyRow;
use serde::Deserialize;
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

/// The property of a calendar, after a command or for a read.
pub fn property_view(calendar: &PropertyCalendar, position: i64) -> Option<PropertyRow> {
    calendar
        .property
        .as_ref()
        .map(|p| PropertyRow::new(p, position))
}
