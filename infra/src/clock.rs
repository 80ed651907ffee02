//! Where "now" comes from. Every decision's time, the hold expiry's cut-off
//! and the import's "today" are read from one `Clock` the application holds,
//! so a test can stand the whole service at a moment and move it on.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};

/// The time, to the microsecond: what PostgreSQL keeps, so read models equal
/// the aggregate's own state.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// How the application holds its clock.
pub type SharedClock = Arc<dyn Clock>;

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }
}

/// A clock that stands still until told: clones share one time, so a test
/// keeps one and hands another to the application.
#[derive(Debug, Clone)]
pub struct ManualClock {
    micros: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn at(time: DateTime<Utc>) -> Self {
        Self {
            micros: Arc::new(AtomicI64::new(time.timestamp_micros())),
        }
    }

    pub fn set(&self, time: DateTime<Utc>) {
        self.micros.store(time.timestamp_micros(), Ordering::SeqCst);
    }

    pub fn advance(&self, by: TimeDelta) {
        let micros = by
            .num_microseconds()
            .expect("an advance of under 292,000 years");
        self.micros.fetch_add(micros, Ordering::SeqCst);
    }

    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.micros.load(Ordering::SeqCst))
            .expect("a time set from a DateTime")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_follow() {
        let start = DateTime::from_timestamp(1_800_000_000, 123_456_000).expect("a time");
        let clock = ManualClock::at(start);
        let shared = clock.shared();
        assert_eq!(shared.now(), start);
        clock.advance(TimeDelta::minutes(90));
        assert_eq!(shared.now(), start + TimeDelta::minutes(90));
        clock.set(start);
        assert_eq!(shared.now(), start);
    }

    #[test]
    fn the_system_clock_keeps_microseconds() {
        assert_eq!(SystemClock.now().timestamp_subsec_nanos() % 1_000, 0);
    }
}
