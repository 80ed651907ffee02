use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually`] asks again.
const POLL: Duration = Duration::from_millis(50);

/// Asks `check` until it answers `Ok`, and returns what it answered; panics
/// after `timeout` with the last `Err`, which should say what was seen
/// instead (e.g. "the publisher is at 3 of 5").
pub async fn eventually<T, E, F, Fut>(timeout: Duration, mut check: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => panic!("not within {timeout:?}: {seen}"),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
