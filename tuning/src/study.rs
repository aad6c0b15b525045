//! A study: one search over a space, driven by ask and tell (Optuna's `Study`).
//!
//! The study owns the trials and hands samplers and pruners read-only snapshots. It is
//! sans-IO: the federated driver (`fedtune_aggregator::tune`), the JSON-lines `tune` command and
//! library users all drive it the same way:
//!
//! ```
//! use fedtune_tuning::{Direction, Objective, Outcome, RandomSampler, Study, NopPruner};
//! use fedtune_tuning::space::{ParamSpec, SearchSpace};
//!
//! let space = SearchSpace::new(vec![ParamSpec::parse("x", "uniform(-1, 1)").unwrap()]).unwrap();
//! let mut study = Study::new(
//!     space,
//!     vec![Objective::new("loss", Direction::Minimize)],
//!     Box::new(RandomSampler::new(7)),
//!     Box::new(NopPruner),
//! )
//! .unwrap();
//! for _ in 0..10 {
//!     let trial = study.ask().unwrap();
//!     let x = trial.params["x"].as_f64().unwrap();
//!     study.tell(trial.number, Outcome::complete(vec![x * x])).unwrap();
//! }
//! assert!(study.best_trial().unwrap().values.as_ref().unwrap()[0] < 0.2);
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::space::SearchSpace;
use serde::{Deserialize, Serialize};

use super::gp::{GpConfig, GpSampler};
use super::pareto::{Scalarization, pareto_front};
use super::pruner::Pruner;
use super::sampler::{GridSampler, Params, RandomSampler, Sampler, SamplerError};
use super::storage::{Created, InMemory, StorageError, StudyHeader, StudyStorage};
use super::tpe::{TpeConfig, TpeSampler};
use super::trial::{FrozenTrial, TrialState};
use crate::objective::{Direction, Objective};

/// How a trial ended, as told to the study.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Finished with one value per objective; `feasible` is false when a constraint
    /// (e.g. a fairness constraint) was violated.
    Complete {
        /// One value per objective, in the study's objective order.
        values: Vec<f64>,
        /// Whether every constraint held.
        feasible: bool,
    },
    /// Stopped early (by the pruner or the user).
    Pruned,
    /// Crashed or produced nothing usable, for the reason given.
    Failed {
        /// What went wrong, in words for the operator.
        reason: String,
    },
}

impl Outcome {
    /// A feasible completion.
    #[must_use]
    pub fn complete(values: Vec<f64>) -> Self {
        Self::Complete { values, feasible: true }
    }

    /// A failure, for `reason`.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::Failed { reason: reason.into() }
    }
}

/// A trial handed out by [`Study::ask`].
#[derive(Debug, Clone, PartialEq)]
pub struct AskedTrial {
    /// The trial's number, to tell it by.
    pub number: u64,
    /// The parameters to run it with.
    pub params: Params,
}

/// Why the study refused a call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StudyError {
    /// The study needs at least one objective.
    #[error("a study needs at least one objective")]
    NoObjectives,
    /// Two objectives share a name.
    #[error("objective `{0}` is listed twice")]
    DuplicateObjective(String),
    /// No trial has that number.
    #[error("there is no trial {0}")]
    UnknownTrial(u64),
    /// The trial was already told.
    #[error("trial {number} is already {state:?}")]
    AlreadyFinished {
        /// The trial.
        number: u64,
        /// How it ended.
        state: TrialState,
    },
    /// The number of values does not match the objectives.
    #[error("trial {number}: expected {expected} value(s), one per objective, got {got}")]
    WrongValueCount {
        /// The trial.
        number: u64,
        /// Objectives in the study.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A value is NaN or infinite.
    #[error("trial {number}: value {value} is not finite")]
    NonFinite {
        /// The trial.
        number: u64,
        /// The offending value.
        value: f64,
    },
    /// The sampler could not propose parameters.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// The scalarization weights do not fit the objectives.
    #[error("weights: {0}")]
    Weights(String),
    /// The storage failed; the study's state is unchanged.
    #[error("storage: {0}")]
    Storage(String),
    /// Another process runs the trial now (a shared study took it over).
    #[error("trial {number} is now run by `{owner}`")]
    Lost {
        /// The trial.
        number: u64,
        /// Who runs it.
        owner: String,
    },
    /// The study holds every trial it was asked for (a shared study's other processes
    /// asked the rest).
    #[error("the study holds all its trials")]
    Full,
    /// A trial with these parameters exists already (asked with [`Study::ask_unique`]).
    #[error("a trial with these parameters exists")]
    Duplicate,
}

