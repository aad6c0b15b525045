//! One trial run as a federation, and the FedEx tuner that adapts it within the trial.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use fedtune_protocol::ClientHyperparameters;
use fedtune_tuning::space::{Distribution, ParamValue};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, error, info, warn};

use super::TrialMetric;
use super::params::{apply_client, client_value, server_lr};
use super::{TrialRecord, TuneEvent};
use crate::config::AggregatorConfig;
use crate::driver::{DriveContext, Flow, drive};
use crate::registry::Registry;
use fedtune_federation::AgentResult;
use fedtune_federation::fairness::FairnessReport;
use fedtune_federation::{
    ClientTuner, Evaluator, Federation, FederationState, GlobalEvaluation, RoundRecord, final_fairness,
};
use fedtune_store::StoreWriter;
use fedtune_tuning::{Draw, FedExPolicy, Outcome, Params, Study, StudyError, TrialState};

/// Adapts a trial's adaptive client parameters with a FedEx policy.
pub(super) struct PolicyTuner {
    pub(super) policy: FedExPolicy,
    /// The adaptive parameters with their distributions.
    pub(super) adaptive: Vec<(String, Distribution)>,
    pub(super) draws: HashMap<String, Draw>,
}

/// The trial keeps a handle on its tuner to read the policy once the rounds are done.
pub(super) struct SharedTuner(pub(super) Arc<Mutex<PolicyTuner>>);

impl ClientTuner for SharedTuner {
    fn assign(&mut self, agent: &str, base: &ClientHyperparameters) -> ClientHyperparameters {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .assign(agent, base)
    }

    fn observe(&mut self, results: &[AgentResult]) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).observe(results);
    }

    fn state(&self) -> Option<serde_json::Value> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).state()
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<(), String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).restore(state)
    }
}

