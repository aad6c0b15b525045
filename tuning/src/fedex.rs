//! FedEx: adapting client hyperparameters within a trial by exponentiated gradient.
//!
//! After Khodak et al. (2021), *Federated hyperparameter tuning: challenges, baselines,
//! and connections to weight-sharing*. The "bayes+rl" strategy picks a trial's
//! hyperparameters with a Bayesian sampler; inside the trial this policy keeps, for each
//! adaptive client parameter, a categorical distribution over a few values (*arms*) near
//! the trial's value. Every round each agent trains with values drawn from those
//! distributions ([`FedExPolicy::draw`]); the driver reports each agent's reward — the
//! drop in its validation loss — and the policy moves probability towards the arms that
//! did better than a baseline ([`FedExPolicy::observe`]).
//!
//! # The update
//! For a parameter with arms `1..=k` and probabilities `θ`, one round with `n` usable
//! outcomes `(arm a_i drawn with probability π_i, reward r_i)` gives the
//! importance-weighted estimate of each arm's advantage over the baseline `b`:
//!
//! ```text
//! g_j = (1/n) Σ_{i : a_i = j} (r_i − b) / π_i
//! θ_j ← θ_j · exp(η_t g_j) / Σ_l θ_l · exp(η_t g_l)
//! ```
//!
//! `π_i` is the probability at draw time, kept in the [`Draw`], so arms added between a
//! draw and its observation do not bias the estimate. The baseline is the discounted mean
//! of all usable rewards observed so far, *including* the current round's (as FedEx
//! does), so that a constant shift of every reward cancels exactly; it only lowers the
//! variance of `g`, the estimate stays unbiased in expectation over the draws.
//!
//! The step size is adaptive by default ([`StepSize::Adaptive`]):
//! `η_t = η_0 · sqrt(2 ln k) / sqrt(Σ_{s ≤ t} ‖g_s‖²_∞)`, the exponentiated-gradient
//! rate `sqrt(2 ln k) / (G sqrt(t))` that FedEx's analysis prescribes, with `G · sqrt(t)`
//! estimated from the gradients seen rather than fixed in advance. Multiplying every reward by a constant therefore leaves the updates
//! unchanged. Each parameter is its own bandit with its own schedule: the joint
//! distribution is the product of the per-parameter ones.
//!
//! Probabilities start uniform over a parameter's arms (the trial's own value is one of
//! them); ties in [`FedExPolicy::best`] go to the trial's value, so a policy that has
//! learnt nothing reports the trial's parameters.
//!
//! The policy is sans-IO and seeded: the same space, trial, configuration, seed and
//! sequence of calls give the same draws and the same distributions.

use std::collections::{BTreeMap, BTreeSet};
use std::f64::consts::LN_2;

use crate::space::{Distribution, ParamValue, Scope, SearchSpace};
use rand::rngs::ChaCha12Rng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use super::sampler::Params;

/// How the exponentiated-gradient step size is chosen each round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepSize {
    /// The schedule `η_t = eta0 · sqrt(2 ln k) / sqrt(Σ_{s ≤ t} ‖g_s‖²_∞)` for a
    /// parameter with `k` arms; invariant to the scale of the rewards.
    Adaptive {
        /// Multiplier of the schedule (FedEx uses 1).
        eta0: f64,
    },
    /// A fixed `η`, in units of inverse reward: the right value depends on how large the
    /// rewards are.
    Constant {
        /// The step size.
        eta: f64,
    },
}

impl Default for StepSize {
    fn default() -> Self {
        Self::Adaptive { eta0: 1.0 }
    }
}

