//! The projection tests, in one test binary (one link of the stack instead of
//! one per file): the read models against the log, over the command bus.

mod common;

mod bus_cancellation;
mod consistency;
mod failure;
mod held_transaction;
mod postgres_es;
mod room_types;
mod snapshots;
mod tail_order;
mod watermark_plan;
