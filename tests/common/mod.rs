//! The black-box tests' own part of the harness: the application against a
//! fresh database, started in this process (`startup::spawn`, port 0, any
//! clock) or, for the drills that kill, restart or run several of it, as the
//! real `ledger` binary; everything else comes from the workspace's
//! test-support crate (`ledger-test-support`).

pub mod stream;

use std::ops::Deref;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use clap::{Args, Command as Cli};
use ledger_api::config::ServeConfig;
use ledger_api::startup;
use ledger_infra::{ManualClock, SharedClock, SystemClock};
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;

pub use ledger_test_support::*;

/// The environment every ledger of the tests starts with; a test's own
/// environment comes after it, so it can override it.
fn base_env(database_url: &str, listen: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url),
        ("JWT_SECRET", SECRET),
        ("LEDGER_LISTEN", listen),
        ("LEDGER_METRICS_LISTEN", "127.0.0.1:0"),
        ("LEDGER_DB_POOL_SIZE", "16"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}

/// `ledger serve`'s configuration from environment variables, as flags
/// (`LEDGER_RATE_LIMIT=off` becomes `--rate-limit=off`): an in-process app
/// must not set variables of the whole test process.
fn serve_config(env: &[(String, String)]) -> ServeConfig {
    let cli = ServeConfig::augment_args(Cli::new("serve"));
    // RUST_LOG is the process's logging; an in-process app logs nothing.
    let settings = env.iter().filter(|(name, _)| name != "RUST_LOG");
    let flags = settings.map(|(name, value)| {
        let flag = cli
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|env| env == name.as_str()))
            .and_then(|arg| arg.get_long())
            .unwrap_or_else(|| panic!("`ledger serve` reads no {name}"));
        format!("--{flag}={value}")
    });
    ServeConfig::from_args(flags).expect("a valid configuration")
}

pub struct TestApp {
    api: Api,
    pub port: u16,
    pub database_url: String,
    pub db_name: String,
    /// The `ledger` process, for an app started as one. Behind a lock so
    /// that the start-up wait can look at it from `eventually`.
    child: Mutex<Option<Child>>,
    log: PathBuf,
    /// The application, for an app started in this process.
    running: Option<InProcess>,
    /// Extra environment of the ledger process (e.g. `NATS_URL`), set on
    /// every (re)start after the defaults, so it can override them.
    pub env: Vec<(String, String)>,
    /// The database this app made for itself, dropped with the app (None
    /// when it runs on a database someone else owns).
    _db: Option<TestDb>,
}

