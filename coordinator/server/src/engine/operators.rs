//! Operators in the engine: the data dir's key made the first admin, named keys added and
//! revoked by the rules of `yosegi_round::operators`, and every operator call carried out as
//! its caller ([`Engine::acting_as`]) so that the records of what it changed name who did it.

use ed25519_dalek::VerifyingKey;
use shared_model::auth::OPERATOR;
use yosegi_round::operators::{self, OperatorRecord, Role};

use super::{Engine, Result};

impl Engine {
    /// Runs `f` as operator `by`: the governance-log records of the changes it commits carry
    /// `"by": by`.
    pub fn acting_as<T>(&mut self, by: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.actor = Some(by.to_string());
        let out = f(self);
        self.actor = None;
        out
    }

    /// Every operator, revoked ones included.
    pub fn operators(&self) -> Result<Vec<OperatorRecord>> {
        Ok(self.store.operators()?)
    }

    /// When no operator is recorded yet (a new data dir, or one from before schema 7), adds
    /// `key` (the data dir's `operator.pub.pem`) as the admin `operator`. Returns whether it did;
    /// from then on the table, not the file, says who may call.
    pub fn seed_operator(&mut self, key: &VerifyingKey, now: i64) -> Result<bool> {
        let at = self.store.version()?;
        if !self.store.operators()?.is_empty() {
            return Ok(false);
        }
        let t = operators::add(OPERATOR, key.to_bytes(), Role::Admin, &[], false)?;
        self.commit(at, now, &t)?;
        Ok(true)
    }

    /// Adds operator `name` with `role`.
    pub fn add_operator(
        &mut self,
        name: &str,
        key: &VerifyingKey,
        role: Role,
        now: i64,
    ) -> Result<()> {
        let at = self.store.version()?;
        let known = self.store.operators()?;
        let party_taken = self.store.party(name)?.is_some();
        let t = operators::add(name, key.to_bytes(), role, &known, party_taken)?;
        self.commit(at, now, &t).map(drop)
    }

    /// Revokes operator `name`; returns its role.
    pub fn revoke_operator(&mut self, name: &str, now: i64) -> Result<Role> {
        let at = self.store.version()?;
        let known = self.store.operators()?;
        let t = operators::revoke(name, &known)?;
        let role = known
            .iter()
            .find(|o| o.name.as_str() == name)
            .map_or(Role::Viewer, |o| o.role);
        self.commit(at, now, &t)?;
        Ok(role)
    }
}