/// FedEx settings; `Default` gives five arms per numeric parameter, FedEx's adaptive step
/// size and a baseline discounted by 0.9 per round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FedExConfig {
    /// Arms built around the trial's value of a numeric parameter, the value included
    /// (fewer when values clip to the same bound). With an even count the extra arm lies
    /// above the trial's value. Categoricals get one arm per choice instead.
    pub arms: usize,
    /// Spacing of log-scale arms, in powers of two: arm `m` is `value · 2^(m · log2_spread)`
    /// for `m = -2..=2` with five arms (×¼ … ×4 would be `log2_spread = 1`).
    pub log2_spread: f64,
    /// Spacing of linear float arms as a fraction of the range `high − low`.
    pub linear_spread: f64,
    /// Spacing of linear integer arms, in grid steps.
    pub int_spread: u32,
    /// The step-size rule.
    pub step_size: StepSize,
    /// Weight kept by past rounds in the baseline each round (0: only the current round's
    /// mean; 1: the mean of all rewards ever).
    pub baseline_discount: f64,
    /// Most arms a parameter may have, counting arms added by proposals; categoricals with
    /// more choices keep the trial's value and the first others.
    pub max_arms: usize,
}

impl Default for FedExConfig {
    fn default() -> Self {
        Self {
            arms: 5,
            log2_spread: 0.5,
            linear_spread: 0.1,
            int_spread: 1,
            step_size: StepSize::default(),
            baseline_discount: 0.9,
            max_arms: 8,
        }
    }
}

impl FedExConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`FedExError::Config`] when `arms` is 0 or above `max_arms`, a spread is not
    /// positive and finite, the step size is not positive and finite, or the discount is
    /// outside \[0, 1\].
    pub fn validate(&self) -> Result<(), FedExError> {
        let bad = |m: String| Err(FedExError::Config(m));
        if self.arms == 0 || self.arms > self.max_arms {
            return bad(format!(
                "arms must be between 1 and max_arms ({}), got {}",
                self.max_arms, self.arms
            ));
        }
        if !(self.log2_spread > 0.0 && self.log2_spread.is_finite()) {
            return bad(format!("log2_spread must be positive, got {}", self.log2_spread));
        }
        if !(self.linear_spread > 0.0 && self.linear_spread.is_finite()) {
            return bad(format!("linear_spread must be positive, got {}", self.linear_spread));
        }
        if self.int_spread == 0 {
            return bad("int_spread must be at least 1".into());
        }
        let (name, eta) = match self.step_size {
            StepSize::Adaptive { eta0 } => ("eta0", eta0),
            StepSize::Constant { eta } => ("eta", eta),
        };
        if !(eta > 0.0 && eta.is_finite()) {
            return bad(format!("step size {name} must be positive, got {eta}"));
        }
        if !(0.0..=1.0).contains(&self.baseline_discount) {
            return bad(format!(
                "baseline_discount must be in [0, 1], got {}",
                self.baseline_discount
            ));
        }
        Ok(())
    }
}

/// Why a policy could not be built or refused a proposal.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FedExError {
    /// The configuration is invalid.
    #[error("invalid FedEx configuration: {0}")]
    Config(String),
    /// The trial's parameters lack an adaptive parameter of the space.
    #[error("the trial has no value for adaptive parameter `{0}`")]
    MissingTrialValue(String),
    /// A value (the trial's or a proposal) is of the wrong kind or outside the range.
    #[error("parameter `{param}`: {value} is not a possible value of {distribution}")]
    OutOfRange {
        /// The parameter.
        param: String,
        /// The refused value.
        value: ParamValue,
        /// The parameter's distribution.
        distribution: Distribution,
    },
    /// The name is not a parameter of the search space.
    #[error("no parameter `{0}` in the search space")]
    UnknownParam(String),
    /// The parameter exists but the policy does not tune it (server-scoped or not adaptive).
    #[error("parameter `{0}` is not an adaptive client parameter, so the policy does not tune it")]
    NotAdaptive(String),
}

/// The arm drawn for one parameter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ArmPick {
    /// Index of the arm in the parameter's arm list (indices never change: new arms go last).
    pub index: usize,
    /// The arm's probability when it was drawn (the importance weight's denominator).
    pub probability: f64,
}

/// The values one agent trains with for one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Draw {
    /// The trial's parameters with every adaptive client parameter replaced by its drawn arm.
    pub params: Params,
    /// The drawn arm of each adaptive client parameter, by name.
    pub arms: BTreeMap<String, ArmPick>,
}

/// What [`FedExPolicy::record_proposal`] did with a proposed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposalOutcome {
    /// The value was new and became the arm with this index.
    NewArm(usize),
    /// The value already is the arm with this index; the proposal is only counted.
    ExistingArm(usize),
    /// The value was new but the parameter already has `max_arms` arms; only counted.
    ArmLimit,
}

