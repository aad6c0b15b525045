//! One federated round as a state machine: fed events, polled for its status, no I/O.
//!
//! The [`Federation`](crate::federation::Federation) sends tasks, then feeds [`Round`] what comes
//! back (`on_update`, `on_failure`) and asks it, with the current time, whether the round
//! is over (`poll`). Time is passed in, so deadlines are tested without sleeping.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fedtune_protocol::tensor::check_finite;
use fedtune_protocol::{ErrorCode, ErrorMessage, ManifestHash, Update};

use super::record::{AgentResult, FailureReason, FailureRecord};
use crate::strategy::{Aggregation, UpdateMeta};

/// Where a round stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundStatus {
    /// Waiting for more updates until the deadline.
    Collecting {
        /// When the round closes regardless.
        deadline: Instant,
    },
    /// Enough updates arrived, every cohort member answered, or the deadline passed.
    Closed,
}

/// Identity and rules of a round.
#[derive(Debug, Clone)]
pub struct RoundSpec {
    /// Trial number.
    pub trial: u64,
    /// Round number.
    pub round: u64,
    /// Agents asked to train.
    pub cohort: Vec<String>,
    /// Layout every update must have.
    pub manifest_hash: ManifestHash,
    /// Parameters per update.
    pub numel: usize,
    /// The round closes early once this many updates are in.
    pub target_updates: usize,
    /// Fewer updates than this and the round is not applied.
    pub min_updates: usize,
    /// How long the round waits for stragglers.
    pub timeout: Duration,
}

/// A federated round in progress.
#[derive(Debug)]
pub struct Round {
    spec: RoundSpec,
    started: Instant,
    pending: BTreeSet<String>,
    aggregation: Box<dyn Aggregation>,
    results: Vec<AgentResult>,
    failures: Vec<FailureRecord>,
}

/// A closed round: the averaged update and who contributed.
#[derive(Debug)]
pub struct RoundOutcome {
    /// The round's rules.
    pub spec: RoundSpec,
    /// The strategy's aggregation of the accepted updates.
    pub aggregation: Box<dyn Aggregation>,
    /// Accepted updates, in arrival order.
    pub results: Vec<AgentResult>,
    /// Cohort members that failed, declined, were refused or timed out.
    pub failures: Vec<FailureRecord>,
    /// Whether enough updates arrived for the average to be applied.
    pub quorum_met: bool,
}

impl Round {
    /// Starts a round at `now`, folding accepted updates into `aggregation`.
    pub fn new(spec: RoundSpec, aggregation: Box<dyn Aggregation>, now: Instant) -> Self {
        Self {
            pending: spec.cohort.iter().cloned().collect(),
            aggregation,
            results: Vec::new(),
            failures: Vec::new(),
            started: now,
            spec,
        }
    }

    /// The round's rules.
    pub fn spec(&self) -> &RoundSpec {
        &self.spec
    }

    /// Checks an update and folds it into the average.
    ///
    /// # Errors
    /// The error to send back to the agent: it is not (or no longer) expected in this
    /// round, the update is for another trial/round or manifest, has the wrong length,
    /// no samples, or holds non-finite values. A refused update counts as that agent's
    /// failure for the round; the round goes on with the others.
    pub fn on_update(
        &mut self,
        agent: &str,
        update: &Update,
        delta: Vec<f32>,
        now: Instant,
    ) -> Result<(), ErrorMessage> {
        self.check_pending(agent)?;
        let metrics = &update.metrics;
        let meta = UpdateMeta::new(agent, metrics.train_loss_before.unwrap_or(metrics.loss_before));
        let checked = self
            .check(update, delta.len(), now)
            .and_then(|()| check_finite(&delta).map_err(|e| ErrorMessage::new(ErrorCode::NonFinite, e.to_string())))
            .and_then(|()| {
                self.aggregation
                    .add_owned(delta, update.num_samples, &meta)
                    .map_err(|e| ErrorMessage::new(ErrorCode::Malformed, e.to_string()))
            });
        self.record(agent, update, checked, now)
    }

    /// Checks a masked update (secure aggregation) of `len` words and, if it passes,
    /// hands it to `fold`, which adds it to the masked sum kept outside the round.
    ///
    /// # Errors
    /// As [`on_update`](Self::on_update), except that the words are not checked for
    /// finiteness (they are masked); `fold`'s refusal is returned as a malformed update.
    pub fn on_masked_update<E: std::fmt::Display>(
        &mut self,
        agent: &str,
        update: &Update,
        len: usize,
        now: Instant,
        fold: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), ErrorMessage> {
        self.check_pending(agent)?;
        let checked = self
            .check(update, len, now)
            .and_then(|()| fold().map_err(|e| ErrorMessage::new(ErrorCode::Malformed, e.to_string())));
        self.record(agent, update, checked, now)
    }

