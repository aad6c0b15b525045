//! Coordinate-wise trimmed mean (Yin et al. 2018).

use serde::{Deserialize, Serialize};

use super::buffered::{Buffered, PerCoordinate};
use super::krum::check_attackers;
use super::{Aggregation, DEFAULT_ATTACKERS, Strategy, StrategyError, check_len, kernels};

/// Parameters of [`TrimmedMean`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrimmedMeanConfig {
    /// Fraction β in `[0, 0.5)` dropped at each end: per coordinate, the `⌊β n⌋` largest
    /// and `⌊β n⌋` smallest values are ignored. Without it, the trim follows `attackers`.
    pub beta: Option<f64>,
    /// The expected share of attacking agents, in `[0, 0.5)`, that sets the trim when
    /// `beta` is not given: `⌈attackers · n⌉` values at each end (at most enough to keep
    /// one), since an attacker's value may land at either end of a coordinate. The
    /// breakdown point is the trimmed share, just under half at most.
    pub attackers: f64,
}

impl Default for TrimmedMeanConfig {
    fn default() -> Self {
        Self {
            beta: None,
            attackers: DEFAULT_ATTACKERS,
        }
    }
}

impl TrimmedMeanConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`StrategyError::InvalidConfig`] for β or the attackers' share outside `[0, 0.5)`.
    pub fn validate(&self) -> Result<(), StrategyError> {
        let bad = |reason: String| StrategyError::InvalidConfig {
            strategy: "trimmed_mean",
            reason,
        };
        if let Some(beta) = self.beta
            && !(0.0..0.5).contains(&beta)
        {
            return Err(bad(format!("beta must be in [0, 0.5), got {beta}")));
        }
        check_attackers("trimmed_mean", self.attackers)
    }

    /// How many values each end of a coordinate loses among `n`.
    fn trim(&self, n: usize) -> usize {
        match self.beta {
            Some(beta) => (beta * n as f64).floor() as usize,
            None => ((self.attackers * n as f64).ceil() as usize).min(n.saturating_sub(1) / 2),
        }
    }
}

/// Each coordinate of the step is the mean of that coordinate across the updates after
/// dropping the `⌊β n⌋` largest and smallest values. Since β < 0.5 at least one value
/// always remains. Sample weights are ignored.
///
/// Buffers every update until the round finishes: `n · numel · 4` bytes (see
/// [`Buffered`]), and needs individual updates, so it cannot run under secure
/// aggregation.
#[derive(Debug, Clone)]
pub struct TrimmedMean {
    config: TrimmedMeanConfig,
}

impl TrimmedMean {
    /// A trimmed mean with the given parameters.
    ///
    /// # Errors
    /// As [`TrimmedMeanConfig::validate`].
    pub fn new(config: TrimmedMeanConfig) -> Result<Self, StrategyError> {
        config.validate()?;
        Ok(Self { config })
    }
}

impl Strategy for TrimmedMean {
    fn name(&self) -> &'static str {
        "trimmed_mean"
    }

    fn needs_individual_updates(&self) -> bool {
        true
    }

    fn begin_round(&mut self, _round: u64, numel: usize) -> Box<dyn Aggregation> {
        let config = self.config.clone();
        Box::new(PerCoordinate {
            strategy: "trimmed_mean",
            buffer: Buffered::new(numel),
            reduce: move |column: &mut [f32]| trimmed_mean(column, config.trim(column.len())),
        })
    }

    fn apply(&mut self, global: &mut [f32], aggregated: &[f32]) -> Result<(), StrategyError> {
        check_len(global.len(), aggregated.len())?;
        kernels::axpy(global, 1.0, aggregated);
        Ok(())
    }
}

