//! Who may do what: the role table of docs/product.md, as one function, so the
//! table and the code can be compared line by line.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::CalendarError;
use crate::values::BlockReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Manager,
    Staff,
    Owner,
    Accountant,
    /// Runs the service for every agency; belongs to none.
    Operator,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::Manager,
        Role::Staff,
        Role::Owner,
        Role::Accountant,
        Role::Operator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Staff => "staff",
            Role::Owner => "owner",
            Role::Accountant => "accountant",
            Role::Operator => "operator",
        }
    }

    pub fn parse(value: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == value)
    }

    /// Whether tokens of this role belong to an agency (every role but the
    /// platform operator).
    pub fn has_agency(self) -> bool {
        self != Role::Operator
    }
}

/// The authenticated caller a command or query runs for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The caller's agency; [`Uuid::nil`] for an operator, who has none and
    /// whom the role table refuses every action on an agency's data.
    pub agency_id: Uuid,
    pub user_id: String,
    pub role: Role,
}

/// Every action of the role table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ManageProperty,
    ReadCalendar,
    ManageBooking,
    ManageBlock(BlockReason),
    ReadAuditLog,
    ReadEventHistory,
    /// Projection status and the current commit (read-only).
    ReadOpsStatus,
    /// Replays, parked-event retries, environment sanity.
    Operate,
    /// Agency records: create, suspend, reinstate, feature flags, history.
    AdministerAgencies,
    /// Publish a fresh availability snapshot of a property to its channels.
    ResyncChannel,
    /// Register, list or remove the iCal feeds the service imports: it
    /// fetches what they name.
    ManageFeeds,
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Action::ManageProperty => "register, update or archive properties",
            Action::ReadCalendar => "read properties, bookings and availability",
            Action::ManageBooking => "create or change bookings",
            Action::ManageBlock(_) => "create or release this block",
            Action::ReadAuditLog => "read the audit log",
            Action::ReadEventHistory => "read raw event history",
            Action::ReadOpsStatus => "read the projections' status",
            Action::Operate => "replay projections, retry parked events or check the environment",
            Action::AdministerAgencies => "administer agencies",
            Action::ResyncChannel => "resynchronise a property's channels",
            Action::ManageFeeds => "manage iCal feeds",
        }
    }
}

/// What the role table says for `role` doing `action`:
/// `Scope::Agency` (anything of its agency), `Scope::OwnProperties`
/// (only properties whose `owner_id` is the caller), `Scope::Platform`
/// (every agency: operators), or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Agency,
    OwnProperties,
    Platform,
}

pub fn scope(role: Role, action: Action) -> Option<Scope> {
    use Action::*;
    use Role::*;
    let all = Some(Scope::Agency);
    let own = Some(Scope::OwnProperties);
    let platform = Some(Scope::Platform);
    match (action, role) {
        (ManageProperty, Admin | Manager) => all,
        (ReadCalendar, Admin | Manager | Staff | Accountant) => all,
        (ReadCalendar, Owner) => own,
        (ManageBooking, Admin | Manager | Staff) => all,
        (ManageBlock(_), Admin | Manager | Staff) => all,
        (ManageBlock(BlockReason::OwnerStay), Owner) => own,
        (ReadAuditLog, Admin | Manager | Accountant) => all,
        (ReadEventHistory, Admin | Manager) => all,
        (ResyncChannel, Admin | Manager) => all,
        (ManageFeeds, Admin) => all,
        (ReadOpsStatus, Admin) => all,
        (ReadOpsStatus | Operate | AdministerAgencies, Operator) => platform,
        _ => None,
    }
}

/// Refuses an action the role may never take (403).
pub fn require(actor: &Actor, action: Action) -> Result<Scope, CalendarError> {
    scope(actor.role, action).ok_or(CalendarError::Forbidden {
        role: actor.role.as_str(),
        action: action.describe(),
    })
}

/// Whether `actor` may see a property of its own agency with this owner,
/// for an action already allowed by [`require`]. A property an owner does not
/// own is invisible to them (404, as if it did not exist).
pub fn sees_property(actor: &Actor, scope: Scope, owner_id: Option<&str>) -> bool {
    match scope {
        Scope::Agency | Scope::Platform => true,
        Scope::OwnProperties => owner_id == Some(actor.user_id.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_may_only_block_for_an_owner_stay() {
        assert_eq!(
            scope(Role::Owner, Action::ManageBlock(BlockReason::OwnerStay)),
            Some(Scope::OwnProperties)
        );
        assert_eq!(
            scope(Role::Owner, Action::ManageBlock(BlockReason::Maintenance)),
            None
        );
    }

    #[test]
    fn only_operators_replay_and_administer_agencies() {
        for role in Role::ALL {
            for action in [Action::Operate, Action::AdministerAgencies] {
                assert_eq!(
                    scope(role, action),
                    (role == Role::Operator).then_some(Scope::Platform),
                    "{role:?} {action:?}"
                );
            }
        }
    }

    #[test]
    fn an_agency_admin_only_reads_the_ops_status_of_its_agency() {
        assert_eq!(
            scope(Role::Admin, Action::ReadOpsStatus),
            Some(Scope::Agency)
        );
        assert_eq!(
            scope(Role::Operator, Action::ReadOpsStatus),
            Some(Scope::Platform)
        );
        for role in [Role::Manager, Role::Staff, Role::Owner, Role::Accountant] {
            assert_eq!(scope(role, Action::ReadOpsStatus), None, "{role:?}");
        }
    }

    #[test]
    fn operators_take_no_action_on_an_agencys_data() {
        let agency_actions = [
            Action::ManageProperty,
            Action::ReadCalendar,
            Action::ManageBooking,
            Action::ManageBlock(BlockReason::OwnerStay),
            Action::ManageBlock(BlockReason::Maintenance),
            Action::ManageBlock(BlockReason::Other),
            Action::ReadAuditLog,
            Action::ReadEventHistory,
            Action::ResyncChannel,
        ];
        for action in agency_actions {
            assert_eq!(scope(Role::Operator, action), None, "{action:?}");
        }
    }

    #[test]
    fn accountant_reads_but_never_writes() {
        assert!(scope(Role::Accountant, Action::ReadCalendar).is_some());
        assert!(scope(Role::Accountant, Action::ReadAuditLog).is_some());
        assert!(scope(Role::Accountant, Action::ManageBooking).is_none());
        assert!(scope(Role::Accountant, Action::ManageProperty).is_none());
    }
}
