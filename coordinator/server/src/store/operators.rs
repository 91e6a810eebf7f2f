//! Operator keys in the database: the `operators` table (schema 7), read as
//! [`OperatorRecord`]s and written by the `AddOperator` and `RevokeOperator` transitions with
//! their governance-log records. The guards are the store's usual ones: a name taken (by an
//! operator or a party) is a conflict, and a revocation decided on a state that has moved on —
//! the operator already revoked, or it would leave no admin — is stale.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::json;
use shared_model::ids::OperatorId;
use yosegi_round::Transition;
use yosegi_round::operators::{self, OperatorRecord};

use super::{Result, Store, StoreError};
use crate::audit::{self, AuditEvent, AuditKind};

const COLS: &str = "name, public_key, role, revoked";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<OperatorRecord> {
    let bad = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            Box::<dyn std::error::Error + Send + Sync>::from(e),
        )
    };
    let name: String = r.get(0)?;
    let key: Vec<u8> = r.get(1)?;
    let role: String = r.get(2)?;
    Ok(OperatorRecord {
        name: OperatorId::new(name).map_err(|e| bad(0, e.to_string()))?,
        public_key: key
            .try_into()
            .map_err(|_| bad(1, "an operator key is not 32 bytes".into()))?,
        role: role.parse().map_err(|e| bad(2, e))?,
        revoked: r.get(3)?,
    })
}

fn all(conn: &Connection) -> Result<Vec<OperatorRecord>> {
    let mut st = conn.prepare_cached(&format!("SELECT {COLS} FROM operators ORDER BY name"))?;
    let rows = st.query_map([], record)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    /// Every operator, by name (revoked ones included).
    pub fn operators(&self) -> Result<Vec<OperatorRecord>> {
        all(&self.conn)
    }
}

/// Refuses `name` for a party when an operator holds it.
pub(super) fn name_free_of_operators(tx: &Transaction<'_>, name: &str) -> Result<()> {
    let taken: Option<i64> = tx
        .query_row("SELECT 1 FROM operators WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    match taken {
        Some(_) => Err(StoreError::Conflict(format!(
            "{name} is the name of an operator"
        ))),
        None => Ok(()),
    }
}

/// Writes an operator transition and its record.
pub(super) fn write(
    tx: &Transaction<'_>,
    t: &Transition,
    now: i64,
    by: Option<&str>,
) -> Result<()> {
    match t {
        Transition::AddOperator {
            operator,
            public_key,
            role,
        } => {
            let party: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM parties WHERE name = ?1",
                    [operator.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if party.is_some() {
                return Err(StoreError::Conflict(format!(
                    "{operator} is the name of a party"
                )));
            }
            let n = tx.execute(
                "INSERT OR IGNORE INTO operators (name, public_key, role, added_ms) VALUES (?1, ?2, ?3, ?4)",
                params![operator.as_str(), &public_key[..], role.as_str(), now],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict(format!(
                    "the operator name {operator} or its key is taken"
                )));
            }
            let fingerprint = shared_model::ids::Sha256::of(public_key).to_string();
            let detail = json!({
                "operator": operator.as_str(),
                "role": role.as_str(),
                "public_key": hex::encode(public_key),
                "fingerprint": &fingerprint[..16],
            });
            audit::append(
                tx,
                now,
                &AuditEvent::new(AuditKind::OperatorAdded, detail).by(by),
            )?;
        }
        Transition::RevokeOperator { operator } => {
            let ops = all(tx)?;
            let o = operators::revocable(operator.as_str(), &ops)
                .map_err(|e| StoreError::Stale(e.to_string()))?;
            tx.execute(
                "UPDATE operators SET revoked = 1 WHERE name = ?1",
                [operator.as_str()],
            )?;
            let detail = json!({"operator": operator.as_str(), "role": o.role.as_str()});
            audit::append(
                tx,
                now,
                &AuditEvent::new(AuditKind::OperatorRevoked, detail).by(by),
            )?;
        }
        other => unreachable!("not an operator transition: {other:?}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use shared_model::ids::PartyId;
    use yosegi_round::Role;

    use super::*;

    fn add(s: &mut Store, name: &str, key: u8, role: Role, by: Option<&str>) -> Result<()> {
        let t = Transition::AddOperator {
            operator: OperatorId::new(name).unwrap(),
            public_key: [key; 32],
            role,
        };
        let at = s.version()?;
        s.apply_by(at, 10, by, &t).map(drop)
    }

    fn revoke(s: &mut Store, name: &str) -> Result<()> {
        let t = Transition::RevokeOperator {
            operator: OperatorId::new(name).unwrap(),
        };
        let at = s.version()?;
        s.apply_by(at, 11, Some("ada"), &t).map(drop)
    }

    #[test]
    fn operators_are_written_with_who_added_them_and_the_guards_hold() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::create(&dir.path().join("y.db")).unwrap();
        add(&mut s, "ada", 1, Role::Admin, None).unwrap();
        add(&mut s, "vera", 2, Role::Viewer, Some("ada")).unwrap();
        // Taken names and keys are conflicts, across operators and parties.
        assert!(matches!(
            add(&mut s, "vera", 3, Role::Viewer, None),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            add(&mut s, "olga", 2, Role::Viewer, None),
            Err(StoreError::Conflict(_))
        ));
        let enroll = Transition::EnrollParty {
            party: PartyId::new("vera").unwrap(),
            public_key: [9; 32],
        };
        let at = s.version().unwrap();
        let e = s.apply(at, 12, &enroll).unwrap_err();
        assert!(
            e.to_string().contains("vera is the name of an operator"),
            "{e}"
        );
        assert!(
            s.parties().unwrap().is_empty(),
            "the refused enrolment wrote nothing"
        );
        // The last admin stays; a second revocation of one operator is stale.
        assert!(matches!(revoke(&mut s, "ada"), Err(StoreError::Stale(_))));
        revoke(&mut s, "vera").unwrap();
        assert!(matches!(revoke(&mut s, "vera"), Err(StoreError::Stale(_))));
        let ops = s.operators().unwrap();
        let state: Vec<_> = ops
            .iter()
            .map(|o| (o.name.as_str(), o.role, o.revoked))
            .collect();
        assert_eq!(
            state,
            [("ada", Role::Admin, false), ("vera", Role::Viewer, true)]
        );
        let records = s.audit_records(None, None).unwrap();
        let kinds: Vec<(&str, Option<String>)> = records
            .iter()
            .map(|r| {
                let d: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
                (r.kind.as_str(), d["by"].as_str().map(str::to_string))
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("operator_added", None),
                ("operator_added", Some("ada".into())),
                ("operator_revoked", Some("ada".into())),
            ]
        );
    }
}
