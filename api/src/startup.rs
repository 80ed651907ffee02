//! Builds the application from its configuration and runs it. Tests and
//! `ledger serve` start the same thing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ledger_infra::publisher::Publisher;
use ledger_infra::SharedClock;
use ledger_projections::jobs::Jobs;
use ledger_projections::runner::{self, LogSignal};
use ledger_projections::Projection;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle, JoinSet};

use crate::config::{DatabaseArgs, ServeConfig};
use crate::state::{AppState, Feature};

pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// How long start-up waits for PostgreSQL before giving up.
const DATABASE_WAIT: Duration = Duration::from_secs(30);

/// A running application: the API on its listener and every background job
/// of a `ledger serve` process. Dropping it stops it too.
pub struct RunningApp {
    address: SocketAddr,
    state: AppState,
    stop: oneshot::Sender<()>,
    served: JoinHandle<std::io::Result<()>>,
}

/// Starts the application as `ledger serve` does, on `config.listen` (port 0
/// picks a free one), with `clock` as its time: migrations, the pools, the
/// router and the background jobs.
pub async fn spawn(config: ServeConfig, clock: SharedClock) -> Result<RunningApp, StartError> {
    migrate_database(&config.database).await?;
    let pool = ledger_infra::connect(config.database_url(), config.db_pool_size)?;
    let listener = TcpListener::bind(config.listen).await?;
    // Connects in the background: the service starts while NATS is down.
    let nats = ledger_infra::nats::connect_to(&config.nats_endpoint(), "ledger").await?;
    let read_pool = match &config.database_read_url {
        Some(url) => ledger_infra::connect(url, config.db_pool_size)?,
        None => pool.clone(),
    };
    let mut state = AppState::new(config, pool, clock).with_read_pool(read_pool);
    state.nats = Some(nats);
    state.agencies.refresh(&state.pool).await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel();
    let served = tokio::spawn(serve(listener, state.clone(), async {
        // A dropped sender stops the application as well as a sent stop.
        let _ = stopped.await;
    }));
    tracing::info!(%address, "ledger is serving");
    Ok(RunningApp {
        address,
        state,
        stop,
        served,
    })
}

impl RunningApp {
    /// The address the API listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `signal` (or until serving fails), then stops.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> std::io::Result<()> {
        tokio::select! {
            served = &mut self.served => return flatten(served),
            () = signal => tracing::info!("shutting down"),
        }
        self.stop().await
    }

    /// Stops taking connections, lets open requests finish, then ends the
    /// background jobs. An event stream (`/api/v1/stream`) is such a
    /// request until its client hangs up: only SIGTERM or Ctrl-C ends the
    /// streams from the server's side (`live::Hub`).
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        flatten(self.served.await)
    }
}

fn flatten(served: Result<std::io::Result<()>, JoinError>) -> std::io::Result<()> {
    served.map_err(std::io::Error::other)?
}

/// The router and the background jobs, until `shutdown`; the jobs end with it.
async fn serve(
    listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut jobs = JoinSet::new();
    jobs.spawn(state.agencies.clone().run(state.pool.clone()));
    jobs.spawn(state.database.clone().run());
    let signal = LogSignal::listen(state.bus.waker());
    for projection in Projection::ALL {
        jobs.spawn(runner::run(state.pool.clone(), projection, signal.clone()));
    }
    if let Some(nats) = state.nats.clone() {
        let publisher = Publisher::new(state.pool.clone(), nats)
            .checksum_every(state.config.checksum_interval)
            .with_stream_replicas(usize::from(state.config.stream_replicas));
        jobs.spawn(publisher.run(signal.clone()));
    }
    let agencies = state.agencies.clone();
    Jobs {
        pool: state.pool.clone(),
        bus: state.bus.clone(),
        clock: state.clock.clone(),
        nats: state.nats.clone(),
        feed_allow_hosts: state.config.feed_allow_hosts.clone(),
        imports_allowed: Arc::new(move |agency| agencies.allows(agency, Feature::IcalImport)),
    }
    .spawn(&mut jobs);
    jobs.spawn(crate::metrics::serve(state.clone()));
    let served = axum::serve(listener, crate::router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    // Dropping the set aborts the jobs without waiting for them: a job may
    // sit in a database call for seconds, and nothing it would still do
    // matters once the process stops.
    drop(jobs);
    served
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

/// Ctrl-C or SIGTERM: what stops `ledger serve`.
pub async fn shutdown_signal() {
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
}
