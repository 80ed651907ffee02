//! Why the calendar refuses a command: business reasons, not strings.

use chrono::NaiveDate;
use serde::Serialize;
use uuid::Uuid;

use crate::calendar::{Booking, Property};
use crate::values::{BookingStatus, ClaimKind};

/// One active claim that already holds some of the requested nights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub kind: ClaimKind,
    pub id: Uuid,
    pub start: NaiveDate,
    pub end: NaiveDate,
}

/// A night of a room type that cannot take what was asked: `taken` of its
/// `units` are held by other active claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FullNight {
    pub date: NaiveDate,
    pub units: u32,
    pub taken: u32,
}

/// The resource a conditional command was about, as it is now.
#[derive(Debug, Clone, PartialEq)]
pub enum Current {
    Property(Property),
    Booking { agency_id: Uuid, booking: Booking },
}

// Every field compares by value (dates, ids, integers, strings); the
// derive only lacks `Eq` because the records do not spell it out.
impl Eq for Current {}

impl Current {
    pub fn version(&self) -> u64 {
        match self {
            Current::Property(property) => property.version,
            Current::Booking { booking, .. } => booking.version,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("{field} {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the property does not exist")]
    PropertyNotFound,
    #[error("the booking does not exist")]
    BookingNotFound,
    #[error("the block does not exist")]
    BlockNotFound,
    #[error("a property with this id is already registered")]
    PropertyAlreadyRegistered,
    #[error("the role {role} may not {action}")]
    Forbidden {
        role: &'static str,
        action: &'static str,
    },
    #[error("the property is archived")]
    PropertyArchived,
    #[error("the nights overlap {} active booking(s) or block(s)", conflicts.len())]
    NightsTaken { conflicts: Vec<Conflict> },
    /// A room type has no unit left on these nights (they are listed).
    #[error("{} night(s) of the room type have no unit left", nights.len())]
    NightsFull { nights: Vec<FullNight> },
    #[error("the room type does not exist")]
    RoomTypeNotFound,
    #[error("the property has bookings or blocks without a room type")]
    PropertyHasSingleUnitClaims,
    /// Lowering a room type's units below what these nights hold.
    #[error("{} night(s) hold more than the new units", nights.len())]
    CapacityExceeded { nights: Vec<FullNight> },
    #[error("a {from} booking cannot become {to}")]
    InvalidTransition {
        from: &'static str,
        to: &'static str,
    },
    #[error("the hold expired at its hold_expires_at")]
    HoldExpired,
    #[error("the block is already released")]
    BlockAlreadyReleased,
    #[error("the caller expected version {expected}; it is at version {}", current.version())]
    VersionMismatch {
        expected: u64,
        current: Box<Current>,
    },
}

impl CalendarError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn transition(from: BookingStatus, to: BookingStatus) -> Self {
        Self::InvalidTransition {
            from: from.as_str(),
            to: to.as_str(),
        }
    }
}
