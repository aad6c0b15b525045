//! Fairness across agents, checked every round: how evenly the global model serves the
//! agents (from their validation accuracy of it) and how evenly they are asked to work.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Fairness of one global model across the agents that measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FairnessReport {
    /// Agents measured.
    pub agents: usize,
    /// Mean accuracy.
    pub mean_accuracy: f64,
    /// Population variance of accuracy.
    pub accuracy_variance: f64,
    /// Standard deviation of accuracy.
    pub accuracy_std: f64,
    /// Lowest accuracy.
    pub worst_accuracy: f64,
    /// Mean accuracy of the worst 10% of agents (at least one agent).
    pub worst_10pct_accuracy: f64,
    /// Highest minus lowest accuracy.
    pub accuracy_gap: f64,
    /// Jain's index of accuracy, `(Σx)² / (n·Σx²)`: 1 when all agents are equal, 1/n when
    /// one agent gets everything.
    pub jain_index: f64,
    /// Mean validation loss.
    pub mean_loss: f64,
    /// Jain's index of how often each known agent has been selected so far.
    pub participation_jain: f64,
}

/// Jain's fairness index of `xs` (1 for an empty or all-zero list).
pub fn jain_index(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let squares: f64 = xs.iter().map(|x| x * x).sum();
    if xs.is_empty() || squares == 0.0 {
        1.0
    } else {
        sum * sum / (xs.len() as f64 * squares)
    }
}

impl FairnessReport {
    /// Fairness of per-agent `(accuracy, loss)` measurements, with `participation` the
    /// selection count of every agent known so far.
    pub fn measure(per_agent: &[(f64, f64)], participation: &[u64]) -> Self {
        let participation: Vec<f64> = participation.iter().map(|&c| c as f64).collect();
        if per_agent.is_empty() {
            return Self {
                participation_jain: jain_index(&participation),
                ..Self::default()
            };
        }
        let n = per_agent.len() as f64;
        let mut accuracy: Vec<f64> = per_agent.iter().map(|&(a, _)| a).collect();
        accuracy.sort_by(f64::total_cmp);
        let mean = accuracy.iter().sum::<f64>() / n;
        let variance = accuracy.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n;
        let tail = (accuracy.len() as f64 * 0.1).ceil().max(1.0) as usize;
        Self {
            agents: per_agent.len(),
            mean_accuracy: mean,
            accuracy_variance: variance,
            accuracy_std: variance.sqrt(),
            worst_accuracy: accuracy[0],
            worst_10pct_accuracy: accuracy[..tail].iter().sum::<f64>() / tail as f64,
            accuracy_gap: accuracy[accuracy.len() - 1] - accuracy[0],
            jain_index: jain_index(&accuracy),
            mean_loss: per_agent.iter().map(|&(_, l)| l).sum::<f64>() / n,
            participation_jain: jain_index(&participation),
        }
    }

    /// The value of `metric` in this report.
    pub fn get(&self, metric: FairnessMetric) -> f64 {
        match metric {
            FairnessMetric::MeanAccuracy => self.mean_accuracy,
            FairnessMetric::AccuracyVariance => self.accuracy_variance,
            FairnessMetric::AccuracyStd => self.accuracy_std,
            FairnessMetric::WorstAccuracy => self.worst_accuracy,
            FairnessMetric::Worst10pctAccuracy => self.worst_10pct_accuracy,
            FairnessMetric::AccuracyGap => self.accuracy_gap,
            FairnessMetric::JainIndex => self.jain_index,
            FairnessMetric::ParticipationJain => self.participation_jain,
        }
    }
}

/// A fairness figure a constraint can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FairnessMetric {
    /// [`FairnessReport::mean_accuracy`].
    MeanAccuracy,
    /// [`FairnessReport::accuracy_variance`].
    AccuracyVariance,
    /// [`FairnessReport::accuracy_std`].
    AccuracyStd,
    /// [`FairnessReport::worst_accuracy`].
    WorstAccuracy,
    /// [`FairnessReport::worst_10pct_accuracy`].
    Worst10pctAccuracy,
    /// [`FairnessReport::accuracy_gap`].
    AccuracyGap,
    /// [`FairnessReport::jain_index`].
    JainIndex,
    /// [`FairnessReport::participation_jain`].
    ParticipationJain,
}

