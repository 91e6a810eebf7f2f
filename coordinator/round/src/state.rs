//! The states of a round and of a party in it: closed enums with the data each state carries.
//! Their stored (and wire) names are written here and nowhere else.

use std::fmt;
use std::str::FromStr;

/// Where a round is. Phases only move forward: queued → training → published | failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoundPhase {
    /// Waiting for the round before it (or the statistics step) to finish.
    Queued,
    /// Parties invited; uploads accepted until the deadline.
    Training,
    /// Merged and published.
    Published,
    /// Closed without a merge, with the reason.
    Failed,
}

impl RoundPhase {
    /// Every phase, in the order a round moves through them.
    pub const ALL: [RoundPhase; 4] = [Self::Queued, Self::Training, Self::Published, Self::Failed];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Training => "training",
            Self::Published => "published",
            Self::Failed => "failed",
        }
    }

    /// Whether the round can no longer change.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Published | Self::Failed)
    }
}

impl fmt::Display for RoundPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoundPhase {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// A stored state name this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}")]
pub struct UnknownState(pub String);

/// The name of a party's state in a round, without its data (for views and filters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PartyStateName {
    /// Awaited.
    Invited,
    /// Its update is accepted.
    Accepted,
    /// It declined.
    Declined,
    /// Left out (revoked, or its update left out of the merge).
    Rejected,
    /// Still awaited when the round closed.
    Late,
}

impl PartyStateName {
    /// Every name.
    pub const ALL: [PartyStateName; 5] = [
        Self::Invited,
        Self::Accepted,
        Self::Declined,
        Self::Rejected,
        Self::Late,
    ];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invited => "invited",
            Self::Accepted => "accepted",
            Self::Declined => "declined",
            Self::Rejected => "rejected",
            Self::Late => "late",
        }
    }
}

impl fmt::Display for PartyStateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PartyStateName {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

impl serde::Serialize for PartyStateName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl serde::Serialize for RoundPhase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for RoundPhase {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<&str> for PartyStateName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A party's state in one round, with what that state carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartyState {
    /// Awaited: it may upload until the deadline. A rejected upload leaves it awaited, with the
    /// reason of its last rejection.
    Invited {
        /// Why its last upload was rejected, if one was.
        last_rejection: Option<String>,
    },
    /// Its update is accepted (and, once published, merged).
    Accepted,
    /// It declined the invitation (e.g. its site policy), with its reason.
    Declined {
        /// The party's reason, prefixed `declined: `.
        reason: String,
    },
    /// Left out: revoked while awaited, or its accepted update left out of the merge.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Still awaited when the round closed.
    Late {
        /// Why (`no answer by the deadline`).
        reason: String,
    },
}

/// The reason stored for a party still awaited when its round closes.
pub const LATE: &str = "no answer by the deadline";

impl PartyState {
    /// Newly invited.
    pub const INVITED: PartyState = PartyState::Invited {
        last_rejection: None,
    };

    /// The state's name.
    pub fn name(&self) -> PartyStateName {
        match self {
            Self::Invited { .. } => PartyStateName::Invited,
            Self::Accepted => PartyStateName::Accepted,
            Self::Declined { .. } => PartyStateName::Declined,
            Self::Rejected { .. } => PartyStateName::Rejected,
            Self::Late { .. } => PartyStateName::Late,
        }
    }

    /// The reason stored with the state (empty for a fresh invitation and an accepted update).
    pub fn reason(&self) -> &str {
        match self {
            Self::Invited { last_rejection } => last_rejection.as_deref().unwrap_or(""),
            Self::Accepted => "",
            Self::Declined { reason } | Self::Rejected { reason } | Self::Late { reason } => reason,
        }
    }

    /// Whether the party is still awaited.
    pub fn is_awaited(&self) -> bool {
        matches!(self, Self::Invited { .. })
    }

    /// The state from its stored name and reason.
    pub fn from_stored(name: &str, reason: &str) -> Result<Self, UnknownState> {
        let reason = reason.to_string();
        Ok(match name.parse::<PartyStateName>()? {
            PartyStateName::Invited => Self::Invited {
                last_rejection: (!reason.is_empty()).then_some(reason),
            },
            PartyStateName::Accepted => Self::Accepted,
            PartyStateName::Declined => Self::Declined { reason },
            PartyStateName::Rejected => Self::Rejected { reason },
            PartyStateName::Late => Self::Late { reason },
        })
    }

    /// What the operator reads about a party that is not merged in a failed round.
    pub fn why_not_merged(&self) -> String {
        match self {
            Self::Invited {
                last_rejection: None,
            } => LATE.to_string(),
            Self::Invited {
                last_rejection: Some(r),
            } => format!("no valid update by the deadline (last rejected: {r})"),
            other => other.reason().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_with_their_data() {
        let all = [
            PartyState::INVITED,
            PartyState::Invited {
                last_rejection: Some("signature".into()),
            },
            PartyState::Accepted,
            PartyState::Declined {
                reason: "declined: policy".into(),
            },
            PartyState::Rejected {
                reason: "revoked".into(),
            },
            PartyState::Late {
                reason: LATE.into(),
            },
        ];
        for s in all {
            let back = PartyState::from_stored(s.name().as_str(), s.reason()).unwrap();
            assert_eq!(back, s);
        }
        assert!(PartyState::from_stored("waiting", "").is_err());
        for p in RoundPhase::ALL {
            assert_eq!(p.as_str().parse::<RoundPhase>().unwrap(), p);
        }
        assert!("closed".parse::<RoundPhase>().is_err());
    }
}
