//! Fault drill "PostgreSQL down" (QUALITY.md R4, API.md "Health and ops"):
//! with the database stopped, liveness stays 200, readiness and the routes
//! that need the database answer 503 `DATABASE_UNAVAILABLE` fast, and the same
//! ledger process recovers by itself once PostgreSQL is back.
//!
//! The second drill freezes PostgreSQL instead (SIGSTOP of the postmaster
//! and every backend): the server still accepts TCP connections but never
//! answers, which is what a hung host or a network partition looks like.
//! The same answers are due, and the same recovery once it thaws (SIGCONT).
//!
//! The tests run their own PostgreSQL cluster (initdb into a temporary
//! directory, a free port, its own socket directory) and its own nats-server,
//! so stopping them touches nothing else.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::nats::NatsServer;
use common::{agency, assert_error, spawn_app_on, Reply, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// How fast a reply must come while PostgreSQL is down (the contract says
/// about 1 s; the margin absorbs a loaded CI machine).
const FAST: Duration = Duration::from_secs(2);

/// Readiness probes per path while the database is down.
const ROUNDS: usize = 4;

/// The directory of the highest PostgreSQL version's server binaries:
/// `$PG_BIN` when set, else `/usr/lib/postgresql/<version>/bin`.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let version = |name: &str| -> Vec<u32> {
        name.split('.')
            .map(|part| part.parse().unwrap_or(0))
            .collect()
    };
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join("bin/initdb").is_file())
        .filter(|entry| entry.path().join("bin/pg_ctl").is_file())
        .max_by_key(|entry| version(&entry.file_name().to_string_lossy()))
        .map(|entry| entry.path().join("bin"))
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries (initdb, pg_ctl) under \
                 /usr/lib/postgresql/*/bin and no $PG_BIN: run scripts/services.sh, \
                 which installs them (Debian's postgresql and postgresql-contrib)"
            )
        })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the `postgres` user.
fn postgres_user() -> (libc::uid_t, libc::gid_t) {
    let name = std::ffi::CString::new("postgres").expect("a C string");
    // SAFETY: a valid NUL-terminated name; the record is read at once, before
    // any other call could overwrite getpwnam's static storage.
    unsafe {
        let entry = libc::getpwnam(name.as_ptr());
        assert!(
            !entry.is_null(),
            "the tests run as root, so initdb and postgres must run as the \
             `postgres` user, which does not exist: run scripts/services.sh"
        );
        ((*entry).pw_uid, (*entry).pw_gid)
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A private PostgreSQL cluster for one test, stopped (`-m immediate`) and
/// its directory removed on drop.
struct PgServer {
    bin: PathBuf,
    /// Owned by `postgres` when the tests run as root; holds the data
    /// directory, the socket and the server log.
    dir: PathBuf,
    port: u16,
    running: bool,
}

impl PgServer {
    /// initdb into a fresh temporary directory, then start on a free port.
    fn start() -> PgServer {
        let bin = pg_bin();
        let dir = std::env::temp_dir().join(format!("ledger-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a directory for the private PostgreSQL");
        if is_root() {
            let (uid, gid) = postgres_user();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .expect("hand the directory to the postgres user");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut server = PgServer {
            bin,
            dir,
            port,
            running: false,
        };
        let output = server
            .command("initdb")
            .arg("-D")
            .arg(server.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            describe(&output)
        );
        server.restart();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// One of the server programs, run as `postgres` when the tests run as
    /// root (initdb and postgres refuse root), as scripts/services.sh does.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// Starts the server (again) on the same port and data directory, and
    /// waits until it accepts connections.
    fn restart(&mut self) {
        assert!(!self.running, "PostgreSQL is already running");
        let options = format!(
            "-k {} -c listen_addresses=127.0.0.1 -p {}",
            self.dir.display(),
            self.port
        );
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "start", "-o", &options])
            .output()
            .expect("run pg_ctl start");
        assert!(
            output.status.success(),
            "pg_ctl start failed: {}\nserver log:\n{}",
            describe(&output),
            self.log_text()
        );
        self.running = true;
    }

    /// `pg_ctl -m immediate stop`: the server quits at once, no checkpoint.
    fn stop(&mut self) {
        let output = self.pg_ctl_stop();
        assert!(
            output.status.success(),
            "pg_ctl stop failed: {}",
            describe(&output)
        );
        self.running = false;
    }

    fn pg_ctl_stop(&self) -> Output {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "60", "stop"])
            .output()
            .expect("run pg_ctl stop")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The postmaster's pid (first line of `postmaster.pid`) and the pids of
    /// all its children (backends and auxiliary processes), from /proc.
    fn processes(&self) -> Vec<i32> {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .expect("postmaster.pid of a running cluster");
        let postmaster: i32 = pid_file
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .expect("a pid on postmaster.pid's first line");
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`: comm may hold spaces, so split after ')'.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<i32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// SIGSTOPs the whole cluster; it thaws (SIGCONT) when the guard drops.
    fn freeze(&self) -> Frozen {
        let pids = self.processes();
        for pid in &pids {
            // SAFETY: signalling processes of the cluster this test started.
            unsafe {
                libc::kill(*pid, libc::SIGSTOP);
            }
        }
        Frozen { pids }
    }
}

/// A frozen PostgreSQL cluster: every process stopped until this drops (a
/// failing test thaws it, so the cluster can still be shut down).
struct Frozen {
    pids: Vec<i32>,
}

impl Frozen {
    fn thaw(self) {}
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.pids {
            // SAFETY: signalling processes of the cluster this test started.
            unsafe {
                libc::kill(*pid, libc::SIGCONT);
            }
        }
    }
}

impl PgServer {
    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl_stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request, with how long it took; a request that hangs fails the test
/// with the path named instead of waiting for the client's own timeout.
async fn timed(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        app.send(method, path, token, body, &[]),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {path} got no answer in 10 s"));
    (reply, started.elapsed())
}

/// Polls `/readyz` until it answers 200, for at most `limit`; returns how
/// long that took and the last reply.
async fn until_ready(app: &TestApp, limit: Duration) -> (Duration, Reply) {
    let started = Instant::now();
    loop {
        let (reply, _) = timed(app, "GET", "/readyz", None, None).await;
        if reply.status == StatusCode::OK || started.elapsed() > limit {
            return (started.elapsed(), reply);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn booking(property: Uuid, check_in: &str, check_out: &str) -> Value {
    json!({
        "property_id": property,
        "check_in": check_in,
        "check_out": check_out,
        "guest": {"name": "Ana Guest", "email": "ana@example.com"},
    })
}

#[tokio::test]
async fn postgres_down_answers_503_fast_and_recovers_without_restart() {
    // Declared in this order so that the ledger is killed before the servers.
    let mut pg = PgServer::start();
    let db_name = format!("ledger_fault_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&pg.url("postgres"))
        .await
        .expect("connect to the private PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    admin.close().await.expect("close the admin connection");
    let nats = NatsServer::start();
    let mut app = spawn_app_on(&pg.url(&db_name), &db_name, &[("NATS_URL", &nats.url)]).await;
    let pid = app.pid().expect("the ledger runs");

    // Up: ready, and writes work.
    let (waited, ready) = until_ready(&app, Duration::from_secs(30)).await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "ready before the drill: {ready:?}"
    );
    assert_eq!(ready.body["db"], "ok", "{:?}", ready.body);
    eprintln!("ready 200 before the drill after {waited:?}");
    let (_, token) = agency();
    let property = app.property(&token, None).await;
    let first = app
        .reserve(&token, property, "2027-06-01", "2027-06-03")
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let first_booking = first.id();

    // Down.
    pg.stop();
    eprintln!("PostgreSQL stopped (pg_ctl -m immediate stop)");

    for path in ["/health", "/healthz"] {
        let (reply, took) = timed(&app, "GET", path, None, None).await;
        eprintln!("DB down: GET {path} -> {} in {took:?}", reply.status);
        assert_eq!(reply.status, StatusCode::OK, "{path}: {:?}", reply.body);
        assert_eq!(reply.body["status"], "ok", "{path}: {:?}", reply.body);
        assert!(
            took < FAST,
            "GET {path} took {took:?} with the database down"
        );
    }

    // Several rounds: the first probes meet the pool's idle connections that
    // the stop broke (they fail at once), the later ones have to open new
    // connections against a closed port (the pool retries until its 1 s
    // acquire timeout): both must answer 503 fast.
    for round in 1..=ROUNDS {
        for path in ["/health/ready", "/readyz"] {
            let (reply, took) = timed(&app, "GET", path, None, None).await;
            eprintln!(
                "DB down (round {round}): GET {path} -> {} {} in {took:?}",
                reply.status, reply.body
            );
            assert_error(
                &reply,
                StatusCode::SERVICE_UNAVAILABLE,
                "DATABASE_UNAVAILABLE",
            );
            assert!(
                took < FAST,
                "GET {path} took {took:?} with the database down"
            );
        }
    }

    let writes = [
        (
            "POST",
            "/api/v1/bookings".to_owned(),
            Some(booking(property, "2027-07-01", "2027-07-04")),
        ),
        (
            "POST",
            "/api/v1/properties".to_owned(),
            Some(json!({"name": "Hill House", "timezone": "Europe/Lisbon"})),
        ),
        (
            "POST",
            format!("/api/v1/bookings/{first_booking}/confirm"),
            None,
        ),
    ];
    for (method, path, body) in &writes {
        let (reply, took) = timed(&app, method, path, Some(&token), body.as_ref()).await;
        eprintln!(
            "DB down: {method} {path} -> {} {} in {took:?}",
            reply.status, reply.body
        );
        assert_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
        );
        assert!(
            took < FAST,
            "{method} {path} took {took:?} with the database down"
        );
    }
    let (reply, took) = timed(&app, "GET", "/readyz", None, None).await;
    eprintln!(
        "DB down, after the writes: GET /readyz -> {} in {took:?}",
        reply.status
    );
    assert_error(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
    );
    assert!(
        took < FAST,
        "GET /readyz took {took:?} with the database down"
    );
    assert!(
        app.is_running(),
        "the ledger exited with the database down:\n{}",
        app.log_text()
    );

    // Back: the same process recovers by itself.
    pg.restart();
    eprintln!("PostgreSQL started again on port {}", pg.port);
    let (waited, ready) = until_ready(&app, Duration::from_secs(30)).await;
    eprintln!(
        "after the restart: /readyz -> {} after {waited:?}",
        ready.status
    );
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "/readyz not 200 within 30 s of PostgreSQL's restart: {:?}\n{}",
        ready.body,
        app.log_text()
    );
    assert_eq!(ready.body["db"], "ok", "{:?}", ready.body);

    let (reply, took) = timed(
        &app,
        "POST",
        "/api/v1/bookings",
        Some(&token),
        Some(&booking(property, "2027-07-01", "2027-07-04")),
    )
    .await;
    eprintln!("after the restart: reserve -> {} in {took:?}", reply.status);
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let second = reply.id();
    let (reply, _) = timed(
        &app,
        "POST",
        "/api/v1/properties",
        Some(&token),
        Some(&json!({"name": "Hill House", "timezone": "Europe/Lisbon"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);

    // The read side caught up too: a read of the new booking at the log's head.
    let read = app
        .read(&format!("/api/v1/bookings/{second}"), &token)
        .await;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);

    assert!(app.is_running(), "the ledger exited:\n{}", app.log_text());
    assert_eq!(app.pid(), Some(pid), "the ledger was not restarted");
    let log = app.log_text();
    assert!(!log.contains("panicked"), "the ledger panicked:\n{log}");
    drop(app);
    drop(nats);
    drop(pg);
}

/// A database on a fresh private cluster, a private nats-server and a ledger
/// on them; the ledger is declared last so that it is killed first.
async fn private_stack() -> (PgServer, NatsServer, TestApp) {
    let pg = PgServer::start();
    let db_name = format!("ledger_fault_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&pg.url("postgres"))
        .await
        .expect("connect to the private PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    admin.close().await.expect("close the admin connection");
    let nats = NatsServer::start();
    let app = spawn_app_on(&pg.url(&db_name), &db_name, &[("NATS_URL", &nats.url)]).await;
    (pg, nats, app)
}

#[tokio::test]
async fn a_hanging_postgres_answers_503_fast_and_recovers_when_it_thaws() {
    let (pg, nats, mut app) = private_stack().await;
    let pid = app.pid().expect("the ledger runs");
    let (waited, ready) = until_ready(&app, Duration::from_secs(30)).await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "ready before the drill: {ready:?}"
    );
    eprintln!("ready 200 before the drill after {waited:?}");
    let (_, token) = agency();
    let property = app.property(&token, None).await;
    let first = app
        .reserve(&token, property, "2027-06-01", "2027-06-03")
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let first_booking = first.id();
    let head = app.head().await;
    // The pool now holds open connections: those are the ones a frozen
    // server leaves hanging (a stopped server's sockets accept, never answer).

    let frozen = pg.freeze();
    eprintln!(
        "PostgreSQL frozen (SIGSTOP to {} processes)",
        frozen.pids.len()
    );

    let read = format!("/api/v1/bookings/{first_booking}?min_position={head}");
    for round in 1..=ROUNDS {
        let (reply, took) = timed(&app, "GET", "/healthz", None, None).await;
        eprintln!(
            "DB frozen (round {round}): GET /healthz -> {} in {took:?}",
            reply.status
        );
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert!(
            took < FAST,
            "GET /healthz took {took:?} with the database frozen"
        );
        let requests = [
            ("GET", "/readyz".to_owned(), None, None),
            (
                "POST",
                "/api/v1/bookings".to_owned(),
                Some(token.as_str()),
                Some(booking(property, "2027-07-01", "2027-07-04")),
            ),
            ("GET", read.clone(), Some(token.as_str()), None),
        ];
        for (method, path, token, body) in &requests {
            let (reply, took) = timed(&app, method, path, *token, body.as_ref()).await;
            eprintln!(
                "DB frozen (round {round}): {method} {path} -> {} {} in {took:?}",
                reply.status, reply.body
            );
            assert_error(
                &reply,
                StatusCode::SERVICE_UNAVAILABLE,
                "DATABASE_UNAVAILABLE",
            );
            assert!(
                took < FAST,
                "{method} {path} took {took:?} with the database frozen"
            );
        }
    }
    assert!(
        app.is_running(),
        "the ledger exited with the database frozen:\n{}",
        app.log_text()
    );

    frozen.thaw();
    eprintln!("PostgreSQL thawed (SIGCONT)");
    let thawed = Instant::now();
    let deadline = thawed + Duration::from_secs(30);
    let created = loop {
        let (reply, _) = timed(
            &app,
            "POST",
            "/api/v1/bookings",
            Some(&token),
            Some(&booking(property, "2027-08-01", "2027-08-04")),
        )
        .await;
        if reply.status == StatusCode::CREATED {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded within 30 s of the thaw: {:?}\n{}",
            reply.body,
            app.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "after the thaw: a reserve succeeded {:?} later",
        thawed.elapsed()
    );
    let read = app
        .read(&format!("/api/v1/bookings/{}", created.id()), &token)
        .await;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    let (_, ready) = until_ready(&app, Duration::from_secs(30)).await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    assert_eq!(app.pid(), Some(pid), "the ledger was not restarted");
    let log = app.log_text();
    assert!(!log.contains("panicked"), "the ledger panicked:\n{log}");
    drop(app);
    drop(nats);
    drop(pg);
}