    fn check_pending(&self, agent: &str) -> Result<(), ErrorMessage> {
        if self.pending.contains(agent) {
            return Ok(());
        }
        let why = if self.spec.cohort.iter().any(|a| a == agent) {
            "already answered in this round"
        } else {
            "is not in this round's cohort"
        };
        Err(ErrorMessage::new(
            ErrorCode::NotInRound,
            format!(
                "agent {agent} {why} (trial {}, round {})",
                self.spec.trial, self.spec.round
            ),
        ))
    }

    fn record(
        &mut self,
        agent: &str,
        update: &Update,
        checked: Result<(), ErrorMessage>,
        now: Instant,
    ) -> Result<(), ErrorMessage> {
        if let Err(refusal) = checked {
            self.fail(agent, FailureReason::Refused(refusal.clone()));
            return Err(refusal);
        }
        self.pending.remove(agent);
        self.results.push(AgentResult {
            agent: agent.to_owned(),
            num_samples: update.num_samples,
            metrics: update.metrics.clone(),
            arrived_after: now.saturating_duration_since(self.started),
            used: update.used.clone(),
            proposal: update.proposal.clone(),
            replayed: update.replayed,
        });
        Ok(())
    }

    fn check(&self, update: &Update, len: usize, now: Instant) -> Result<(), ErrorMessage> {
        let spec = &self.spec;
        if now >= self.deadline() {
            return Err(ErrorMessage::new(ErrorCode::TooLate, "the round's deadline has passed"));
        }
        if (update.trial, update.round) != (spec.trial, spec.round) {
            return Err(ErrorMessage::new(
                ErrorCode::NotInRound,
                format!(
                    "update is for trial {} round {}, the open round is trial {} round {}",
                    update.trial, update.round, spec.trial, spec.round
                ),
            ));
        }
        if update.manifest_hash != spec.manifest_hash || len != spec.numel {
            return Err(ErrorMessage::new(
                ErrorCode::ManifestMismatch,
                format!(
                    "update has manifest {} with {} parameters, the round expects manifest {} with {}",
                    update.manifest_hash, len, spec.manifest_hash, spec.numel
                ),
            ));
        }
        if update.num_samples == 0 {
            return Err(ErrorMessage::new(
                ErrorCode::Malformed,
                "update reports zero training samples",
            ));
        }
        let m = &update.metrics;
        let measured = [
            m.loss_before,
            m.accuracy_before,
            m.loss_after,
            m.accuracy_after,
            m.train_loss,
        ];
        if let Some(bad) = measured.into_iter().chain(m.train_loss_before).find(|v| !v.is_finite()) {
            return Err(ErrorMessage::new(
                ErrorCode::NonFinite,
                format!("update reports a non-finite metric ({bad})"),
            ));
        }
        Ok(())
    }

    /// Records that a cohort member will not contribute (declined, errored, went away).
    /// Ignored for agents that already answered.
    pub fn on_failure(&mut self, agent: &str, reason: FailureReason) {
        if self.pending.contains(agent) {
            self.fail(agent, reason);
        }
    }

    /// Whether `agent` is in the cohort and has neither answered nor failed yet.
    pub fn is_pending(&self, agent: &str) -> bool {
        self.pending.contains(agent)
    }

    /// Cohort members still owing an answer.
    pub fn pending(&self) -> impl Iterator<Item = &String> {
        self.pending.iter()
    }

    fn fail(&mut self, agent: &str, reason: FailureReason) {
        self.pending.remove(agent);
        self.failures.push(FailureRecord {
            agent: agent.to_owned(),
            reason,
        });
    }

    /// When the round closes regardless of stragglers.
    pub fn deadline(&self) -> Instant {
        self.started + self.spec.timeout
    }

    /// Whether the round is still collecting at `now`.
    pub fn poll(&self, now: Instant) -> RoundStatus {
        let enough = self.results.len() >= self.spec.target_updates;
        if enough || self.pending.is_empty() || now >= self.deadline() {
            RoundStatus::Closed
        } else {
            RoundStatus::Collecting {
                deadline: self.deadline(),
            }
        }
    }

