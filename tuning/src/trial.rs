//! Trials as samplers see them: immutable snapshots (Optuna's `FrozenTrial`).

use std::collections::BTreeMap;

use crate::space::ParamValue;
use serde::{Deserialize, Serialize};

use crate::objective::Direction;

/// Where a trial is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialState {
    /// Asked, not yet told.
    Running,
    /// Told with its objective values.
    Complete,
    /// Stopped early by a pruner; its intermediate values say how far it got.
    Pruned,
    /// Crashed or reported no usable value.
    Failed,
}

impl TrialState {
    /// The state as written in storage and shown to users: `running`, `complete`,
    /// `pruned` or `failed`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Complete => "complete",
            Self::Pruned => "pruned",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for TrialState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrozenTrial {
    /// Position in the study, from 0.
    pub number: u64,
    /// The parameters the trial ran with.
    pub params: BTreeMap<String, ParamValue>,
    /// Objective values, one per objective, once complete.
    pub values: Option<Vec<f64>>,
    /// Where the trial is in its life.
    pub state: TrialState,
    /// Whether the trial met every constraint; infeasible trials count as bad results.
    pub feasible: bool,
    /// Intermediate values reported at steps (federated rounds), for pruning: one value
    /// per objective, like `values`.
    pub intermediate: BTreeMap<u64, Vec<f64>>,
    /// Why a failed trial failed, in words for the operator (Optuna's `fail_reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_reason: Option<String>,
}

impl FrozenTrial {
    /// A complete, feasible trial with one objective value.
    #[must_use]
    pub fn complete(number: u64, params: BTreeMap<String, ParamValue>, value: f64) -> Self {
        Self {
            number,
            params,
            values: Some(vec![value]),
            state: TrialState::Complete,
            feasible: true,
            intermediate: BTreeMap::new(),
            fail_reason: None,
        }
    }

    /// The first objective value of a complete trial, when it is finite.
    #[must_use]
    pub fn value(&self) -> Option<f64> {
        if self.state != TrialState::Complete {
            return None;
        }
        self.values.as_ref()?.first().copied().filter(|v| v.is_finite())
    }

    /// The intermediate values at the last reported step, with that step.
    #[must_use]
    pub fn last_intermediate(&self) -> Option<(u64, &[f64])> {
        self.intermediate.iter().next_back().map(|(s, v)| (*s, v.as_slice()))
    }

    /// The objective values of a complete trial as losses (lower is better), one per
    /// direction; `None` unless complete with that many finite values.
    #[must_use]
    pub fn losses(&self, directions: &[Direction]) -> Option<Vec<f64>> {
        if self.state != TrialState::Complete {
            return None;
        }
        let values = self.values.as_ref()?;
        (values.len() == directions.len() && values.iter().all(|v| v.is_finite()))
            .then(|| values.iter().zip(directions).map(|(v, d)| d.loss(*v)).collect())
    }
}