/// Where an arm came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArmOrigin {
    /// The trial's own value.
    Trial,
    /// Spread around the trial's value (or another choice of a categorical).
    Spread,
    /// Added by an agent's proposal.
    Proposal,
}

/// One arm in a [`PolicySummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmSummary {
    /// The arm's value.
    pub value: ParamValue,
    /// Its current probability.
    pub probability: f64,
    /// Where it came from.
    pub origin: ArmOrigin,
    /// Times it was drawn.
    pub draws: u64,
    /// Times an agent proposed its value.
    pub proposals: u64,
}

/// One adaptive parameter in a [`PolicySummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSummary {
    /// The parameter's name.
    pub name: String,
    /// The arms, by index.
    pub arms: Vec<ArmSummary>,
    /// Index of the arm [`FedExPolicy::best`] reports.
    pub best: usize,
    /// Proposals recorded for the parameter (valid ones; refused values are errors).
    pub proposals: u64,
    /// Proposals of new values that were not added because the arm limit was reached.
    pub proposals_over_limit: u64,
}

/// The state of a policy, for a trial's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySummary {
    /// Rounds that updated the policy (rounds with no usable reward do not count).
    pub rounds: u64,
    /// Rewards used in updates.
    pub rewards_used: u64,
    /// Outcomes skipped: non-finite rewards, or draws that do not fit the policy.
    pub rewards_skipped: u64,
    /// The current baseline, once a reward has been observed.
    pub baseline: Option<f64>,
    /// The adaptive client parameters, in the search space's order.
    pub params: Vec<ParamSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Arm {
    value: ParamValue,
    origin: ArmOrigin,
    draws: u64,
    proposals: u64,
}

/// The arms and distribution of one adaptive parameter.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Bandit {
    name: String,
    distribution: Distribution,
    arms: Vec<Arm>,
    probs: Vec<f64>,
    trial_index: usize,
    /// `Σ_s ‖g_s‖²_∞`, the adaptive step size's scale.
    grad_sq_sum: f64,
    proposals: u64,
    proposals_over_limit: u64,
}

impl Bandit {
    fn index_of(&self, value: &ParamValue) -> Option<usize> {
        self.arms.iter().position(|a| &a.value == value)
    }

    /// The most probable arm; ties go to the trial's value, then to the lowest index.
    fn best(&self) -> usize {
        let mut best = self.trial_index;
        for (j, &p) in self.probs.iter().enumerate() {
            // A relative margin so that rounding noise in equal probabilities is a tie.
            if p > self.probs[best] * (1.0 + 1e-12) {
                best = j;
            }
        }
        best
    }

    fn sample(&self, rng: &mut ChaCha12Rng) -> usize {
        let total: f64 = self.probs.iter().sum();
        let mut u = rng.random::<f64>() * total;
        for (j, &p) in self.probs.iter().enumerate() {
            if u < p {
                return j;
            }
            u -= p;
        }
        // Rounding left `u` past the last arm: take the last arm with mass.
        self.probs.iter().rposition(|&p| p > 0.0).unwrap_or(self.trial_index)
    }
}

/// The FedEx policy of one trial: per adaptive client parameter, a distribution over arms
/// updated by exponentiated gradient. See the [module documentation](self).
///
/// It serializes whole (its random stream included), so a trial resumed from a
/// checkpoint goes on with the policy it had learnt.
#[derive(Debug, Serialize, Deserialize)]
pub struct FedExPolicy {
    config: FedExConfig,
    trial: Params,
    bandits: Vec<Bandit>,
    /// Parameters of the space that the policy leaves alone.
    fixed: BTreeSet<String>,
    #[serde(with = "crate::rng::rng_serde")]
    rng: ChaCha12Rng,
    baseline_sum: f64,
    baseline_weight: f64,
    rounds: u64,
    rewards_used: u64,
    rewards_skipped: u64,
}

