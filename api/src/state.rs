//! The one application state handed to every handler.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger_domain::Actor;
use ledger_infra::agencies::{self, Agency, Features};
use ledger_infra::{CommandBus, EventStore, SharedClock};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::Keys;
use crate::config::ServeConfig;
use crate::error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServeConfig>,
    pub pool: PgPool,
    /// Where the read routes query the read models: a hot standby when
    /// DATABASE_READ_URL is set, else the same pool as `pool`. Writes,
    /// idempotency and the projections stay on `pool` (the primary).
    pub read_pool: PgPool,
    pub bus: Arc<CommandBus>,
    pub keys: Arc<Keys>,
    pub agencies: Arc<AgencyCache>,
    pub started_at: DateTime<Utc>,
    /// The publisher's NATS connection, once `Application::build` made it;
    /// readiness reports its state.
    pub nats: Option<ledger_infra::nats::Client>,
    /// Responses by status class, for `/metrics`.
    pub http: Arc<crate::metrics::HttpCounters>,
    /// Whether PostgreSQL answered lately (its own connection, not the pool's).
    pub database: Arc<ledger_infra::db::DatabaseWatch>,
    /// Where every "now" of the process comes from: commands, hold expiry,
    /// the iCal import.
    pub clock: SharedClock,
}

impl AppState {
    pub fn new(config: ServeConfig, pool: PgPool, clock: SharedClock) -> Self {
        let keys = Keys::from_config(&config);
        Self {
            bus: Arc::new(CommandBus::with_idempotency_ttl(
                EventStore::new(pool.clone()),
                config.idempotency_ttl,
            )),
            keys: Arc::new(keys),
            agencies: Arc::new(AgencyCache::default()),
            started_at: clock.now(),
            nats: None,
            http: Arc::default(),
            database: Arc::new(
                ledger_infra::db::DatabaseWatch::new(config.database_url())
                    .expect("DATABASE_URL parsed when the pool was made"),
            ),
            config: Arc::new(config),
            read_pool: pool.clone(),
            pool,
            clock,
        }
    }

    /// Sends the read routes to `read_pool` (a standby of the primary).
    pub fn with_read_pool(mut self, read_pool: PgPool) -> Self {
        self.read_pool = read_pool;
        self
    }

    /// The time a command is decided at (see `ledger_infra::clock`).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn store(&self) -> &EventStore {
        self.bus.store()
    }
}

/// What every process knows of the agencies without a query per request:
/// the agencies whose status or features differ from the defaults (suspended,
/// or a feature off), refreshed from the database every second so a change
/// made in any process holds everywhere within 2 s; and the agencies this
/// process has already made sure have a record.
#[derive(Default)]
pub struct AgencyCache {
    restricted: RwLock<HashMap<Uuid, Restriction>>,
    recorded: Mutex<HashSet<Uuid>>,
    /// The agencies a request of this process is recording right now, so
    /// that a burst of first requests makes one `ensure` instead of each
    /// taking a pooled connection to insert the same row.
    recording: Mutex<HashSet<Uuid>>,
}

#[derive(Debug, Clone, Copy)]
struct Restriction {
    suspended: bool,
    features: Features,
}

/// A feature an agency can have turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    IcalExport,
    IcalImport,
}

impl Feature {
    fn of(self, features: &Features) -> bool {
        match self {
            Feature::IcalExport => features.ical_export,
            Feature::IcalImport => features.ical_import,
        }
    }
}

/// One request's claim on recording an agency, given up when it ends (also
/// when the request is dropped half way).
struct Recording<'a> {
    set: &'a Mutex<HashSet<Uuid>>,
    agency_id: Uuid,
}

impl<'a> Recording<'a> {
    /// `None` when another request is recording the agency already.
    fn start(set: &'a Mutex<HashSet<Uuid>>, agency_id: Uuid) -> Option<Self> {
        // The claim is made only after the set's lock is let go: its drop
        // takes that lock again.
        let claimed = set.lock().ok()?.insert(agency_id);
        claimed.then(|| Recording { set, agency_id })
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if let Ok(mut recording) = self.set.lock() {
            recording.remove(&self.agency_id);
        }
    }
}

pub const AGENCY_REFRESH: Duration = Duration::from_secs(1);

