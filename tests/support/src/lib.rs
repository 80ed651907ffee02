//! What every integration test of the workspace shares: a fresh database per
//! test ([`TestDb`]), tokens signed like the service's own, an HTTP client
//! that reads the contract's replies ([`Api`], [`Reply`]), the routes of
//! docs/api.md, [`eventually`] for every wait on something asynchronous, and
//! private PostgreSQL and NATS servers for the drills that stop, freeze or
//! kill them ([`pg`], [`nats`]).

mod db;
mod history;
mod http;
pub mod nats;
pub mod pg;
pub mod routes;
mod token;
mod wait;

pub use db::{create_database, properties_in_log, server_url, TestDb};
pub use history::write_history;
pub use http::{answers, assert_error, created, ok, reservation, with_status, Api, Reply};
pub use token::{agency, b64url, now_secs, operator, raw_token, token, token_with, SECRET};
pub use wait::eventually;

/// A port that was free a moment ago, for servers that must come back on the
/// same port after a restart (a private PostgreSQL or NATS, a `ledger`
/// process told its address): the port is released before the server binds
/// it, so another process could take it in between.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
