//! The JSON shapes of the contract, a file per resource: request bodies
//! (unknown fields refused) and the views written back, with their
//! conversions from domain records and read-model rows. The domain's values
//! that the contract takes as they are (guest, price, channel, block reason)
//! carry their schemas behind ledger-domain's `openapi` feature.

mod block;
mod booking;
mod event;
mod property;
mod values;

pub use block::*;
pub use booking::*;
pub use event::*;
pub use property::*;
pub use values::*;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

// The request schemas carry the limits the domain enforces
// (`ledger_domain::values`), so generated clients and schema-driven fuzzers
// see them: one-line texts match `^[^\u0000-\u001F\u007F-\u009F]*$` (no
// control characters), `notes`/`note` also allow tab and newline, dates are
// within 1900-01-01..2199-12-31 and timestamps within those years.

/// The schema of a one-line text field (`#[schema(schema_with = line::<1, 200>)]`).
pub(crate) use ledger_domain::values::schema::{line, optional_line, optional_notes};

/// A field that may be left out but, when given, may not be null: `null`
/// for a name or a date that cannot be empty is a 400 naming the field,
/// never a silent "leave as it is".
pub(crate) fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)?
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("must not be null"))
}

/// Tells a field that is absent (`None`) from one set to null (`Some(None)`).
pub(crate) fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The body of action routes that take no parameters: `{}` or nothing.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

/// The error body of every non-2xx reply.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
    pub request_id: String,
}

/// One page of a list route; `next_cursor` is the `cursor` of the next
/// page, null on the last.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}
