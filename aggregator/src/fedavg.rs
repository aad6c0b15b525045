//! Sample-weighted federated averaging, computed as updates arrive.

/// Running sample-weighted mean of parameter deltas (FedAvg, McMahan et al. 2017).
///
/// Each update is folded into one running sum when it arrives, so memory stays at one
/// model's worth however large the cohort is.
#[derive(Debug, Clone)]
pub struct FedAvg {
    sum: Vec<f32>,
    total_weight: f64,
    updates: usize,
}

impl FedAvg {
    /// An empty average over `numel` parameters.
    pub fn new(numel: usize) -> Self {
        Self {
            sum: vec![0.0; numel],
            total_weight: 0.0,
            updates: 0,
        }
    }

    /// Adds `delta` with weight `samples`. The caller has checked the length and that
    /// every value is finite.
    ///
    /// # Panics
    /// If `delta` has a different length than the average (a caller bug, not input).
    pub fn add(&mut self, delta: &[f32], samples: u64) {
        assert_eq!(delta.len(), self.sum.len(), "FedAvg::add: length checked by the caller");
        let w = samples as f32;
        for (s, d) in self.sum.iter_mut().zip(delta) {
            *s += w * d;
        }
        self.total_weight += samples as f64;
        self.updates += 1;
    }

    /// Number of updates folded in.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// Applies the weighted mean delta to `global` in place; `false` (and `global`
    /// untouched) when no update arrived.
    pub fn apply_to(&self, global: &mut [f32]) -> bool {
        if self.updates == 0 || self.total_weight <= 0.0 {
            return false;
        }
        let scale = (1.0 / self.total_weight) as f32;
        for (g, s) in global.iter_mut().zip(&self.sum) {
            *g += s * scale;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_mean_matches_hand_computation() {
        let mut avg = FedAvg::new(3);
        avg.add(&[1.0, 0.0, -3.0], 10);
        avg.add(&[4.0, 2.0, 3.0], 30);
        let mut global = vec![1.0, 1.0, 1.0];
        assert!(avg.apply_to(&mut global));
        // (10*1 + 30*4)/40 = 3.25 ; (0 + 60)/40 = 1.5 ; (-30 + 90)/40 = 1.5
        assert_eq!(global, vec![4.25, 2.5, 2.5]);
        assert_eq!(avg.updates(), 2);
    }

    #[test]
    fn no_updates_leaves_the_model_alone() {
        let avg = FedAvg::new(2);
        let mut global = vec![0.5, 0.5];
        assert!(!avg.apply_to(&mut global));
        assert_eq!(global, vec![0.5, 0.5]);
    }
}
