//! The transitions that change who holds which key: a party enrolled, its key rotated or
//! revoked (leaving the open rounds that awaited it), the coordinator's signing key rotated
//! (every manifest signed again). Each writes its rows and governance-log records in the
//! caller's transaction, like every arm of `apply.rs`.

use rusqlite::{Transaction, params};
use serde_json::json;
use yosegi_round::Transition;
use yosegi_round::state::PartyStateName;

use super::apply::{INVITED, left_out_event, one, reject, set_state};
use super::{Result, StoreError};
use crate::audit::{self, AuditEvent, AuditKind};

/// Writes a key transition and its records.
pub(super) fn write(
    tx: &Transaction<'_>,
    t: &Transition,
    now: i64,
    by: Option<&str>,
) -> Result<()> {
    match t {
        Transition::EnrollParty {
            party, public_key, ..
        } => {
            let n = tx.execute(
                "INSERT OR IGNORE INTO parties (name, public_key, enrolled_ms) VALUES (?1, ?2, ?3)",
                params![party.as_str(), &public_key[..], now],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict(format!(
                    "party {party} is already enrolled"
                )));
            }
            super::operators::name_free_of_operators(tx, party.as_str())?;
            let fingerprint = shared_model::ids::Sha256::of(public_key).to_string();
            let detail =
                json!({"public_key": hex::encode(public_key), "fingerprint": &fingerprint[..16]});
            let event = AuditEvent::new(AuditKind::PartyEnrolled, detail)
                .party(party.as_str())
                .by(by);
            audit::append(tx, now, &event)?;
        }
        Transition::RotateCoordinatorKey { rotation, resigned } => {
            let r = rotation
                .rotation()
                .map_err(|e| StoreError::Stale(format!("a rotation statement: {e}")))?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO key_rotations (sequence, statement, by_previous, by_new, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.sequence as i64, &rotation.statement, &rotation.by_previous[..], &rotation.by_new[..], now],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict(format!(
                    "key rotation {} is already recorded",
                    r.sequence
                )));
            }
            for (task, version, signature) in resigned {
                let n = tx.execute(
                    "UPDATE models SET signature = ?3 WHERE task = ?1 AND version = ?2",
                    params![task.as_str(), version.0 as i64, signature],
                )?;
                one(n, || format!("no model {version} of {task}"))?;
            }
            let fp = |k: &str| {
                hex::decode(k)
                    .map(|b| shared_model::ids::Sha256::of(&b).to_string()[..16].to_string())
                    .unwrap_or_default()
            };
            let detail = json!({
                "sequence": r.sequence,
                "previous_fingerprint": fp(&r.previous_key),
                "fingerprint": fp(&r.new_key),
                "manifests_resigned": resigned.len(),
            });
            audit::append(
                tx,
                now,
                &AuditEvent::new(AuditKind::CoordinatorKeyRotated, detail),
            )?;
        }
        Transition::RotateKey {
            party,
            public_key,
            previous,
        } => {
            // Guarded on the key it replaces: a rotation decided on a stale key writes nothing.
            let n = tx.execute(
                "UPDATE parties SET public_key = ?1 WHERE name = ?2 AND public_key = ?3 AND revoked = 0",
                params![&public_key[..], party.as_str(), &previous[..]],
            )?;
            if n != 1 {
                return Err(StoreError::Stale(format!(
                    "the key of {party} changed, or it was revoked"
                )));
            }
            let fp = |k: &[u8; 32]| shared_model::ids::Sha256::of(k).to_string()[..16].to_string();
            let detail = json!({
                "public_key": hex::encode(public_key),
                "fingerprint": fp(public_key),
                "previous_fingerprint": fp(previous),
            });
            let event = AuditEvent::new(AuditKind::PartyKeyRotated, detail)
                .party(party.as_str())
                .by(by);
            audit::append(tx, now, &event)?;
        }
        Transition::Revoke {
            party,
            reason,
            awaited,
            ..
        } => {
            let n = tx.execute(
                "UPDATE parties SET revoked = 1 WHERE name = ?1",
                [party.as_str()],
            )?;
            one(n, || format!("no party named {party}"))?;
            let detail = json!({ "reason": reason });
            let event = AuditEvent::new(AuditKind::PartyRevoked, detail)
                .party(party.as_str())
                .by(by);
            audit::append(tx, now, &event)?;
            for (task, round) in awaited {
                audit::append(
                    tx,
                    now,
                    &left_out_event(task, *round, party, "revoked", reason),
                )?;
                let n = set_state(
                    tx,
                    task,
                    *round,
                    party,
                    PartyStateName::Rejected,
                    reason,
                    INVITED,
                )?;
                one(n, || {
                    format!("{party} is no longer awaited in round {round} of {task}")
                })?;
                reject(tx, task, *round, party, reason, now)?;
            }
        }
        other => unreachable!("not a key transition: {other:?}"),
    }
    Ok(())
}
