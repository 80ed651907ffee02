//! Read models derived from the event log alone: `inventory_ranges`, the
//! property and booking views, and the audit log. Each projection tails the
//! log by global position (see `tail`), applies a batch and advances its
//! checkpoint in one transaction, and can be rebuilt from position 0 into a
//! copy that is swapped in atomically (`replay`). `queries` holds the reads
//! the API serves from these tables, and `jobs` the background jobs of a
//! serving process (hold expiry, the iCal import and export).
//!
//! Nothing here decides anything: the fold of the views is the aggregate's
//! own `apply`.

pub mod audit;
pub mod inventory;
pub mod jobs;
pub mod parking;
pub mod queries;
pub mod replay;
pub mod runner;
/// The gap-free log reader lives in `ledger-infra` (the publisher shares it).
pub use ledger_infra::tail;
pub mod views;

use sqlx::PgConnection;

use crate::tail::Envelope;

/// The projections, by the name ops use for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    Inventory,
    Views,
    Audit,
}

impl Projection {
    pub const ALL: [Projection; 3] = [Projection::Inventory, Projection::Views, Projection::Audit];

    pub fn name(self) -> &'static str {
        match self {
            Projection::Inventory => "inventory",
            Projection::Views => "views",
            Projection::Audit => "audit",
        }
    }

    pub fn parse(name: &str) -> Option<Projection> {
        Projection::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The tables this projection owns (and rebuilds on replay).
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Projection::Inventory => &[
                "inventory_ranges",
                "inventory_room_types",
                "inventory_nights",
            ],
            Projection::Views => &["properties_view", "bookings_view"],
            Projection::Audit => &["audit_log"],
        }
    }

    /// Applies a batch of events, in order, to this projection's tables.
    /// The statements name the tables without a schema: the live ones, or
    /// a replay's copies when the transaction put them first on its
    /// `search_path` ([`runner::Tables`]).
    pub async fn apply(
        self, conn: &mut PgConnection, events: &[Envelope],
    ) -> Result<(), sqlx::Error> {
        match self {
            Projection::Inventory => inventory::apply(conn, events).await,
            Projection::Views => views::apply(conn, events).await,
            Projection::Audit => audit::apply(conn, events).await,
        }
    }
}
