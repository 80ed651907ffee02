//! The background jobs every `ledger serve` process runs besides the
//! projections and the publisher: hold expiry and the Idempotency-Key purge
//! ([`expiry`]), the iCal import of the registered feeds ([`ical_import`])
//! and the iCal export's follower. They issue commands through the command
//! bus as system actors, take "now" from the application's clock, and know
//! nothing of HTTP. Several processes may run them at once (each says why
//! that is harmless).
//!
//! They live here, not in `ledger-infra`, because the hold expiry reads the
//! bookings view (`queries::lapsed_holds`).

pub mod expiry;
pub mod ical_import;

use std::sync::Arc;

use ledger_infra::ical::export::IcalExport;
use ledger_infra::{CommandBus, SharedClock};
use sqlx::PgPool;
use tokio::task::JoinSet;
use uuid::Uuid;

/// Whether an agency's feeds are imported now (not suspended, imports on).
pub type ImportsAllowed = Arc<dyn Fn(Uuid) -> bool + Send + Sync>;

/// What the jobs run with; cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    pub pool: PgPool,
    pub bus: Arc<CommandBus>,
    pub clock: SharedClock,
    /// The export follows the stream on this connection; none, no export.
    pub nats: Option<ledger_infra::nats::Client>,
    /// Feed hosts fetched whatever address they resolve to.
    pub feed_allow_hosts: Vec<String>,
    pub imports_allowed: ImportsAllowed,
}

impl Jobs {
    /// Starts every job in `set`; they run until the set is shut down.
    pub fn spawn(self, set: &mut JoinSet<()>) {
        let jobs = self.clone();
        set.spawn(async move { expiry::run(&jobs).await });
        let bus = self.bus.clone();
        set.spawn(async move { expiry::purge_idempotency_keys(&bus).await });
        if let Some(nats) = self.nats.clone() {
            set.spawn(IcalExport::new(self.pool.clone()).run(nats));
        }
        set.spawn(async move { ical_import::run(&self).await });
    }
}
