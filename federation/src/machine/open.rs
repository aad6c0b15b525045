//! Opening a round: the cohort picked (seeded), a task built for each member, the
//! aggregation (with central noise under differential privacy) and the secure steps set
//! up, and the global model sent.

use std::collections::BTreeMap;
use std::time::Instant;

use fedtune_protocol::secagg::DistributedNoise;
use fedtune_protocol::tensor::params_to_bytes;
use fedtune_protocol::{AggregatorMessage, Capabilities, ClientHyperparameters, Task};
use rand::seq::IndexedRandom;
use tracing::{info, warn};

use super::round::{Round, RoundSpec, RoundStatus};
use super::secure::SecurePhase;
use super::{Action, Answer, DpRound, FailureReason, Federation, OpenRound, Phase, distributed_sigma};
use crate::privacy::NoisePlacement;
use crate::settings::Selection;

impl Federation {
    /// The connected agents this federation may use, ordered by id.
    pub(super) fn available(&self) -> Vec<(&String, &Capabilities)> {
        self.agents
            .iter()
            .filter(|(id, _)| self.pool.as_ref().is_none_or(|pool| pool.contains(*id)))
            .collect()
    }

    /// Picks the round's cohort among the available agents (seeded).
    fn select_cohort(&mut self) -> Vec<(String, Capabilities)> {
        let available: Vec<(String, Capabilities)> = self
            .available()
            .into_iter()
            .map(|(id, c)| (id.clone(), c.clone()))
            .collect();
        let size = self.config.federation.cohort_size(available.len());
        let chosen: Vec<(String, Capabilities)> = match self.config.fairness.selection {
            Selection::Uniform => available.sample(&mut self.rng, size).cloned().collect(),
            Selection::Fairness => {
                let history = &self.history;
                match available.sample_weighted(&mut self.rng, size, |(id, _)| history.weight(id)) {
                    Ok(chosen) => chosen.cloned().collect(),
                    Err(e) => {
                        warn!("fairness-aware selection failed ({e}); selecting uniformly");
                        available.sample(&mut self.rng, size).cloned().collect()
                    }
                }
            }
        };
        self.history.record_selection(chosen.iter().map(|(id, _)| id));
        chosen
    }

