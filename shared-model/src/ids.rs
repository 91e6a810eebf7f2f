//! Newtypes for the identifiers both sides exchange: digests, spec ids, party and task names,
//! round and step numbers, model versions. They keep a round number from being passed where a
//! step is expected and give every id one textual form (lowercase hex for digests).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256 as Sha256Hasher};

/// Errors from parsing an identifier out of text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// A digest was not 64 hexadecimal characters.
    #[error("expected a sha256 digest as 64 hex characters, found {found:?}")]
    BadDigest {
        /// What was given.
        found: String,
    },
    /// A name did not follow the naming rule.
    #[error(
        "invalid {what} {found:?}: expected 1 to 64 characters of a-z, A-Z, 0-9, '-', '_' or '.', starting with a letter or digit"
    )]
    BadName {
        /// Which kind of name.
        what: &'static str,
        /// What was given.
        found: String,
    },
}

/// A sha256 digest. Displays and parses as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256Hasher::digest(bytes).into())
    }

    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex characters, for log lines and tables.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl FromStr for Sha256 {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdError::BadDigest {
            found: s.to_string(),
        };
        if s.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }
}

impl TryFrom<String> for Sha256 {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Sha256> for String {
    fn from(d: Sha256) -> Self {
        d.to_string()
    }
}

/// The identity of a [`crate::spec::ModelSpec`]: the sha256 of its canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpecId(pub Sha256);

impl fmt::Display for SpecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for SpecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpecId({})", self.0)
    }
}

impl FromStr for SpecId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                if valid_name(&s) {
                    Ok(Self(s))
                } else {
                    Err(IdError::BadName { what: $what, found: s })
                }
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> Self {
                n.0
            }
        }
    };
}

name_type!(
    /// A party's (plant's) name, unique within a coordinator.
    PartyId,
    "party name"
);
name_type!(
    /// An operator's name, unique within a coordinator among operators and parties alike (a
    /// call names its caller, which must be one or the other).
    OperatorId,
    "operator name"
);
name_type!(
    /// A task's name, unique within a coordinator.
    TaskId,
    "task name"
);

macro_rules! number_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

number_type!(
    /// A federation round of a task, counted from 1.
    RoundNo
);
number_type!(
    /// A step within a round: 0 for broadcast-and-gather rounds, the position in the visiting
    /// order for relay rounds.
    StepNo
);
number_type!(
    /// A published model version of a task; only ever goes forward.
    ModelVersion
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_text() {
        let d = Sha256::of(b"abc");
        assert_eq!(
            d.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string().parse::<Sha256>().unwrap(), d);
        assert_eq!(d.short(), "ba7816bf8f01");
    }

    #[test]
    fn bad_digest_text_is_rejected() {
        assert!(matches!(
            "abc".parse::<Sha256>(),
            Err(IdError::BadDigest { .. })
        ));
        assert!("zz".repeat(32).parse::<Sha256>().is_err());
    }

    #[test]
    fn names_follow_the_rule() {
        assert!(PartyId::new("plant-a").is_ok());
        assert!(PartyId::new("plant_b.2").is_ok());
        for bad in ["", "-a", "a b", "ä", &"x".repeat(65)] {
            let err = PartyId::new(bad).unwrap_err();
            assert!(err.to_string().contains("invalid party name"), "{err}");
        }
    }
}
