//! The iCal channel's pure parts (RFC 5545, docs/ical.md): reading a feed,
//! rendering the export, and planning what an import changes. Fetching,
//! tables and the jobs that run them are in `ledger-infra` and
//! `ledger-projections`.
//! - [`text`]: content lines, folded and escaped, unfolded and split;
//! - [`feed`]: a channel's feed as ranges of nights;
//! - [`render`]: a property's held nights as a `.ics` document;
//! - [`plan`]: the steps that make a feed's blocks match the feed.

pub mod feed;
pub mod plan;
pub mod render;
pub mod text;
