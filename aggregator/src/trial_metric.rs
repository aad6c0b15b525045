//! What a federated trial can be scored on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use fedtune_tuning::{Direction, Objective};

/// What a trial can be scored on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialMetric {
    /// Accuracy of the final model: on the server's test set when there is an
    /// evaluator, else the sample-weighted accuracy on the agents' validation splits.
    Accuracy,
    /// Loss of the final model, measured like `accuracy`.
    Loss,
    /// Variance of the per-agent validation accuracy of the final model (fairness).
    AccuracyVariance,
    /// Mean accuracy of the worst 10% of agents (fairness).
    Worst10pctAccuracy,
    /// Device time the trial cost: the agents' task wall times, summed, in seconds.
    DeviceSeconds,
    /// Model bytes the trial moved between aggregator and agents, less the frozen values
    /// sent whole (once per connection whatever the configuration: see
    /// [`fedtune_federation::RoundRecord::base_bytes`]).
    Bytes,
    /// ε spent at `[privacy] delta` (0 without differential privacy).
    Epsilon,
}

impl TrialMetric {
    /// Every metric, in its config spelling.
    pub const NAMES: [&'static str; 7] = [
        "accuracy",
        "loss",
        "accuracy_variance",
        "worst_10pct_accuracy",
        "device_seconds",
        "bytes",
        "epsilon",
    ];

    /// The metric's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Accuracy => "accuracy",
            Self::Loss => "loss",
            Self::AccuracyVariance => "accuracy_variance",
            Self::Worst10pctAccuracy => "worst_10pct_accuracy",
            Self::DeviceSeconds => "device_seconds",
            Self::Bytes => "bytes",
            Self::Epsilon => "epsilon",
        }
    }

    /// Whether higher or lower is better.
    #[must_use]
    pub fn direction(self) -> Direction {
        match self {
            Self::Accuracy | Self::Worst10pctAccuracy => Direction::Maximize,
            Self::Loss | Self::AccuracyVariance | Self::DeviceSeconds | Self::Bytes | Self::Epsilon => {
                Direction::Minimize
            }
        }
    }

    /// The study objective for this metric.
    #[must_use]
    pub fn objective(self) -> Objective {
        Objective::new(self.name(), self.direction())
    }
}

impl fmt::Display for TrialMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TrialMetric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "accuracy" => Ok(Self::Accuracy),
            "loss" => Ok(Self::Loss),
            "accuracy_variance" | "fairness" => Ok(Self::AccuracyVariance),
            "worst_10pct_accuracy" => Ok(Self::Worst10pctAccuracy),
            "device_seconds" | "device_time" => Ok(Self::DeviceSeconds),
            "bytes" => Ok(Self::Bytes),
            "epsilon" => Ok(Self::Epsilon),
            other => Err(format!(
                "unknown metric `{other}`; expected one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}