/// `app.get(..)`, `app.base`, ...: an app is a client of itself.
impl Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Held by the tests that load the machine on purpose (drills, kill -9 under
/// load, replays under writes, PostgreSQL stopped): one at a time, as when
/// each lived in a binary of its own, so that one's load does not make
/// another's timing (a 1 s pool wait, "503 fast") fail. The other tests
/// still run beside them.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// The application in this process on a fresh database, on the machine's clock.
pub async fn spawn_app() -> TestApp {
    spawn_app_with_env(&[]).await
}

/// Where most tests start: the application, the admin token of a new agency
/// and one property of that agency.
pub async fn app_with_property() -> (TestApp, String, uuid::Uuid) {
    let (app, _, admin, property) = app_with_agency_property().await;
    (app, admin, property)
}

/// [`app_with_property`] with the agency's id, for the tests that mint
/// other tokens of the agency or check the id a record carries.
pub async fn app_with_agency_property() -> (TestApp, uuid::Uuid, String, uuid::Uuid) {
    let app = spawn_app().await;
    let (agency_id, admin) = agency();
    let property = app.property(&admin, None).await;
    (app, agency_id, admin, property)
}

/// [`app_with_agency_property`] with a confirmed booking of `[check_in,
/// check_out)` on the property: its id and the position of its event.
pub async fn app_with_booking(
    check_in: &str, check_out: &str,
) -> (TestApp, uuid::Uuid, String, uuid::Uuid, (uuid::Uuid, i64)) {
    let (app, agency_id, admin, property) = app_with_agency_property().await;
    let booked = app.booked(&admin, property, check_in, check_out).await;
    (app, agency_id, admin, property, booked)
}

/// `spawn_app` with `ledger serve`'s environment variables (e.g.
/// `LEDGER_RATE_LIMIT`) set for this app only.
pub async fn spawn_app_with_env(env: &[(&str, &str)]) -> TestApp {
    in_process(env, SystemClock::shared()).await
}

/// `spawn_app` with the application's time standing still at `clock` until
/// the test moves it (hold expiry without waiting for it).
pub async fn spawn_app_at(clock: &ManualClock) -> TestApp {
    in_process(&[], clock.shared()).await
}

async fn in_process(env: &[(&str, &str)], clock: SharedClock) -> TestApp {
    let db = TestDb::create().await;
    let mut config = base_env(&db.url, "127.0.0.1:0");
    for (name, value) in env {
        // The test's value replaces the default (a flag may be given once).
        config.retain(|(default, _)| default != name);
        config.push((name.to_string(), value.to_string()));
    }
    let running = InProcess::start(serve_config(&config), clock).await;
    let port = running.address.port();
    TestApp {
        api: Api::new(format!("http://127.0.0.1:{port}")),
        port,
        database_url: db.url.clone(),
        db_name: db.name.clone(),
        child: Mutex::new(None),
        log: PathBuf::new(),
        running: Some(running),
        env: Vec::new(),
        _db: Some(db),
    }
}

/// The application running in a thread of this process with a runtime of its
/// own: a test's load, or a blocking call on the test's (single-threaded)
/// runtime, cannot starve its server, its jobs or its database probe.
struct InProcess {
    address: std::net::SocketAddr,
    /// Stops the application when sent or dropped.
    _stop: oneshot::Sender<()>,
}

impl InProcess {
    async fn start(config: ServeConfig, clock: SharedClock) -> InProcess {
        let (started, address) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the application");
            runtime.block_on(async move {
                let app = startup::spawn(config, clock)
                    .await
                    .expect("the application starts");
                let _ = started.send(app.address());
                let _ = app
                    .run_until(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let address = address.await.expect("the application started");
        InProcess {
            address,
            _stop: stop,
        }
    }
}

/// The `ledger` binary as a process of its own on a fresh database: for the
/// tests that kill and restart it, signal it, or read its log.
pub async fn spawn_process() -> TestApp {
    spawn_process_with_env(&[]).await
}

/// `spawn_process` with extra environment for the ledger process.
pub async fn spawn_process_with_env(env: &[(&str, &str)]) -> TestApp {
    let db = TestDb::create().await;
    let mut app = spawn_app_on(&db.url, &db.name, env).await;
    app._db = Some(db);
    app
}

/// `spawn_app_with_env` against a database that already exists at
/// `database_url` (on a private PostgreSQL a test starts and stops itself,
/// or another app's), instead of a fresh database made for this app.
/// `db_name` names the app's log file, so it must be unique.
pub async fn spawn_app_on(database_url: &str, db_name: &str, env: &[(&str, &str)]) -> TestApp {
    let mut app = TestApp {
        // Until the first start has bound port 0 and logged its address.
        api: Api::new(String::new()),
        port: 0,
        database_url: database_url.to_owned(),
        db_name: db_name.to_owned(),
        child: Mutex::new(None),
        log: std::env::temp_dir().join(format!("{db_name}.log")),
        running: None,
        env: env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        _db: None,
    };
    app.start().await;
    app
}

impl TestApp {
    /// Starts (or restarts) `ledger serve` on this app's port and database.
    pub async fn start(&mut self) {
        assert!(self.running.is_none(), "an in-process app is not restarted");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("a log file");
        // The first start binds port 0; a restart comes back on the port the
        // first one got, where the test's clients (and loads) still point.
        let listen = format!("127.0.0.1:{}", self.port);
        let logging = self
            .env
            .iter()
            .find(|(name, _)| name == "RUST_LOG")
            .map(|(_, value)| value.clone())
            .or_else(|| std::env::var("TEST_LOG").ok())
            .unwrap_or_else(|| "warn".into());
        let logged_before = self.log_text().len();
        let child = Command::new(env!("CARGO_BIN_EXE_ledger"))
            .arg("serve")
            .envs(base_env(&self.database_url, &listen))
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            // The address line is how the tests learn the port.
            .env("RUST_LOG", format!("{logging},{SERVING}=info"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the ledger binary");
        *self.child.get_mut().expect("not poisoned") = Some(child);
        if self.port == 0 {
            self.port = eventually(Duration::from_secs(30), || async {
                if !self.is_running() {
                    panic!("ledger exited: {}", self.log_text());
                }
                serving_port(&self.log_text()[logged_before..]).ok_or("no address logged yet")
            })
            .await;
            self.api = Api::new(format!("http://127.0.0.1:{}", self.port));
        }
        eventually(Duration::from_secs(30), || async {
            if !self.is_running() {
                panic!("ledger exited: {}", self.log_text());
            }
            match self.get_health().await {
                Ok(status) if status.is_success() => Ok(()),
                Ok(status) => Err(format!("ledger answers /health with {status}")),
                Err(error) => Err(format!("ledger does not answer: {error}")),
            }
        })
        .await;
    }

    async fn get_health(&self) -> reqwest::Result<reqwest::StatusCode> {
        let url = format!("{}{}", self.base, routes::HEALTH);
        Ok(self.client.get(url).send().await?.status())
    }

    /// kill -9: no graceful shutdown, nothing flushed by the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.get_mut().expect("not poisoned").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id of the running ledger, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(Child::id)
    }

    /// Whether the ledger process this app started is still running.
    pub fn is_running(&self) -> bool {
        self.child
            .lock()
            .expect("not poisoned")
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// What the ledger process wrote to stderr so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn db(&self) -> PgConnection {
        PgConnection::connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }

    /// The position of the last committed event (0 for an empty log).
    pub async fn head(&self) -> i64 {
        self.scalar(
            "SELECT coalesce(max(position), 0)::bigint FROM events",
            None,
        )
        .await
    }

    /// A GET that reads its own writes: `?min_position=` is the log's head,
    /// so the projections behind the read routes have caught up.
    pub async fn read(&self, path: &str, token: &str) -> Reply {
        let head = self.head().await;
        let separator = if path.contains('?') { '&' } else { '?' };
        self.get(&format!("{path}{separator}min_position={head}"), token)
            .await
    }

    /// [`read`](Self::read), which must answer 200.
    pub async fn read_ok(&self, path: &str, token: &str) -> Reply {
        with_status(reqwest::StatusCode::OK, self.read(path, token).await)
    }

    /// How many events of `event_type` the whole log holds.
    pub async fn count_events(&self, event_type: &str) -> i64 {
        self.scalar(
            "SELECT count(*) FROM events WHERE event_type = $1",
            Some(event_type.to_owned()),
        )
        .await
    }

    /// How many events one property's stream holds.
    pub async fn property_events(&self, property: uuid::Uuid) -> i64 {
        self.scalar(
            "SELECT count(*) FROM events WHERE aggregate_id = $1",
            Some(property.to_string()),
        )
        .await
    }

    /// How many events the whole log holds.
    pub async fn total_events(&self) -> i64 {
        self.scalar("SELECT count(*) FROM events", None).await
    }

    /// One number from the test database, with at most one text parameter.
    async fn scalar(&self, sql: &str, parameter: Option<String>) -> i64 {
        let mut query = sqlx::query_scalar(sql);
        if let Some(parameter) = parameter {
            query = query.bind(parameter);
        }
        query
            .fetch_one(&mut self.db().await)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// The module whose info line names the address `ledger serve` listens on.
const SERVING: &str = "ledger_api::startup";

/// The port of the first `ledger is serving address=127.0.0.1:PORT` line of
/// `log` (text format, possibly with colour codes).
fn serving_port(log: &str) -> Option<u16> {
    let line = log
        .lines()
        .find(|line| line.contains("ledger is serving"))?;
    let (_, after) = line.rsplit_once("127.0.0.1:")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Before the database goes: DROP DATABASE WITH (FORCE) would
        // otherwise fight a live process's reconnects. Dropping a running
        // in-process app stops it as well.
        self.kill();
        self.running = None;
    }
}

/// Runs a `ledger` subcommand (the CLI, not a server) with only the
/// `JWT_SECRET` and `DATABASE_URL` that `envs` gives it, not the test
/// process's: each test says which secret and database the command uses.
pub fn ledger(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledger"));
    command
        .args(args)
        .env_remove("JWT_SECRET")
        .env_remove("DATABASE_URL");
    for (name, value) in envs {
        command.env(name, value);
    }
    command.output().expect("run the ledger binary")
}

/// `ledger`, which must succeed: what it printed, trimmed (a minted token,
/// a JSON record).
pub fn ledger_ok(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = ledger(args, envs);
    assert!(
        out.status.success(),
        "ledger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}
