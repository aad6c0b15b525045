//! q-FedAvg (Li et al. 2020, "Fair Resource Allocation in Federated Learning",
//! Algorithm 2): updates of agents the global model serves badly count for more.
//!
//! # Derivation with our sign convention
//! The paper, with `w` the global model, `w̄ₖ` agent k's local model, `Fₖ` its loss at
//! `w` and `L` a Lipschitz estimate (`1 / local learning rate`):
//!
//! ```text
//! Δwₖ = L (w − w̄ₖ)
//! Δₖ  = Fₖ^q Δwₖ
//! hₖ  = q Fₖ^(q−1) ||Δwₖ||² + L Fₖ^q
//! w'  = w − Σₖ Δₖ / Σₖ hₖ
//! ```
//!
//! Our deltas are `dₖ = w̄ₖ − w`, so `Δwₖ = −L dₖ` and `||Δwₖ||² = L² ||dₖ||²`:
//!
//! ```text
//! w' = w + L Σₖ Fₖ^q dₖ / Σₖ (q Fₖ^(q−1) L² ||dₖ||² + L Fₖ^q)
//! ```
//!
//! Both sums fold in one pass per update, so aggregation streams like FedAvg. With
//! `q = 0`, `hₖ = L` and the step is the unweighted mean of the deltas.

use serde::{Deserialize, Serialize};

use super::{Aggregation, Strategy, StrategyError, UpdateMeta, check_len, kernels};

/// Losses below this are raised to it, so `Fₖ^(q−1)` stays finite for `q < 1`.
const MIN_LOSS: f64 = 1e-10;

/// Parameters of [`QFedAvg`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QFedAvgConfig {
    /// Fairness exponent q ≥ 0 (0: unweighted mean; larger: more weight to high-loss agents).
    pub q: f64,
    /// The agents' local learning rate; `L = 1 / learning_rate`.
    pub learning_rate: f64,
}

impl Default for QFedAvgConfig {
    fn default() -> Self {
        Self {
            q: 1.0,
            learning_rate: 0.01,
        }
    }
}

impl QFedAvgConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`StrategyError::InvalidConfig`] for a negative or non-finite q, or a learning
    /// rate that is not finite and positive.
    pub fn validate(&self) -> Result<(), StrategyError> {
        if !(self.q.is_finite() && self.q >= 0.0) {
            return Err(StrategyError::InvalidConfig {
                strategy: "qfedavg",
                reason: format!("q must be finite and >= 0, got {}", self.q),
            });
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(StrategyError::InvalidConfig {
                strategy: "qfedavg",
                reason: format!(
                    "learning_rate (the agents' local rate, L = 1/learning_rate) must be finite and > 0, got {}",
                    self.learning_rate
                ),
            });
        }
        Ok(())
    }
}

/// q-FedAvg: the server step weights each delta by `Fₖ^q` (`Fₖ` = the agent's
/// `loss_before`) and normalises by `Σ hₖ`; see the [module docs](self) for the formula.
///
/// Sample counts are not used (the paper samples agents in proportion to their data
/// instead). Each update's norm enters the step, so the rule needs individual updates
/// and cannot run under secure aggregation as implemented.
#[derive(Debug, Clone)]
pub struct QFedAvg {
    q: f64,
    lipschitz: f64,
}

impl QFedAvg {
    /// q-FedAvg with the given parameters.
    ///
    /// # Errors
    /// As [`QFedAvgConfig::validate`].
    pub fn new(config: QFedAvgConfig) -> Result<Self, StrategyError> {
        config.validate()?;
        Ok(Self {
            q: config.q,
            lipschitz: 1.0 / config.learning_rate,
        })
    }
}

impl Strategy for QFedAvg {
    fn name(&self) -> &'static str {
        "qfedavg"
    }

    fn needs_individual_updates(&self) -> bool {
        true
    }

    fn begin_round(&mut self, _round: u64, numel: usize) -> Box<dyn Aggregation> {
        Box::new(QFedAvgAggregation {
            q: self.q,
            lipschitz: self.lipschitz,
            numel,
            numerator: Vec::new(),
            h_sum: 0.0,
            updates: 0,
        })
    }

    fn apply(&mut self, global: &mut [f32], aggregated: &[f32]) -> Result<(), StrategyError> {
        check_len(global.len(), aggregated.len())?;
        kernels::axpy(global, 1.0, aggregated);
        Ok(())
    }
}

