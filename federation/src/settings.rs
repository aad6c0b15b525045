//! What a federation reads: its own sections of the aggregator's configuration, and
//! nothing of the service around it (listeners, PKI, stores, dashboards, searches).
//!
//! The aggregator's TOML holds these sections under the same names (`[federation]`,
//! `[client]`, `[model]`, `[strategy]`, `[server_lr]`, `[fairness]`, `[privacy]`,
//! `[secure_aggregation]`); the service turns its configuration into a [`Settings`] value
//! and every federation, of a run or of a trial, is built from one.

use std::sync::Arc;
use std::time::Duration;

use fedtune_protocol::freeze::Trainable;
use fedtune_protocol::{ClientHyperparameters, MlpSpec, ModelSpec};
use serde::{Deserialize, Serialize};

use crate::fairness::Constraint;
use crate::privacy::{Clipping, NoisePlacement, PrivacyConfig};
use crate::server_lr::ServerLrConfig;
use crate::strategy::StrategyConfig;

/// A setting that cannot hold, in words that name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// Everything a [`Federation`](crate::Federation) reads.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Rounds, cohorts, deadlines and limits.
    pub federation: FederationConfig,
    /// The model trained, what of it is frozen, and where it starts.
    pub model: ModelSettings,
    /// The client hyperparameters every task carries unless a tuner chooses them.
    pub client: ClientHyperparameters,
    /// The aggregation strategy.
    pub strategy: StrategyConfig,
    /// The server learning rate's feedback loop.
    pub server_lr: ServerLrConfig,
    /// Fairness constraints and cohort selection.
    pub fairness: FairnessConfig,
    /// Secure aggregation.
    pub secure_aggregation: SecureAggregationConfig,
    /// Client-level differential privacy.
    pub privacy: PrivacyConfig,
}

/// The model a federation trains.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    /// The architecture agents train (with its LoRA adapters, if any).
    pub spec: ModelSpec,
    /// Freeze patterns over module paths (see [`fedtune_protocol::freeze`]): those tensors
    /// keep their starting values, agents do not train or send them.
    pub freeze: Vec<String>,
    /// The parameters the global model starts from; without them a fresh initialisation
    /// seeded by `federation.seed`.
    pub initial: Option<Arc<Vec<f32>>>,
    /// Class names in id order, which tasks carry to agents (empty: ids only).
    pub classes: Vec<String>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSpec::Mlp(MlpSpec {
            input: 64,
            hidden: vec![64],
            classes: 10,
        })
        .into()
    }
}

impl From<ModelSpec> for ModelSettings {
    fn from(spec: ModelSpec) -> Self {
        Self {
            spec,
            freeze: Vec::new(),
            initial: None,
            classes: Vec::new(),
        }
    }
}

impl std::ops::Deref for ModelSettings {
    type Target = ModelSpec;

    fn deref(&self) -> &ModelSpec {
        &self.spec
    }
}

impl ModelSettings {
    /// The freeze patterns tasks carry: `freeze`, and those the architecture implies
    /// (frozen batch-norm statistics, see [`fedtune_protocol::NormStats`]).
    #[must_use]
    pub fn frozen(&self) -> Vec<String> {
        let mut frozen = self.freeze.clone();
        for pattern in self.spec.implied_frozen() {
            if !frozen.contains(&pattern) {
                frozen.push(pattern);
            }
        }
        frozen
    }

    /// The part of the model that trains.
    ///
    /// # Errors
    /// [`SettingsError`] when a freeze pattern names no tensor or every tensor is frozen.
    pub fn trainable(&self) -> Result<Trainable, SettingsError> {
        Trainable::new(&self.spec.manifest(), &self.frozen()).map_err(|e| SettingsError(format!("model.freeze: {e}")))
    }

    fn validate(&self, max_payload_bytes: u64) -> Result<(), SettingsError> {
        self.spec.validate().map_err(|e| SettingsError(format!("model: {e}")))?;
        let manifest = self.spec.manifest();
        let bytes = manifest.byte_len() as u64;
        if bytes > max_payload_bytes {
            return Err(SettingsError(format!(
                "the model has {bytes} bytes of parameters, above federation.max_payload_bytes ({max_payload_bytes})"
            )));
        }
        self.trainable()?;
        if let Some(initial) = &self.initial
            && initial.len() != manifest.numel()
        {
            return Err(SettingsError(format!(
                "the initial model holds {} parameters, [model] lays out {}",
                initial.len(),
                manifest.numel()
            )));
        }
        Ok(())
    }
}

