//! Operators: named keys with a role, and the rules for adding and revoking them.
//!
//! A role allows a fixed set of operator methods ([`Role::needed_for`]): a **viewer** reads
//! (parties, tasks, round status, models, operators), an **operator** also runs the federation
//! (tasks, rounds, model restores), an **admin** also governs who takes part (enrols, revokes and
//! rotates party keys, adds and revokes operators). Names are one namespace with parties: a
//! call's `x-yosegi-caller` names one or the other. An operator is never deleted, only revoked,
//! and its name is not given again; the last admin cannot be revoked (recovery then needs the
//! data dir: `coordinator operator recover`).

use std::fmt;
use std::str::FromStr;

use shared_model::ids::OperatorId;

use crate::decide::{Decided, Refusal};
use crate::transition::Transition;

/// What an operator key may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads status, reports, models and the lists of parties, tasks and operators.
    Viewer,
    /// Also creates tasks, starts rounds and restores models.
    Operator,
    /// Also enrols, revokes and rotates parties, and adds and revokes operators.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// Its stored and written name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// The lowest role that may call the `OperatorService` method `method` (its bare name, e.g.
    /// `CreateTask`); `None` for a method this table does not know (refused to everyone).
    pub fn needed_for(method: &str) -> Option<Role> {
        Some(match method {
            "ListParties" | "ListTasks" | "RoundStatus" | "PullModel" | "ListOperators" => {
                Self::Viewer
            }
            "CreateTask" | "StartRound" | "RestoreModel" => Self::Operator,
            "EnrollParty" | "RotatePartyKey" | "RevokeParty" | "AddOperator" | "RevokeOperator" => {
                Self::Admin
            }
            _ => return None,
        })
    }

    /// Whether this role may call `method`.
    pub fn allows(self, method: &str) -> bool {
        Self::needed_for(method).is_some_and(|needed| self >= needed)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: one of viewer, operator, admin"))
    }
}

/// An operator as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorRecord {
    /// Its name.
    pub name: OperatorId,
    /// Its raw ed25519 public key.
    pub public_key: [u8; 32],
    /// Its role.
    pub role: Role,
    /// Revoked: its calls are refused.
    pub revoked: bool,
}

/// Adds operator `name` with `role`; `operators` are all recorded, `party_taken` whether a
/// party has that name.
pub fn add(
    name: &str,
    public_key: [u8; 32],
    role: Role,
    operators: &[OperatorRecord],
    party_taken: bool,
) -> Decided<Transition> {
    let operator = OperatorId::new(name).map_err(|e| Refusal::invalid(e.to_string()))?;
    if party_taken {
        return Err(Refusal::exists(format!(
            "{name} is the name of a party: operators and parties share one namespace"
        )));
    }
    if let Some(o) = operators.iter().find(|o| o.name == operator) {
        return Err(Refusal::exists(if o.revoked {
            format!("operator {name} was revoked: a revoked name is not given again")
        } else {
            format!("operator {name} exists (role {})", o.role)
        }));
    }
    if let Some(o) = operators.iter().find(|o| o.public_key == public_key) {
        return Err(Refusal::invalid(format!(
            "this key is already the key of operator {}: give each operator its own key",
            o.name
        )));
    }
    Ok(Transition::AddOperator {
        operator,
        public_key,
        role,
    })
}

/// Why operator `name` cannot be revoked in the state `operators`, if it cannot: the one check
/// the decision, the store's guard and the in-memory federation's guard all make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unrevocable {
    /// No such operator.
    Unknown(String),
    /// Revoked already.
    Revoked(String),
    /// The last admin that is not revoked.
    LastAdmin(String),
}

impl fmt::Display for Unrevocable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(n) => write!(f, "no operator named {n}"),
            Self::Revoked(n) => write!(f, "operator {n} is already revoked"),
            Self::LastAdmin(n) => write!(f, "operator {n} is the last admin"),
        }
    }
}

