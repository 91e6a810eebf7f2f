//! Assignment ids: the one textual form of "which work" that travels to a party and back
//! (`task/stats/0`, `task/train/ROUND`, `task/evaluate/VERSION`). Built and parsed only here.

use std::fmt;
use std::str::FromStr;

use shared_model::ids::{ModelVersion, RoundNo, TaskId};

/// What an assignment asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AssignmentKind {
    /// Report feature sums of the training rows (the statistics step).
    Stats,
    /// Train from the round's base model and upload.
    Train(RoundNo),
    /// Evaluate a published version on the holdout.
    Evaluate(ModelVersion),
}

/// One piece of work of one task.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssignmentId {
    /// The task.
    pub task: TaskId,
    /// The work.
    pub kind: AssignmentKind,
}

impl AssignmentId {
    /// The statistics step of `task`.
    pub fn stats(task: &TaskId) -> Self {
        Self {
            task: task.clone(),
            kind: AssignmentKind::Stats,
        }
    }

    /// Training in round `round` of `task`.
    pub fn train(task: &TaskId, round: RoundNo) -> Self {
        Self {
            task: task.clone(),
            kind: AssignmentKind::Train(round),
        }
    }

    /// Evaluating version `version` of `task`.
    pub fn evaluate(task: &TaskId, version: ModelVersion) -> Self {
        Self {
            task: task.clone(),
            kind: AssignmentKind::Evaluate(version),
        }
    }
}

impl fmt::Display for AssignmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            AssignmentKind::Stats => write!(f, "{}/stats/0", self.task),
            AssignmentKind::Train(r) => write!(f, "{}/train/{}", self.task, r.0),
            AssignmentKind::Evaluate(v) => write!(f, "{}/evaluate/{}", self.task, v.0),
        }
    }
}

/// An assignment id that does not parse, naming what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentIdError {
    /// Not `task/kind/number` with a valid task name and a number.
    #[error(
        "malformed assignment id {0:?}: expected TASK/stats/0, TASK/train/ROUND or TASK/evaluate/VERSION"
    )]
    Malformed(String),
    /// A kind this coordinator does not hand out.
    #[error("assignment {id} has unknown kind {kind:?}")]
    UnknownKind {
        /// The whole id.
        id: String,
        /// Its kind part.
        kind: String,
    },
}

impl FromStr for AssignmentId {
    type Err = AssignmentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || AssignmentIdError::Malformed(s.to_string());
        let mut it = s.splitn(3, '/');
        let (Some(task), Some(kind), Some(number)) = (it.next(), it.next(), it.next()) else {
            return Err(malformed());
        };
        let task = TaskId::new(task).map_err(|_| malformed())?;
        // Digits only, no leading zero: no sign, no spaces, so one id has one spelling.
        if number.is_empty()
            || !number.bytes().all(|b| b.is_ascii_digit())
            || (number.len() > 1 && number.starts_with('0'))
        {
            return Err(malformed());
        }
        let n: u64 = number.parse().map_err(|_| malformed())?;
        let kind = match kind {
            "stats" if n == 0 => AssignmentKind::Stats,
            "stats" => return Err(malformed()),
            "train" => AssignmentKind::Train(RoundNo(n)),
            "evaluate" => AssignmentKind::Evaluate(ModelVersion(n)),
            other => {
                return Err(AssignmentIdError::UnknownKind {
                    id: s.to_string(),
                    kind: other.to_string(),
                });
            }
        };
        Ok(Self { task, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_back_and_odd_spellings_are_refused() {
        let t = TaskId::new("wdbc").unwrap();
        for id in [
            AssignmentId::stats(&t),
            AssignmentId::train(&t, RoundNo(7)),
            AssignmentId::evaluate(&t, ModelVersion(3)),
        ] {
            assert_eq!(id.to_string().parse::<AssignmentId>().unwrap(), id);
        }
        assert_eq!(
            AssignmentId::train(&t, RoundNo(7)).to_string(),
            "wdbc/train/7"
        );
        for bad in [
            "",
            "wdbc",
            "wdbc/train",
            "wdbc/train/x",
            "wdbc/train/+1",
            "wdbc/train/ 1",
            "wdbc/stats/1",
            "a b/train/1",
            "wdbc/train/1/2",
            "wdbc/train/01",
            "wdbc/stats/00",
        ] {
            assert!(bad.parse::<AssignmentId>().is_err(), "{bad}");
        }
        assert_eq!(
            "wdbc/upload/1"
                .parse::<AssignmentId>()
                .unwrap_err()
                .to_string(),
            "assignment wdbc/upload/1 has unknown kind \"upload\""
        );
    }
}