/// Mean of `column` without its `trim` smallest and `trim` largest values, reordering it;
/// `O(n)` expected. Needs `2 · trim < column.len()`.
pub(crate) fn trimmed_mean(column: &mut [f32], trim: usize) -> f32 {
    let n = column.len();
    debug_assert!(2 * trim < n);
    let kept = if trim == 0 {
        &mut column[..]
    } else {
        // After these two selections column[trim..n - trim] holds the middle values.
        column.select_nth_unstable_by(trim, f32::total_cmp);
        let rest = &mut column[trim..];
        rest.select_nth_unstable_by(n - 2 * trim, f32::total_cmp);
        &mut rest[..n - 2 * trim]
    };
    let sum: f64 = kept.iter().map(|&x| f64::from(x)).sum();
    (sum / kept.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::fedavg::tests::run;

    fn with_beta(beta: f64) -> TrimmedMeanConfig {
        TrimmedMeanConfig {
            beta: Some(beta),
            ..TrimmedMeanConfig::default()
        }
    }

    #[test]
    fn trims_each_end_by_hand() {
        // n = 5, beta = 0.2 → trim 1 each side per coordinate.
        let mut s = TrimmedMean::new(with_beta(0.2)).unwrap();
        let updates: [(&[f32], u64); 5] = [
            (&[1.0, 100.0], 1),
            (&[2.0, -50.0], 1),
            (&[3.0, 1.0], 1),
            (&[4.0, 2.0], 1),
            (&[1000.0, 3.0], 1),
        ];
        let step = run(&mut s, &updates).unwrap();
        // col 0: drop 1 and 1000 → mean(2, 3, 4) = 3; col 1: drop -50 and 100 → mean(1, 2, 3) = 2.
        assert_eq!(step, vec![3.0, 2.0]);
    }

    #[test]
    fn beta_zero_is_the_plain_mean_and_outliers_are_ignored() {
        let mut plain = TrimmedMean::new(with_beta(0.0)).unwrap();
        assert_eq!(
            run(&mut plain, &[(&[1.0], 1), (&[2.0], 1), (&[6.0], 1)]).unwrap(),
            vec![3.0]
        );

        let mut s = TrimmedMean::new(with_beta(0.25)).unwrap();
        let updates: [(&[f32], u64); 8] = [
            (&[1.0], 1),
            (&[1.2], 1),
            (&[0.8], 1),
            (&[1.0], 1),
            (&[0.9], 1),
            (&[1.1], 1),
            (&[-1e9], 1),
            (&[1e9], 1),
        ];
        // trim 2 each side: drop -1e9, 0.8 and 1.2, 1e9 → mean(0.9, 1, 1, 1.1) = 1.
        let step = run(&mut s, &updates).unwrap();
        assert!((step[0] - 1.0).abs() < 1e-6, "{step:?}");
    }

    #[test]
    fn selection_agrees_with_sorting() {
        for n in [5, 9, 16, 17, 40] {
            let column: Vec<f32> = (0..n).map(|i| ((i * 13) % 7) as f32 * 0.5 - 1.0).collect();
            let trim = n / 4;
            let mut sorted = column.clone();
            sorted.sort_by(f32::total_cmp);
            let kept = &sorted[trim..n - trim];
            let want = kept.iter().map(|&x| f64::from(x)).sum::<f64>() / kept.len() as f64;
            let got = trimmed_mean(&mut column.clone(), trim);
            assert!((f64::from(got) - want).abs() < 1e-6, "n = {n}: {got} vs {want}");
        }
    }

    #[test]
    fn rejects_beta_or_attackers_of_one_half() {
        assert!(TrimmedMean::new(with_beta(0.5)).is_err());
        let half = TrimmedMeanConfig {
            attackers: 0.5,
            ..TrimmedMeanConfig::default()
        };
        assert!(TrimmedMean::new(half).is_err());
    }

    #[test]
    fn the_attackers_share_sets_the_trim() {
        let share = |attackers| TrimmedMeanConfig {
            attackers,
            ..TrimmedMeanConfig::default()
        };
        // ⌈0.2 · 7⌉ = 2 where β = 0.2 trims ⌊1.4⌋ = 1; never past keeping one value.
        assert_eq!((share(0.2).trim(7), with_beta(0.2).trim(7)), (2, 1));
        assert_eq!(
            (share(0.2).trim(10), share(0.3).trim(10), share(0.49).trim(4)),
            (2, 3, 1)
        );
        // Three of ten agents at one end: a 0.2 share lets one through, a 0.3 share none.
        let mut updates: Vec<(&[f32], u64)> = vec![(&[1.0], 1); 7];
        updates.extend([(&[1e6_f32][..], 1); 3]);
        let mut default = TrimmedMean::new(TrimmedMeanConfig::default()).unwrap();
        assert!(run(&mut default, &updates).unwrap()[0] > 1e5);
        let mut expecting_three = TrimmedMean::new(share(0.3)).unwrap();
        assert_eq!(run(&mut expecting_three, &updates).unwrap(), vec![1.0]);
    }
}
