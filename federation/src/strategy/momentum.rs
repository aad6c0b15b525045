//! FedAvgM (Hsu et al. 2019): server momentum over the averaged delta.

use serde::{Deserialize, Serialize};

use super::{Aggregation, FedAvg, Strategy, StrategyError, StrategyState, check_len, check_lr};

/// Parameters of [`FedAvgM`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FedAvgMConfig {
    /// Server learning rate η.
    pub server_learning_rate: f64,
    /// Momentum β in `[0, 1)` (0 is FedAvg).
    pub momentum: f64,
}

impl Default for FedAvgMConfig {
    fn default() -> Self {
        Self {
            server_learning_rate: 1.0,
            momentum: 0.9,
        }
    }
}

impl FedAvgMConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`StrategyError::InvalidConfig`] for a momentum outside `[0, 1)` or a bad
    /// learning rate.
    pub fn validate(&self) -> Result<(), StrategyError> {
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(StrategyError::InvalidConfig {
                strategy: "fedavgm",
                reason: format!("momentum must be in [0, 1), got {}", self.momentum),
            });
        }
        check_lr("fedavgm", self.server_learning_rate)
    }
}

/// Server momentum: `v ← β v + Δ`, `global ← global + η v`, with `Δ` the inner
/// strategy's aggregate (the sample-weighted mean for the default [`FedAvg`]).
///
/// The velocity (one model's worth) is the strategy's state: see [`Strategy::state`].
#[derive(Debug, Clone)]
pub struct FedAvgM<S = FedAvg> {
    inner: S,
    server_learning_rate: f64,
    momentum: f32,
    velocity: Vec<f32>,
}

impl FedAvgM<FedAvg> {
    /// FedAvgM over FedAvg's weighted mean.
    ///
    /// # Errors
    /// As [`FedAvgMConfig::validate`].
    pub fn new(config: FedAvgMConfig) -> Result<Self, StrategyError> {
        Self::over(FedAvg::default(), config)
    }
}

impl<S: Strategy> FedAvgM<S> {
    /// Server momentum over the aggregation of `inner` (whose own `apply` is not used).
    ///
    /// # Errors
    /// As [`FedAvgMConfig::validate`].
    pub fn over(inner: S, config: FedAvgMConfig) -> Result<Self, StrategyError> {
        config.validate()?;
        Ok(Self {
            inner,
            server_learning_rate: config.server_learning_rate,
            momentum: config.momentum as f32,
            velocity: Vec::new(),
        })
    }
}

impl<S: Strategy> Strategy for FedAvgM<S> {
    fn name(&self) -> &'static str {
        "fedavgm"
    }

    fn needs_individual_updates(&self) -> bool {
        self.inner.needs_individual_updates()
    }

    fn begin_round(&mut self, round: u64, numel: usize) -> Box<dyn Aggregation> {
        self.inner.begin_round(round, numel)
    }

    fn apply(&mut self, global: &mut [f32], aggregated: &[f32]) -> Result<(), StrategyError> {
        check_len(global.len(), aggregated.len())?;
        if self.velocity.is_empty() {
            self.velocity = vec![0.0; global.len()];
        }
        check_len(self.velocity.len(), global.len())?;
        let (beta, lr) = (self.momentum, self.server_learning_rate as f32);
        for ((g, v), &d) in global.iter_mut().zip(&mut self.velocity).zip(aggregated) {
            *v = beta * *v + d;
            *g += lr * *v;
        }
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
        StrategyState::Momentum {
            server_learning_rate: self.server_learning_rate,
            velocity: self.velocity.clone(),
        }
    }

    fn load_state(&mut self, state: StrategyState) -> Result<(), StrategyError> {
        match state {
            StrategyState::Momentum {
                server_learning_rate,
                velocity,
            } => {
                check_lr(self.name(), server_learning_rate)?;
                self.server_learning_rate = server_learning_rate;
                self.velocity = velocity;
                Ok(())
            }
            other => Err(StrategyError::StateMismatch {
                strategy: self.name(),
                found: other.kind(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn momentum_two_steps_by_hand() {
        let mut s = FedAvgM::new(FedAvgMConfig {
            server_learning_rate: 0.5,
            momentum: 0.9,
        })
        .unwrap();
        let mut global = vec![0.0, 1.0];
        // v = [1, -2]; g = [0.5, 0]
        s.apply(&mut global, &[1.0, -2.0]).unwrap();
        assert_eq!(global, vec![0.5, 0.0]);
        // v = 0.9*[1, -2] + [1, 0] = [1.9, -1.8]; g = [0.5 + 0.95, 0 - 0.9]
        s.apply(&mut global, &[1.0, 0.0]).unwrap();
        assert!((global[0] - 1.45).abs() < 1e-6 && (global[1] + 0.9).abs() < 1e-6);
    }

    #[test]
    fn state_round_trips_and_resumes_identically() {
        let mut a = FedAvgM::new(FedAvgMConfig::default()).unwrap();
        let mut ga = vec![0.0; 2];
        a.apply(&mut ga, &[1.0, 2.0]).unwrap();
        let json = serde_json::to_string(&a.state()).unwrap();
        let mut b = FedAvgM::new(FedAvgMConfig::default()).unwrap();
        b.load_state(serde_json::from_str(&json).unwrap()).unwrap();
        let mut gb = ga.clone();
        a.apply(&mut ga, &[0.5, 0.5]).unwrap();
        b.apply(&mut gb, &[0.5, 0.5]).unwrap();
        assert_eq!(ga, gb);
        assert!(b.load_state(StrategyState::Stateless).is_err());
    }
}
