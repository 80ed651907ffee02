//! Mirrors of the domain's values in the contract's JSON: guests, prices,
//! the status a booking may be created with. Channels and block reasons are
//! the domain's own enums (`ChannelDto`, `BlockReasonDto` in the schema).

use ledger_domain::values;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{line, optional_line};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestDto {
    #[schema(schema_with = line::<1, 200>)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = optional_line::<3, 254>)]
    pub email: Option<String>,
    #[serde(default)]
    #[schema(schema_with = optional_line::<0, 50>)]
    pub phone: Option<String>,
}

impl From<GuestDto> for values::Guest {
    fn from(g: GuestDto) -> Self {
        values::Guest {
            name: g.name,
            email: g.email,
            phone: g.phone,
        }
    }
}

impl From<&values::Guest> for GuestDto {
    fn from(g: &values::Guest) -> Self {
        GuestDto {
            name: g.name.clone(),
            email: g.email.clone(),
            phone: g.phone.clone(),
        }
    }
}

/// Money in integer minor units (cents) and an ISO 4217 currency.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceDto {
    #[schema(minimum = 0)]
    pub amount_minor: i64,
    #[schema(min_length = 3, max_length = 3, pattern = "^[A-Z]{3}$")]
    pub currency: String,
}

impl From<PriceDto> for values::Price {
    fn from(p: PriceDto) -> Self {
        values::Price {
            amount_minor: p.amount_minor,
            currency: p.currency,
        }
    }
}

impl From<&values::Price> for PriceDto {
    fn from(p: &values::Price) -> Self {
        PriceDto {
            amount_minor: p.amount_minor,
            currency: p.currency.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NewBookingStatus {
    Tentative,
    Confirmed,
}
