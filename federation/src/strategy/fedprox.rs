//! FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

use serde::{Deserialize, Serialize};

use super::{Aggregation, FedAvg, FedAvgConfig, Strategy, StrategyError};

/// Parameters of [`FedProx`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FedProxConfig {
    /// Proximal coefficient μ ≥ 0 sent to agents (0 makes FedProx FedAvg).
    pub mu: f64,
    /// Server learning rate, as in [`FedAvgConfig`].
    pub server_learning_rate: f64,
}

impl Default for FedProxConfig {
    fn default() -> Self {
        Self {
            mu: 0.01,
            server_learning_rate: 1.0,
        }
    }
}

impl FedProxConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`StrategyError::InvalidConfig`] for a negative or non-finite μ or a bad
    /// learning rate.
    pub fn validate(&self) -> Result<(), StrategyError> {
        if !(self.mu.is_finite() && self.mu >= 0.0) {
            return Err(StrategyError::InvalidConfig {
                strategy: "fedprox",
                reason: format!("mu must be finite and >= 0, got {}", self.mu),
            });
        }
        FedAvgConfig {
            server_learning_rate: self.server_learning_rate,
        }
        .validate()
    }
}

/// FedProx: FedAvg on the server, a proximal term on the agents.
///
/// The server side is exactly [`FedAvg`]; what FedProx adds is μ, which the aggregator
/// sends with each task ([`Strategy::proximal_mu`]) and agents apply by training on
/// `loss + μ/2 ||w - w_global||²`, keeping heterogeneous agents near the global model.
#[derive(Debug, Clone)]
pub struct FedProx {
    inner: FedAvg,
    mu: f64,
}

impl FedProx {
    /// FedProx with the given parameters.
    ///
    /// # Errors
    /// As [`FedProxConfig::validate`].
    pub fn new(config: FedProxConfig) -> Result<Self, StrategyError> {
        config.validate()?;
        Ok(Self {
            inner: FedAvg::new(FedAvgConfig {
                server_learning_rate: config.server_learning_rate,
            })?,
            mu: config.mu,
        })
    }
}

impl Strategy for FedProx {
    fn name(&self) -> &'static str {
        "fedprox"
    }

    fn needs_individual_updates(&self) -> bool {
        self.inner.needs_individual_updates()
    }

    fn begin_round(&mut self, round: u64, numel: usize) -> Box<dyn Aggregation> {
        self.inner.begin_round(round, numel)
    }

    fn apply(&mut self, global: &mut [f32], aggregated: &[f32]) -> Result<(), StrategyError> {
        self.inner.apply(global, aggregated)
    }

    fn proximal_mu(&self) -> Option<f64> {
        Some(self.mu)
    }

    fn server_learning_rate(&self) -> Option<f64> {
        self.inner.server_learning_rate()
    }

    fn set_server_learning_rate(&mut self, lr: f64) -> Result<(), StrategyError> {
        self.inner.set_server_learning_rate(lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::fedavg::tests::run;

    #[test]
    fn aggregates_like_fedavg_and_carries_mu() {
        let mut s = FedProx::new(FedProxConfig {
            mu: 0.1,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.proximal_mu(), Some(0.1));
        let delta = run(&mut s, &[(&[2.0], 1), (&[5.0], 2)]).unwrap();
        assert_eq!(delta, vec![4.0]);
        let mut global = vec![1.0];
        s.apply(&mut global, &delta).unwrap();
        assert_eq!(global, vec![5.0]);
        assert!(
            FedProx::new(FedProxConfig {
                mu: -1.0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