fn storage_error(e: StorageError) -> StudyError {
    match e {
        StorageError::Lost { number, owner } => StudyError::Lost { number, owner },
        e => StudyError::Storage(e.to_string()),
    }
}

/// The strategy names users pick between trials (`sampler = "..."` in config, or
/// `--sampler` on the command line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SamplerKind {
    /// Every point of a grid, in a seeded order.
    #[serde(rename = "grid")]
    Grid,
    /// Uniform random search.
    #[serde(rename = "random")]
    Random,
    /// Tree-structured Parzen estimator.
    #[serde(rename = "tpe")]
    Tpe,
    /// Gaussian-process Bayesian optimisation with log expected improvement.
    #[serde(rename = "gp")]
    Gp,
    /// GP between trials plus a FedEx policy over adaptive client parameters within
    /// each trial; the default.
    #[default]
    #[serde(rename = "bayes+rl")]
    BayesRl,
}

/// The seed a resumed study's sampler starts from: the study's `seed` itself when it
/// holds no trials and no `owner` is named (a fresh study), otherwise `seed` mixed with
/// the number of trials it `held` and, for aggregators sharing a study, a stable hash
/// of the owner's name (so they do not propose the same parameters).
///
/// A sampler's draws depend on its seed, not on the trials it was shown, so a resumed
/// study seeded as on its first day would repeat that day's trials one by one. Mixing
/// in the count makes every session's stream new and still reproducible from the
/// journal: the same journal and seed resume to the same proposals.
#[must_use]
pub fn resume_seed(seed: u64, held: u64, owner: Option<&str>) -> u64 {
    if held == 0 && owner.is_none() {
        return seed;
    }
    let mut mixed = seed ^ held.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if let Some(owner) = owner {
        // FNV-1a: stable across builds and platforms.
        mixed ^= owner.bytes().fold(0xCBF2_9CE4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
        });
    }
    mixed
}