impl Settings {
    /// Checks every value is usable and the sections agree with each other.
    ///
    /// # Errors
    /// [`SettingsError`] naming the field.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let f = &self.federation;
        let invalid = |m: String| Err(SettingsError(m));
        if f.rounds == 0 {
            return invalid("federation.rounds must be at least 1".into());
        }
        self.privacy.validate().map_err(|e| SettingsError(e.to_string()))?;
        if self.privacy.enabled() {
            match (self.privacy.noise, self.secure_aggregation.enabled) {
                (NoisePlacement::Central, true) => {
                    return invalid(
                        "privacy with central noise clips single updates, which secure aggregation hides from the \
                         aggregator: set privacy.noise = \"distributed\" (each agent clips and adds its share of \
                         the noise before masking) or turn secure aggregation off"
                            .into(),
                    );
                }
                (NoisePlacement::Distributed, false) => {
                    return invalid(
                        "privacy.noise = \"distributed\" needs [secure_aggregation] enabled: without it the \
                         aggregator sees each agent's small share of the noise; use central noise instead"
                            .into(),
                    );
                }
                _ => {}
            }
            if self.privacy.noise == NoisePlacement::Distributed && self.privacy.clipping == Clipping::Adaptive {
                return invalid(
                    "adaptive clipping counts which updates were clipped, which secure aggregation hides: it \
                     needs central noise"
                        .into(),
                );
            }
            let name = self.strategy.name();
            if !["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"].contains(&name) {
                return invalid(format!(
                    "privacy needs a strategy that averages the clipped updates (fedavg, fedprox, fedavgm, fedadam, \
                     fedyogi, fedadagrad); `{name}` does not, so the noise would not bound one agent's influence"
                ));
            }
        }
        if f.min_agents == 0 || f.min_agents > f.max_agents {
            return invalid(format!(
                "federation.min_agents must be between 1 and max_agents ({}), got {}",
                f.max_agents, f.min_agents
            ));
        }
        if !(f.cohort.is_finite() && f.cohort > 0.0) {
            return invalid(format!(
                "federation.cohort must be a positive count or fraction, got {}",
                f.cohort
            ));
        }
        if f.min_updates == 0 {
            return invalid("federation.min_updates must be at least 1".into());
        }
        for (name, secs) in [
            ("wait_for_agents_secs", f.wait_for_agents_secs),
            ("round_timeout_secs", f.round_timeout_secs),
        ] {
            if !(secs.is_finite() && secs > 0.0 && secs < 1e7) {
                return invalid(format!(
                    "federation.{name} must be a positive number of seconds, got {secs}"
                ));
            }
        }
        if f.max_buffered_updates == 0 {
            return invalid("federation.max_buffered_updates must be at least 1".into());
        }
        self.model.validate(f.max_payload_bytes)?;
        self.client
            .validate()
            .map_err(|e| SettingsError(format!("client: {e}")))?;
        let secure = &self.secure_aggregation;
        secure.validate()?;
        self.strategy
            .check(secure.enabled)
            .map_err(|e| SettingsError(format!("strategy: {e}")))?;
        Ok(())
    }
}

/// Secure aggregation (Bonawitz et al. 2017): agents mask their updates with pairwise
/// masks agreed over X25519, so the aggregator learns only the sample-weighted sum of a
/// cohort's updates, and it can still remove the masks of agents that drop out mid-round
/// from the key shares the others reveal.
///
/// Training metrics (losses, accuracies, sample counts) still travel in the clear: the
/// fairness checks need them. Strategies that must see individual updates (robust rules,
/// q-FedAvg) cannot run under it; start-up refuses the combination.
///
/// Large cohorts run SecAgg+ (Bell et al. 2020): each agent masks against and shares its
/// secrets with `degree` neighbours on a random ring instead of the whole cohort, so its
/// work grows with log n rather than n, and `threshold` applies to each neighbourhood (an
/// agent and its neighbours). The guarantee becomes probabilistic over the random graph:
/// it holds unless the dropouts or colluders in some neighbourhood pass its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecureAggregationConfig {
    /// Mask every round's updates.
    pub enabled: bool,
    /// Fraction of a neighbourhood (the whole cohort on the complete graph) whose key
    /// shares reconstruct a secret: each neighbourhood needs more than `threshold ×` its
    /// size of agents (and at least 2) to last until the end, and fewer than that learn
    /// nothing. In (0, 1); 0.5 means a majority.
    pub threshold: f64,
    /// The SecAgg+ graph degree (even; rounded up when odd). Absent: automatic, the
    /// complete graph for cohorts up to [`Self::SPARSE_FROM`] agents and
    /// `2⌈1.5 · log₂ n⌉` neighbours above; 0: the complete graph at every size.
    pub degree: Option<u32>,
    /// Each update coordinate is clipped to `[-clip, clip]` before fixed-point encoding.
    pub clip: f32,
    /// How long the aggregator waits for the agents' answers to each key-exchange step
    /// (public keys, encrypted shares, unmasking shares), in seconds. Training time is
    /// bounded by `federation.round_timeout_secs` as in any round.
    pub step_timeout_secs: f64,
}

impl Default for SecureAggregationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            threshold: 0.5,
            degree: None,
            clip: 16.0,
            step_timeout_secs: 30.0,
        }
    }
}

