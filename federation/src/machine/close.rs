//! Closing a round: the aggregate applied, fairness and the server learning rate updated,
//! the record committed, and at the end the final evaluation and the run's report.

use std::collections::BTreeMap;
use std::time::Instant;

use fedtune_protocol::tensor::params_to_bytes;
use fedtune_protocol::{AggregatorMessage, Evaluate};
use tracing::{info, warn};

use super::record::AgentResult;
use super::record::final_fairness;
use super::secure::SecureError;
use super::{
    Action, Answer, Contribution, Evaluating, EvaluationError, Federation, FinalEvaluation, GlobalEvaluation,
    OpenRound, Phase, RoundRecord, RunReport,
};
use crate::fairness::{FairnessReport, violations};
use crate::privacy::{Clipping, NoisePlacement};

impl Federation {
    /// Applies the round's aggregate (trainable values only) to the global model through
    /// the strategy; frozen values stay as they are.
    fn apply(&mut self, delta: &[f32]) -> Result<(), crate::strategy::StrategyError> {
        if self.trainable.is_all() {
            return self.strategy.apply(&mut self.global, delta);
        }
        let mut part = self.trainable.gather(&self.global);
        self.strategy.apply(&mut part, delta)?;
        self.trainable.scatter(&part, &mut self.global);
        Ok(())
    }

    /// Closes the round in progress: stragglers are dropped, the aggregate is applied
    /// when quorum is met, fairness and the server learning rate are updated, and the
    /// record is committed (after the server-side evaluation, when there is one).
    /// `unmasked` is the secure-aggregation result, for secure rounds.
    pub(super) fn close_round(&mut self, now: Instant, unmasked: Option<Result<Vec<f32>, SecureError>>) {
        let Phase::Round(open) = std::mem::replace(&mut self.phase, Phase::Ready) else {
            return;
        };
        let OpenRound {
            started,
            round,
            exchanges,
            known,
            downlink_bytes,
            base_bytes,
            dp,
            bounded_claims,
            ..
        } = *open;
        // Stragglers are dropped, not waited on: their streams are reset.
        for exchange in exchanges.into_keys() {
            self.actions.push_back(Action::Abandon { exchange });
        }
        let config = self.config.clone();
        let secure = unmasked.is_some();
        let outcome = round.finish();
        let (spec, results, quorum_met) = (outcome.spec, outcome.results, outcome.quorum_met);
        let mut aggregation_error = None;
        // Under central DP: how many updates were within the clip, for adaptive clipping.
        let unclipped = outcome.aggregation.unclipped().zip(Some(outcome.aggregation.updates()));
        let applied = quorum_met && {
            let delta = match unmasked {
                Some(unmasked) => unmasked.map_err(|e| e.to_string()),
                None => outcome.aggregation.finish().map_err(|e| e.to_string()),
            };
            let applied = delta.and_then(|delta| self.apply(&delta).map_err(|e| e.to_string()));
            if let Err(e) = applied {
                warn!(
                    "{} could not aggregate this round: {e}; global model unchanged",
                    self.strategy.name()
                );
                aggregation_error = Some(e);
                false
            } else {
                true
            }
        };
        // A released (applied) noisy aggregate spends privacy; an unapplied round does not.
        let epsilon = dp.map(|dp| {
            let privacy = &config.privacy;
            if applied {
                let sigma = match privacy.noise {
                    NoisePlacement::Central => privacy.noise_multiplier,
                    NoisePlacement::Distributed => {
                        super::distributed_sigma(privacy.noise_multiplier, results.len(), dp.cohort)
                    }
                };
                self.ledger.record(dp.sample_rate, sigma);
                if let (Clipping::Adaptive, Some((unclipped, updates))) = (privacy.clipping, unclipped) {
                    let noise = self.noise.normal();
                    self.ledger.clip = Some(privacy.next_clip(dp.clip, unclipped, updates, dp.cohort, noise));
                }
            }
            self.ledger.epsilon(privacy.delta)
        });
        if !quorum_met {
            warn!(
                updates = results.len(),
                needed = config.federation.min_updates,
                "quorum not met: global model unchanged"
            );
        }
        if let Some(tuner) = self.tuner.as_mut() {
            tuner.observe(&results);
        }
        for r in &results {
            self.history.record_accuracy(&r.agent, r.metrics.accuracy_before);
        }
        let per_agent: Vec<(f64, f64)> = results
            .iter()
            .map(|r| (r.metrics.accuracy_before, r.metrics.loss_before))
            .collect();
        let fairness = FairnessReport::measure(&per_agent, &self.history.participation(&known));
        let violations = violations(&config.fairness.constraints, &fairness);
        for violation in &violations {
            warn!("fairness: {violation}");
        }
        // The feedback loop: the loss the agents measured on this round's incoming model
        // judges the server step that produced it.
        let validation_loss = weighted_mean(&results, |r| r.metrics.loss_before);
        let server_learning_rate = self.strategy.server_learning_rate();
        if let (Some(controller), Some(lr)) = (self.server_lr.as_mut(), server_learning_rate)
            && !results.is_empty()
        {
            let next = controller.observe(validation_loss, lr);
            if next != lr
                && let Err(e) = self.strategy.set_server_learning_rate(next)
            {
                warn!("cannot adapt the server learning rate: {e}");
            }
        }
        // The model went down (whole, or its trainable part to agents holding the rest);
        // the trainable values came back.
        let payload_bytes = downlink_bytes + results.len() as u64 * spec.numel as u64 * 4;
        // Who answered holds the frozen values now; who failed gets the whole model next.
        if let Some((_, holders)) = self.base.as_mut() {
            holders.extend(results.iter().map(|r| r.agent.clone()));
            for failure in &outcome.failures {
                holders.remove(&failure.agent);
            }
        }
        let record = RoundRecord {
            round: spec.round,
            cohort: spec.cohort,
            updates: results.len(),
            applied,
            train_loss: weighted_mean(&results, |r| r.metrics.train_loss),
            federated_accuracy: weighted_mean(&results, |r| r.metrics.accuracy_before),
            federated_loss: validation_loss,
            agent_accuracy: results
                .iter()
                .map(|r| (r.agent.clone(), r.metrics.accuracy_before))
                .collect(),
            failures: outcome.failures,
            aggregation_error,
            fairness,
            violations,
            server_learning_rate,
            test: None,
            seconds: 0.0,
            device_seconds: results.iter().map(|r| r.metrics.wall_seconds).sum(),
            payload_bytes,
            base_bytes,
            contributions: results
                .iter()
                .map(|r| {
                    let contribution = Contribution {
                        arrived_after_seconds: r.arrived_after.as_secs_f64(),
                        samples: r.num_samples,
                        device_seconds: r.metrics.wall_seconds,
                        update_bytes: spec.numel as u64 * 4,
                        replayed: r.replayed,
                    };
                    (r.agent.clone(), contribution)
                })
                .collect(),
            secure,
            bounded_claims,
            epsilon,
            clip: dp.map(|dp| dp.clip),
        };
        if self.evaluate_globally {
            self.actions.push_back(Action::EvaluateGlobal {
                round: record.round,
                params: self.global.clone(),
            });
            self.phase = Phase::Evaluating(Box::new(Evaluating { started, record }));
        } else {
            self.commit(started, record, now);
        }
    }

