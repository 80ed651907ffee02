//! Builds and installs the tracing subscriber, once.

use tracing_subscriber::{fmt, EnvFilter};

/// `json` selects JSON lines (for log shippers); anything else is human text.
pub fn init(log_format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests building several apps) keeps the first subscriber.
    let _ = if log_format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