impl ClientTuner for PolicyTuner {
    fn state(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.policy).ok()
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<(), String> {
        self.policy = serde_json::from_value(state).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn assign(&mut self, agent: &str, base: &ClientHyperparameters) -> ClientHyperparameters {
        let draw = self.policy.draw();
        let mut hp = base.clone();
        if let Err(e) = apply_client(&mut hp, &draw.params) {
            warn!(%agent, "policy draw does not fit ({e}); sending the trial's values");
            hp = base.clone();
        }
        self.draws.insert(agent.to_owned(), draw);
        hp
    }

    fn observe(&mut self, results: &[AgentResult]) {
        let outcomes: Vec<(Draw, f64)> = results
            .iter()
            .filter_map(|r| {
                let draw = self.draws.remove(&r.agent)?;
                Some((draw, r.metrics.loss_before - r.metrics.loss_after))
            })
            .collect();
        self.draws.clear();
        let used = self.policy.observe(&outcomes);
        debug!(rewards = used, "policy updated");
        for r in results {
            let Some(proposal) = &r.proposal else { continue };
            for (name, distribution) in &self.adaptive {
                let (Some(proposed), Some(used)) = (client_value(proposal, name), client_value(&r.used, name)) else {
                    continue;
                };
                if proposed != used {
                    let raw = match distribution {
                        Distribution::Int { .. } => ParamValue::Int(proposed.round() as i64),
                        _ => ParamValue::Float(proposed),
                    };
                    // A proposal beyond the space (a halved rate below its lower bound)
                    // counts as the nearest value the space allows.
                    let value = distribution
                        .to_internal(&raw)
                        .map_or(raw, |internal| distribution.from_internal(internal));
                    if let Err(e) = self.policy.record_proposal(name, value) {
                        debug!(agent = %r.agent, "proposal for {name} not used: {e}");
                    }
                }
            }
        }
    }
}

/// Everything a trial needs, owned so trials can run as tasks.
pub(super) struct TrialRun {
    pub(super) number: u64,
    pub(super) params: Params,
    pub(super) config: Arc<AggregatorConfig>,
    pub(super) registry: Arc<Registry>,
    pub(super) buffers: Arc<Semaphore>,
    pub(super) evaluator: Option<Arc<dyn Evaluator>>,
    pub(super) study: Arc<Mutex<Study>>,
    pub(super) pool: Option<BTreeSet<String>>,
    pub(super) objectives: Vec<TrialMetric>,
    pub(super) tuner: Option<Arc<Mutex<PolicyTuner>>>,
    pub(super) events: tokio::sync::mpsc::UnboundedSender<TuneEvent>,
    /// Where a trial resumes from (a study restarted from its store).
    pub(super) resume: Option<Resumed>,
    /// Commits each round and its checkpoint, when the study lives in a store.
    pub(super) writer: Option<Arc<StoreWriter>>,
    /// Counts rounds, updates and bytes for `/metrics`.
    pub(super) metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// A running trial's last checkpoint and the rounds committed before it.
pub(crate) struct Resumed {
    pub(crate) state: FederationState,
    pub(crate) rounds: Vec<RoundRecord>,
}

pub(super) fn lock(study: &Mutex<Study>) -> std::sync::MutexGuard<'_, Study> {
    study.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every metric from an evaluation, a fairness report and the costs so far.
pub(super) fn measure(
    eval: Option<GlobalEvaluation>,
    fairness: &FairnessReport,
    device: f64,
    bytes: u64,
    epsilon: f64,
) -> BTreeMap<TrialMetric, f64> {
    BTreeMap::from([
        (TrialMetric::Epsilon, epsilon),
        (TrialMetric::Accuracy, eval.map_or(0.0, |e| e.accuracy)),
        (TrialMetric::Loss, eval.map_or(f64::MAX, |e| e.loss)),
        (TrialMetric::AccuracyVariance, fairness.accuracy_variance),
        (TrialMetric::Worst10pctAccuracy, fairness.worst_10pct_accuracy),
        (TrialMetric::DeviceSeconds, device),
        (TrialMetric::Bytes, bytes as f64),
    ])
}

pub(super) fn values(objectives: &[TrialMetric], metrics: &BTreeMap<TrialMetric, f64>) -> Vec<f64> {
    objectives.iter().map(|m| metrics[m]).collect()
}

impl TrialRun {
    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> TrialRecord {
        let started = Instant::now();
        let fed = &self.config.federation;
        let mut record = TrialRecord {
            number: self.number,
            params: self.params.clone(),
            state: TrialState::Failed,
            values: None,
            feasible: true,
            violations: Vec::new(),
            rounds: 0,
            agents: match &self.pool {
                Some(pool) => pool.iter().cloned().collect(),
                None => self.registry.snapshot().into_iter().map(|a| a.id).collect(),
            },
            curve: Vec::new(),
            metrics: BTreeMap::new(),
            final_test: None,
            policy_best: None,
            policy: None,
            seconds: 0.0,
            fail_reason: None,
            model: None,
        };
        let resumed = self.resume.take();
        let resumed_from = resumed.as_ref().map(|r| r.state.round);
        let (fresh, prior) = match resumed {
            Some(Resumed { state, rounds }) => (Federation::resume(Arc::new(self.config.settings()), state), rounds),
            None => (
                Federation::new(Arc::new(self.config.settings()), self.number),
                Vec::new(),
            ),
        };
        let federation = fresh.and_then(|f| {
            let f = f.with_global_evaluation(self.evaluator.is_some());
            let f = match self.pool.clone() {
                Some(pool) => f.with_pool(pool),
                None => f,
            };
            match self.tuner.clone() {
                Some(tuner) => f.with_tuner(Box::new(SharedTuner(tuner))),
                None => Ok(f),
            }
        });
        let mut federation = match federation {
            Ok(federation) => federation,
            Err(e) => {
                warn!(trial = self.number, "cannot start: {e}");
                return self.finish(record, Outcome::failed(format!("cannot start: {e}")), started);
            }
        };
        // A resumed trial's checkpoint carries the server learning rate it had reached.
        if resumed_from.is_none()
            && let Some(v) = server_lr(&self.params)
        {
            let lr = v.as_f64().unwrap_or(f64::NAN);
            if let Err(e) = federation.set_server_learning_rate(lr) {
                warn!(trial = self.number, "server learning rate not applied: {e}");
            }
        }
        if let Some(round) = resumed_from {
            info!(trial = self.number, round, "trial resumed from its checkpoint");
        }
        let mut device: f64 = prior.iter().map(|r| r.device_seconds).sum();
        let mut bytes: u64 = prior.iter().map(RoundRecord::configuration_bytes).sum();
        record.rounds = prior.last().map_or(0, |r| r.round + 1);
        if let Some(trial) = lock(&self.study).trial(self.number) {
            record.curve = trial.intermediate.values().filter_map(|v| v.first().copied()).collect();
            record.curve.truncate(prior.len());
        }
        let mut last_round: Option<RoundRecord> = prior.into_iter().last();
        let writer = self.writer.clone();
        let mut commit_failed = false;
        let mut lost = false;
        let mut pruned = false;
        let context = DriveContext {
            registry: &self.registry,
            buffers: self.buffers.clone(),
            evaluator: self.evaluator.clone(),
            max_payload: fed.max_payload_bytes,
        };
        let report = drive(federation, context, &mut shutdown, |r, federation| {
            if let Some(metrics) = &self.metrics {
                metrics.observe_round(r);
            }
            let round = r.round;
            record.rounds = round + 1;
            device += r.device_seconds;
            bytes += r.configuration_bytes();
            // The round's incoming model was measured by the agents; the model after it
            // by the evaluator, when there is one.
            let federated = GlobalEvaluation {
                loss: r.federated_loss,
                accuracy: r.federated_accuracy,
                samples: 0,
            };
            let eval = r.test.or((r.updates > 0).then_some(federated));
            let epsilon = r.epsilon.unwrap_or(0.0);
            let values = values(&self.objectives, &measure(eval, &r.fairness, device, bytes, epsilon));
            record.curve.push(values[0]);
            let prune = match lock(&self.study).report(self.number, round + 1, values.clone()) {
                Ok(prune) => prune,
                Err(StudyError::Lost { owner, .. }) => {
                    warn!(trial = self.number, "stopping: `{owner}` took the trial over");
                    lost = true;
                    return Flow::Stop;
                }
                Err(e) => {
                    warn!(trial = self.number, "report refused: {e}");
                    false
                }
            };
            let _ = self.events.send(TuneEvent::Round {
                number: self.number,
                round,
                values,
                pruned: prune && round + 1 < fed.rounds,
            });
            last_round = Some(r.clone());
            // The trial's values for the round are stored (by `report`) before the round
            // and its checkpoint: a crash between the two reruns the round, whose new
            // values replace the old.
            if let Some(writer) = &writer
                && let Err(e) = writer.commit(r.clone(), federation.state())
            {
                error!(trial = self.number, "stopping: the round could not be committed: {e}");
                commit_failed = true;
                return Flow::Stop;
            }
            if prune && round + 1 < fed.rounds {
                pruned = true;
                Flow::Stop
            } else {
                Flow::Continue
            }
        })
        .await;
        if pruned {
            record.final_test = last_round.and_then(|r| r.test);
            return self.finish(record, Outcome::Pruned, started);
        }
        if report.interrupted || commit_failed || lost {
            // In a store, an interrupted trial stays running: a restart resumes it.
            if self.writer.is_some() {
                record.state = TrialState::Running;
                record.seconds = started.elapsed().as_secs_f64();
                return record;
            }
            let reason = if report.interrupted {
                "interrupted"
            } else if commit_failed {
                "a round could not be committed to the store"
            } else {
                "its agents were lost"
            };
            return self.finish(record, Outcome::failed(reason), started);
        }
        let Some(last) = last_round else {
            return self.finish(record, Outcome::failed("no round was applied"), started);
        };
        // Score the final model: server test set if any, else federated evaluation.
        let per_agent = report.final_agent_evaluation;
        let fairness = final_fairness(&per_agent, Some(&last));
        let federated = (!per_agent.is_empty()).then(|| {
            let total: u64 = per_agent.values().map(|e| e.samples).sum::<u64>().max(1);
            let weighted = |f: fn(&GlobalEvaluation) -> f64| {
                per_agent.values().map(|e| f(e) * e.samples as f64).sum::<f64>() / total as f64
            };
            GlobalEvaluation {
                loss: weighted(|e| e.loss),
                accuracy: weighted(|e| e.accuracy),
                samples: total,
            }
        });
        record.final_test = last.test;
        let eval = last.test.or(federated);
        let metrics = measure(eval, &fairness, device, bytes, last.epsilon.unwrap_or(0.0));
        let values = values(&self.objectives, &metrics);
        record.metrics = metrics;
        record.violations = fedtune_federation::fairness::violations(&self.config.fairness.constraints, &fairness);
        record.feasible = record.violations.is_empty();
        if let Some(tuner) = &self.tuner {
            let tuner = tuner.lock().unwrap_or_else(PoisonError::into_inner);
            record.policy_best = Some(tuner.policy.best());
            record.policy = Some(tuner.policy.summary());
        }
        let outcome = Outcome::Complete {
            values,
            feasible: record.feasible,
        };
        let mut record = self.finish(record, outcome, started);
        if record.state == TrialState::Complete {
            self.save_if_best(&mut record, &report.global);
        }
        record
    }

