//! A private `nats-server` with JetStream for one test (or one benchmark):
//! its own free port and its own storage directory, so it can be stopped and
//! restarted without touching the shared server that scripts/services.sh runs.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct NatsServer {
    pub url: String,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// A configuration file passed with `-c` (the flags above override its
    /// address, port and storage).
    config: Option<PathBuf>,
}

/// `$NATS_SERVER`, else `nats-server` on the PATH, else the one
/// scripts/services.sh installs under `.local/venv/bin`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.local/venv/bin/nats-server")
    })
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with(None)
    }

    /// A server that also reads `config` (nats-server's configuration
    /// syntax, e.g. an `authorization { users = [...] }` block).
    pub fn start_with_config(config: &str) -> NatsServer {
        NatsServer::start_with(Some(config))
    }

    fn start_with(config: Option<&str>) -> NatsServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ledger-nats-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a storage directory for nats-server");
        let config = config.map(|text| {
            let path = dir.join("nats.conf");
            std::fs::write(&path, text).expect("write the nats-server configuration");
            path
        });
        let mut server = NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir,
            child: None,
            config,
        };
        server.restart();
        server
    }

    /// Starts the server (again) on the same port and storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))
            .expect("a log file");
        let mut command = Command::new(binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {} (run scripts/services.sh to install it): {e}",
                    binary().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server has written to its log so far (stderr), for a
    /// failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// kill -9: the server dies at once, nothing flushed, no goodbye to its
    /// clients or its cluster.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling a child process this struct started and still owns.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A JetStream cluster of `nats-server`s on loopback: each its own client
/// port, route port and storage, named `n0`, `n1`, ... (the names JetStream
/// reports as a stream's leader and replicas).
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start(size: usize) -> NatsCluster {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let name = format!("ledger-{}", uuid::Uuid::new_v4().simple());
        let servers = (0..size)
            .map(|i| {
                let peers: Vec<String> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, port)| format!("\"nats-route://127.0.0.1:{port}\""))
                    .collect();
                NatsServer::start_with_config(&format!(
                    "server_name: n{i}\n\
                     cluster {{\n  name: {name}\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    routes[i],
                    peers.join(", ")
                ))
            })
            .collect();
        NatsCluster { servers }
    }

    /// Every server's URL, comma-separated, as `NATS_URL` takes them.
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(|server| server.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The last `lines` lines of every server's log, for a failure message.
    pub fn logs(&self, lines: usize) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, server)| {
                let log = server.log();
                // A dead peer's route is retried every second: those lines
                // would hide everything else.
                let tail: Vec<&str> = log
                    .lines()
                    .filter(|line| !line.contains("Error trying to connect to route"))
                    .rev()
                    .take(lines)
                    .collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- n{i} ---\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The server JetStream calls `name` (`n0`, `n1`, ...).
    pub fn server(&mut self, name: &str) -> &mut NatsServer {
        let index: usize = name
            .strip_prefix('n')
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("{name} is not a server of this cluster"));
        &mut self.servers[index]
    }
}
