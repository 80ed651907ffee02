//! The routes of docs/api.md that tests name again and again.

pub const PROPERTIES: &str = "/api/v1/properties";
pub const BOOKINGS: &str = "/api/v1/bookings";
pub const AVAILABILITY: &str = "/api/v1/availability";
pub const SEARCH: &str = "/api/v1/availability/search";
pub const BLOCKS: &str = "/api/v1/availability/blocks";
pub const AUDIT: &str = "/api/v1/audit-log";
pub const STREAM: &str = "/api/v1/stream";
pub const HEALTH: &str = "/health";
pub const READY: &str = "/health/ready";
pub const OPS: &str = "/ops/projections";
pub const AGENCIES: &str = "/ops/agencies";
pub const HISTORY: &str = "/ops/audit-log";
pub const CURRENT_COMMIT: &str = "/ops/current-commit";
pub const ENV_SANITY: &str = "/ops/env-sanity";
pub const RESYNC: &str = "/ops/resync";
