//! Background expiry, with no traffic needed: Idempotency-Key replies past
//! their TTL are purged, and tentative holds whose time has passed are
//! released: every second it looks for lapsed holds in the bookings view and
//! issues the expiry command, which appends `booking.hold_expired` to the log.
//! Several processes may do this at once; the aggregate accepts only the
//! first expiry of a hold and the rest are refused harmlessly.

use std::time::Duration;

use ledger_domain::{Actor, CalendarCommand, Command, Role};
use ledger_infra::{ExecuteError, Execution};
use sqlx::Row;
use uuid::Uuid;

use crate::state::AppState;

const EVERY: Duration = Duration::from_secs(1);
const BATCH: i64 = 200;
pub const SYSTEM_USER: &str = "system:hold-expiry";

/// How often Idempotency-Key replies past their TTL are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Purges Idempotency-Key replies past `LEDGER_IDEMPOTENCY_TTL` until the
/// process ends. Several processes may purge at once; it is harmless.
pub async fn purge_idempotency_keys(state: AppState) {
    loop {
        match state.bus.purge_expired_keys().await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "purged expired Idempotency-Key replies"),
            Err(error) => {
                tracing::debug!(%error, "purging Idempotency-Key replies failed; retrying")
            }
        }
        tokio::time::sleep(PURGE_EVERY).await;
    }
}

pub async fn run(state: AppState) {
    loop {
        if let Err(error) = expire_lapsed(&state).await {
            tracing::debug!(%error, "hold expiry pass failed; retrying");
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// One pass: expires the holds that have lapsed; returns how many.
pub async fn expire_lapsed(state: &AppState) -> Result<usize, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT booking_id, property_id, agency_id FROM bookings_view
          WHERE status = 'tentative' AND hold_expires_at <= $2
          ORDER BY hold_expires_at LIMIT $1",
    )
    .bind(BATCH)
    .bind(state.now())
    .fetch_all(&state.pool)
    .await?;
    let mut expired = 0;
    for row in rows {
        let booking_id: Uuid = row.try_get("booking_id")?;
        let execution = Execution {
            property_id: row.try_get("property_id")?,
            command: Command {
                actor: Actor {
                    agency_id: row.try_get("agency_id")?,
                    user_id: SYSTEM_USER.to_owned(),
                    role: Role::Admin,
                },
                now: state.now(),
                action: CalendarCommand::ExpireHold { booking_id },
                expected_version: None,
            },
            request_id: format!("hold-expiry-{booking_id}"),
            idempotency: None,
        };
        match state.bus.run_unkeyed(execution).await {
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
