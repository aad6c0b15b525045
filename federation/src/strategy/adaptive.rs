//! Adaptive server optimizers: FedAdagrad, FedYogi, FedAdam (Reddi et al. 2021,
//! "Adaptive Federated Optimization", Algorithm 2).

use serde::{Deserialize, Serialize};

use super::{Aggregation, FedAvg, Strategy, StrategyError, StrategyState, check_len, check_lr};

/// Which second-moment update the server optimizer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaptiveRule {
    /// `v ← v + Δ²`.
    Adagrad,
    /// `v ← v − (1 − β₂) Δ² sign(v − Δ²)`.
    Yogi,
    /// `v ← β₂ v + (1 − β₂) Δ²`.
    Adam,
}

impl AdaptiveRule {
    /// The strategy name (`fedadagrad`, `fedyogi`, `fedadam`).
    pub fn strategy_name(self) -> &'static str {
        match self {
            Self::Adagrad => "fedadagrad",
            Self::Yogi => "fedyogi",
            Self::Adam => "fedadam",
        }
    }
}

/// Parameters of [`FedOpt`]; the defaults are within the ranges Reddi et al. tune over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Server learning rate η.
    pub server_learning_rate: f64,
    /// First-moment decay β₁ in `[0, 1)`.
    pub beta1: f64,
    /// Second-moment decay β₂ in `[0, 1)` (unused by Adagrad).
    pub beta2: f64,
    /// Adaptivity τ > 0: the denominator is `√v + τ`, and `v` starts at `τ²`.
    pub tau: f64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            server_learning_rate: 0.01,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        }
    }
}

impl AdaptiveConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`StrategyError::InvalidConfig`] naming the parameter out of range.
    pub fn validate(&self, rule: AdaptiveRule) -> Result<(), StrategyError> {
        let strategy = rule.strategy_name();
        for (name, value) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(StrategyError::InvalidConfig {
                    strategy,
                    reason: format!("{name} must be in [0, 1), got {value}"),
                });
            }
        }
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return Err(StrategyError::InvalidConfig {
                strategy,
                reason: format!("tau must be finite and > 0, got {}", self.tau),
            });
        }
        check_lr(strategy, self.server_learning_rate)
    }
}

/// A server optimizer over the inner strategy's aggregate `Δ` (FedAvg's weighted mean by
/// default), treating `Δ` as a pseudo-gradient step:
///
/// ```text
/// m ← β₁ m + (1 − β₁) Δ
/// v ← (rule, see AdaptiveRule)
/// global ← global + η m / (√v + τ)
/// ```
///
/// As in the paper: `m` starts at 0, `v` at `τ²`, and there is no bias correction.
/// The moments (two models' worth) are the strategy's state: see [`Strategy::state`].
#[derive(Debug, Clone)]
pub struct FedOpt<S = FedAvg> {
    inner: S,
    rule: AdaptiveRule,
    server_learning_rate: f64,
    beta1: f32,
    beta2: f32,
    tau: f32,
    step: u64,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl FedOpt<FedAvg> {
    /// `rule` over FedAvg's weighted mean.
    ///
    /// # Errors
    /// As [`AdaptiveConfig::validate`].
    pub fn new(rule: AdaptiveRule, config: AdaptiveConfig) -> Result<Self, StrategyError> {
        Self::over(FedAvg::default(), rule, config)
    }
}

impl<S: Strategy> FedOpt<S> {
    /// `rule` over the aggregation of `inner` (whose own `apply` is not used).
    ///
    /// # Errors
    /// As [`AdaptiveConfig::validate`].
    pub fn over(inner: S, rule: AdaptiveRule, config: AdaptiveConfig) -> Result<Self, StrategyError> {
        config.validate(rule)?;
        Ok(Self {
            inner,
            rule,
            server_learning_rate: config.server_learning_rate,
            beta1: config.beta1 as f32,
            beta2: config.beta2 as f32,
            tau: config.tau as f32,
            step: 0,
            m: Vec::new(),
            v: Vec::new(),
        })
    }

    /// Rounds applied so far.
    pub fn step(&self) -> u64 {
        self.step
    }
}

impl<S: Strategy> Strategy for FedOpt<S> {
    fn name(&self) -> &'static str {
        self.rule.strategy_name()
    }

    fn needs_individual_updates(&self) -> bool {
        self.inner.needs_individual_updates()
    }

    fn begin_round(&mut self, round: u64, numel: usize) -> Box<dyn Aggregation> {
        self.inner.begin_round(round, numel)
    }

    fn apply(&mut self, global: &mut [f32], aggregated: &[f32]) -> Result<(), StrategyError> {
        check_len(global.len(), aggregated.len())?;
        if self.m.is_empty() {
            self.m = vec![0.0; global.len()];
            self.v = vec![self.tau * self.tau; global.len()];
        }
        check_len(self.m.len(), global.len())?;
        check_len(self.v.len(), global.len())?;
        let (b1, b2, tau, lr) = (self.beta1, self.beta2, self.tau, self.server_learning_rate as f32);
        let moments = self.m.iter_mut().zip(self.v.iter_mut());
        for ((g, (m, v)), &d) in global.iter_mut().zip(moments).zip(aggregated) {
            let d2 = d * d;
            *m = b1 * *m + (1.0 - b1) * d;
            *v = match self.rule {
                AdaptiveRule::Adagrad => *v + d2,
                AdaptiveRule::Yogi => *v - (1.0 - b2) * d2 * sign(*v - d2),
                AdaptiveRule::Adam => b2 * *v + (1.0 - b2) * d2,
            };
            *g += lr * *m / (v.sqrt() + tau);
        }
        self.step += 1;
        Ok(())
    }

