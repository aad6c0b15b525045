//! q-FedAvg (Li et al. 2020, "Fair Resource Allocation in Federated Learning",
//! Algorithm 2): updates of agents the global model serves badly count for more.
//!
//! # Derivation with our sign convention
//! The paper minimises `f_q(w) = Σₖ pₖ Fₖ(w)^(q+1) / (q+1)`, with `pₖ` agent k's share
//! of the data. Each round, with `w` the global model, `w̄ₖ` agent k's local model, `Fₖ`
//! its loss at `w` and `L` a Lipschitz estimate (`1 / local learning rate`):
//!
//! ```text
//! Δwₖ = L (w − w̄ₖ)
//! Δₖ  = Fₖ^q Δwₖ
//! hₖ  = q Fₖ^(q−1) ||Δwₖ||² + L Fₖ^q
//! w'  = w − Σₖ Δₖ / Σₖ hₖ
//! ```
//!
//! over a cohort drawn with probability `pₖ`. Our cohorts are drawn uniformly (often all
//! agents), so `pₖ` enters as a weight on both sums instead, `pₖ ∝ nₖ` the agent's
//! training samples; the expected sums are the same, and with `q = 0` the step is exactly
//! FedAvg's sample-weighted mean. Our deltas are `dₖ = w̄ₖ − w`, so `Δwₖ = −L dₖ` and
//! `||Δwₖ||² = L² ||dₖ||²`:
//!
//! ```text
//! w' = w + L Σₖ nₖ Fₖ^q dₖ / Σₖ nₖ (q Fₖ^(q−1) L² ||dₖ||² + L Fₖ^q)
//! ```
//!
//! Both sums fold in one pass per update, so aggregation streams like FedAvg.
//!
//! # Choosing L
//! Dividing through by `L`, the step is the `nₖ Fₖ^q`-weighted mean of the deltas shrunk by
//! the factor `Σ nₖ Fₖ^q / Σ nₖ (Fₖ^q + q Fₖ^(q−1) L ||dₖ||²)`. `L = 1 / lr` is exact
//! for one local SGD step (then `Δwₖ` is the gradient); after `S` local steps `Δwₖ` is
//! about `S` gradients, its squared norm about `S²` times too large, and the step shrinks
//! accordingly (about 4× with 2 epochs of a few steps each in `examples/fairness.rs`). A
//! smaller `L` (a larger [`QFedAvgConfig::learning_rate`]) keeps more of the step; as
//! `L → 0` the rule becomes the loss-reweighted mean `Σ nₖ Fₖ^q dₖ / Σ nₖ Fₖ^q`.

use serde::{Deserialize, Serialize};

use super::{Aggregation, Strategy, StrategyError, UpdateMeta, check_len, kernels};

/// Losses below this are raised to it, so `Fₖ^(q−1)` stays finite for `q < 1`.
const MIN_LOSS: f64 = 1e-10;

/// Parameters of [`QFedAvg`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QFedAvgConfig {
    /// Fairness exponent q ≥ 0 (0: FedAvg; larger: more weight to high-loss agents).
    pub q: f64,
    /// The agents' local learning rate; `L = 1 / learning_rate`. The paper's choice, exact
    /// for one local SGD step; with several local steps a larger value (smaller `L`)
    /// keeps the step from shrinking (see "Choosing L" in the [module docs](self)).
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