/// `value` if `distribution` admits it, snapped onto its grid when it lies in range
/// between grid points; `None` for values of the wrong kind, out of range or not finite.
fn admit(distribution: &Distribution, value: &ParamValue) -> Option<ParamValue> {
    if distribution.contains(value) {
        return Some(value.clone());
    }
    match (distribution, value) {
        (Distribution::Float { low, high, .. }, ParamValue::Float(x)) if x.is_finite() && low <= x && x <= high => {
            Some(distribution.from_internal(distribution.to_internal(value)?))
        }
        (Distribution::Int { low, high, .. }, ParamValue::Int(i)) if low <= i && i <= high => {
            Some(distribution.from_internal(distribution.to_internal(value)?))
        }
        _ => None,
    }
}

/// The arms of a parameter whose trial value is `value` (already admitted), the trial's
/// value included, sorted by internal value (categoricals: in choice order).
fn build_arms(distribution: &Distribution, value: &ParamValue, config: &FedExConfig) -> Vec<Arm> {
    let arm = |value: ParamValue, origin| Arm {
        value,
        origin,
        draws: 0,
        proposals: 0,
    };
    let mut arms = vec![arm(value.clone(), ArmOrigin::Trial)];
    if let Distribution::Categorical { choices } = distribution {
        for c in choices {
            let v = ParamValue::Categorical(c.clone());
            if arms.len() < config.max_arms && &v != value {
                arms.push(arm(v, ArmOrigin::Spread));
            }
        }
        let position = |v: &ParamValue| distribution.to_internal(v).unwrap_or(f64::INFINITY);
        arms.sort_by(|a, b| position(&a.value).total_cmp(&position(&b.value)));
        return arms;
    }
    let Some(t) = distribution.to_internal(value) else {
        return arms;
    };
    // Offsets m = -below..=above, m = 0 being the trial's value.
    let below = (config.arms as i64 - 1) / 2;
    let above = config.arms as i64 - 1 - below;
    for m in (-below..=above).filter(|&m| m != 0) {
        let m = m as f64;
        let internal = match distribution {
            Distribution::Float { log: true, .. } | Distribution::Int { log: true, .. } => {
                t + m * config.log2_spread * LN_2
            }
            Distribution::Float { low, high, .. } => t + m * config.linear_spread * (high - low),
            Distribution::Int { step, .. } => t + m * f64::from(config.int_spread) * *step as f64,
            Distribution::Categorical { .. } => unreachable!("categoricals returned above"),
        };
        let v = distribution.from_internal(internal);
        if !arms.iter().any(|a| a.value == v) {
            arms.push(arm(v, ArmOrigin::Spread));
        }
    }
    let position = |v: &ParamValue| distribution.to_internal(v).unwrap_or(f64::INFINITY);
    arms.sort_by(|a, b| position(&a.value).total_cmp(&position(&b.value)));
    arms
}

impl FedExPolicy {
    /// A policy for the trial `trial_params` drawn from `space`, seeded with `seed`.
    ///
    /// Arms are built for every parameter whose spec is `adaptive` and
    /// [`Scope::Client`]; the others keep the trial's value. Numeric arms are spread
    /// around the trial's value as [`FedExConfig`] says, clipped to the distribution's
    /// bounds, snapped to its grid and deduplicated (so a value at a bound gets fewer
    /// arms); a categorical's arms are its choices. Probabilities start uniform.
    ///
    /// # Errors
    /// [`FedExError::Config`] for an invalid configuration;
    /// [`FedExError::MissingTrialValue`] or [`FedExError::OutOfRange`] when the trial
    /// lacks a value for an adaptive parameter or has one the distribution does not admit.
    pub fn new(space: &SearchSpace, trial_params: &Params, config: FedExConfig, seed: u64) -> Result<Self, FedExError> {
        config.validate()?;
        let mut bandits = Vec::new();
        let mut fixed = BTreeSet::new();
        for spec in &space.params {
            if !(spec.adaptive && spec.scope == Scope::Client) {
                fixed.insert(spec.name.clone());
                continue;
            }
            let value = trial_params
                .get(&spec.name)
                .ok_or_else(|| FedExError::MissingTrialValue(spec.name.clone()))?;
            let value = admit(&spec.distribution, value).ok_or_else(|| FedExError::OutOfRange {
                param: spec.name.clone(),
                value: value.clone(),
                distribution: spec.distribution.clone(),
            })?;
            let arms = build_arms(&spec.distribution, &value, &config);
            let k = arms.len();
            let trial_index = arms.iter().position(|a| a.origin == ArmOrigin::Trial).unwrap_or(0);
            bandits.push(Bandit {
                name: spec.name.clone(),
                distribution: spec.distribution.clone(),
                arms,
                probs: vec![1.0 / k as f64; k],
                trial_index,
                grad_sq_sum: 0.0,
                proposals: 0,
                proposals_over_limit: 0,
            });
        }
        let mut trial = trial_params.clone();
        for b in &bandits {
            trial.insert(b.name.clone(), b.arms[b.trial_index].value.clone());
        }
        Ok(Self {
            config,
            trial,
            bandits,
            fixed,
            rng: ChaCha12Rng::seed_from_u64(seed),
            baseline_sum: 0.0,
            baseline_weight: 0.0,
            rounds: 0,
            rewards_used: 0,
            rewards_skipped: 0,
        })
    }