    fn server_learning_rate(&self) -> Option<f64> {
        Some(self.server_learning_rate)
    }

    fn set_server_learning_rate(&mut self, lr: f64) -> Result<(), StrategyError> {
        check_lr(self.name(), lr)?;
        self.server_learning_rate = lr;
        Ok(())
    }

    fn state(&self) -> StrategyState {
        StrategyState::Adaptive {
            rule: self.rule,
            server_learning_rate: self.server_learning_rate,
            step: self.step,
            m: self.m.clone(),
            v: self.v.clone(),
        }
    }

    fn load_state(&mut self, state: StrategyState) -> Result<(), StrategyError> {
        match state {
            StrategyState::Adaptive {
                rule,
                server_learning_rate,
                step,
                m,
                v,
            } if rule == self.rule => {
                check_lr(self.name(), server_learning_rate)?;
                check_len(m.len(), v.len())?;
                self.server_learning_rate = server_learning_rate;
                self.step = step;
                self.m = m;
                self.v = v;
                Ok(())
            }
            StrategyState::Adaptive { rule, .. } => Err(StrategyError::StateMismatch {
                strategy: self.name(),
                found: rule.strategy_name(),
            }),
            other => Err(StrategyError::StateMismatch {
                strategy: self.name(),
                found: other.kind(),
            }),
        }
    }
}

/// Sign with `sign(0) = 0` (`f32::signum` gives ±1 for ±0).
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: AdaptiveConfig = AdaptiveConfig {
        server_learning_rate: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 0.1,
    };

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-6
    }

    /// Two rounds on one parameter, starting at 1.0, with Δ = 0.2 then Δ = -0.1.
    /// m₀ = 0, v₀ = τ² = 0.01.
    fn two_steps(rule: AdaptiveRule) -> (f32, f32) {
        let mut s = FedOpt::new(rule, CONFIG).unwrap();
        let mut g = vec![1.0f32];
        s.apply(&mut g, &[0.2]).unwrap();
        let first = g[0];
        s.apply(&mut g, &[-0.1]).unwrap();
        assert_eq!(s.step(), 2);
        (first, g[0])
    }

    #[test]
    fn adam_by_hand() {
        let (x1, x2) = two_steps(AdaptiveRule::Adam);
        // m1 = 0.1*0.2 = 0.02; v1 = 0.99*0.01 + 0.01*0.04 = 0.0103
        // x1 = 1 + 0.1*0.02/(sqrt(0.0103) + 0.1) = 1.00992611...
        assert!(close(x1, 1.0 + 0.002 / (0.0103f64.sqrt() + 0.1)));
        // m2 = 0.9*0.02 - 0.01 = 0.008; v2 = 0.99*0.0103 + 0.01*0.01 = 0.010297
        assert!(close(x2, f64::from(x1) + 0.1 * 0.008 / (0.010297f64.sqrt() + 0.1)));
        assert!((x1 - 1.009_926_1).abs() < 1e-6);
    }

    #[test]
    fn yogi_by_hand() {
        let (x1, x2) = two_steps(AdaptiveRule::Yogi);
        // v1 = 0.01 - 0.01*0.04*sign(0.01 - 0.04) = 0.0104
        assert!(close(x1, 1.0 + 0.002 / (0.0104f64.sqrt() + 0.1)));
        // v2 = 0.0104 - 0.01*0.01*sign(0.0104 - 0.01) = 0.0103
        assert!(close(x2, f64::from(x1) + 0.1 * 0.008 / (0.0103f64.sqrt() + 0.1)));
    }

    #[test]
    fn adagrad_by_hand() {
        let (x1, x2) = two_steps(AdaptiveRule::Adagrad);
        // v1 = 0.01 + 0.04 = 0.05; v2 = 0.05 + 0.01 = 0.06
        assert!(close(x1, 1.0 + 0.002 / (0.05f64.sqrt() + 0.1)));
        assert!(close(x2, f64::from(x1) + 0.1 * 0.008 / (0.06f64.sqrt() + 0.1)));
    }

    #[test]
    fn state_round_trips_through_serde_and_resumes_identically() {
        let mut a = FedOpt::new(AdaptiveRule::Yogi, CONFIG).unwrap();
        let mut ga = vec![0.5f32, -0.25, 2.0];
        a.apply(&mut ga, &[0.1, -0.3, 0.0]).unwrap();
        let state = a.state();
        let json = serde_json::to_string(&state).unwrap();
        let back: StrategyState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);

        let mut b = FedOpt::new(AdaptiveRule::Yogi, CONFIG).unwrap();
        b.load_state(back).unwrap();
        let mut gb = ga.clone();
        a.apply(&mut ga, &[0.2, 0.2, -0.2]).unwrap();
        b.apply(&mut gb, &[0.2, 0.2, -0.2]).unwrap();
        assert_eq!(ga, gb);
        assert_eq!(b.step(), 2);

        let mut adam = FedOpt::new(AdaptiveRule::Adam, CONFIG).unwrap();
        assert!(matches!(
            adam.load_state(state),
            Err(StrategyError::StateMismatch { .. })
        ));
        let mut short = vec![0.0f32; 2];
        assert!(b.apply(&mut short, &[0.0, 0.0]).is_err());
    }

    #[test]
    fn rejects_out_of_range_parameters() {
        for bad in [
            AdaptiveConfig { beta1: 1.0, ..CONFIG },
            AdaptiveConfig { tau: 0.0, ..CONFIG },
            AdaptiveConfig {
                server_learning_rate: f64::NAN,
                ..CONFIG
            },
        ] {
            assert!(FedOpt::new(AdaptiveRule::Adam, bad).is_err());
        }
    }
}
