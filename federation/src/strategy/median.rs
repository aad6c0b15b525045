//! Coordinate-wise median (Yin et al. 2018): robust to a minority of arbitrary updates.

use super::buffered::{Buffered, PerCoordinate};
use super::{Aggregation, Strategy, StrategyError, check_len, kernels};

/// Each coordinate of the step is the median of that coordinate across the updates
/// (the mean of the two middle values when their number is even). Sample weights are
/// ignored: a weight is the agent's claim and would let one attacker dominate.
///
/// Buffers every update until the round finishes: `n · numel · 4` bytes (see
/// [`Buffered`]), and needs individual updates, so it cannot run under secure
/// aggregation.
#[derive(Debug, Clone, Default)]
pub struct Median;

impl Strategy for Median {
    fn name(&self) -> &'static str {
        "median"
    }

    fn needs_individual_updates(&self) -> bool {
        true
    }

    fn begin_round(&mut self, _round: u64, numel: usize) -> Box<dyn Aggregation> {
        Box::new(PerCoordinate {
            strategy: "median",
            buffer: Buffered::new(numel),
            reduce: median,
        })
    }

    fn apply(&mut self, global: &mut [f32], aggregated: &[f32]) -> Result<(), StrategyError> {
        check_len(global.len(), aggregated.len())?;
        kernels::axpy(global, 1.0, aggregated);
        Ok(())
    }
}

/// Median of a non-empty column, reordering it; `O(n)` expected.
pub(crate) fn median(column: &mut [f32]) -> f32 {
    let n = column.len();
    let mid = n / 2;
    let (lower, upper, _) = column.select_nth_unstable_by(mid, f32::total_cmp);
    if n % 2 == 1 {
        *upper
    } else {
        // The other middle value is the largest of the lower half.
        let below = lower.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        0.5 * (below + *upper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::fedavg::tests::run;

    #[test]
    fn median_by_hand_odd_and_even() {
        let mut s = Median;
        let odd = run(&mut s, &[(&[1.0, 5.0], 1), (&[3.0, -1.0], 1), (&[2.0, 0.0], 1)]).unwrap();
        assert_eq!(odd, vec![2.0, 0.0]);
        let even = run(&mut s, &[(&[1.0], 1), (&[4.0], 1), (&[2.0], 1), (&[10.0], 1)]).unwrap();
        assert_eq!(even, vec![3.0]);
    }

    #[test]
    fn selection_agrees_with_sorting_on_every_length() {
        for n in 1..=20 {
            // Values with ties and signed zeros, in scrambled order.
            let column: Vec<f32> = (0..n).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
            let mut sorted = column.clone();
            sorted.sort_by(f32::total_cmp);
            let want = if n % 2 == 1 {
                sorted[n / 2]
            } else {
                0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
            };
            assert_eq!(median(&mut column.clone()), want, "n = {n}");
        }
    }

    #[test]
    fn outliers_do_not_move_the_median() {
        let mut s = Median;
        let honest: [&[f32]; 3] = [&[1.0, 1.0], &[1.1, 0.9], &[0.9, 1.1]];
        let mut updates: Vec<(&[f32], u64)> = honest.iter().map(|&d| (d, 1)).collect();
        updates.push((&[-1e6, 1e6], 1_000_000));
        updates.push((&[1e6, -1e6], 1_000_000));
        let step = run(&mut s, &updates).unwrap();
        assert_eq!(step, vec![1.0, 1.0]);
    }
}