impl AgencyCache {
    pub fn is_suspended(&self, agency_id: Uuid) -> bool {
        self.restriction(agency_id).is_some_and(|r| r.suspended)
    }

    /// Whether the agency has `feature` on (and is not suspended).
    pub fn allows(&self, agency_id: Uuid, feature: Feature) -> bool {
        self.restriction(agency_id)
            .is_none_or(|r| !r.suspended && feature.of(&r.features))
    }

    /// 403 `FEATURE_DISABLED` when the caller's agency has `feature` off.
    pub fn require(&self, agency_id: Uuid, feature: Feature) -> Result<(), ApiError> {
        if self.allows(agency_id, feature) {
            Ok(())
        } else {
            Err(ApiError::FeatureDisabled)
        }
    }

    fn restriction(&self, agency_id: Uuid) -> Option<Restriction> {
        self.restricted
            .read()
            .ok()
            .and_then(|map| map.get(&agency_id).copied())
    }

    /// Lets a verified token in: an operator (who has no agency) on no
    /// agency route (`/api/...`), 403 `FORBIDDEN` there whatever the route
    /// would check first; 403 `AGENCY_SUSPENDED` for a suspended agency; an
    /// agency seen for the first time by this process gets a record if it
    /// has none (one query per agency and process).
    pub async fn admit(&self, actor: &Actor, path: &str, pool: &PgPool) -> Result<(), ApiError> {
        if !actor.role.has_agency() {
            if path.starts_with("/api/") {
                return Err(ApiError::Forbidden(
                    "operators may not call the agency API".into(),
                ));
            }
            return Ok(());
        }
        if self.is_suspended(actor.agency_id) {
            return Err(ApiError::AgencySuspended);
        }
        if !self.is_recorded(actor.agency_id) {
            self.record(actor.agency_id, pool).await;
        }
        Ok(())
    }

    fn is_recorded(&self, agency_id: Uuid) -> bool {
        self.recorded
            .lock()
            .map(|recorded| recorded.contains(&agency_id))
            .unwrap_or(true)
    }

    /// Makes sure the agency has a record, once per process. A request
    /// that finds another one recording the agency goes on without waiting:
    /// nothing it does needs the record, and while the database is down a
    /// queue behind failing attempts would hold every first request far past
    /// the 1 s in which it must get its 503. Noted only once the record
    /// surely exists, so a failure (or a dropped request) is tried again by
    /// the next request.
    async fn record(&self, agency_id: Uuid, pool: &PgPool) {
        let Some(_recording) = Recording::start(&self.recording, agency_id) else {
            return;
        };
        match agencies::ensure(pool, agency_id).await {
            Ok(_) => {
                if let Ok(mut recorded) = self.recorded.lock() {
                    recorded.insert(agency_id);
                }
            }
            // Debug: while the database is down every request would say it.
            Err(error) => {
                tracing::debug!(%error, %agency_id, "could not record the agency")
            }
        }
    }

    /// Takes a change this process just committed at once, ahead of the
    /// next refresh.
    pub fn note(&self, agency: &Agency) {
        if let Ok(mut map) = self.restricted.write() {
            let restriction = Restriction {
                suspended: agency.is_suspended(),
                features: agency.features,
            };
            if restriction.suspended || restriction.features != Features::default() {
                map.insert(agency.id, restriction);
            } else {
                map.remove(&agency.id);
            }
        }
        if let Ok(mut recorded) = self.recorded.lock() {
            recorded.insert(agency.id);
        }
    }

    pub async fn refresh(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let rows = agencies::restricted(pool).await?;
        let map = rows
            .iter()
            .map(|a| {
                let restriction = Restriction {
                    suspended: a.is_suspended(),
                    features: a.features,
                };
                (a.id, restriction)
            })
            .collect();
        if let Ok(mut current) = self.restricted.write() {
            *current = map;
        }
        Ok(())
    }

    /// Keeps refreshing until the process ends; a failed refresh keeps the last state.
    pub async fn run(self: Arc<Self>, pool: PgPool) {
        loop {
            if let Err(error) = self.refresh(&pool).await {
                tracing::debug!(%error, "could not refresh the agency cache");
            }
            tokio::time::sleep(AGENCY_REFRESH).await;
        }
    }
}
