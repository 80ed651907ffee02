//! The black-box tests of the ledger, in one test binary: linking the whole
//! stack once instead of once per file is most of what a test build costs.
//! Each module is one area of the contract; `cargo test -p ledger-api --test
//! integration -- drills::` runs one of them.

mod channel;
mod common;

mod auth;
mod cluster;
mod console;
mod drills;
mod durability;
mod faults;
mod frontend;
mod ical;
mod nats_permissions;
mod operators;
mod parking;
mod privilege;
mod read_side;
mod resync;
mod room_types;
mod room_types_agree;
mod ssrf;
mod standby;
mod stream;
mod tokens;
mod values;
mod write_side;
