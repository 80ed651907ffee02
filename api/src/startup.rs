//! Builds the application from its configuration and runs it. Tests and
//! `ledger serve` start the same thing.

use std::net::SocketAddr;
use std::time::Duration;

use ledger_infra::publisher::Publisher;
use ledger_projections::runner::{self, LogSignal};
use ledger_projections::Projection;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::config::{DatabaseArgs, ServeConfig};
use crate::state::AppState;

pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// How long start-up waits for PostgreSQL before giving up.
const DATABASE_WAIT: Duration = Duration::from_secs(30);

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    pub async fn build(config: ServeConfig) -> Result<Self, StartError> {
        migrate_database(&config.database).await?;
        let pool = ledger_infra::connect(config.database_url(), config.db_pool_size)?;
        let listener = TcpListener::bind(config.listen).await?;
        // Connects in the background: the service starts while NATS is down.
        let nats = ledger_infra::nats::connect_to(&config.nats_endpoint(), "ledger").await?;
        let read_pool = match &config.database_read_url {
            Some(url) => ledger_infra::connect(url, config.db_pool_size)?,
            None => pool.clone(),
        };
        let mut state = AppState::new(config, pool).with_read_pool(read_pool);
        state.nats = Some(nats);
        state.agencies.refresh(&state.pool).await?;
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let state = self.state;
        tokio::spawn(state.agencies.clone().run(state.pool.clone()));
        tokio::spawn(state.database.clone().run());
        let signal = LogSignal::listen(state.bus.waker());
        for projection in Projection::ALL {
            tokio::spawn(runner::run(state.pool.clone(), projection, signal.clone()));
        }
        if let Some(nats) = state.nats.clone() {
            let publisher = Publisher::new(state.pool.clone(), nats)
                .checksum_every(state.config.checksum_interval)
                .with_stream_replicas(usize::from(state.config.stream_replicas));
            tokio::spawn(publisher.run(signal.clone()));
        }
        tokio::spawn(crate::expiry::run(state.clone()));
        tokio::spawn(crate::expiry::purge_idempotency_keys(state.clone()));
        if let Some(nats) = state.nats.clone() {
            let export = ledger_infra::ical::export::IcalExport::new(state.pool.clone());
            tokio::spawn(export.run(nats));
        }
        tokio::spawn(crate::ical_import::run(state.clone()));
        tokio::spawn(crate::metrics::serve(state.clone()));
        let router = crate::router(state);
        tracing::info!(address = %self.listener.local_addr()?, "ledger is serving");
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await
    }
}

/// Applies missing migrations as the owner (DATABASE_MIGRATE_URL, else
/// DATABASE_URL) on a connection of its own, closed afterwards: the rest of
/// the process works through DATABASE_URL's role alone.
pub async fn migrate_database(database: &DatabaseArgs) -> Result<(), StartError> {
    let owner = ledger_infra::connect(database.migrate_url(), 1)?;
    let migrated = migrate_when_reachable(&owner).await;
    owner.close().await;
    migrated
}

/// Applies missing migrations, waiting for PostgreSQL to come up first.
pub async fn migrate_when_reachable(pool: &PgPool) -> Result<(), StartError> {
    let deadline = tokio::time::Instant::now() + DATABASE_WAIT;
    loop {
        match ledger_infra::migrate(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e))
                if ledger_infra::db::is_unavailable(&e)
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!("PostgreSQL is not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