    pub(super) fn on_global_evaluated(
        &mut self,
        round: u64,
        result: Result<GlobalEvaluation, EvaluationError>,
        now: Instant,
    ) {
        let Phase::Evaluating(pending) = &self.phase else {
            return;
        };
        if pending.record.round != round {
            return;
        }
        let Phase::Evaluating(pending) = std::mem::replace(&mut self.phase, Phase::Ready) else {
            return;
        };
        let Evaluating { started, mut record } = *pending;
        match result {
            Ok(evaluation) => record.test = Some(evaluation),
            Err(e) => warn!("server-side evaluation failed: {e}"),
        }
        self.commit(started, record, now);
    }

    fn commit(&mut self, started: Instant, mut record: RoundRecord, now: Instant) {
        record.seconds = now.saturating_duration_since(started).as_secs_f64();
        info!(
            trial = self.trial,
            round = record.round,
            updates = record.updates,
            failures = record.failures.len(),
            train_loss = record.train_loss,
            federated_accuracy = record.federated_accuracy,
            test_accuracy = record.test.map(|t| t.accuracy),
            seconds = record.seconds,
            "round finished"
        );
        self.round = record.round + 1;
        self.records.push(record.clone());
        self.actions.push_back(Action::RoundCommitted(Box::new(record)));
        if self.round >= self.config.federation.rounds {
            self.begin_final_evaluation(now);
        } else {
            self.phase = Phase::Ready;
        }
    }

    pub(super) fn begin_final_evaluation(&mut self, now: Instant) {
        if !self.config.federation.final_evaluation {
            return self.finish(now);
        }
        let agents: Vec<String> = self.available().into_iter().map(|(id, _)| id.clone()).collect();
        if agents.is_empty() {
            return self.finish(now);
        }
        let model = self.config.model.spec.clone();
        let request = Evaluate {
            study: self.config.federation.study.clone(),
            trial: self.trial,
            round: self.config.federation.rounds,
            manifest_hash: model.manifest().hash(),
            model,
            classes: self.config.model.classes.clone(),
        };
        let payload = params_to_bytes(&self.global);
        let mut exchanges = BTreeMap::new();
        for agent in agents {
            let exchange = self.exchange_id();
            exchanges.insert(exchange, agent.clone());
            self.actions.push_back(Action::Open {
                exchange,
                agent,
                message: AggregatorMessage::Evaluate(request.clone()),
                payload: payload.clone(),
                answer: Answer::Control,
            });
        }
        self.phase = Phase::Final(FinalEvaluation {
            deadline: now + self.config.federation.round_timeout(),
            exchanges,
            results: BTreeMap::new(),
        });
    }

    pub(super) fn finish(&mut self, _now: Instant) {
        let final_agent_evaluation = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Final(f) => {
                for exchange in f.exchanges.into_keys() {
                    self.actions.push_back(Action::Abandon { exchange });
                }
                f.results
            }
            _ => BTreeMap::new(),
        };
        let interrupted = self.interrupted || (self.round < self.config.federation.rounds && !self.budget_spent);
        let final_fairness = final_fairness(&final_agent_evaluation, self.records.last());
        let final_violations = violations(&self.config.fairness.constraints, &final_fairness);
        for violation in &final_violations {
            warn!("final model: {violation}");
        }
        let report = RunReport {
            final_test: self.records.last().and_then(|r| r.test),
            rounds: self.records.clone(),
            final_agent_evaluation,
            final_fairness,
            final_violations,
            interrupted,
            privacy_budget_spent: self.budget_spent,
            global: self.global.clone(),
        };
        self.actions.push_back(Action::Finished(Box::new(report)));
    }
}

fn weighted_mean(results: &[AgentResult], value: impl Fn(&AgentResult) -> f64) -> f64 {
    let total: u64 = results.iter().map(|r| r.num_samples).sum();
    if total == 0 {
        return 0.0;
    }
    results.iter().map(|r| value(r) * r.num_samples as f64).sum::<f64>() / total as f64
}