impl SecureAggregationConfig {
    /// The smallest cohort the automatic degree runs SecAgg+ on: below it the sparse
    /// graph saves little.
    pub const SPARSE_FROM: usize = 33;

    /// The graph degree for a cohort of `cohort` agents; `None` for the complete graph.
    pub fn degree_for(&self, cohort: usize) -> Option<u32> {
        let degree = match self.degree {
            Some(0) => return None,
            Some(d) => d.saturating_add(d % 2),
            None if cohort < Self::SPARSE_FROM => return None,
            None => 2 * (1.5 * (cohort as f64).log2()).ceil() as u32,
        };
        (u64::from(degree) + 1 < cohort as u64).then_some(degree)
    }

    /// Shares needed to reconstruct a secret in a cohort of `cohort` agents: the threshold
    /// of a neighbourhood (the whole cohort on the complete graph).
    pub fn threshold_for(&self, cohort: usize) -> usize {
        let neighbourhood = self.degree_for(cohort).map_or(cohort, |d| d as usize + 1);
        ((self.threshold * neighbourhood as f64).floor() as usize + 1).clamp(2, neighbourhood.max(2))
    }

    /// The wait for each key-exchange step as a duration.
    pub fn step_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.step_timeout_secs)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |m: String| Err(SettingsError(m));
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return invalid(format!(
                "secure_aggregation.threshold must be a fraction in (0, 1), got {}",
                self.threshold
            ));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return invalid(format!("secure_aggregation.clip must be positive, got {}", self.clip));
        }
        if !(self.step_timeout_secs.is_finite() && self.step_timeout_secs > 0.0 && self.step_timeout_secs < 1e7) {
            return invalid(format!(
                "secure_aggregation.step_timeout_secs must be a positive number of seconds, got {}",
                self.step_timeout_secs
            ));
        }
        Ok(())
    }
}

/// How cohorts are picked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Every connected agent equally likely (seeded).
    #[default]
    Uniform,
    /// Favour agents the global model serves badly or that were rarely asked (seeded).
    Fairness,
}

/// Fairness checks run every round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FairnessConfig {
    /// Bounds such as `"worst_10pct_accuracy >= 0.8"`; a violation is logged and recorded
    /// with the round, and a run that ends in violation is reported as infeasible.
    pub constraints: Vec<Constraint>,
    /// How cohorts are picked.
    pub selection: Selection,
}

/// How the federation runs rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Study name, sent with every task.
    pub study: String,
    /// Rounds to run.
    pub rounds: u64,
    /// Agents that must be connected before the first round.
    pub min_agents: usize,
    /// How long to wait for `min_agents` before giving up, in seconds.
    pub wait_for_agents_secs: f64,
    /// Agents per round: a fraction of those connected when in (0, 1] (1.0: all of
    /// them), a count when above 1.
    pub cohort: f64,
    /// Fewer accepted updates than this and a round is not applied.
    pub min_updates: usize,
    /// How long a round waits for stragglers, in seconds.
    pub round_timeout_secs: f64,
    /// Seed for cohort sampling, model initialisation and agents' shuffling.
    pub seed: u64,
    /// Most agents connected at once.
    pub max_agents: usize,
    /// Largest update payload accepted, in bytes.
    pub max_payload_bytes: u64,
    /// Updates buffered in memory at once before being folded into the average.
    pub max_buffered_updates: usize,
    /// The largest sample count one update may weigh with. Every update's claimed count
    /// is also bounded by the training-set size its agent declared when it connected;
    /// each claim cut down is recorded with its round (`bounded_claims`).
    pub max_samples: Option<u64>,
    /// Run a federated evaluation of the final model on every connected agent.
    pub final_evaluation: bool,
    /// Use the loopback transport tuning (large datagrams); only for 127.0.0.1.
    pub loopback: bool,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            study: "default".into(),
            rounds: 30,
            min_agents: 2,
            wait_for_agents_secs: 120.0,
            cohort: 1.0,
            min_updates: 1,
            round_timeout_secs: 300.0,
            seed: 0,
            max_agents: 1024,
            max_payload_bytes: 1 << 30,
            max_buffered_updates: 4,
            max_samples: None,
            final_evaluation: true,
            loopback: false,
        }
    }
}

impl FederationConfig {
    /// How many of `connected` agents a round asks.
    pub fn cohort_size(&self, connected: usize) -> usize {
        let wanted = if self.cohort <= 1.0 {
            (self.cohort * connected as f64).ceil() as usize
        } else {
            self.cohort as usize
        };
        wanted.clamp(1, connected.max(1)).min(connected)
    }

    /// The wait for agents as a duration.
    pub fn wait_for_agents(&self) -> Duration {
        Duration::from_secs_f64(self.wait_for_agents_secs)
    }

    /// The round timeout as a duration.
    pub fn round_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.round_timeout_secs)
    }
}