const METRICS: [(&str, FairnessMetric); 8] = [
    ("mean_accuracy", FairnessMetric::MeanAccuracy),
    ("accuracy_variance", FairnessMetric::AccuracyVariance),
    ("accuracy_std", FairnessMetric::AccuracyStd),
    ("worst_accuracy", FairnessMetric::WorstAccuracy),
    ("worst_10pct_accuracy", FairnessMetric::Worst10pctAccuracy),
    ("accuracy_gap", FairnessMetric::AccuracyGap),
    ("jain_index", FairnessMetric::JainIndex),
    ("participation_jain", FairnessMetric::ParticipationJain),
];

impl fmt::Display for FairnessMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = METRICS.iter().find(|(_, m)| m == self).map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// A bound on a fairness metric, written `worst_10pct_accuracy >= 0.8`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Constraint {
    /// The bounded metric.
    pub metric: FairnessMetric,
    /// `true` for `>=`, `false` for `<=`.
    pub at_least: bool,
    /// The bound.
    pub bound: f64,
}

impl Constraint {
    /// Whether `report` satisfies the constraint; an empty report (no agent measured)
    /// satisfies everything.
    pub fn holds(&self, report: &FairnessReport) -> bool {
        if report.agents == 0 {
            return true;
        }
        let value = report.get(self.metric);
        if self.at_least {
            value >= self.bound
        } else {
            value <= self.bound
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.metric,
            if self.at_least { ">=" } else { "<=" },
            self.bound
        )
    }
}

/// Why a constraint did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fairness constraint `{text}`: {reason}")]
pub struct ConstraintError {
    text: String,
    reason: String,
}

impl FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| ConstraintError {
            text: text.to_owned(),
            reason,
        };
        let (at_least, (name, bound)) = match (text.split_once(">="), text.split_once("<=")) {
            (Some(parts), None) => (true, parts),
            (None, Some(parts)) => (false, parts),
            _ => return Err(fail("expected `METRIC >= BOUND` or `METRIC <= BOUND`".into())),
        };
        let name = name.trim();
        let metric = METRICS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, m)| m)
            .ok_or_else(|| {
                let known: Vec<&str> = METRICS.iter().map(|(n, _)| *n).collect();
                fail(format!("unknown metric `{name}` (known: {})", known.join(", ")))
            })?;
        let bound: f64 = bound
            .trim()
            .parse()
            .map_err(|_| fail(format!("`{}` is not a number", bound.trim())))?;
        if !bound.is_finite() {
            return Err(fail("the bound must be finite".into()));
        }
        Ok(Self {
            metric,
            at_least,
            bound,
        })
    }
}

impl TryFrom<String> for Constraint {
    type Error = ConstraintError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Constraint> for String {
    fn from(c: Constraint) -> Self {
        c.to_string()
    }
}

/// The constraints `report` violates, as readable sentences.
pub fn violations(constraints: &[Constraint], report: &FairnessReport) -> Vec<String> {
    constraints
        .iter()
        .filter(|c| !c.holds(report))
        .map(|c| format!("{c} violated: {} is {:.4}", c.metric, report.get(c.metric)))
        .collect()
}

/// How often each agent has been selected, and its latest accuracy, for fairness-aware
/// selection and participation fairness.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    selected: BTreeMap<String, u64>,
    accuracy: BTreeMap<String, f64>,
}