/// Running `Σ Fₖ^q dₖ` and `Σ hₖ`.
#[derive(Debug, Clone)]
struct QFedAvgAggregation {
    q: f64,
    lipschitz: f64,
    numel: usize,
    numerator: Vec<f32>,
    h_sum: f64,
    updates: usize,
}

impl Aggregation for QFedAvgAggregation {
    fn add(&mut self, delta: &[f32], _weight: u64, meta: &UpdateMeta<'_>) -> Result<(), StrategyError> {
        check_len(self.numel, delta.len())?;
        let loss = meta.loss_before;
        if !(loss.is_finite() && loss >= 0.0) {
            return Err(StrategyError::InvalidLoss { loss });
        }
        let f = loss.max(MIN_LOSS);
        let fq = f.powf(self.q);
        if self.numerator.is_empty() {
            self.numerator = vec![0.0; self.numel];
        }
        let norm2 = kernels::axpy_norm2(&mut self.numerator, fq as f32, delta);
        let l = self.lipschitz;
        // q·F^(q−1) is 0 at q = 0 whatever F is.
        let dfq = if self.q == 0.0 {
            0.0
        } else {
            self.q * f.powf(self.q - 1.0)
        };
        self.h_sum += dfq * l * l * norm2 + l * fq;
        self.updates += 1;
        Ok(())
    }

    fn updates(&self) -> usize {
        self.updates
    }

    fn finish(self: Box<Self>) -> Result<Vec<f32>, StrategyError> {
        if self.updates == 0 {
            return Err(StrategyError::NoUpdates { strategy: "qfedavg" });
        }
        let mut step = self.numerator;
        kernels::scale(&mut step, (self.lipschitz / self.h_sum) as f32);
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(q: f64, lr: f64, updates: &[(&[f32], f64)]) -> Vec<f32> {
        let mut s = QFedAvg::new(QFedAvgConfig { q, learning_rate: lr }).unwrap();
        let mut agg = s.begin_round(1, updates[0].0.len());
        for (i, &(d, loss)) in updates.iter().enumerate() {
            agg.add(d, 1 + i as u64 * 100, &UpdateMeta::new("a", loss)).unwrap();
        }
        agg.finish().unwrap()
    }

    #[test]
    fn q_zero_is_the_unweighted_mean() {
        let step = run(
            0.0,
            0.1,
            &[(&[1.0, -2.0], 0.3), (&[3.0, 4.0], 2.0), (&[-1.0, 1.0], 0.0)],
        );
        assert_eq!(step, vec![1.0, 1.0]);
    }

    #[test]
    fn q_one_by_hand_from_the_paper() {
        // L = 2. Agent 1: d = [1, 0], F = 2; agent 2: d = [0, 2], F = 1.
        // Paper: Δw1 = [-2, 0], Δw2 = [0, -4]; Δ1 = 2Δw1 = [-4, 0], Δ2 = [0, -4];
        // h1 = 1·1·4 + 2·2 = 8, h2 = 1·1·16 + 2·1 = 18;
        // w' = w - (Δ1 + Δ2)/26 = w + [4/26, 4/26].
        let step = run(1.0, 0.5, &[(&[1.0, 0.0], 2.0), (&[0.0, 2.0], 1.0)]);
        for s in step {
            assert!((s - 2.0 / 13.0).abs() < 1e-7, "{s}");
        }
    }

    #[test]
    fn higher_q_leans_towards_high_loss_agents() {
        let updates: &[(&[f32], f64)] = &[(&[1.0], 0.5), (&[-1.0], 2.0)];
        let step0 = run(0.0, 0.1, updates)[0];
        let step2 = run(2.0, 0.1, updates)[0];
        assert_eq!(step0, 0.0);
        assert!(step2 < 0.0, "the high-loss agent's direction should win, got {step2}");
    }

    #[test]
    fn refuses_unusable_losses() {
        let mut s = QFedAvg::new(QFedAvgConfig::default()).unwrap();
        let mut agg = s.begin_round(1, 1);
        for loss in [f64::NAN, -1.0, f64::INFINITY] {
            assert!(matches!(
                agg.add(&[1.0], 1, &UpdateMeta::new("a", loss)),
                Err(StrategyError::InvalidLoss { .. })
            ));
        }
        assert_eq!(agg.updates(), 0);
    }
}
