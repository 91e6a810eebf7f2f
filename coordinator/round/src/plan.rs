//! A round's plan: its strategy with checked options, the relay step it is (if any), its quorum
//! and how long it runs. Stored as the strategy name, an options object and two numbers; the
//! relay keys inside that object are read and written here only.

use std::collections::BTreeMap;

use shared_model::ids::PartyId;
use shared_model::strategy::StrategyConfig;

/// Option keys a relay step adds to its strategy's options when stored.
const PARTY: &str = "party";
const STEP: &str = "step";
const STEPS: &str = "steps";
const PARTIES: &str = "parties";

/// One step of a Transfer Learning or Series Network relay: the one party it invites.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayStep {
    /// The party that trains in this step.
    pub party: PartyId,
    /// The step's index across the relay (and across later relays of the task).
    pub step: usize,
    /// Steps in the relay this step belongs to (absent in rows stored before it was recorded).
    pub steps: Option<usize>,
    /// Parties whose data the relay combines (absent in rows stored before it was recorded).
    pub parties: Option<usize>,
}

/// What a round is to do.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPlan {
    /// The strategy and its options.
    pub strategy: StrategyConfig,
    /// The relay step this round is, for a relay strategy.
    pub relay: Option<RelayStep>,
    /// Accepted updates needed to merge.
    pub min_parties: u32,
    /// How long the round runs once opened, in ms.
    pub deadline_ms: i64,
}

/// A stored plan that does not read back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("stored round plan: {0}")]
pub struct PlanError(pub String);

impl RoundPlan {
    /// The strategy's name (as stored and shown).
    pub fn strategy_name(&self) -> &str {
        &self.strategy.name
    }

    /// The options as stored: the strategy's options spelled out, plus a relay step's keys.
    pub fn options(&self) -> BTreeMap<String, String> {
        let mut o = self.strategy.options();
        if let Some(r) = &self.relay {
            o.insert(PARTY.into(), r.party.to_string());
            o.insert(STEP.into(), r.step.to_string());
            if let Some(s) = r.steps {
                o.insert(STEPS.into(), s.to_string());
            }
            if let Some(p) = r.parties {
                o.insert(PARTIES.into(), p.to_string());
            }
        }
        o
    }

    /// The stored options object, as JSON.
    pub fn options_json(&self) -> String {
        serde_json::to_string(&self.options()).expect("a string map serialises")
    }

    /// Reads a stored plan back.
    pub fn from_stored(
        strategy: &str,
        options_json: &str,
        min_parties: u32,
        deadline_ms: i64,
    ) -> Result<Self, PlanError> {
        let mut o: BTreeMap<String, String> =
            serde_json::from_str(options_json).map_err(|e| PlanError(format!("options: {e}")))?;
        let number =
            |o: &mut BTreeMap<String, String>, k: &str| -> Result<Option<usize>, PlanError> {
                o.remove(k)
                    .map(|v| {
                        v.parse()
                            .map_err(|_| PlanError(format!("relay {k} {v:?} is not a number")))
                    })
                    .transpose()
            };
        let party = o.remove(PARTY);
        let step = number(&mut o, STEP)?;
        let steps = number(&mut o, STEPS)?;
        let parties = number(&mut o, PARTIES)?;
        let relay = match (party, step) {
            (Some(p), Some(step)) => Some(RelayStep {
                party: PartyId::new(p).map_err(|e| PlanError(e.to_string()))?,
                step,
                steps,
                parties,
            }),
            (None, None) => None,
            _ => return Err(PlanError("a relay step needs both party and step".into())),
        };
        let strategy = StrategyConfig::parse(strategy, &o).map_err(|e| PlanError(e.to_string()))?;
        if strategy.is_relay() != relay.is_some() {
            return Err(PlanError(format!(
                "strategy {} {} a relay step",
                strategy.name,
                if relay.is_some() { "has" } else { "lacks" }
            )));
        }
        Ok(Self {
            strategy,
            relay,
            min_parties,
            deadline_ms,
        })
    }

    /// The relay step index (0 for a broadcast round).
    pub fn step(&self) -> usize {
        self.relay.as_ref().map_or(0, |r| r.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_read_back_as_stored_and_broken_ones_are_named() {
        let cfg = StrategyConfig::parse("transfer", &BTreeMap::new()).unwrap();
        let plan = RoundPlan {
            strategy: cfg,
            relay: Some(RelayStep {
                party: PartyId::new("plant-a").unwrap(),
                step: 2,
                steps: Some(3),
                parties: Some(3),
            }),
            min_parties: 1,
            deadline_ms: 60_000,
        };
        let back = RoundPlan::from_stored("transfer", &plan.options_json(), 1, 60_000).unwrap();
        assert_eq!(back, plan);
        // The stored spelling is the one earlier builds wrote (options and relay keys, sorted).
        assert_eq!(
            plan.options_json(),
            r#"{"freeze":"0","lr_scale":"1","order":"fixed","parties":"3","party":"plant-a","passes":"1","step":"2","steps":"3"}"#
        );
        let e = RoundPlan::from_stored("fedavg", r#"{"party":"a","step":"1"}"#, 1, 1).unwrap_err();
        assert!(e.to_string().contains("fedavg has a relay step"), "{e}");
        let e = RoundPlan::from_stored("transfer", r#"{"party":"a"}"#, 1, 1).unwrap_err();
        assert!(e.to_string().contains("both party and step"), "{e}");
        assert!(RoundPlan::from_stored("fedavg", "not json", 1, 1).is_err());
    }
}
