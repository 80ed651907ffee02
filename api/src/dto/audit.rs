//! Audit log entries.

use chrono::{DateTime, Utc};
use ledger_infra::agencies::HistoryEntry;
use ledger_projections::queries::AuditEntry;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// An entry of an audit log: the agency's (`/api/v1/audit-log`) or the
/// agencies' history (`/ops/audit-log`), which has the same shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    pub id: Uuid,
    pub agency_id: Uuid,
    pub user_id: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Uuid,
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub position: i64,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(r: AuditEntry) -> Self {
        AuditEntryView {
            id: r.id,
            agency_id: r.agency_id,
            user_id: r.user_id,
            action: r.action,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            details: r.details,
            created_at: r.created_at,
            position: r.position,
        }
    }
}

impl From<HistoryEntry> for AuditEntryView {
    fn from(e: HistoryEntry) -> Self {
        AuditEntryView {
            id: e.id,
            agency_id: e.agency_id,
            user_id: e.user_id,
            action: e.action,
            resource_type: e.resource_type.to_owned(),
            resource_id: e.resource_id,
            details: e.details,
            created_at: e.created_at,
            position: e.position,
        }
    }
}
