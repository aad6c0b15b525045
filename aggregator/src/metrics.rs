//! The aggregator's Prometheus metrics, served as `/metrics` on the dashboard's listener.
//!
//! Names follow Prometheus conventions (base units, `_total` on counters); no metric has
//! a per-agent label, so a federation of a thousand agents costs a handful of series.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `fedtune_rounds_total` | counter | |
//! | `fedtune_round_duration_seconds` | histogram | |
//! | `fedtune_updates_total` | counter | `outcome`: `accepted`, or why not (`straggler`, `refused`, …) |
//! | `fedtune_update_bytes_total` | counter | `direction`: `sent` (global models) or `received` (updates) |
//! | `fedtune_connected_agents` | gauge | |
//! | `fedtune_trials_total` | counter | `state` a trial reached: `running`, `complete`, `pruned`, `failed` |
//! | `fedtune_global_test_accuracy` | gauge | (absent until a round is evaluated on a server test set) |
//! | `fedtune_build_info` | gauge (1) | `version` |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::registry::Registry as Agents;
use fedtune_federation::RoundRecord;
use fedtune_store::agent_rows;
use fedtune_tuning::TrialState;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

/// The aggregator's metrics. Cheap to update from the run (atomic counters); shared
/// with the HTTP server that encodes them.
pub struct Metrics {
    registry: Registry,
    rounds: Counter,
    round_duration: Histogram,
    updates: Family<Outcome, Counter>,
    bytes: Family<Direction, Counter>,
    connected: Gauge,
    trials: Family<State, Counter>,
    accuracy: Arc<TestAccuracy>,
}

/// `fedtune_global_test_accuracy`, written only once a round has been evaluated on the
/// server's test set: without a test set there is no accuracy to report, and a gauge at
/// 0 would read as a model that gets everything wrong.
#[derive(Debug)]
struct TestAccuracy {
    /// The accuracy's bits; NaN until the first evaluated round.
    bits: AtomicU64,
}

impl TestAccuracy {
    const NAME: &'static str = "fedtune_global_test_accuracy";
    const HELP: &'static str = "Server-side test accuracy of the global model after the last evaluated round";

    fn new() -> Self {
        Self {
            bits: AtomicU64::new(f64::NAN.to_bits()),
        }
    }

    fn set(&self, accuracy: f64) {
        self.bits.store(accuracy.to_bits(), Ordering::Relaxed);
    }

    fn get(&self) -> Option<f64> {
        Some(f64::from_bits(self.bits.load(Ordering::Relaxed))).filter(|v| v.is_finite())
    }
}