/// The operator to revoke, or why it cannot be.
pub fn revocable<'a>(
    name: &str,
    operators: impl IntoIterator<Item = &'a OperatorRecord> + Clone,
) -> Result<&'a OperatorRecord, Unrevocable> {
    let Some(o) = operators
        .clone()
        .into_iter()
        .find(|o| o.name.as_str() == name)
    else {
        return Err(Unrevocable::Unknown(name.into()));
    };
    if o.revoked {
        return Err(Unrevocable::Revoked(name.into()));
    }
    let admins = operators
        .into_iter()
        .filter(|o| !o.revoked && o.role == Role::Admin)
        .count();
    if o.role == Role::Admin && admins == 1 {
        return Err(Unrevocable::LastAdmin(name.into()));
    }
    Ok(o)
}

/// Revokes operator `name`: its calls are refused from the next one on.
pub fn revoke(name: &str, operators: &[OperatorRecord]) -> Decided<Transition> {
    match revocable(name, operators) {
        Ok(o) => Ok(Transition::RevokeOperator {
            operator: o.name.clone(),
        }),
        Err(e @ Unrevocable::Unknown(_)) => Err(Refusal::not_found(e.to_string())),
        Err(e @ Unrevocable::Revoked(_)) => Err(Refusal::precondition(e.to_string())),
        Err(e @ Unrevocable::LastAdmin(_)) => Err(Refusal::precondition(format!(
            "{e}: add another admin first (or, with the coordinator stopped, `coordinator operator recover`)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, key: u8, role: Role, revoked: bool) -> OperatorRecord {
        OperatorRecord {
            name: OperatorId::new(name).unwrap(),
            public_key: [key; 32],
            role,
            revoked,
        }
    }

    #[test]
    fn each_role_allows_its_methods_and_those_of_the_roles_below() {
        assert!(Role::Viewer.allows("RoundStatus"));
        assert!(!Role::Viewer.allows("CreateTask"));
        assert!(Role::Operator.allows("StartRound") && Role::Operator.allows("ListTasks"));
        assert!(!Role::Operator.allows("EnrollParty"));
        assert!(!Role::Operator.allows("AddOperator"));
        assert!(Role::Admin.allows("RevokeOperator") && Role::Admin.allows("PullModel"));
        assert!(!Role::Admin.allows("NoSuchMethod"));
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .contains("viewer, operator, admin")
        );
    }

    #[test]
    fn names_are_not_shared_with_parties_or_given_again_and_keys_are_not_shared() {
        let ops = [
            op("alice", 1, Role::Admin, false),
            op("bob", 2, Role::Viewer, true),
        ];
        assert!(matches!(
            add("carol", [3; 32], Role::Operator, &ops, false),
            Ok(Transition::AddOperator {
                role: Role::Operator,
                ..
            })
        ));
        let e = add("plant-a", [3; 32], Role::Viewer, &ops, true).unwrap_err();
        assert!(e.message.contains("name of a party"), "{e}");
        let e = add("alice", [3; 32], Role::Viewer, &ops, false).unwrap_err();
        assert!(e.message.contains("exists (role admin)"), "{e}");
        let e = add("bob", [3; 32], Role::Viewer, &ops, false).unwrap_err();
        assert!(e.message.contains("not given again"), "{e}");
        let e = add("dave", [1; 32], Role::Viewer, &ops, false).unwrap_err();
        assert!(e.message.contains("key of operator alice"), "{e}");
        assert!(add("bad name", [4; 32], Role::Viewer, &ops, false).is_err());
    }

    #[test]
    fn the_last_admin_cannot_be_revoked() {
        let ops = [
            op("alice", 1, Role::Admin, false),
            op("bob", 2, Role::Viewer, false),
        ];
        let e = revoke("alice", &ops).unwrap_err();
        assert!(e.message.contains("last admin"), "{e}");
        assert!(revoke("bob", &ops).is_ok());
        let two = [
            op("alice", 1, Role::Admin, false),
            op("carol", 3, Role::Admin, false),
        ];
        assert!(revoke("alice", &two).is_ok());
        assert!(
            revoke("nobody", &two)
                .unwrap_err()
                .message
                .contains("no operator")
        );
        let gone = [
            op("alice", 1, Role::Admin, false),
            op("bob", 2, Role::Viewer, true),
        ];
        assert!(
            revoke("bob", &gone)
                .unwrap_err()
                .message
                .contains("already revoked")
        );
    }
}