impl SamplerKind {
    /// Every name, as written in config.
    pub const NAMES: [&'static str; 5] = ["grid", "random", "tpe", "gp", "bayes+rl"];

    /// The name as written in config.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Grid => "grid",
            Self::Random => "random",
            Self::Tpe => "tpe",
            Self::Gp => "gp",
            Self::BayesRl => "bayes+rl",
        }
    }

    /// The between-trial sampler, seeded, with the model-based samplers' default of 10
    /// random start-up trials (Optuna's).
    #[must_use]
    pub fn build(self, seed: u64) -> Box<dyn Sampler + Send> {
        self.build_with_startup(seed, None)
    }

    /// The sampler of a study that already holds `held` trials (resumed from its
    /// storage): seeded by [`resume_seed`], so it continues where the stored trials
    /// leave off instead of proposing the first session's parameters again.
    #[must_use]
    pub fn build_resumed(
        self,
        seed: u64,
        held: u64,
        owner: Option<&str>,
        startup: Option<usize>,
    ) -> Box<dyn Sampler + Send> {
        self.build_with_startup(resume_seed(seed, held, owner), startup)
    }

    /// The between-trial sampler, seeded; `startup` overrides how many random trials
    /// TPE and GP run before their models take over (federated trials are costly, so a
    /// short study may want fewer than the default 10).
    #[must_use]
    pub fn build_with_startup(self, seed: u64, startup: Option<usize>) -> Box<dyn Sampler + Send> {
        match self {
            Self::Grid => Box::new(GridSampler::new(5, seed)),
            Self::Random => Box::new(RandomSampler::new(seed)),
            Self::Tpe => {
                let mut config = TpeConfig::tuned();
                config.n_startup_trials = startup.unwrap_or(config.n_startup_trials);
                Box::new(TpeSampler::new(config, seed).expect("the tuned TPE configuration is valid"))
            }
            Self::Gp | Self::BayesRl => {
                let mut config = GpConfig::default();
                config.n_startup_trials = startup.unwrap_or(config.n_startup_trials);
                Box::new(GpSampler::new(config, seed).expect("the default GP configuration is valid"))
            }
        }
    }

    /// Whether trials adapt their adaptive client parameters with a FedEx policy.
    #[must_use]
    pub fn adapts_within_trials(self) -> bool {
        self == Self::BayesRl
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grid" => Ok(Self::Grid),
            "random" => Ok(Self::Random),
            "tpe" => Ok(Self::Tpe),
            "gp" => Ok(Self::Gp),
            "bayes+rl" | "bayes-rl" | "bayesrl" => Ok(Self::BayesRl),
            other => Err(format!(
                "unknown sampler `{other}`; expected one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// A search over one space.
pub struct Study {
    space: SearchSpace,
    objectives: Vec<Objective>,
    directions: Vec<Direction>,
    scalarization: Option<Scalarization>,
    sampler: Box<dyn Sampler + Send>,
    pruner: Box<dyn Pruner + Send>,
    storage: Box<dyn StudyStorage>,
    trials: Vec<FrozenTrial>,
}

impl fmt::Debug for Study {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Study")
            .field("objectives", &self.objectives)
            .field("trials", &self.trials.len())
            .finish_non_exhaustive()
    }
}

impl Study {
    /// A study of `space` towards `objectives` (the first is the primary one).
    ///
    /// # Errors
    /// [`StudyError::NoObjectives`] or [`StudyError::DuplicateObjective`].
    pub fn new(
        space: SearchSpace,
        objectives: Vec<Objective>,
        sampler: Box<dyn Sampler + Send>,
        pruner: Box<dyn Pruner + Send>,
    ) -> Result<Self, StudyError> {
        if objectives.is_empty() {
            return Err(StudyError::NoObjectives);
        }
        for (i, o) in objectives.iter().enumerate() {
            if objectives[..i].iter().any(|p| p.name == o.name) {
                return Err(StudyError::DuplicateObjective(o.name.clone()));
            }
        }
        Ok(Self {
            space,
            directions: objectives.iter().map(|o| o.direction).collect(),
            objectives,
            scalarization: None,
            sampler,
            pruner,
            storage: Box::new(InMemory),
            trials: Vec::new(),
        })
    }

    /// Keeps the study in `storage` and resumes from the trials it already holds.
    /// Trials that were still running when the last session ended are marked failed
    /// (their process is gone), as Optuna fails stale trials.
    ///
    /// # Errors
    /// [`StudyError::Storage`] when the storage cannot be read or holds another study.
    pub fn with_storage(self, storage: Box<dyn StudyStorage>) -> Result<Self, StudyError> {
        let (mut study, running) = self.resume_from(storage)?;
        for trial in running {
            study.tell(
                trial.number,
                Outcome::failed("still running when the last session ended"),
            )?;
        }
        Ok(study)
    }

    /// Keeps the study in `storage` and resumes from the trials it already holds,
    /// leaving the trials that were running when the last session ended running: the
    /// caller goes on with them (from their checkpoints) and tells them as usual.
    ///
    /// # Errors
    /// [`StudyError::Storage`] when the storage cannot be read or holds another study.
    pub fn resume_from(mut self, mut storage: Box<dyn StudyStorage>) -> Result<(Self, Vec<AskedTrial>), StudyError> {
        let header = StudyHeader {
            space: self.space.clone(),
            objectives: self.objectives.clone(),
        };
        let trials = storage.open(&header).map_err(storage_error)?;
        self.storage = storage;
        self.replace_trials(trials)?;
        let running = self
            .trials
            .iter()
            .filter(|t| t.state == TrialState::Running)
            .map(|t| AskedTrial {
                number: t.number,
                params: t.params.clone(),
            })
            .collect();
        Ok((self, running))
    }

    /// Reloads the trials from a storage other processes write too (a shared study), so
    /// the sampler and pruner see their trials; does nothing for a storage this study
    /// writes alone.
    ///
    /// # Errors
    /// [`StudyError::Storage`] when the storage cannot be read.
    pub fn sync(&mut self) -> Result<(), StudyError> {
        match self.storage.refresh().map_err(storage_error)? {
            Some(trials) => self.replace_trials(trials),
            None => Ok(()),
        }
    }

    fn replace_trials(&mut self, mut trials: Vec<FrozenTrial>) -> Result<(), StudyError> {
        // Stored as JSON, a numeric choice comes back as a plain number.
        for trial in &mut trials {
            self.space.canonicalize(&mut trial.params);
        }
        if let Some((i, t)) = trials.iter().enumerate().find(|(i, t)| t.number != *i as u64) {
            return Err(StudyError::Storage(format!(
                "the stored trials skip from {} to {}",
                i.saturating_sub(1),
                t.number
            )));
        }
        self.trials = trials;
        Ok(())
    }

    /// Replaces the sampler (a resumed study reseeds its sampler so that it does not
    /// propose the first session's parameters again).
    #[must_use]
    pub fn with_sampler(mut self, sampler: Box<dyn Sampler + Send>) -> Self {
        self.sampler = sampler;
        self
    }

    /// Optimises the weighted sum of the objectives (each turned into a loss) instead
    /// of their Pareto front: the sampler and the best trial see one value. The front
    /// is still reported.
    ///
    /// # Errors
    /// [`StudyError::Weights`] when the weights do not fit the objectives.
    pub fn with_weights(mut self, weights: Vec<f64>) -> Result<Self, StudyError> {
        if weights.len() != self.objectives.len() {
            return Err(StudyError::Weights(format!(
                "{} weight(s) for {} objective(s)",
                weights.len(),
                self.objectives.len()
            )));
        }
        self.scalarization = Some(Scalarization::weighted(weights).map_err(|e| StudyError::Weights(e.to_string()))?);
        Ok(self)
    }

    /// The searched space.
    #[must_use]
    pub fn space(&self) -> &SearchSpace {
        &self.space
    }

    /// The objectives, primary first.
    #[must_use]
    pub fn objectives(&self) -> &[Objective] {
        &self.objectives
    }

    /// One direction per objective.
    #[must_use]
    pub fn directions(&self) -> &[Direction] {
        &self.directions
    }

    /// Every trial so far, in number order.
    #[must_use]
    pub fn trials(&self) -> &[FrozenTrial] {
        &self.trials
    }

    /// One trial by number.
    #[must_use]
    pub fn trial(&self, number: u64) -> Option<&FrozenTrial> {
        self.trials.get(usize::try_from(number).ok()?)
    }

    /// Trials asked and not yet told.
    #[must_use]
    pub fn running(&self) -> usize {
        self.trials.iter().filter(|t| t.state == TrialState::Running).count()
    }

    /// Starts a trial with parameters from the sampler.
    ///
    /// # Errors
    /// [`StudyError::Sampler`] when the sampler has nothing left to propose,
    /// [`StudyError::Full`] when a shared study holds all its trials.
    pub fn ask(&mut self) -> Result<AskedTrial, StudyError> {
        self.sync()?;
        let (history, directions) = view(&self.trials, &self.directions, self.scalarization.as_ref());
        let params = self.sampler.sample(&self.space, &history, &directions)?;
        self.start(params, false)
    }

    /// Starts a trial with the given parameters (Optuna's `enqueue_trial`), e.g. a
    /// known-good default to compare against. Parameters outside the space are kept as
    /// given; samplers skip what they cannot read.
    ///
    /// # Errors
    /// [`StudyError::Storage`] when the trial cannot be stored.
    pub fn ask_with(&mut self, params: Params) -> Result<AskedTrial, StudyError> {
        self.sync()?;
        self.start(params, false)
    }

    /// As [`ask_with`](Self::ask_with), unless a trial with these parameters exists
    /// (a baseline that another process sharing the study enqueued already).
    ///
    /// # Errors
    /// [`StudyError::Duplicate`] then; as [`ask_with`](Self::ask_with) otherwise.
    pub fn ask_unique(&mut self, params: Params) -> Result<AskedTrial, StudyError> {
        self.sync()?;
        self.start(params, true)
    }

    fn start(&mut self, params: Params, unique: bool) -> Result<AskedTrial, StudyError> {
        if unique && self.trials.iter().any(|t| t.params == params) {
            return Err(StudyError::Duplicate);
        }
        let proposed = FrozenTrial {
            number: self.trials.len() as u64,
            params,
            values: None,
            state: TrialState::Running,
            feasible: true,
            intermediate: BTreeMap::new(),
            fail_reason: None,
        };
        let trial = match self.storage.create(&proposed, unique).map_err(storage_error)? {
            Created::Trial(trial) => trial,
            Created::Full => return Err(StudyError::Full),
            Created::Duplicate => return Err(StudyError::Duplicate),
        };
        let asked = AskedTrial {
            number: trial.number,
            params: trial.params.clone(),
        };
        if trial.number == self.trials.len() as u64 {
            self.trials.push(trial);
        } else {
            // Others asked trials in between: the storage holds them all.
            self.sync()?;
            if self.trial(asked.number).is_none() {
                return Err(StudyError::Storage(format!(
                    "trial {} was stored but does not read back",
                    asked.number
                )));
            }
        }
        Ok(asked)
    }

    /// Stores the snapshot of trial `number`, or restores `previous` when that fails.
    fn commit(&mut self, number: u64, previous: FrozenTrial) -> Result<(), StudyError> {
        let index = number as usize;
        if let Err(e) = self.storage.save(&self.trials[index]) {
            self.trials[index] = previous;
            return Err(storage_error(e));
        }
        Ok(())
    }

    fn running_mut(&mut self, number: u64) -> Result<&mut FrozenTrial, StudyError> {
        let trial = usize::try_from(number)
            .ok()
            .and_then(|i| self.trials.get_mut(i))
            .ok_or(StudyError::UnknownTrial(number))?;
        if trial.state != TrialState::Running {
            return Err(StudyError::AlreadyFinished {
                number,
                state: trial.state,
            });
        }
        Ok(trial)
    }

    fn check_values(&self, number: u64, values: &[f64]) -> Result<(), StudyError> {
        if values.len() != self.objectives.len() {
            return Err(StudyError::WrongValueCount {
                number,
                expected: self.objectives.len(),
                got: values.len(),
            });
        }
        if let Some(&value) = values.iter().find(|v| !v.is_finite()) {
            return Err(StudyError::NonFinite { number, value });
        }
        Ok(())
    }

    /// Records a running trial's values after `step` (a federated round) and says
    /// whether the pruner would stop it there.
    ///
    /// # Errors
    /// When the trial is unknown or finished, or the values do not fit the objectives.
    pub fn report(&mut self, number: u64, step: u64, values: Vec<f64>) -> Result<bool, StudyError> {
        self.check_values(number, &values)?;
        let trial = self.running_mut(number)?;
        let previous = trial.clone();
        trial.intermediate.insert(step, values);
        self.commit(number, previous)?;
        let (history, directions) = view(&self.trials, &self.directions, self.scalarization.as_ref());
        let trial = &history[number as usize];
        Ok(self.pruner.prune(trial, &history, &directions))
    }

    /// Finishes a running trial.
    ///
    /// # Errors
    /// When the trial is unknown or already finished, or the values do not fit the
    /// objectives; the trial stays running then, so the caller may tell it again.
    pub fn tell(&mut self, number: u64, outcome: Outcome) -> Result<&FrozenTrial, StudyError> {
        if let Outcome::Complete { values, .. } = &outcome {
            self.check_values(number, values)?;
        }
        let trial = self.running_mut(number)?;
        let previous = trial.clone();
        match outcome {
            Outcome::Complete { values, feasible } => {
                trial.values = Some(values);
                trial.feasible = feasible;
                trial.state = TrialState::Complete;
            }
            Outcome::Pruned => trial.state = TrialState::Pruned,
            Outcome::Failed { reason } => {
                trial.state = TrialState::Failed;
                trial.fail_reason = Some(reason);
            }
        }
        self.commit(number, previous)?;
        Ok(&self.trials[number as usize])
    }

    /// The best complete trial: feasible ones first, then by the primary objective (or
    /// the weighted sum when the study has weights). `None` before any completes.
    #[must_use]
    pub fn best_trial(&self) -> Option<&FrozenTrial> {
        let key = |t: &FrozenTrial| -> Option<(bool, f64)> {
            let losses = t.losses(&self.directions)?;
            let loss = match &self.scalarization {
                Some(s) => s.loss(t.values.as_ref()?, &self.directions),
                None => losses[0],
            };
            Some((!t.feasible, loss))
        };
        self.trials
            .iter()
            .filter_map(|t| key(t).map(|k| (t, k)))
            .min_by(|a, b| a.1.0.cmp(&b.1.0).then(a.1.1.total_cmp(&b.1.1)))
            .map(|(t, _)| t)
    }

    /// The complete, feasible trials no other such trial beats on every objective.
    #[must_use]
    pub fn pareto_front(&self) -> Vec<&FrozenTrial> {
        pareto_front(&self.trials, &self.directions)
    }
}

/// The history as the sampler and pruner see it: borrowed as it is, or, for a weighted
/// study, collapsed to one minimised value.
fn view<'a>(
    trials: &'a [FrozenTrial],
    directions: &'a [Direction],
    scalarization: Option<&Scalarization>,
) -> (Cow<'a, [FrozenTrial]>, Cow<'a, [Direction]>) {
    let Some(s) = scalarization else {
        return (Cow::Borrowed(trials), Cow::Borrowed(directions));
    };
    let scalar = |values: &Vec<f64>| vec![s.loss(values, directions)];
    let trials = trials
        .iter()
        .map(|t| FrozenTrial {
            values: t.values.as_ref().map(scalar),
            intermediate: t.intermediate.iter().map(|(k, v)| (*k, scalar(v))).collect(),
            ..t.clone()
        })
        .collect();
    (Cow::Owned(trials), Cow::Owned(vec![Direction::Minimize]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pruner::{NopPruner, SuccessiveHalvingPruner};
    use crate::space::ParamSpec;

    fn space() -> SearchSpace {
        SearchSpace::new(vec![
            ParamSpec::parse("x", "uniform(-5, 5)").unwrap(),
            ParamSpec::parse("y", "uniform(-5, 5)").unwrap(),
        ])
        .unwrap()
    }

    fn f(p: &Params) -> f64 {
        let (x, y) = (p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap());
        (x - 1.0).powi(2) + (y + 2.0).powi(2)
    }

    fn study(sampler: SamplerKind, seed: u64) -> Study {
        Study::new(
            space(),
            vec![Objective::new("f", Direction::Minimize)],
            sampler.build(seed),
            Box::new(NopPruner),
        )
        .unwrap()
    }

    fn optimise(study: &mut Study, n: usize) -> f64 {
        for _ in 0..n {
            let t = study.ask().unwrap();
            study.tell(t.number, Outcome::complete(vec![f(&t.params)])).unwrap();
        }
        study.best_trial().unwrap().values.as_ref().unwrap()[0]
    }

    #[test]
    fn ask_and_tell_are_deterministic_given_a_seed() {
        for kind in [SamplerKind::Random, SamplerKind::Tpe, SamplerKind::Gp] {
            let (mut a, mut b) = (study(kind, 3), study(kind, 3));
            optimise(&mut a, 15);
            optimise(&mut b, 15);
            let params = |s: &Study| s.trials().iter().map(|t| t.params.clone()).collect::<Vec<_>>();
            assert_eq!(params(&a), params(&b), "{kind}");
            let mut c = study(kind, 4);
            optimise(&mut c, 15);
            assert_ne!(params(&a), params(&c), "{kind}");
        }
    }

    #[test]
    fn model_based_samplers_beat_random_search() {
        let median = |kind: SamplerKind| {
            let mut best: Vec<f64> = (0..5).map(|seed| optimise(&mut study(kind, seed), 30)).collect();
            best.sort_by(f64::total_cmp);
            best[2]
        };
        let random = median(SamplerKind::Random);
        for kind in [SamplerKind::Tpe, SamplerKind::Gp] {
            let model = median(kind);
            assert!(model < random, "{kind}: {model} vs random {random}");
        }
    }

    #[test]
    fn tell_checks_its_input_and_keeps_the_trial_running() {
        let mut s = study(SamplerKind::Random, 0);
        let t = s.ask().unwrap();
        assert!(matches!(
            s.tell(t.number, Outcome::complete(vec![])),
            Err(StudyError::WrongValueCount { .. })
        ));
        assert!(matches!(
            s.tell(t.number, Outcome::complete(vec![f64::NAN])),
            Err(StudyError::NonFinite { .. })
        ));
        assert!(matches!(
            s.tell(9, Outcome::failed("test")),
            Err(StudyError::UnknownTrial(9))
        ));
        assert_eq!(s.running(), 1);
        s.tell(t.number, Outcome::complete(vec![1.0])).unwrap();
        assert!(matches!(
            s.tell(t.number, Outcome::Pruned),
            Err(StudyError::AlreadyFinished { .. })
        ));
        assert!(
            s.report(t.number, 1, vec![1.0]).is_err(),
            "a finished trial takes no reports"
        );
    }

    #[test]
    fn infeasible_trials_never_beat_feasible_ones() {
        let mut s = study(SamplerKind::Random, 0);
        let a = s.ask().unwrap();
        let b = s.ask().unwrap();
        s.tell(
            a.number,
            Outcome::Complete {
                values: vec![0.1],
                feasible: false,
            },
        )
        .unwrap();
        s.tell(b.number, Outcome::complete(vec![5.0])).unwrap();
        assert_eq!(s.best_trial().unwrap().number, b.number);
        assert_eq!(s.pareto_front().len(), 1);
    }

    #[test]
    fn weighted_studies_rank_by_the_weighted_loss() {
        let objectives = vec![
            Objective::new("accuracy", Direction::Maximize),
            Objective::new("bytes", Direction::Minimize),
        ];
        let mut s = Study::new(
            space(),
            objectives.clone(),
            SamplerKind::Tpe.build(0),
            Box::new(NopPruner),
        )
        .unwrap()
        .with_weights(vec![1.0, 0.5])
        .unwrap();
        for values in [[0.9, 1.0], [0.95, 0.2], [0.5, 0.0]] {
            let t = s.ask().unwrap();
            s.tell(t.number, Outcome::complete(values.to_vec())).unwrap();
        }
        // Losses: -0.9 + 0.5 = -0.4; -0.95 + 0.1 = -0.85; -0.5 + 0 = -0.5.
        assert_eq!(s.best_trial().unwrap().number, 1);
        assert_eq!(s.pareto_front().len(), 2, "trial 0 is dominated by trial 1");
        assert!(
            Study::new(space(), objectives, SamplerKind::Tpe.build(0), Box::new(NopPruner))
                .unwrap()
                .with_weights(vec![1.0])
                .is_err()
        );
    }

    #[test]
    fn reports_reach_the_pruner() {
        let pruner = SuccessiveHalvingPruner {
            min_resource: 1,
            reduction_factor: 2,
            min_early_stopping_rate: 0,
        };
        let mut s = Study::new(
            space(),
            vec![Objective::new("accuracy", Direction::Maximize)],
            SamplerKind::Random.build(0),
            Box::new(pruner),
        )
        .unwrap();
        let good = s.ask().unwrap();
        assert!(
            !s.report(good.number, 1, vec![0.9]).unwrap(),
            "first at the rung continues"
        );
        let bad = s.ask().unwrap();
        assert!(
            s.report(bad.number, 1, vec![0.2]).unwrap(),
            "bottom half at the rung stops"
        );
        s.tell(bad.number, Outcome::Pruned).unwrap();
        assert_eq!(s.trial(bad.number).unwrap().state, TrialState::Pruned);
        assert_eq!(s.trial(bad.number).unwrap().last_intermediate(), Some((1, &[0.2][..])));
    }

    #[test]
    fn sampler_names_round_trip() {
        for name in SamplerKind::NAMES {
            assert_eq!(name.parse::<SamplerKind>().unwrap().name(), name);
        }
        let err = "annealing".parse::<SamplerKind>().unwrap_err();
        assert!(err.contains("bayes+rl"), "{err}");
        assert_eq!(SamplerKind::default(), SamplerKind::BayesRl);
    }

    #[test]
    fn a_study_in_a_journal_resumes_where_it_stopped() {
        let path = std::env::temp_dir().join(format!("fedtune-study-resume-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let open = || {
            study(SamplerKind::Tpe, 5)
                .with_storage(Box::new(crate::storage::Journal::new(&path)))
                .unwrap()
        };
        let mut first = open();
        for _ in 0..3 {
            let t = first.ask().unwrap();
            first.tell(t.number, Outcome::complete(vec![f(&t.params)])).unwrap();
        }
        let crashed = first.ask().unwrap();
        first.report(crashed.number, 1, vec![9.0]).unwrap();
        let kept: Vec<FrozenTrial> = first.trials().to_vec();
        drop(first);

        let mut second = open();
        assert_eq!(second.trials().len(), 4);
        assert_eq!(&second.trials()[..3], &kept[..3]);
        let stale = &second.trials()[3];
        assert_eq!(
            stale.state,
            TrialState::Failed,
            "a trial running at the crash is failed"
        );
        assert_eq!(stale.intermediate, kept[3].intermediate, "its reports were kept");
        let next = second.ask().unwrap();
        assert_eq!(next.number, 4);
        second.tell(next.number, Outcome::complete(vec![0.5])).unwrap();
        drop(second);
        assert_eq!(open().trials().len(), 5);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn numeric_choices_read_back_from_a_journal_are_the_choices_the_sampler_drew() {
        use crate::space::{Distribution, ParamSpec, ParamValue, SearchSpace};
        let path = std::env::temp_dir().join(format!("fedtune-study-choices-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let space = SearchSpace::new(vec![
            ParamSpec::parse("batch_size", "choice(16, 32, 64)").unwrap(),
            ParamSpec::parse("scale", "choice(0.5, 1, 2)").unwrap(),
        ])
        .unwrap();
        let open = |kind: SamplerKind| {
            Study::new(
                space.clone(),
                vec![Objective::new("f", Direction::Minimize)],
                kind.build(1),
                Box::new(crate::pruner::NopPruner),
            )
            .unwrap()
            .with_storage(Box::new(crate::storage::Journal::new(&path)))
            .unwrap()
        };
        let mut first = open(SamplerKind::Grid);
        for _ in 0..4 {
            let t = first.ask().unwrap();
            first.tell(t.number, Outcome::complete(vec![1.0])).unwrap();
        }
        let drawn: Vec<_> = first.trials().iter().map(|t| t.params.clone()).collect();
        drop(first);
        let mut second = open(SamplerKind::Grid);
        for (trial, params) in second.trials().iter().zip(&drawn) {
            assert_eq!(&trial.params, params, "read back as drawn");
            for p in &space.params {
                assert!(
                    p.distribution.to_internal(&trial.params[&p.name]).is_some(),
                    "{:?}",
                    trial.params
                );
            }
        }
        // The grid sees the stored points and goes on to the other five.
        let mut rest = Vec::new();
        while let Ok(t) = second.ask() {
            rest.push(t.params.clone());
            second.tell(t.number, Outcome::complete(vec![1.0])).unwrap();
        }
        assert_eq!(rest.len(), 5, "{rest:?}");
        assert!(
            rest.iter().all(|p| !drawn.contains(p)),
            "a stored point was proposed again"
        );
        let _ = std::fs::remove_file(&path);
        // Floats and integers get their kind back too.
        let float = Distribution::parse("uniform(0, 5)").unwrap();
        assert_eq!(float.canonical(ParamValue::Int(2)), ParamValue::Float(2.0));
    }
}
