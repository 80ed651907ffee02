//! The one application state handed to every handler.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger_infra::{CommandBus, EventStore};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::Keys;
use crate::config::ServeConfig;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServeConfig>,
    pub pool: PgPool,
    pub bus: Arc<CommandBus>,
    pub keys: Arc<Keys>,
    pub suspensions: Arc<Suspensions>,
    pub started_at: DateTime<Utc>,
    /// The publisher's NATS connection, once `Application::build` made it;
    /// readiness reports its state.
    pub nats: Option<ledger_infra::nats::Client>,
    /// Responses by status class, for `/metrics`.
    pub http: Arc<crate::metrics::HttpCounters>,
    /// Whether PostgreSQL answered lately (its own connection, not the pool's).
    pub database: Arc<ledger_infra::db::DatabaseWatch>,
}

impl AppState {
    pub fn new(config: ServeConfig, pool: PgPool) -> Self {
        let keys = Keys::from_config(&config);
        Self {
            bus: Arc::new(CommandBus::with_idempotency_ttl(
                EventStore::new(pool.clone()),
                config.idempotency_ttl,
            )),
            keys: Arc::new(keys),
            suspensions: Arc::new(Suspensions::default()),
            started_at: Utc::now(),
            nats: None,
            http: Arc::default(),
            database: Arc::new(
                ledger_infra::db::DatabaseWatch::new(config.database_url())
                    .expect("DATABASE_URL parsed when the pool was made"),
            ),
            config: Arc::new(config),
            pool,
        }
    }

    pub fn store(&self) -> &EventStore {
        self.bus.store()
    }
}

/// The suspended agencies, refreshed from the database every few seconds so
/// the check costs no query per request.
#[derive(Default)]
pub struct Suspensions {
    agencies: RwLock<HashSet<Uuid>>,
}

pub const SUSPENSION_REFRESH: Duration = Duration::from_secs(2);

impl Suspensions {
    pub fn is_suspended(&self, agency_id: Uuid) -> bool {
        self.agencies
            .read()
            .map(|set| set.contains(&agency_id))
            .unwrap_or(false)
    }

    pub async fn refresh(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT agency_id FROM agency_suspensions")
            .fetch_all(pool)
            .await?;
        if let Ok(mut set) = self.agencies.write() {
            *set = ids.into_iter().collect();
        }
        Ok(())
    }

    /// Keeps refreshing until the process ends; a failed refresh keeps the last set.
    pub async fn run(self: Arc<Self>, pool: PgPool) {
        loop {
            if let Err(error) = self.refresh(&pool).await {
                tracing::debug!(%error, "could not refresh agency suspensions");
            }
            tokio::time::sleep(SUSPENSION_REFRESH).await;
        }
    }
}
