//! FedAvg (McMahan et al. 2017): the sample-weighted mean of the updates.

use serde::{Deserialize, Serialize};

use super::{Aggregation, Strategy, StrategyError, UpdateMeta, check_len, check_lr, kernels};

/// Parameters of [`FedAvg`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FedAvgConfig {
    /// Server learning rate η: the global model moves by η times the mean delta
    /// (1 is plain FedAvg).
    pub server_learning_rate: f64,
}

impl Default for FedAvgConfig {
    fn default() -> Self {
        Self {
            server_learning_rate: 1.0,
        }
    }
}

impl FedAvgConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`StrategyError::InvalidConfig`] for a learning rate that is not finite and positive.
    pub fn validate(&self) -> Result<(), StrategyError> {
        check_lr("fedavg", self.server_learning_rate)
    }
}

/// Sample-weighted federated averaging: `global += η · Σ nₖ Δₖ / Σ nₖ`.
///
/// Aggregation streams ([`WeightedMean`]): memory is one model's worth whatever the
/// cohort size. FedProx, FedAvgM and the adaptive optimizers reuse this aggregation.
#[derive(Debug, Clone)]
pub struct FedAvg {
    server_learning_rate: f64,
}

impl FedAvg {
    /// FedAvg with the given parameters.
    ///
    /// # Errors
    /// As [`FedAvgConfig::validate`].
    pub fn new(config: FedAvgConfig) -> Result<Self, StrategyError> {
        config.validate()?;
        Ok(Self {
            server_learning_rate: config.server_learning_rate,
        })
    }
}

impl Default for FedAvg {
    fn default() -> Self {
        Self {
            server_learning_rate: 1.0,
        }
    }
}

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }

    fn needs_individual_updates(&self) -> bool {
        false
    }

    fn begin_round(&mut self, _round: u64, numel: usize) -> Box<dyn Aggregation> {
        Box::new(WeightedMean::new(numel))
    }

    fn apply(&mut self, global: &mut [f32], aggregated: &[f32]) -> Result<(), StrategyError> {
        check_len(global.len(), aggregated.len())?;
        kernels::axpy(global, self.server_learning_rate as f32, aggregated);
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
}

/// Running sample-weighted mean of deltas, folded in as they arrive.
///
/// Holds one running sum of `numel` values, allocated on the first update (which is
/// scaled into it rather than added to zeros), and returns it scaled in place.
#[derive(Debug, Clone)]
pub struct WeightedMean {
    numel: usize,
    sum: Vec<f32>,
    total_weight: f64,
    updates: usize,
}

impl WeightedMean {
    /// An empty mean over `numel` parameters.
    pub fn new(numel: usize) -> Self {
        Self {
            numel,
            sum: Vec::new(),
            total_weight: 0.0,
            updates: 0,
        }
    }
}

impl Aggregation for WeightedMean {
    fn add(&mut self, delta: &[f32], weight: u64, _meta: &UpdateMeta<'_>) -> Result<(), StrategyError> {
        check_len(self.numel, delta.len())?;
        if weight == 0 {
            return Err(StrategyError::ZeroWeight);
        }
        let w = weight as f32;
        if self.updates == 0 {
            self.sum = kernels::scaled(w, delta);
        } else {
            kernels::axpy(&mut self.sum, w, delta);
        }
        self.total_weight += weight as f64;
        self.updates += 1;
        Ok(())
    }

    fn updates(&self) -> usize {
        self.updates
    }

    fn finish(self: Box<Self>) -> Result<Vec<f32>, StrategyError> {
        if self.updates == 0 {
            return Err(StrategyError::NoUpdates { strategy: "fedavg" });
        }
        let mut sum = self.sum;
        kernels::scale(&mut sum, (1.0 / self.total_weight) as f32);
        Ok(sum)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn meta() -> UpdateMeta<'static> {
        UpdateMeta::new("a", 1.0)
    }

    pub(crate) fn run(strategy: &mut dyn Strategy, updates: &[(&[f32], u64)]) -> Result<Vec<f32>, StrategyError> {
        let mut agg = strategy.begin_round(1, updates[0].0.len());
        for &(d, w) in updates {
            agg.add(d, w, &meta())?;
        }
        agg.finish()
    }

    #[test]
    fn weighted_mean_matches_hand_computation() {
        let mut s = FedAvg::default();
        let delta = run(&mut s, &[(&[1.0, 0.0, -3.0], 10), (&[4.0, 2.0, 3.0], 30)]).unwrap();
        // (10*1 + 30*4)/40 = 3.25 ; (0 + 60)/40 = 1.5 ; (-30 + 90)/40 = 1.5
        assert_eq!(delta, vec![3.25, 1.5, 1.5]);
        let mut global = vec![1.0, 1.0, 1.0];
        s.apply(&mut global, &delta).unwrap();
        assert_eq!(global, vec![4.25, 2.5, 2.5]);
    }

    #[test]
    fn server_learning_rate_scales_the_step() {
        let mut s = FedAvg::new(FedAvgConfig {
            server_learning_rate: 0.5,
        })
        .unwrap();
        let mut global = vec![1.0, 1.0];
        s.apply(&mut global, &[2.0, -4.0]).unwrap();
        assert_eq!(global, vec![2.0, -1.0]);
        s.set_server_learning_rate(2.0).unwrap();
        assert_eq!(s.server_learning_rate(), Some(2.0));
        assert!(s.set_server_learning_rate(0.0).is_err());
    }

    #[test]
    fn refuses_bad_updates_and_empty_rounds() {
        let mut s = FedAvg::default();
        let mut agg = s.begin_round(1, 2);
        assert_eq!(
            agg.add(&[1.0], 1, &meta()),
            Err(StrategyError::LengthMismatch { expected: 2, got: 1 })
        );
        assert_eq!(agg.add(&[1.0, 2.0], 0, &meta()), Err(StrategyError::ZeroWeight));
        assert_eq!(agg.updates(), 0);
        assert!(matches!(agg.finish(), Err(StrategyError::NoUpdates { .. })));
        let mut global = vec![0.0; 3];
        assert!(s.apply(&mut global, &[1.0, 1.0]).is_err());
        assert_eq!(global, vec![0.0; 3]);
    }
}