impl Collector for TestAccuracy {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(accuracy) = self.get() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(accuracy);
        let metric = encoder.encode_descriptor(Self::NAME, Self::HELP, None, gauge.metric_type())?;
        gauge.encode(metric)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics at zero, registered under their names.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let rounds = Counter::default();
        registry.register("fedtune_rounds", "Federated rounds committed", rounds.clone());
        // 10 ms … ~80 s: loopback rounds of small models to rounds of real devices.
        let round_duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "fedtune_round_duration_seconds",
            "Wall time of a round, from the first task sent to the model updated",
            round_duration.clone(),
        );
        let updates = Family::<Outcome, Counter>::default();
        registry.register(
            "fedtune_updates",
            "Cohort members' answers to a round's task, by outcome",
            updates.clone(),
        );
        let bytes = Family::<Direction, Counter>::default();
        registry.register(
            "fedtune_update_bytes",
            "Model bytes moved: global models sent to cohorts, updates received",
            bytes.clone(),
        );
        let connected = Gauge::default();
        registry.register("fedtune_connected_agents", "Agents connected now", connected.clone());
        let trials = Family::<State, Counter>::default();
        registry.register("fedtune_trials", "Trials that reached a state", trials.clone());
        let accuracy = Arc::new(TestAccuracy::new());
        registry.register_collector(Box::new(accuracy.clone()));
        registry.register(
            "fedtune_build",
            "The aggregator's build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry,
            rounds,
            round_duration,
            updates,
            bytes,
            connected,
            trials,
            accuracy,
        }
    }

    /// Counts a committed round: its duration, each cohort member's outcome, the bytes
    /// it moved and the global model's test accuracy (when the round has one).
    pub fn observe_round(&self, record: &RoundRecord) {
        self.rounds.inc();
        self.round_duration.observe(record.seconds);
        for row in agent_rows(0, record) {
            let outcome = if row.outcome == "update" {
                "accepted".to_owned()
            } else {
                row.outcome
            };
            self.updates.get_or_create(&Outcome { outcome }).inc();
        }
        let received: u64 = record.contributions.values().map(|c| c.update_bytes).sum();
        let sent = record.payload_bytes.saturating_sub(received);
        self.bytes.get_or_create(&Direction { direction: "sent" }).inc_by(sent);
        self.bytes
            .get_or_create(&Direction { direction: "received" })
            .inc_by(received);
        if let Some(test) = record.test {
            self.accuracy.set(test.accuracy);
        }
    }

    /// Records how many agents are connected.
    pub fn set_connected(&self, agents: usize) {
        self.connected.set(i64::try_from(agents).unwrap_or(i64::MAX));
    }

    /// Counts a trial that reached `state`.
    pub fn trial_reached(&self, state: TrialState) {
        self.trials.get_or_create(&State { state: state.as_str() }).inc();
    }

    /// Keeps `fedtune_connected_agents` equal to the registry's count while it lives.
    pub(crate) fn watch_agents(self: &Arc<Self>, agents: &Arc<Agents>) {
        let metrics = self.clone();
        let agents = Arc::downgrade(agents);
        let Some(mut roster) = agents.upgrade().map(|a| a.subscribe()) else {
            return;
        };
        tokio::spawn(async move {
            loop {
                let Some(registry) = agents.upgrade() else { return };
                metrics.set_connected(registry.len());
                drop(registry);
                if roster.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]), which Prometheus
    /// scrapes.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedtune_federation::{Contribution, FailureReason, FailureRecord, GlobalEvaluation};

    fn record() -> RoundRecord {
        let mut record = crate::fixtures::round_record(0, &["a", "b", "c"]);
        record.failures.push(FailureRecord {
            agent: "c".into(),
            reason: FailureReason::Straggler,
        });
        for agent in ["a", "b"] {
            let contribution = Contribution {
                arrived_after_seconds: 0.1,
                samples: 10,
                device_seconds: 0.2,
                update_bytes: 100,
                replayed: false,
            };
            record.contributions.insert(agent.into(), contribution);
        }
        record.test = Some(GlobalEvaluation {
            loss: 0.3,
            accuracy: 0.875,
            samples: 8,
        });
        record
    }

    #[test]
    fn without_a_test_set_no_test_accuracy_is_reported() {
        let metrics = Metrics::new();
        assert!(!metrics.encode().contains("fedtune_global_test_accuracy"));
        let mut untested = record();
        untested.test = None;
        metrics.observe_round(&untested);
        let text = metrics.encode();
        assert!(text.contains("fedtune_rounds_total 1"), "{text}");
        assert!(
            !text.contains("fedtune_global_test_accuracy"),
            "absent is not zero:\n{text}"
        );
        // The first evaluated round brings it in, and an untested round after it keeps
        // the last evaluated value.
        metrics.observe_round(&record());
        metrics.observe_round(&untested);
        let text = metrics.encode();
        assert!(text.contains("fedtune_global_test_accuracy 0.875"), "{text}");
        assert!(text.contains("# TYPE fedtune_global_test_accuracy gauge"), "{text}");
    }

    #[test]
    fn a_round_counts_outcomes_bytes_and_accuracy() {
        let metrics = Metrics::new();
        metrics.observe_round(&record());
        metrics.observe_round(&record());
        metrics.set_connected(3);
        metrics.trial_reached(TrialState::Pruned);
        let text = metrics.encode();
        for line in [
            "fedtune_rounds_total 2",
            "fedtune_updates_total{outcome=\"accepted\"} 4",
            "fedtune_updates_total{outcome=\"straggler\"} 2",
            "fedtune_update_bytes_total{direction=\"sent\"} 600",
            "fedtune_update_bytes_total{direction=\"received\"} 400",
            "fedtune_connected_agents 3",
            "fedtune_trials_total{state=\"pruned\"} 1",
            "fedtune_global_test_accuracy 0.875",
            "fedtune_round_duration_seconds_count 2",
            "fedtune_build_info{version=",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
    }
}
