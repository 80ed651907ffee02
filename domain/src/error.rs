//! Why the calendar refuses a command: business reasons, not strings.

use chrono::NaiveDate;
use serde::Serialize;
use uuid::Uuid;

use crate::values::{BookingStatus, ClaimKind};

/// One active claim that already holds some of the requested nights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub kind: ClaimKind,
    pub id: Uuid,
    pub start: NaiveDate,
    pub end: NaiveDate,
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
    #[error("a {from} booking cannot become {to}")]
    InvalidTransition {
        from: &'static str,
        to: &'static str,
    },
    #[error("the hold expired at its hold_expires_at")]
    HoldExpired,
    #[error("the block is already released")]
    BlockAlreadyReleased,
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
