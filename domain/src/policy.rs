//! Who may do what: the role table of PRODUCT.md, as one function, so the
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
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Manager,
        Role::Staff,
        Role::Owner,
        Role::Accountant,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Staff => "staff",
            Role::Owner => "owner",
            Role::Accountant => "accountant",
        }
    }

    pub fn parse(value: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == value)
    }
}

/// The authenticated caller a command or query runs for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
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
    Operate,
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
            Action::Operate => "use ops endpoints",
        }
    }
}

/// What the role table says for `role` doing `action`:
/// `Scope::Agency` (anything of its agency), `Scope::OwnProperties`
/// (only properties whose `owner_id` is the caller), or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Agency,
    OwnProperties,
}

pub fn scope(role: Role, action: Action) -> Option<Scope> {
    use Action::*;
    use Role::*;
    let all = Some(Scope::Agency);
    let own = Some(Scope::OwnProperties);
    match (action, role) {
        (ManageProperty, Admin | Manager) => all,
        (ReadCalendar, Admin | Manager | Staff | Accountant) => all,
        (ReadCalendar, Owner) => own,
        (ManageBooking, Admin | Manager | Staff) => all,
        (ManageBlock(_), Admin | Manager | Staff) => all,
        (ManageBlock(BlockReason::OwnerStay), Owner) => own,
        (ReadAuditLog, Admin | Manager | Accountant) => all,
        (ReadEventHistory, Admin | Manager) => all,
        (Operate, Admin) => all,
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
        Scope::Agency => true,
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
    fn only_admin_operates() {
        for role in Role::ALL {
            assert_eq!(
                scope(role, Action::Operate).is_some(),
                role == Role::Admin,
                "{role:?}"
            );
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
