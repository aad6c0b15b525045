//! The [`Pruner`] seam and the pruners: [`NopPruner`], [`MedianPruner`] and
//! [`SuccessiveHalvingPruner`] (asynchronous successive halving), chosen in
//! configuration through [`PrunerConfig`].
//!
//! Pruners read immutable [`FrozenTrial`]s, like samplers, and keep no state of their
//! own: every decision is recomputed from the intermediate values the trials reported.
//! A step is a federated round.
//!
//! # Multi-objective studies
//! Optuna's pruners refuse studies with several objectives; these do not. When there is
//! more than one direction, the values reported at a step (as losses) are ranked by
//! non-dominated level and, within a level, by crowding distance (larger is better;
//! points at a level's extremes count as infinitely far), the order NSGA-II selects by
//! (see [`crate::pareto::crowded_ranks`]). The trial's rank is taken among the
//! other trials' points plus its own, and the single-objective rule is applied to that
//! rank: the median pruner stops a trial when more than half of the other trials rank
//! strictly above it; successive halving lets it continue when fewer than
//! `max(1, ⌊n/η⌋)` trials rank strictly above it. A Pareto-optimal trial therefore
//! survives unless it sits in a crowded part of a front other trials share.

use std::cmp::Ordering;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::pareto::{crowded_cmp, crowded_ranks};
use super::trial::{FrozenTrial, TrialState};
use crate::objective::Direction;

/// Decides whether a running trial should stop early.
pub trait Pruner {
    /// Whether to stop `trial` (state [`TrialState::Running`]) now that it has reported
    /// intermediate values at its latest step.
    ///
    /// `history` holds all the study's trials and may include `trial` itself (pruners
    /// skip it by number); `directions` holds one direction per objective, and every
    /// intermediate value vector holds one value per direction.
    fn prune(&self, trial: &FrozenTrial, history: &[FrozenTrial], directions: &[Direction]) -> bool;
}

/// Never prunes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NopPruner;

impl Pruner for NopPruner {
    fn prune(&self, _: &FrozenTrial, _: &[FrozenTrial], _: &[Direction]) -> bool {
        false
    }
}

/// Optuna's `MedianPruner`: stops a trial whose best intermediate value so far is worse
/// than the median of the complete trials' intermediate values at the same step.
///
/// Decides nothing until `n_startup_trials` trials have completed, before step
/// `n_warmup_steps`, between decision steps (`n_warmup_steps + k · interval_steps`; a
/// trial that skips a decision step is judged at its first report after it), or while
/// fewer than `n_min_trials` complete trials reported at the step. A trial with no usable
/// value (NaN, or the wrong number of values) is stopped. NaN values of other trials are
/// ignored. With several objectives see the [module documentation](self): the trial's
/// reported vectors are tried in turn and it continues if any of them ranks in the
/// better half.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MedianPruner {
    /// Complete trials needed before any trial is pruned.
    pub n_startup_trials: usize,
    /// Steps before which a trial is never pruned.
    pub n_warmup_steps: u64,
    /// Steps between decisions, counted from `n_warmup_steps` (at least 1).
    pub interval_steps: u64,
    /// Complete trials that must have reported at a step before it is judged.
    pub n_min_trials: usize,
}

impl Default for MedianPruner {
    fn default() -> Self {
        Self {
            n_startup_trials: 5,
            n_warmup_steps: 0,
            interval_steps: 1,
            n_min_trials: 1,
        }
    }
}

