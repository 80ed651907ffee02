//! A private PostgreSQL cluster for one test: initdb into a temporary
//! directory, its own free port and socket directory, so stopping, freezing
//! or replicating it touches nothing else. [`PgServer::standby_of`] makes a
//! streaming hot standby of one with `pg_basebackup -R`.

use std::path::PathBuf;
use std::process::{Command, Output};

use uuid::Uuid;

/// The directory of the highest PostgreSQL version's server binaries:
/// `$PG_BIN` when set, else `/usr/lib/postgresql/<version>/bin`.
pub fn pg_bin() -> PathBuf {
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

/// Runs `command` to its end and asserts that it succeeded.
fn succeed(mut command: Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}",
        describe(&output)
    );
}

/// A private PostgreSQL cluster for one test, stopped (`-m immediate`) and
/// its directory removed on drop.
pub struct PgServer {
    bin: PathBuf,
    /// Owned by `postgres` when the tests run as root; holds the data
    /// directory, the socket and the server log.
    dir: PathBuf,
    pub port: u16,
    running: bool,
}

impl PgServer {
    /// initdb into a fresh temporary directory, then start on a free port.
    pub fn start() -> PgServer {
        let mut server = PgServer::empty();
        let mut initdb = server.command("initdb");
        initdb.arg("-D").arg(server.data()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        succeed(initdb, "initdb");
        server.restart();
        server
    }

    /// A hot standby of `primary`, streaming from it: `pg_basebackup -R`
    /// (which writes `primary_conninfo` and `standby.signal`) into a fresh
    /// directory, then started on a free port of its own. It answers
    /// read-only queries and replays whatever the primary commits.
    pub fn standby_of(primary: &PgServer) -> PgServer {
        let mut server = PgServer::empty();
        let mut backup = server.command("pg_basebackup");
        backup
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", "postgres", "-D"])
            .arg(server.data())
            .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]);
        succeed(backup, "pg_basebackup");
        server.restart();
        server
    }

    /// A fresh directory (owned by `postgres` when the tests run as root)
    /// and a free port, no cluster yet.
    fn empty() -> PgServer {
        let bin = pg_bin();
        let dir = std::env::temp_dir().join(format!("ledger-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a directory for the private PostgreSQL");
        if is_root() {
            let (uid, gid) = postgres_user();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .expect("hand the directory to the postgres user");
        }
        let port = crate::free_port();
        PgServer {
            bin,
            dir,
            port,
            running: false,
        }
    }

    pub fn data(&self) -> PathBuf {
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
    pub fn restart(&mut self) {
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
    pub fn stop(&mut self) {
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The postmaster's pid (first line of `postmaster.pid`) and the pids of
    /// all its children (backends and auxiliary processes), from /proc.
    pub fn processes(&self) -> Vec<i32> {
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
    pub fn freeze(&self) -> Frozen {
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
pub struct Frozen {
    pub pids: Vec<i32>,
}

impl Frozen {
    pub fn thaw(self) {}
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
    pub fn url(&self, database: &str) -> String {
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
