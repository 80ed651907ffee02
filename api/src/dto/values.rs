//! The status a booking may be created with: the part of the domain's
//! `BookingStatus` a reservation may ask for. Guests, prices, channels and
//! block reasons are the domain's own values (`GuestDto`, `PriceDto`,
//! `ChannelDto`, `BlockReasonDto` in the schema).

use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NewBookingStatus {
    Tentative,
    Confirmed,
}