impl MedianPruner {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`PrunerError::Invalid`] when `interval_steps` is 0.
    pub fn validate(&self) -> Result<(), PrunerError> {
        if self.interval_steps == 0 {
            return Err(PrunerError::Invalid {
                pruner: "median",
                message: "interval_steps must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// The steps up to `max_step` (inclusive) at which a trial reporting every step is
    /// judged.
    #[must_use]
    pub fn decision_steps(&self, max_step: u64) -> Vec<u64> {
        (self.n_warmup_steps..=max_step)
            .step_by(usize::try_from(self.interval_steps.max(1)).unwrap_or(usize::MAX))
            .collect()
    }

    /// Whether `step` is the trial's first report at or after a decision step (Optuna's
    /// `_is_first_in_interval_step`).
    fn is_decision_step(&self, trial: &FrozenTrial, step: u64) -> bool {
        let interval = self.interval_steps.max(1);
        let nearest = (step - self.n_warmup_steps) / interval * interval + self.n_warmup_steps;
        trial
            .intermediate
            .range(..step)
            .next_back()
            .is_none_or(|(&previous, _)| previous < nearest)
    }
}

impl Pruner for MedianPruner {
    fn prune(&self, trial: &FrozenTrial, history: &[FrozenTrial], directions: &[Direction]) -> bool {
        let directions = effective(directions);
        let Some((step, _)) = trial.last_intermediate() else {
            return false;
        };
        let complete: Vec<&FrozenTrial> = history
            .iter()
            .filter(|t| t.number != trial.number && t.state == TrialState::Complete)
            .collect();
        if complete.is_empty() || complete.len() < self.n_startup_trials {
            return false;
        }
        if step < self.n_warmup_steps || !self.is_decision_step(trial, step) {
            return false;
        }
        let own: Vec<Vec<f64>> = trial
            .intermediate
            .values()
            .filter_map(|v| step_losses(v, directions))
            .collect();
        if own.is_empty() {
            return true;
        }
        let others: Vec<Vec<f64>> = complete
            .iter()
            .filter_map(|t| step_losses(t.intermediate.get(&step)?, directions))
            .collect();
        if others.is_empty() || others.len() < self.n_min_trials {
            return false;
        }
        if directions.len() == 1 {
            let best = own.iter().map(|v| v[0]).fold(f64::INFINITY, f64::min);
            best > median(others.iter().map(|v| v[0]).collect())
        } else {
            own.iter()
                .all(|candidate| 2 * better_than(candidate, &others) > others.len())
        }
    }
}

/// Asynchronous successive halving (ASHA, Optuna's `SuccessiveHalvingPruner`) with
/// federated rounds as the budget.
///
/// Rung `k` sits at step `min_resource · η^(min_early_stopping_rate + k)`, with
/// `η = reduction_factor`. When a trial first reports at or after a rung's step, it is
/// compared with every other trial (any state) that reported at or after that step,
/// each by its value at its first report there (the value at the rung step for a trial
/// reporting every round). It continues when fewer than `max(1, ⌊n/η⌋)` of the `n`
/// trials at the rung (itself included) are strictly better — the top `1/η`, ties in its
/// favour — and is stopped otherwise. So the first trial at a rung always continues, and
/// while fewer than `η` trials share a rung only the best of them does, as in Optuna.
/// Between rungs nothing is decided. A NaN value at a rung stops the trial. For several
/// objectives see the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SuccessiveHalvingPruner {
    /// Rounds at the first rung (at least 1).
    pub min_resource: u64,
    /// η: each rung keeps the best `1/η` of its trials (at least 2).
    pub reduction_factor: u64,
    /// Shifts the first rung to `min_resource · η^min_early_stopping_rate`.
    pub min_early_stopping_rate: u32,
}

impl Default for SuccessiveHalvingPruner {
    fn default() -> Self {
        Self {
            min_resource: 1,
            reduction_factor: 3,
            min_early_stopping_rate: 0,
        }
    }
}

impl SuccessiveHalvingPruner {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`PrunerError::Invalid`] when `min_resource` is 0, `reduction_factor` is below 2
    /// or the first rung lies beyond `u64::MAX` rounds.
    pub fn validate(&self) -> Result<(), PrunerError> {
        let invalid = |message: &str| {
            Err(PrunerError::Invalid {
                pruner: "asha",
                message: message.into(),
            })
        };
        if self.min_resource == 0 {
            return invalid("min_resource must be at least 1");
        }
        if self.reduction_factor < 2 {
            return invalid("reduction_factor must be at least 2");
        }
        if self.rung_step(0).is_none() {
            return invalid("the first rung, min_resource * reduction_factor^min_early_stopping_rate, overflows");
        }
        Ok(())
    }

    /// The step of rung `rung`, `None` past `u64::MAX`.
    #[must_use]
    pub fn rung_step(&self, rung: u32) -> Option<u64> {
        let eta = self.reduction_factor.max(2);
        let exponent = self.min_early_stopping_rate.checked_add(rung)?;
        eta.checked_pow(exponent)?.checked_mul(self.min_resource.max(1))
    }

    /// The rung steps up to `max_step` (inclusive), in order: where decisions happen.
    #[must_use]
    pub fn rung_steps(&self, max_step: u64) -> Vec<u64> {
        (0..)
            .map_while(|rung| self.rung_step(rung))
            .take_while(|&step| step <= max_step)
            .collect()
    }
}

/// A trial's value at a rung: its first report at or after the rung's step.
fn rung_value(trial: &FrozenTrial, rung_step: u64) -> Option<&[f64]> {
    trial.intermediate.range(rung_step..).next().map(|(_, v)| v.as_slice())
}

impl Pruner for SuccessiveHalvingPruner {
    fn prune(&self, trial: &FrozenTrial, history: &[FrozenTrial], directions: &[Direction]) -> bool {
        let directions = effective(directions);
        let Some((step, _)) = trial.last_intermediate() else {
            return false;
        };
        let previous = trial.intermediate.range(..step).next_back().map(|(&s, _)| s);
        let eta = self.reduction_factor.max(2);
        for rung in 0.. {
            let Some(rung_step) = self.rung_step(rung) else {
                return false;
            };
            if rung_step > step {
                return false;
            }
            if previous.is_some_and(|p| p >= rung_step) {
                // Judged at this rung by an earlier report.
                continue;
            }
            let Some(own) = rung_value(trial, rung_step).and_then(|v| step_losses(v, directions)) else {
                return true;
            };
            let others: Vec<Vec<f64>> = history
                .iter()
                .filter(|t| t.number != trial.number)
                .filter_map(|t| step_losses(rung_value(t, rung_step)?, directions))
                .collect();
            let n = others.len() as u64 + 1;
            let kept = (n / eta).max(1);
            if better_than(&own, &others) as u64 >= kept {
                return true;
            }
        }
        false
    }
}

/// The directions to judge by: one `Minimize` when none are given.
fn effective(directions: &[Direction]) -> &[Direction] {
    if directions.is_empty() {
        &[Direction::Minimize]
    } else {
        directions
    }
}

/// Reported values as losses; `None` for the wrong count or a NaN.
fn step_losses(values: &[f64], directions: &[Direction]) -> Option<Vec<f64>> {
    (values.len() == directions.len() && !values.iter().any(|v| v.is_nan()))
        .then(|| values.iter().zip(directions).map(|(v, d)| d.loss(*v)).collect())
}

/// How many of `others` rank strictly above `candidate`: by loss for one objective, by
/// non-dominated level then crowding distance among `others` and `candidate` for more.
fn better_than(candidate: &[f64], others: &[Vec<f64>]) -> usize {
    if candidate.len() == 1 {
        return others.iter().filter(|o| o[0] < candidate[0]).count();
    }
    let mut points = others.to_vec();
    points.push(candidate.to_vec());
    let ranks = crowded_ranks(&points);
    let own = ranks[others.len()];
    ranks[..others.len()]
        .iter()
        .filter(|&&r| crowded_cmp(r, own) == Ordering::Less)
        .count()
}

/// The median of non-empty `xs`, averaging the middle two (NumPy's).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// What is wrong with a pruner's name or settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrunerError {
    /// The name is not one of [`PrunerConfig::NAMES`].
    #[error("unknown pruner `{0}`: valid options are none, median, asha")]
    UnknownName(String),
    /// A setting is out of range.
    #[error("invalid {pruner} pruner: {message}")]
    Invalid {
        /// The pruner's name.
        pruner: &'static str,
        /// What is wrong, in words.
        message: String,
    },
}

