//! The aggregator's feedback loop on its own strategy: the server learning rate follows
//! the observed global validation loss, without I/O.

use serde::{Deserialize, Serialize};

/// When and how the server learning rate adapts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLrConfig {
    /// `Some(true)` / `Some(false)` force it on or off; `None` (the default) turns it on
    /// for strategies with a server optimizer (FedAvgM, FedAdam, FedYogi, FedAdagrad) and
    /// off for plain averaging.
    pub enabled: Option<bool>,
    /// Lowest rate.
    pub min: f64,
    /// Highest rate.
    pub max: f64,
    /// Factor applied on a plateau or when the loss rises.
    pub decrease: f64,
    /// Factor applied while the loss falls fast.
    pub increase: f64,
    /// A relative improvement below this is a plateau.
    pub plateau: f64,
    /// A relative improvement above this is fast progress.
    pub fast: f64,
}

impl Default for ServerLrConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            min: 1e-4,
            max: 10.0,
            decrease: 0.5,
            increase: 1.1,
            plateau: 0.005,
            fast: 0.05,
        }
    }
}

impl ServerLrConfig {
    /// Whether adaptation runs for the strategy named `strategy`.
    pub fn active_for(&self, strategy: &str) -> bool {
        self.enabled
            .unwrap_or(matches!(strategy, "fedavgm" | "fedadam" | "fedyogi" | "fedadagrad"))
    }

    /// Checks the bounds and factors.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.min > 0.0 && self.min <= self.max && self.max.is_finite()) {
            return Err(format!(
                "server_lr: need 0 < min <= max, got min {} max {}",
                self.min, self.max
            ));
        }
        if !(self.decrease > 0.0 && self.decrease < 1.0 && self.increase >= 1.0 && self.increase.is_finite()) {
            return Err("server_lr: need 0 < decrease < 1 <= increase".into());
        }
        if !(self.plateau >= 0.0 && self.plateau <= self.fast && self.fast.is_finite()) {
            return Err("server_lr: need 0 <= plateau <= fast".into());
        }
        Ok(())
    }
}

/// Adapts the server learning rate from one round's global validation loss to the next:
/// lower on a plateau or when the loss rises (oscillation), higher while it falls fast,
/// always within `[min, max]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerLrController {
    config: ServerLrConfig,
    previous: Option<f64>,
}

impl ServerLrController {
    /// A controller with no loss observed yet.
    pub fn new(config: ServerLrConfig) -> Self {
        Self { config, previous: None }
    }

    /// The rate to use next, given the loss just observed and the current rate.
    /// Non-finite losses leave the rate alone.
    pub fn observe(&mut self, loss: f64, lr: f64) -> f64 {
        let c = &self.config;
        if !loss.is_finite() {
            return lr;
        }
        let next = match self.previous {
            None => lr,
            Some(previous) => {
                let improvement = (previous - loss) / previous.abs().max(1e-12);
                if improvement < c.plateau {
                    lr * c.decrease
                } else if improvement > c.fast {
                    lr * c.increase
                } else {
                    lr
                }
            }
        };
        self.previous = Some(loss);
        next.clamp(c.min, c.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_while_fast_lowers_on_plateau_and_oscillation_within_bounds() {
        let mut c = ServerLrController::new(ServerLrConfig {
            max: 1.2,
            ..Default::default()
        });
        let mut lr = 1.0;
        lr = c.observe(2.0, lr);
        assert_eq!(lr, 1.0); // first observation: nothing to compare
        lr = c.observe(1.0, lr); // -50%: fast
        assert!((lr - 1.1).abs() < 1e-12);
        lr = c.observe(0.5, lr); // fast again, capped
        assert_eq!(lr, 1.2);
        lr = c.observe(0.499, lr); // 0.2% better: plateau
        assert!((lr - 0.6).abs() < 1e-12);
        lr = c.observe(0.7, lr); // worse: oscillation
        assert!((lr - 0.3).abs() < 1e-12);
        lr = c.observe(f64::NAN, lr);
        assert!((lr - 0.3).abs() < 1e-12);
        for _ in 0..40 {
            lr = c.observe(0.7, lr);
        }
        assert_eq!(lr, 1e-4);
    }

    #[test]
    fn on_by_default_only_for_server_optimizers() {
        let c = ServerLrConfig::default();
        assert!(c.active_for("fedadam") && c.active_for("fedavgm"));
        assert!(!c.active_for("fedavg") && !c.active_for("krum"));
        assert!(
            !ServerLrConfig {
                enabled: Some(false),
                ..c
            }
            .active_for("fedyogi")
        );
        assert!(
            ServerLrConfig {
                min: 2.0,
                max: 1.0,
                ..c
            }
            .validate()
            .is_err()
        );
    }
}
