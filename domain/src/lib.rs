//! The booking domain: decisions only. A property's calendar is the
//! aggregate that decides every command about that property, so invariant 1
//! (no two active claims share a night) is checked in one place.
//!
//! This crate does no I/O: no database, no clock, no id generation. Time and
//! ids arrive inside the commands.

pub mod calendar;
pub mod checksum;
pub mod claims;
pub mod commands;
pub mod error;
pub mod events;
pub mod ical;
pub mod outcome;
pub mod policy;
pub mod values;

pub use calendar::{Block, Booking, Property, PropertyCalendar, RoomType};
pub use commands::{CalendarCommand, Command};
pub use error::{CalendarError, Conflict, Current, FullNight};
pub use events::CalendarEvent;
pub use outcome::Outcome;
pub use policy::{Action, Actor, Role};