/// Which pruner a study uses, with its settings; in TOML, e.g.
/// `pruner = { name = "asha", min_resource = 2 }`. Omitted settings take their defaults
/// and unknown ones are rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum PrunerConfig {
    /// No pruning ([`NopPruner`]).
    #[default]
    None,
    /// [`MedianPruner`].
    Median(MedianPruner),
    /// Asynchronous successive halving ([`SuccessiveHalvingPruner`]).
    Asha(SuccessiveHalvingPruner),
}

impl PrunerConfig {
    /// The short names [`FromStr`] accepts.
    pub const NAMES: [&'static str; 3] = ["none", "median", "asha"];

    /// The short name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Median(_) => "median",
            Self::Asha(_) => "asha",
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`PrunerError::Invalid`] from the chosen pruner's `validate`.
    pub fn validate(&self) -> Result<(), PrunerError> {
        match self {
            Self::None => Ok(()),
            Self::Median(p) => p.validate(),
            Self::Asha(p) => p.validate(),
        }
    }

    /// The configured pruner. Out-of-range settings that [`Self::validate`] rejects are
    /// clamped to the nearest valid value rather than failing here.
    #[must_use]
    pub fn build(&self) -> Box<dyn Pruner + Send> {
        match self {
            Self::None => Box::new(NopPruner),
            Self::Median(p) => Box::new(p.clone()),
            Self::Asha(p) => Box::new(p.clone()),
        }
    }

