//! The within-trial FedEx policy of "bayes+rl" outside a federation: one draw per
//! reported step, rewarded by the improvement of the reported value.

use fedtune_tuning::{Direction, Draw, FedExPolicy};

/// A trial's own FedEx policy ("bayes+rl"): the values of the current step and the last
/// reported value, to reward the next report against.
pub(crate) struct Adapting {
    pub(crate) policy: FedExPolicy,
    pub(crate) draw: Draw,
    last: Option<f64>,
}

impl Adapting {
    pub(crate) fn new(mut policy: FedExPolicy) -> Self {
        let draw = policy.draw();
        Self {
            policy,
            draw,
            last: None,
        }
    }

    /// Rewards the values in use with the improvement from the last report to
    /// `value` (higher is better after `direction`), then draws the next step's.
    pub(crate) fn observe(&mut self, value: f64, direction: Direction) {
        let score = -direction.loss(value);
        if let Some(last) = self.last {
            self.policy.observe(&[(self.draw.clone(), score - last)]);
        }
        self.last = Some(score);
        self.draw = self.policy.draw();
    }
}

/// What a running trial keeps between reports.
pub(crate) struct TrialProgress {
    pub(crate) pruned: bool,
    pub(crate) policy: Option<Adapting>,
}