    pub(super) fn start_round(&mut self, now: Instant) {
        // Only a federation resumed after its last round gets here: it still owes the
        // final evaluation.
        if self.round >= self.config.federation.rounds {
            return self.begin_final_evaluation(now);
        }
        let config = self.config.clone();
        let fed = &config.federation;
        let round = self.round;
        let known: Vec<String> = self.available().into_iter().map(|(id, _)| id.clone()).collect();
        let cohort = self.select_cohort();
        let privacy = &config.privacy;
        let dp = privacy.enabled().then(|| DpRound {
            sample_rate: cohort.len() as f64 / known.len().max(1) as f64,
            clip: self.ledger.clip.unwrap_or(privacy.clip),
            cohort: cohort.len(),
        });
        if let (Some(dp), Some(max)) = (dp, privacy.max_epsilon) {
            let sigma = match privacy.noise {
                NoisePlacement::Central => privacy.noise_multiplier,
                // Distributed noise loses the shares of agents that drop out: the check
                // assumes the fewest inputs the round can close with.
                NoisePlacement::Distributed => {
                    let fewest = fed
                        .min_updates
                        .max(config.secure_aggregation.threshold_for(cohort.len()))
                        .min(cohort.len());
                    distributed_sigma(privacy.noise_multiplier, fewest, cohort.len())
                }
            };
            let next = self.ledger.epsilon_after(dp.sample_rate, sigma, privacy.delta);
            if next > max {
                warn!(
                    round,
                    epsilon = self.ledger.epsilon(privacy.delta),
                    next,
                    max_epsilon = max,
                    "the privacy budget is spent: another round would exceed max_epsilon; the run ends here"
                );
                self.budget_spent = true;
                return self.begin_final_evaluation(now);
            }
        }
        let manifest = config.model.manifest();
        let spec = RoundSpec {
            trial: self.trial,
            round,
            cohort: cohort.iter().map(|(id, _)| id.clone()).collect(),
            manifest_hash: manifest.hash(),
            // Updates carry the trainable values only.
            numel: self.trainable.numel(),
            target_updates: cohort.len(),
            min_updates: fed.min_updates,
            timeout: fed.round_timeout(),
        };
        info!(
            trial = self.trial,
            round,
            cohort = cohort.len(),
            connected = known.len(),
            "round started"
        );
        let base = ClientHyperparameters {
            proximal_mu: self.strategy.proximal_mu().unwrap_or(config.client.proximal_mu),
            ..config.client.clone()
        };
        let frozen = config.model.frozen();
        let mut tasks = Vec::with_capacity(cohort.len());
        for (agent, _) in &cohort {
            let hyperparameters = match self.tuner.as_mut() {
                Some(tuner) => tuner.assign(agent, &base),
                None => base.clone(),
            };
            tasks.push(Task {
                study: fed.study.clone(),
                trial: self.trial,
                round,
                model: config.model.spec.clone(),
                manifest_hash: spec.manifest_hash,
                hyperparameters,
                deadline_ms: spec.timeout.as_millis() as u64,
                seed: rand::RngExt::random(&mut self.rng),
                measure_train_loss: self.strategy.needs_train_loss(),
                secure: None,
                frozen: frozen.clone(),
                base: None,
                classes: config.model.classes.clone(),
            });
        }
        let payload = params_to_bytes(&self.global);
        // Agents that hold the frozen values get the trainable ones only.
        let partial = self.base.as_ref().map(|(checksum, holders)| {
            let holds: Vec<bool> = cohort.iter().map(|(agent, _)| holders.contains(agent)).collect();
            (*checksum, holds, params_to_bytes(&self.trainable.gather(&self.global)))
        });
        let mut aggregation = self.strategy.begin_round(round, spec.numel);
        if let Some(dp) = dp.filter(|_| privacy.noise == NoisePlacement::Central) {
            let sigma = privacy.update_noise_multiplier(dp.cohort);
            let noise = self.noise.fork();
            aggregation = Box::new(crate::privacy::DpAggregation::new(aggregation, dp.clip, sigma, noise));
        }
        let mut open = Box::new(OpenRound {
            started: now,
            round: Round::new(spec, aggregation, now),
            exchanges: BTreeMap::new(),
            secure: None,
            known,
            downlink_bytes: 0,
            base_bytes: 0,
            dp,
            bounded_claims: BTreeMap::new(),
        });
        let mut secure = None;
        if config.secure_aggregation.enabled {
            let max_weight = cohort.iter().map(|(_, c)| c.train_samples.max(1)).sum();
            let noise = dp
                .filter(|_| privacy.noise == NoisePlacement::Distributed)
                .map(|dp| DistributedNoise {
                    clip: dp.clip as f32,
                    std: (privacy.noise_multiplier * dp.clip / (dp.cohort as f64).sqrt()) as f32,
                });
            let spec = open.round.spec();
            match SecurePhase::new(&config.secure_aggregation, &fed.study, spec, max_weight, noise, now) {
                Ok(phase) => secure = Some(phase),
                Err(reason) => {
                    warn!("secure aggregation cannot run this round: {reason}");
                    for (agent, _) in &cohort {
                        open.round
                            .on_failure(agent, FailureReason::SecureUnavailable(reason.to_string()));
                    }
                    self.phase = Phase::Round(open);
                    return self.close_round(now, Some(Err(reason)));
                }
            }
        }
        // Under secure aggregation the first answer is the member's public keys.
        let answer = if secure.is_some() {
            Answer::Control
        } else {
            Answer::Update {
                bytes: self.trainable.numel() as u64 * 4,
            }
        };
        for (index, ((agent, _), mut task)) in cohort.iter().zip(tasks).enumerate() {
            let exchange = self.exchange_id();
            if let Some(secure) = secure.as_mut() {
                task.secure = secure.params_for(index as u32);
                secure.add_member(agent, index as u32, exchange);
            }
            open.exchanges.insert(exchange, agent.clone());
            let payload = match &partial {
                Some((checksum, holds, trainable)) if holds[index] => {
                    task.base = Some(*checksum);
                    trainable.clone()
                }
                Some((_, _, trainable)) => {
                    open.base_bytes += (payload.len() - trainable.len()) as u64;
                    payload.clone()
                }
                None => payload.clone(),
            };
            open.downlink_bytes += payload.len() as u64;
            self.actions.push_back(Action::Open {
                exchange,
                agent: agent.clone(),
                message: AggregatorMessage::Task(task),
                payload,
                answer,
            });
        }
        open.secure = secure;
        // An empty plain round closes at once; a secure one waits for its steps.
        let closed = open.secure.is_none() && open.round.poll(now) == RoundStatus::Closed;
        self.phase = Phase::Round(open);
        if closed {
            self.close_round(now, None);
        }
    }
}