    /// Writes the trial's final model when the study now ranks it best, so the study's
    /// best model is on disk whenever the study stops. The study stays locked while the
    /// file is written: a trial that becomes best later cannot be overwritten by this one.
    fn save_if_best(&self, record: &mut TrialRecord, global: &[f32]) {
        let Some(path) = self.config.model.save_path(self.config.report.as_deref()) else {
            return;
        };
        let study = lock(&self.study);
        if study.best_trial().map(|t| t.number) != Some(self.number) {
            return;
        }
        match crate::service::save_model(&self.config.model.spec, global, &path, self.config.model.save_layout) {
            Ok(_) => {
                info!(trial = self.number, path = %path.display(), "the study's best model so far written");
                record.model = Some(path);
            }
            Err(e) => error!(
                trial = self.number,
                "the best model could not be written to {}: {e}",
                path.display()
            ),
        }
    }

    fn finish(&self, mut record: TrialRecord, outcome: Outcome, started: Instant) -> TrialRecord {
        record.seconds = started.elapsed().as_secs_f64();
        let mut study = lock(&self.study);
        match study.tell(self.number, outcome) {
            Ok(trial) => {
                record.state = trial.state;
                record.values = trial.values.clone();
                record.fail_reason = trial.fail_reason.clone();
            }
            Err(StudyError::Lost { owner, .. }) => {
                warn!(trial = self.number, "not told: `{owner}` took the trial over");
                record.state = TrialState::Running;
            }
            Err(e) => warn!(trial = self.number, "tell refused: {e}"),
        }
        record
    }
}