    /// The steps up to `max_step` (inclusive) at which the pruner may stop a trial that
    /// reports every round: ASHA's rung steps, the median pruner's decision steps, none
    /// without pruning. A driver needs to report only there.
    #[must_use]
    pub fn decision_steps(&self, max_step: u64) -> Vec<u64> {
        match self {
            Self::None => Vec::new(),
            Self::Median(p) => p.decision_steps(max_step),
            Self::Asha(p) => p.rung_steps(max_step),
        }
    }
}

impl FromStr for PrunerConfig {
    type Err = PrunerError;

    /// A pruner with default settings from its short name (`none`, `median`, `asha`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "median" => Ok(Self::Median(MedianPruner::default())),
            "asha" => Ok(Self::Asha(SuccessiveHalvingPruner::default())),
            _ => Err(PrunerError::UnknownName(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &[Direction] = &[Direction::Minimize];
    const MAX: &[Direction] = &[Direction::Maximize];

    /// A trial that reported `curve[s]` at step `s`, in `state`.
    fn trial(number: u64, state: TrialState, curve: &[f64]) -> FrozenTrial {
        trial_mo(number, state, &curve.iter().map(|&v| vec![v]).collect::<Vec<_>>())
    }

    fn trial_mo(number: u64, state: TrialState, curve: &[Vec<f64>]) -> FrozenTrial {
        let final_values = curve.last().cloned();
        FrozenTrial {
            number,
            params: Default::default(),
            values: if state == TrialState::Complete {
                final_values
            } else {
                None
            },
            state,
            feasible: true,
            intermediate: curve.iter().cloned().enumerate().map(|(s, v)| (s as u64, v)).collect(),
            fail_reason: None,
        }
    }

    /// A decaying loss curve over `steps` steps, shifted by `offset`.
    fn curve(offset: f64, steps: usize) -> Vec<f64> {
        (0..steps).map(|s| 1.0 / (s as f64 + 1.0) + offset).collect()
    }

    /// Five complete trials with offsets 0, 0.1, …, 0.4 over 10 steps.
    fn finished() -> Vec<FrozenTrial> {
        (0..5)
            .map(|i| trial(i, TrialState::Complete, &curve(0.1 * i as f64, 10)))
            .collect()
    }

    #[test]
    fn median_prunes_the_worse_curve_and_keeps_a_good_one() {
        let history = finished();
        let median = MedianPruner::default();
        let bad = trial(5, TrialState::Running, &curve(1.0, 3));
        let good = trial(6, TrialState::Running, &curve(0.05, 3));
        assert!(median.prune(&bad, &history, MIN));
        assert!(!median.prune(&good, &history, MIN));
        // The trial itself in the history changes nothing.
        let mut with_self = history.clone();
        with_self.push(bad.clone());
        assert!(median.prune(&bad, &with_self, MIN));
        // At the median exactly: not worse, kept.
        assert!(!median.prune(&trial(7, TrialState::Running, &curve(0.2, 3)), &history, MIN));
        // Judged by its best value so far, not its latest.
        let mut recovered = curve(0.0, 3);
        recovered[2] = 5.0;
        assert!(!median.prune(&trial(8, TrialState::Running, &recovered), &history, MIN));
        // No usable value: stopped.
        assert!(median.prune(&trial(9, TrialState::Running, &[f64::NAN]), &history, MIN));
        assert!(!NopPruner.prune(&bad, &history, MIN));
    }

    #[test]
    fn median_respects_startup_warmup_interval_and_min_trials() {
        let history = finished();
        let bad = trial(5, TrialState::Running, &curve(1.0, 4));
        // Four complete trials (one is still running): below the start-up count.
        let mut early = history.clone();
        early[4].state = TrialState::Running;
        assert!(!MedianPruner::default().prune(&bad, &early, MIN));
        let warm = MedianPruner {
            n_warmup_steps: 4,
            ..MedianPruner::default()
        };
        assert!(!warm.prune(&bad, &history, MIN), "step 3 is inside the warm-up");
        assert!(warm.prune(&trial(5, TrialState::Running, &curve(1.0, 5)), &history, MIN));
        let sparse = MedianPruner {
            interval_steps: 2,
            ..MedianPruner::default()
        };
        assert!(!sparse.prune(&bad, &history, MIN), "step 3 is between decision steps");
        assert!(sparse.prune(&trial(5, TrialState::Running, &curve(1.0, 5)), &history, MIN));
        // A trial that skipped step 2 is judged at step 3.
        let mut skipped = bad.clone();
        skipped.intermediate.remove(&2);
        assert!(sparse.prune(&skipped, &history, MIN));
        assert_eq!(sparse.decision_steps(6), vec![0, 2, 4, 6]);
        let picky = MedianPruner {
            n_min_trials: 6,
            ..MedianPruner::default()
        };
        assert!(!picky.prune(&bad, &history, MIN));
    }

    #[test]
    fn median_handles_maximize() {
        let history: Vec<FrozenTrial> = (0..5)
            .map(|i| trial(i, TrialState::Complete, &[0.5, 0.6 + 0.02 * i as f64, 0.7]))
            .collect();
        let median = MedianPruner::default();
        assert!(median.prune(&trial(5, TrialState::Running, &[0.3, 0.4]), &history, MAX));
        assert!(!median.prune(&trial(6, TrialState::Running, &[0.3, 0.9]), &history, MAX));
        // The same curves as losses would be judged the other way round.
        assert!(!median.prune(&trial(5, TrialState::Running, &[0.3, 0.4]), &history, MIN));
    }

    fn asha() -> SuccessiveHalvingPruner {
        SuccessiveHalvingPruner {
            min_resource: 1,
            reduction_factor: 3,
            min_early_stopping_rate: 0,
        }
    }

    #[test]
    fn asha_rungs() {
        assert_eq!(asha().rung_steps(30), vec![1, 3, 9, 27]);
        let shifted = SuccessiveHalvingPruner {
            min_resource: 2,
            reduction_factor: 2,
            min_early_stopping_rate: 1,
        };
        assert_eq!(shifted.rung_steps(20), vec![4, 8, 16]);
        assert_eq!(shifted.rung_steps(3), Vec::<u64>::new());
        assert_eq!(asha().rung_steps(u64::MAX).len(), 41, "stops before overflowing");
    }

    #[test]
    fn asha_promotes_the_top_third_at_a_rung() {
        let pruner = asha();
        // Eight trials reached rung 1 (step 1) with values 1..=8, in various states.
        let states = [
            TrialState::Complete,
            TrialState::Pruned,
            TrialState::Running,
            TrialState::Failed,
        ];
        let history: Vec<FrozenTrial> = (0..8)
            .map(|i| trial(i, states[i as usize % 4], &[9.0, 1.0 + i as f64]))
            .collect();
        // A ninth makes n = 9: the best three continue. 2.5 is third (1, 2 better).
        assert!(!pruner.prune(&trial(8, TrialState::Running, &[9.0, 2.5]), &history, MIN));
        assert!(
            !pruner.prune(&trial(8, TrialState::Running, &[9.0, 3.0]), &history, MIN),
            "ties count for it"
        );
        assert!(pruner.prune(&trial(8, TrialState::Running, &[9.0, 3.5]), &history, MIN));
        assert!(pruner.prune(&trial(8, TrialState::Running, &[0.0, 100.0]), &history, MIN));
        // Maximising, the order flips.
        assert!(!pruner.prune(&trial(8, TrialState::Running, &[9.0, 7.5]), &history, MAX));
        assert!(!pruner.prune(&trial(8, TrialState::Running, &[9.0, 6.5]), &history, MAX));
        assert!(pruner.prune(&trial(8, TrialState::Running, &[9.0, 5.5]), &history, MAX));
    }

    #[test]
    fn asha_decides_only_at_rungs_and_keeps_the_first() {
        let pruner = asha();
        let alone = trial(0, TrialState::Running, &[5.0, 1000.0]);
        assert!(
            !pruner.prune(&alone, std::slice::from_ref(&alone), MIN),
            "alone at a rung continues"
        );
        let history: Vec<FrozenTrial> = (0..8)
            .map(|i| trial(i, TrialState::Complete, &[1.0, 1.0, 1.0, 1.0 + i as f64]))
            .collect();
        // Best at rung 1 (step 1), then terrible at step 2: between rungs, nothing happens.
        let mut t = trial(8, TrialState::Running, &[1.0, 0.5, 50.0]);
        assert!(!pruner.prune(&t, &history, MIN));
        // At rung 3 it is compared on its value there.
        t.intermediate.insert(3, vec![50.0]);
        assert!(pruner.prune(&t, &history, MIN));
        t.intermediate.insert(3, vec![1.5]);
        assert!(!pruner.prune(&t, &history, MIN));
        // Skipping the rung step, its first report after it counts.
        let mut skipper = trial(8, TrialState::Running, &[1.0, 0.5, 1.5]);
        skipper.intermediate.insert(5, vec![50.0]);
        assert!(pruner.prune(&skipper, &history, MIN));
        // Already past rung 3 and not yet at 9: step 6 decides nothing.
        skipper.intermediate.insert(6, vec![80.0]);
        assert!(!pruner.prune(&skipper, &history, MIN));
        // Two at a rung with η = 3: only the better continues, as in Optuna.
        let first = trial(0, TrialState::Running, &[0.0, 2.0]);
        assert!(pruner.prune(
            &trial(1, TrialState::Running, &[0.0, 3.0]),
            std::slice::from_ref(&first),
            MIN
        ));
        assert!(!pruner.prune(&trial(1, TrialState::Running, &[0.0, 1.0]), &[first], MIN));
    }

    #[test]
    fn multi_objective_prunes_dominated_and_keeps_pareto_optimal() {
        let two = &[Direction::Minimize, Direction::Maximize];
        // Complete trials whose step-1 values form a front (loss, accuracy) plus two
        // dominated ones.
        let points = [
            [1.0, 0.5],
            [2.0, 0.6],
            [3.0, 0.7],
            [4.0, 0.8],
            [5.0, 0.9],
            [6.0, 0.4],
            [7.0, 0.3],
        ];
        let history: Vec<FrozenTrial> = points
            .iter()
            .enumerate()
            .map(|(i, p)| trial_mo(i as u64, TrialState::Complete, &[vec![9.0, 0.0], p.to_vec()]))
            .collect();
        let dominated = trial_mo(7, TrialState::Running, &[vec![9.0, 0.0], vec![6.5, 0.35]]);
        let optimal = trial_mo(8, TrialState::Running, &[vec![9.0, 0.0], vec![0.5, 0.95]]);
        let on_front = trial_mo(9, TrialState::Running, &[vec![9.0, 0.0], vec![0.5, 0.45]]);
        let median = MedianPruner::default();
        assert!(median.prune(&dominated, &history, two));
        assert!(!median.prune(&optimal, &history, two));
        assert!(!median.prune(&on_front, &history, two), "an extreme of the front");
        // Seven others plus itself: n = 8, the best two continue at rung 1.
        let pruner = asha();
        assert!(pruner.prune(&dominated, &history, two));
        assert!(!pruner.prune(&optimal, &history, two));
        // Maximising both, low values on both are dominated and high ones dominate.
        let both_max = &[Direction::Maximize, Direction::Maximize];
        let dominated_now = trial_mo(7, TrialState::Running, &[vec![9.0, 0.0], vec![0.1, 0.1]]);
        assert!(pruner.prune(&dominated_now, &history, both_max));
        assert!(!pruner.prune(
            &trial_mo(7, TrialState::Running, &[vec![0.0, 0.0], vec![8.0, 1.0]]),
            &history,
            both_max
        ));
    }

    #[test]
    fn config_names_serde_and_steps() {
        for name in PrunerConfig::NAMES {
            let config: PrunerConfig = name.parse().unwrap();
            assert_eq!(config.name(), name);
            assert_eq!(config.validate(), Ok(()));
        }
        assert_eq!(
            "ASHA".parse::<PrunerConfig>(),
            Ok(PrunerConfig::Asha(SuccessiveHalvingPruner::default()))
        );
        let err = "hyperband".parse::<PrunerConfig>().unwrap_err().to_string();
        assert!(err.contains("hyperband") && err.contains("none, median, asha"), "{err}");

        let config: PrunerConfig = toml::from_str("name = \"asha\"\nmin_resource = 2").unwrap();
        assert_eq!(
            config,
            PrunerConfig::Asha(SuccessiveHalvingPruner {
                min_resource: 2,
                ..SuccessiveHalvingPruner::default()
            })
        );
        assert_eq!(config.decision_steps(20), vec![2, 6, 18]);
        let config: PrunerConfig = serde_json::from_str(r#"{"name": "median", "n_warmup_steps": 3}"#).unwrap();
        assert_eq!(config.decision_steps(5), vec![3, 4, 5]);
        assert_eq!(
            serde_json::from_str::<PrunerConfig>(r#"{"name": "none"}"#).unwrap(),
            PrunerConfig::None
        );
        assert!(PrunerConfig::None.decision_steps(10).is_empty());
        let round_trip = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<PrunerConfig>(&round_trip).unwrap(), config);
        let typo = serde_json::from_str::<PrunerConfig>(r#"{"name": "median", "n_startup": 3}"#);
        assert!(typo.unwrap_err().to_string().contains("n_startup"));

        let bad = PrunerConfig::Asha(SuccessiveHalvingPruner {
            reduction_factor: 1,
            ..SuccessiveHalvingPruner::default()
        });
        assert!(bad.validate().unwrap_err().to_string().contains("reduction_factor"));
        let bad = PrunerConfig::Median(MedianPruner {
            interval_steps: 0,
            ..MedianPruner::default()
        });
        assert!(bad.validate().is_err());
        // Built anyway, it clamps rather than dividing by zero.
        let history = finished();
        assert!(
            bad.build()
                .prune(&trial(5, TrialState::Running, &curve(1.0, 3)), &history, MIN)
        );
    }
}
