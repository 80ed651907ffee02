//! Background expiry, with no traffic needed: Idempotency-Key replies past
//! their TTL are purged, and tentative holds whose time has passed are
//! released: every second it looks for lapsed holds in the bookings view and
//! issues the expiry command, which appends `booking.hold_expired` to the log.
//! Several processes may do this at once; the aggregate accepts only the
//! first expiry of a hold and the rest are refused harmlessly.

use std::time::Duration;

use ledger_domain::{Actor, CalendarCommand, Command, Role};
use ledger_infra::{CommandBus, ExecuteError, Execution};

use super::Jobs;
use crate::queries;

const EVERY: Duration = Duration::from_secs(1);
const BATCH: i64 = 200;
pub const SYSTEM_USER: &str = "system:hold-expiry";

/// How often Idempotency-Key replies past their TTL are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Purges Idempotency-Key replies past `LEDGER_IDEMPOTENCY_TTL` until the
/// process ends. Several processes may purge at once; it is harmless.
pub async fn purge_idempotency_keys(bus: &CommandBus) {
    loop {
        match bus.purge_expired_keys().await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "purged expired Idempotency-Key replies"),
            Err(error) => {
                tracing::debug!(%error, "purging Idempotency-Key replies failed; retrying")
            }
        }
        tokio::time::sleep(PURGE_EVERY).await;
    }
}

/// Expires lapsed holds every second until the process ends.
pub async fn run(jobs: &Jobs) {
    loop {
        if let Err(error) = expire_lapsed(jobs).await {
            tracing::debug!(%error, "hold expiry pass failed; retrying");
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// One pass: expires the holds that have lapsed by the jobs' clock; returns
/// how many.
pub async fn expire_lapsed(jobs: &Jobs) -> Result<usize, sqlx::Error> {
    let lapsed = queries::lapsed_holds(&jobs.pool, jobs.clock.now(), BATCH).await?;
    let mut expired = 0;
    for hold in lapsed {
        let booking_id = hold.booking_id;
        let execution = Execution {
            property_id: hold.property_id,
            command: Command {
                actor: Actor {
                    agency_id: hold.agency_id,
                    user_id: SYSTEM_USER.to_owned(),
                    role: Role::Admin,
                },
                now: jobs.clock.now(),
                action: CalendarCommand::ExpireHold { booking_id },
                expected_version: None,
            },
            request_id: format!("hold-expiry-{booking_id}"),
            idempotency: None,
        };
        match jobs.bus.run_unkeyed(execution).await {
            Ok(_) => expired += 1,
            // Already expired, confirmed or cancelled meanwhile: nothing to do.
            Err(ExecuteError::Domain(refusal)) => {
                tracing::debug!(%booking_id, %refusal, "hold not expired")
            }
            Err(error) => tracing::warn!(%booking_id, %error, "could not expire a hold"),
        }
    }
    Ok(expired)
}