    /// Closes the round; agents still pending are recorded as stragglers.
    pub fn finish(mut self) -> RoundOutcome {
        let stragglers: Vec<String> = std::mem::take(&mut self.pending).into_iter().collect();
        for agent in stragglers {
            self.failures.push(FailureRecord {
                agent,
                reason: FailureReason::Straggler,
            });
        }
        let quorum_met = self.results.len() >= self.spec.min_updates.max(1);
        RoundOutcome {
            spec: self.spec,
            aggregation: self.aggregation,
            results: self.results,
            failures: self.failures,
            quorum_met,
        }
    }
}

/// Per-agent validation metrics of one global model, keyed by agent id.
pub type AgentAccuracies = BTreeMap<String, f64>;

#[cfg(test)]
mod tests {
    use super::*;
    use fedtune_protocol::{ClientHyperparameters, TrainMetrics};

    fn fedavg() -> Box<dyn Aggregation> {
        crate::strategy::StrategyConfig::default()
            .build()
            .unwrap()
            .begin_round(3, 2)
    }

    fn spec(cohort: &[&str], target: usize) -> RoundSpec {
        RoundSpec {
            trial: 0,
            round: 3,
            cohort: cohort.iter().map(|s| s.to_string()).collect(),
            manifest_hash: ManifestHash([1; 32]),
            numel: 2,
            target_updates: target,
            min_updates: 1,
            timeout: Duration::from_secs(10),
        }
    }

    fn update(samples: u64) -> Update {
        Update {
            trial: 0,
            round: 3,
            manifest_hash: ManifestHash([1; 32]),
            num_samples: samples,
            metrics: TrainMetrics::default(),
            used: ClientHyperparameters::default(),
            proposal: None,
            replayed: false,
        }
    }

    #[test]
    fn closes_when_every_member_answered_and_averages_by_samples() {
        let t0 = Instant::now();
        let mut round = Round::new(spec(&["a", "b", "c"], 3), fedavg(), t0);
        round.on_update("a", &update(1), vec![1.0, 1.0], t0).unwrap();
        assert!(matches!(round.poll(t0), RoundStatus::Collecting { .. }));
        round.on_update("b", &update(3), vec![5.0, -1.0], t0).unwrap();
        round.on_failure("c", FailureReason::Declined("no battery".into()));
        assert_eq!(round.poll(t0), RoundStatus::Closed);
        let outcome = round.finish();
        assert!(outcome.quorum_met);
        assert_eq!(outcome.aggregation.finish().unwrap(), vec![4.0, -0.5]);
        assert_eq!(
            outcome.failures,
            vec![FailureRecord {
                agent: "c".into(),
                reason: FailureReason::Declined("no battery".into())
            }]
        );
    }

    #[test]
    fn bad_updates_are_refused_and_the_round_goes_on() {
        let t0 = Instant::now();
        let mut round = Round::new(spec(&["a", "b", "c", "d", "e"], 5), fedavg(), t0);
        let nan = round.on_update("a", &update(1), vec![f32::NAN, 0.0], t0).unwrap_err();
        assert_eq!(nan.code, ErrorCode::NonFinite);
        let mut wrong = update(1);
        wrong.manifest_hash = ManifestHash([9; 32]);
        assert_eq!(
            round.on_update("b", &wrong, vec![0.0, 0.0], t0).unwrap_err().code,
            ErrorCode::ManifestMismatch
        );
        assert_eq!(
            round.on_update("c", &update(1), vec![0.0], t0).unwrap_err().code,
            ErrorCode::ManifestMismatch
        );
        assert_eq!(
            round.on_update("x", &update(1), vec![0.0, 0.0], t0).unwrap_err().code,
            ErrorCode::NotInRound
        );
        let mut stale = update(1);
        stale.round = 2;
        assert_eq!(
            round.on_update("d", &stale, vec![0.0, 0.0], t0).unwrap_err().code,
            ErrorCode::NotInRound
        );
        round.on_update("e", &update(2), vec![2.0, 2.0], t0).unwrap();
        assert_eq!(
            round.on_update("e", &update(2), vec![2.0, 2.0], t0).unwrap_err().code,
            ErrorCode::NotInRound
        );
        assert_eq!(round.poll(t0), RoundStatus::Closed);
        let outcome = round.finish();
        assert_eq!(outcome.results.len(), 1);
        assert_eq!(outcome.failures.len(), 4);
        assert_eq!(outcome.aggregation.finish().unwrap(), vec![2.0, 2.0]);
    }