impl History {
    /// Records that `agents` were asked in a round.
    pub fn record_selection<'a>(&mut self, agents: impl IntoIterator<Item = &'a String>) {
        for agent in agents {
            *self.selected.entry(agent.clone()).or_default() += 1;
        }
    }

    /// Records an agent's latest validation accuracy of the global model.
    pub fn record_accuracy(&mut self, agent: &str, accuracy: f64) {
        self.accuracy.insert(agent.to_owned(), accuracy);
    }

    /// Selection counts of `agents` (0 for never selected).
    pub fn participation(&self, agents: &[String]) -> Vec<u64> {
        agents
            .iter()
            .map(|a| self.selected.get(a).copied().unwrap_or(0))
            .collect()
    }

    /// Selection weight of `agent` for fairness-aware sampling: agents the model serves
    /// badly and agents rarely asked weigh more. Unknown agents get the largest weight.
    pub fn weight(&self, agent: &str) -> f64 {
        let error = 1.0 - self.accuracy.get(agent).copied().unwrap_or(0.0).clamp(0.0, 1.0);
        let asked = self.selected.get(agent).copied().unwrap_or(0) as f64;
        (0.05 + error) / (1.0 + asked).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_known_inputs() {
        let per_agent = [(0.9, 0.3), (0.5, 1.0), (0.7, 0.5), (1.0, 0.1)];
        let r = FairnessReport::measure(&per_agent, &[2, 2, 2, 2]);
        assert!((r.mean_accuracy - 0.775).abs() < 1e-12);
        // deviations 0.125, -0.275, -0.075, 0.225 → squares sum 0.1475 → / 4
        assert!((r.accuracy_variance - 0.036875).abs() < 1e-12);
        assert_eq!(r.worst_accuracy, 0.5);
        assert_eq!(r.worst_10pct_accuracy, 0.5);
        assert!((r.accuracy_gap - 0.5).abs() < 1e-12);
        // (3.1)^2 / (4 * 2.55)
        assert!((r.jain_index - 9.61 / 10.2).abs() < 1e-12);
        assert!((r.mean_loss - 0.475).abs() < 1e-12);
        assert_eq!(r.participation_jain, 1.0);
        assert!((jain_index(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn worst_decile_averages_the_bottom_tenth() {
        let per_agent: Vec<(f64, f64)> = (0..20).map(|i| (i as f64 / 20.0, 0.0)).collect();
        let r = FairnessReport::measure(&per_agent, &[]);
        assert!((r.worst_10pct_accuracy - 0.025).abs() < 1e-12); // mean of 0.0 and 0.05
    }

    #[test]
    fn constraints_parse_check_and_explain() {
        let c: Constraint = "worst_10pct_accuracy >= 0.80".parse().unwrap();
        assert_eq!(
            c,
            Constraint {
                metric: FairnessMetric::Worst10pctAccuracy,
                at_least: true,
                bound: 0.8
            }
        );
        let v: Constraint = "accuracy_variance<=0.005".parse().unwrap();
        let report = FairnessReport::measure(&[(0.9, 0.0), (0.7, 0.0)], &[]);
        assert!(!c.holds(&report));
        assert!(!v.holds(&report)); // variance 0.01
        let messages = violations(&[c, v], &report);
        assert_eq!(messages.len(), 2);
        assert!(
            messages[0].contains("worst_10pct_accuracy >= 0.8 violated"),
            "{messages:?}"
        );
        assert!(
            "best_accuracy >= 1"
                .parse::<Constraint>()
                .unwrap_err()
                .to_string()
                .contains("unknown metric")
        );
        assert!("mean_accuracy = 1".parse::<Constraint>().is_err());
        assert!("mean_accuracy >= x".parse::<Constraint>().is_err());
        let back: Constraint = c.to_string().parse().unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn selection_weights_favour_poorly_served_and_rarely_asked_agents() {
        let mut h = History::default();
        h.record_accuracy("good", 0.95);
        h.record_accuracy("bad", 0.40);
        assert!(h.weight("bad") > h.weight("good"));
        let before = h.weight("bad");
        h.record_selection(&["bad".to_string()]);
        assert!(h.weight("bad") < before);
        assert!(h.weight("new") > h.weight("bad"));
        assert_eq!(h.participation(&["bad".into(), "new".into()]), vec![1, 0]);
    }
}
