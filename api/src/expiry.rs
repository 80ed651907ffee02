//! Releases tentative holds whose time has passed, with no traffic needed:
//! every second it looks for lapsed holds in the bookings view and issues
//! the expiry command, which appends `booking.hold_expired` to the log.
//! Several processes may do this at once; the aggregate accepts only the
//! first expiry of a hold and the rest are refused harmlessly.

use std::time::Duration;

use ledger_domain::{Actor, CalendarCommand, Command, Role};
use ledger_infra::{ExecuteError, Execution, Reply};
use sqlx::Row;
use uuid::Uuid;

use crate::state::AppState;

const EVERY: Duration = Duration::from_secs(1);
const BATCH: i64 = 200;
pub const SYSTEM_USER: &str = "system:hold-expiry";

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
          WHERE status = 'tentative' AND hold_expires_at <= now()
          ORDER BY hold_expires_at LIMIT $1",
    )
    .bind(BATCH)
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
                now: crate::extract::now(),
                action: CalendarCommand::ExpireHold { booking_id },
            },
            request_id: format!("hold-expiry-{booking_id}"),
            idempotency: None,
        };
        let render = |_: &ledger_domain::PropertyCalendar, position: i64| Reply {
            status: 200,
            body: serde_json::json!({ "position": position }),
        };
        match state.bus.execute(&execution, &render).await {
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