    #[test]
    fn deadline_drops_stragglers_without_waiting() {
        let t0 = Instant::now();
        let mut round = Round::new(spec(&["a", "b"], 2), fedavg(), t0);
        round
            .on_update("a", &update(1), vec![1.0, 1.0], t0 + Duration::from_secs(1))
            .unwrap();
        assert!(matches!(
            round.poll(t0 + Duration::from_secs(9)),
            RoundStatus::Collecting { .. }
        ));
        let late = t0 + Duration::from_secs(10);
        assert_eq!(round.poll(late), RoundStatus::Closed);
        assert_eq!(
            round.on_update("b", &update(1), vec![1.0, 1.0], late).unwrap_err().code,
            ErrorCode::TooLate
        );
        let outcome = round.finish();
        assert_eq!(outcome.results.len(), 1);
        assert!(outcome.failures.iter().any(|f| f.agent == "b"));
    }

    #[test]
    fn closes_early_at_target_and_reports_missing_quorum() {
        let t0 = Instant::now();
        let mut round = Round::new(spec(&["a", "b", "c"], 1), fedavg(), t0);
        round.on_update("a", &update(1), vec![1.0, 1.0], t0).unwrap();
        assert_eq!(round.poll(t0), RoundStatus::Closed);

        let mut s = spec(&["a", "b"], 2);
        s.min_updates = 2;
        let mut round = Round::new(s, fedavg(), t0);
        round.on_update("a", &update(1), vec![1.0, 1.0], t0).unwrap();
        round.on_failure("b", FailureReason::Disconnected);
        assert!(!round.finish().quorum_met);
    }
}

#[cfg(test)]
mod loss_tests {
    use std::time::{Duration, Instant};

    use fedtune_protocol::{ClientHyperparameters, ErrorCode, ManifestHash, TrainMetrics, Update};

    use super::{Round, RoundSpec};
    use crate::strategy::{QFedAvgConfig, StrategyConfig};

    fn spec() -> RoundSpec {
        RoundSpec {
            trial: 0,
            round: 0,
            cohort: vec!["a".into(), "b".into()],
            manifest_hash: ManifestHash([1; 32]),
            numel: 1,
            target_updates: 2,
            min_updates: 1,
            timeout: Duration::from_secs(10),
        }
    }

    fn update(loss_before: f64, train_loss_before: Option<f64>) -> Update {
        Update {
            trial: 0,
            round: 0,
            manifest_hash: ManifestHash([1; 32]),
            num_samples: 1,
            metrics: TrainMetrics {
                loss_before,
                train_loss_before,
                ..TrainMetrics::default()
            },
            used: ClientHyperparameters::default(),
            proposal: None,
            replayed: false,
        }
    }

    fn qfedavg_step(a: Update, b: Update) -> f32 {
        let strategy = StrategyConfig::QFedAvg(QFedAvgConfig {
            q: 1.0,
            learning_rate: 1e9,
        });
        let mut strategy = strategy.build().unwrap();
        assert!(strategy.needs_train_loss(), "q-FedAvg asks agents for F_k");
        let t0 = Instant::now();
        let mut round = Round::new(spec(), strategy.begin_round(0, 1), t0);
        round.on_update("a", &a, vec![1.0], t0).unwrap();
        round.on_update("b", &b, vec![0.0], t0).unwrap();
        round.finish().aggregation.finish().unwrap()[0]
    }

    #[test]
    fn q_fedavg_weighs_by_the_training_loss_when_agents_report_it() {
        // L → 0: the step is Σ Fₖ dₖ / Σ Fₖ; agent a's delta is 1, b's 0.
        let validation_only = qfedavg_step(update(3.0, None), update(1.0, None));
        assert!((validation_only - 0.75).abs() < 1e-6, "{validation_only}");
        let with_train_loss = qfedavg_step(update(3.0, Some(1.0)), update(1.0, Some(3.0)));
        assert!((with_train_loss - 0.25).abs() < 1e-6, "{with_train_loss}");
    }

    #[test]
    fn non_finite_metrics_are_refused() {
        let t0 = Instant::now();
        let mut strategy = StrategyConfig::default().build().unwrap();
        let mut round = Round::new(spec(), strategy.begin_round(0, 1), t0);
        for (agent, bad) in [("a", update(f64::NAN, None)), ("b", update(1.0, Some(f64::INFINITY)))] {
            let err = round.on_update(agent, &bad, vec![0.0], t0).unwrap_err();
            assert_eq!(err.code, ErrorCode::NonFinite);
        }
    }
}