/// q-FedAvg: the server step weights each delta by `nₖ Fₖ^q` (`nₖ` = the update's
/// training samples, `Fₖ` = its loss of the global model) and normalises by `Σ nₖ hₖ`; see
/// the [module docs](self) for the formula. With `q = 0` it is FedAvg.
///
/// As in the paper, `Fₖ` is the global model's loss on the agent's training data: the
/// strategy asks agents to measure it with each task (see [`UpdateMeta`]).
///
/// Each update's norm enters the step, so the rule needs individual updates and cannot
/// run under secure aggregation as implemented.
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

    fn needs_train_loss(&self) -> bool {
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

/// Running `Σ nₖ Fₖ^q dₖ` and `Σ nₖ hₖ`.
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
    fn add(&mut self, delta: &[f32], weight: u64, meta: &UpdateMeta<'_>) -> Result<(), StrategyError> {
        check_len(self.numel, delta.len())?;
        if weight == 0 {
            return Err(StrategyError::ZeroWeight);
        }
        let loss = meta.loss_before;
        if !(loss.is_finite() && loss >= 0.0) {
            return Err(StrategyError::InvalidLoss { loss });
        }
        // The paper's pₖ; only ratios matter, so raw sample counts do.
        let p = weight as f64;
        let f = loss.max(MIN_LOSS);
        let fq = p * f.powf(self.q);
        if self.numerator.is_empty() {
            self.numerator = vec![0.0; self.numel];
        }
        let norm2 = kernels::axpy_norm2(&mut self.numerator, fq as f32, delta);
        let l = self.lipschitz;
        // q·F^(q−1) is 0 at q = 0 whatever F is.
        let dfq = if self.q == 0.0 {
            0.0
        } else {
            p * self.q * f.powf(self.q - 1.0)
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

    /// One round over `(delta, samples, loss)` updates.
    fn run(q: f64, lr: f64, updates: &[(&[f32], u64, f64)]) -> Vec<f32> {
        let mut s = QFedAvg::new(QFedAvgConfig { q, learning_rate: lr }).unwrap();
        let mut agg = s.begin_round(1, updates[0].0.len());
        for &(d, samples, loss) in updates {
            agg.add(d, samples, &UpdateMeta::new("a", loss)).unwrap();
        }
        agg.finish().unwrap()
    }

    #[test]
    fn q_zero_is_fedavg() {
        // (1·[1, -2] + 2·[3, 4] + 1·[-1, 1]) / 4, whatever the losses and L.
        let step = run(
            0.0,
            0.1,
            &[(&[1.0, -2.0], 1, 0.3), (&[3.0, 4.0], 2, 2.0), (&[-1.0, 1.0], 1, 0.0)],
        );
        assert_eq!(step, vec![1.5, 1.75]);
    }

    #[test]
    fn q_one_by_hand_from_the_paper() {
        // L = 2. Agent 1: d = [1, 0], F = 2, n = 1; agent 2: d = [0, 2], F = 1, n = 3.
        // Paper: Δw1 = [-2, 0], Δw2 = [0, -4]; Δ1 = 1·2·Δw1 = [-4, 0], Δ2 = 3·1·Δw2 = [0, -12];
        // h1 = 1·(1·1·4 + 2·2) = 8, h2 = 3·(1·1·16 + 2·1) = 54;
        // w' = w - (Δ1 + Δ2)/62 = w + [4/62, 12/62].
        let step = run(1.0, 0.5, &[(&[1.0, 0.0], 1, 2.0), (&[0.0, 2.0], 3, 1.0)]);
        for (s, want) in step.into_iter().zip([2.0 / 31.0, 6.0 / 31.0]) {
            assert!((s - want).abs() < 1e-7, "{s} vs {want}");
        }
    }

    #[test]
    fn small_lipschitz_tends_to_the_loss_weighted_mean() {
        // Weights n·F: 1·2 and 1·1, so the mean is (2·[3] + 1·[0]) / 3 = [2].
        let step = run(1.0, 1e9, &[(&[3.0], 1, 2.0), (&[0.0], 1, 1.0)]);
        assert!((step[0] - 2.0).abs() < 1e-5, "{}", step[0]);
    }

    #[test]
    fn refuses_zero_samples() {
        let mut s = QFedAvg::new(QFedAvgConfig::default()).unwrap();
        let mut agg = s.begin_round(1, 1);
        assert_eq!(
            agg.add(&[1.0], 0, &UpdateMeta::new("a", 1.0)),
            Err(StrategyError::ZeroWeight)
        );
        assert_eq!(agg.updates(), 0);
    }

    #[test]
    fn higher_q_leans_towards_high_loss_agents() {
        let updates: &[(&[f32], u64, f64)] = &[(&[1.0], 1, 0.5), (&[-1.0], 1, 2.0)];
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