    /// Whether no parameter is adaptive: every draw is then the trial's parameters.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bandits.is_empty()
    }

    /// The values for one agent for one round: each adaptive client parameter drawn from
    /// its distribution, the others at the trial's value. Call once per agent per round.
    pub fn draw(&mut self) -> Draw {
        let mut params = self.trial.clone();
        let mut arms = BTreeMap::new();
        for b in &mut self.bandits {
            let index = b.sample(&mut self.rng);
            b.arms[index].draws += 1;
            params.insert(b.name.clone(), b.arms[index].value.clone());
            arms.insert(
                b.name.clone(),
                ArmPick {
                    index,
                    probability: b.probs[index],
                },
            );
        }
        Draw { params, arms }
    }

    /// One round's update from `(draw, reward)` pairs, reward higher-better (the driver
    /// passes `loss_before − loss_after` of the agent's validation loss).
    ///
    /// Outcomes with a non-finite reward, or whose draw lacks a parameter of the policy,
    /// names an arm it does not have or carries a non-positive probability, are skipped
    /// (counted in [`PolicySummary::rewards_skipped`]). A round with no usable outcome
    /// changes nothing. Returns the number of outcomes used.
    pub fn observe(&mut self, outcomes: &[(Draw, f64)]) -> usize {
        let usable: Vec<&(Draw, f64)> = outcomes.iter().filter(|(d, r)| self.fits(d, *r)).collect();
        self.rewards_skipped += (outcomes.len() - usable.len()) as u64;
        if usable.is_empty() {
            return 0;
        }
        let n = usable.len() as f64;
        let gamma = self.config.baseline_discount;
        self.baseline_sum = gamma * self.baseline_sum + usable.iter().map(|(_, r)| r).sum::<f64>();
        self.baseline_weight = gamma * self.baseline_weight + n;
        let baseline = self.baseline_sum / self.baseline_weight;
        for b in &mut self.bandits {
            let mut grad = vec![0.0; b.arms.len()];
            for (draw, reward) in &usable {
                let pick = draw.arms[&b.name];
                grad[pick.index] += (reward - baseline) / (pick.probability * n);
            }
            let norm = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            b.grad_sq_sum += norm * norm;
            let eta = match self.config.step_size {
                StepSize::Constant { eta } => eta,
                StepSize::Adaptive { eta0 } if b.grad_sq_sum > 0.0 => {
                    eta0 * (2.0 * (b.arms.len() as f64).ln()).sqrt() / b.grad_sq_sum.sqrt()
                }
                StepSize::Adaptive { .. } => 0.0,
            };
            // exp(η g − max η g) keeps the factors in (0, 1]; the normalisation undoes the shift.
            let shift = grad.iter().fold(f64::NEG_INFINITY, |m, g| m.max(eta * g));
            let mut total = 0.0;
            for (p, g) in b.probs.iter_mut().zip(&grad) {
                *p *= (eta * g - shift).exp();
                total += *p;
            }
            if total > 0.0 && total.is_finite() {
                b.probs.iter_mut().for_each(|p| *p /= total);
            }
        }
        self.rounds += 1;
        self.rewards_used += usable.len() as u64;
        usable.len()
    }

    /// Whether an outcome can be used in an update.
    fn fits(&self, draw: &Draw, reward: f64) -> bool {
        reward.is_finite()
            && self.bandits.iter().all(|b| {
                draw.arms.get(&b.name).is_some_and(|pick| {
                    pick.index < b.arms.len() && pick.probability > 0.0 && pick.probability.is_finite()
                })
            })
    }

    /// Records that an agent's local rule proposed `value` for `param` (for instance a
    /// halved learning rate on a plateau), and feeds it to the policy.
    ///
    /// A value that is already an arm is only counted: it says nothing about the reward,
    /// which the importance-weighted update already measures, so it does not move
    /// probability. A new value becomes an arm — its index is the next one, so earlier
    /// [`Draw`]s stay valid — with probability `1 / (k + 1)` for a parameter that had `k`
    /// arms, the others scaled by `k / (k + 1)`: the mass is taken from them in
    /// proportion, keeping their relative odds, and the new value is explored as much as
    /// a fresh uniform arm. At [`FedExConfig::max_arms`] the value is counted and not
    /// added. Values between the grid points of a stepped distribution are snapped to
    /// the nearest one.
    ///
    /// # Errors
    /// [`FedExError::UnknownParam`] when `param` is not in the space;
    /// [`FedExError::NotAdaptive`] when it is server-scoped or not adaptive;
    /// [`FedExError::OutOfRange`] when the value has the wrong kind, is not finite, is
    /// outside the bounds or is not one of the choices.
    pub fn record_proposal(&mut self, param: &str, value: ParamValue) -> Result<ProposalOutcome, FedExError> {
        let Some(b) = self.bandits.iter_mut().find(|b| b.name == param) else {
            return Err(if self.fixed.contains(param) {
                FedExError::NotAdaptive(param.to_string())
            } else {
                FedExError::UnknownParam(param.to_string())
            });
        };
        let Some(value) = admit(&b.distribution, &value) else {
            return Err(FedExError::OutOfRange {
                param: param.to_string(),
                value,
                distribution: b.distribution.clone(),
            });
        };
        b.proposals += 1;
        if let Some(index) = b.index_of(&value) {
            b.arms[index].proposals += 1;
            return Ok(ProposalOutcome::ExistingArm(index));
        }
        if b.arms.len() >= self.config.max_arms {
            b.proposals_over_limit += 1;
            return Ok(ProposalOutcome::ArmLimit);
        }
        let k = b.arms.len() as f64;
        b.probs.iter_mut().for_each(|p| *p *= k / (k + 1.0));
        b.probs.push(1.0 / (k + 1.0));
        b.arms.push(Arm {
            value,
            origin: ArmOrigin::Proposal,
            draws: 0,
            proposals: 1,
        });
        Ok(ProposalOutcome::NewArm(b.arms.len() - 1))
    }

    /// The trial's parameters with each adaptive client parameter at its most probable
    /// arm (ties go to the trial's own value): what the trial reports as its result.
    #[must_use]
    pub fn best(&self) -> Params {
        let mut params = self.trial.clone();
        for b in &self.bandits {
            params.insert(b.name.clone(), b.arms[b.best()].value.clone());
        }
        params
    }

    /// The arms, their probabilities and the counters, for a trial's report.
    #[must_use]
    pub fn summary(&self) -> PolicySummary {
        PolicySummary {
            rounds: self.rounds,
            rewards_used: self.rewards_used,
            rewards_skipped: self.rewards_skipped,
            baseline: (self.baseline_weight > 0.0).then(|| self.baseline_sum / self.baseline_weight),
            params: self
                .bandits
                .iter()
                .map(|b| ParamSummary {
                    name: b.name.clone(),
                    arms: b
                        .arms
                        .iter()
                        .zip(&b.probs)
                        .map(|(a, &probability)| ArmSummary {
                            value: a.value.clone(),
                            probability,
                            origin: a.origin,
                            draws: a.draws,
                            proposals: a.proposals,
                        })
                        .collect(),
                    best: b.best(),
                    proposals: b.proposals,
                    proposals_over_limit: b.proposals_over_limit,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
