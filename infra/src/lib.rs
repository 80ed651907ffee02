//! Everything that touches PostgreSQL and NATS: the pool and migrations,
//! the event store on postgres-es's table layout, the command bus that
//! appends events atomically with what must commit with them, the gap-free
//! log reader (`tail`), the NATS publisher and the channel-adapter kit, and
//! telemetry set-up. Business decisions stay in `ledger-domain`.

pub mod agencies;
pub mod channel;
pub mod clock;
pub mod cloudevent;
pub mod command_bus;
pub mod db;
pub mod event_store;
pub mod ical;
pub mod nats;
pub mod publisher;
pub mod resync;
pub mod tail;
pub mod telemetry;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use command_bus::{Answer, CommandBus, Decided, ExecuteError, Execution, Reply, ReplyHook};
pub use db::{connect, migrate, DbError};
pub use event_store::{EventStore, Loaded, StoredEvent};
