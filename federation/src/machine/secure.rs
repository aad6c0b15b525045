//! The secure-aggregation steps of one round, inside the federation state machine.
//!
//! Each cohort member has one exchange for the whole round. On it the aggregator sends
//! the task (with the member's secure parameters) and then one message per step of the
//! protocol, reading the member's answer each time:
//!
//! ```text
//! aggregator                              agent
//! Task + global parameters        ──▶      (starts training)
//!                                 ◀──      SecAggKeys
//! SecAggRoster (U1's keys)        ──▶
//!                                 ◀──      SecAggShares (encrypted for each peer)
//! SecAggShares (addressed to it)  ──▶
//!                                 ◀──      Update + masked words (after training)
//! SecAggUnmask (U3)               ──▶
//!                                 ◀──      SecAggReveal
//! Ack or Error                    ──▶
//! ```
//!
//! The cryptography and the bookkeeping of who is in which set live in the protocol's
//! sans-IO [`ServerRound`]; this phase decides when a step is complete (every member
//! answered, or its deadline passed), and drops members that fail or miss a step: the
//! protocol then removes their masks from the others' sum.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use fedtune_protocol::secagg::{DistributedNoise, RoundContext, SecAggError, SecureRound, ServerRound};
use fedtune_protocol::{Ack, AgentMessage, AggregatorMessage, ErrorCode, ErrorMessage};
use tracing::{info, warn};

use super::round::{Round, RoundSpec};
use super::{Action, Answer, ExchangeId, FailureReason, SecureStep};
use crate::settings::SecureAggregationConfig;

struct Member {
    index: u32,
    exchange: ExchangeId,
}

/// Why a round's secure aggregation produced no sum.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum SecureError {
    /// No agent was selected.
    #[error("the cohort is empty")]
    EmptyCohort,
    /// More members than the protocol can index.
    #[error("a cohort of {0} agents is too large")]
    CohortTooLarge(usize),
    /// The protocol refused a step (too few members left, a bad share, …).
    #[error(transparent)]
    Protocol(#[from] SecAggError),
    /// The sum was taken once already.
    #[error("the round was already unmasked")]
    AlreadyUnmasked,
}

/// Whether the secure part of the round is over.
pub(super) enum StepOutcome {
    /// Still waiting for answers.
    Pending,
    /// The round's unmasked sample-weighted mean, or why there is none.
    Done(Result<Vec<f32>, SecureError>),
}

/// Where a round's secure aggregation stands.
pub(super) struct SecurePhase {
    server: Option<ServerRound>,
    step: SecureStep,
    deadline: Instant,
    step_timeout: Duration,
    round_deadline: Instant,
    /// Members still in the protocol.
    members: BTreeMap<String, Member>,
    /// Members that owe an answer to the current step.
    awaiting: BTreeSet<String>,
    /// Bytes of a masked update (one 4-byte word per trainable value).
    update_bytes: u64,
    /// Whether agents add distributed DP noise (then every input has weight 1).
    noised: bool,
}

/// What a secure step works on of the round around it: the round's collection, its open
/// exchanges, the time, and where actions go.
pub(super) struct Step<'a> {
    pub(super) round: &'a mut Round,
    pub(super) exchanges: &'a mut BTreeMap<ExchangeId, String>,
    pub(super) now: Instant,
    pub(super) actions: &'a mut VecDeque<Action>,
}

impl SecurePhase {
    /// Starts the protocol for the round `spec` describes at `now`; `max_weight` bounds
    /// the sum of the members' sample counts.
    ///
    /// # Errors
    /// Why secure aggregation cannot run this round (a cohort too large or too small).
    pub(super) fn new(
        config: &SecureAggregationConfig,
        study: &str,
        spec: &RoundSpec,
        max_weight: u64,
        noise: Option<DistributedNoise>,
        now: Instant,
    ) -> Result<Self, SecureError> {
        if spec.cohort.is_empty() {
            return Err(SecureError::EmptyCohort);
        }
        let context = RoundContext {
            study: study.to_owned(),
            trial: spec.trial,
            round: spec.round,
        };
        let n = u32::try_from(spec.cohort.len()).map_err(|_| SecureError::CohortTooLarge(spec.cohort.len()))?;
        let threshold = config.threshold_for(spec.cohort.len()) as u32;
        let degree = config.degree_for(spec.cohort.len());
        let mut server = match noise {
            // Every input counts once, in a coordinate range that holds its noise.
            Some(noise) => {
                let clip = config.clip.max(noise.coordinate_range());
                ServerRound::new(context, n, threshold, clip, spec.numel, u64::from(n))?.with_noise(noise)?
            }
            None => ServerRound::new(context, n, threshold, config.clip, spec.numel, max_weight)?,
        };
        if let Some(degree) = degree {
            server = server.with_degree(degree)?;
        }
        Ok(Self {
            server: Some(server),
            step: SecureStep::PublicKeys,
            deadline: now + config.step_timeout(),
            step_timeout: config.step_timeout(),
            round_deadline: now + spec.timeout,
            members: BTreeMap::new(),
            awaiting: BTreeSet::new(),
            update_bytes: spec.numel as u64 * 4,
            noised: noise.is_some(),
        })
    }

    /// The secure parameters for member `index`'s task.
    pub(super) fn params_for(&self, index: u32) -> Option<SecureRound> {
        self.server.as_ref().map(|s| s.params_for(index))
    }

    /// Adds `agent`, whose task went out on `exchange`, as member `index`.
    pub(super) fn add_member(&mut self, agent: &str, index: u32, exchange: ExchangeId) {
        self.members.insert(agent.to_owned(), Member { index, exchange });
        self.awaiting.insert(agent.to_owned());
    }

    /// When the current step closes regardless of missing answers.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Handles `agent`'s answer to the current step.
    pub(super) fn on_answer(
        &mut self,
        agent: &str,
        message: AgentMessage,
        payload: Vec<f32>,
        step: Step<'_>,
    ) -> StepOutcome {
        if !self.awaiting.remove(agent) {
            return StepOutcome::Pending;
        }
        let (Some(member), Some(server)) = (self.members.get(agent), self.server.as_mut()) else {
            return StepOutcome::Pending;
        };
        let index = member.index;
        let protocol = |e: fedtune_protocol::secagg::SecAggError| FailureReason::Protocol(e.to_string());
        let accepted: Result<(), (FailureReason, ErrorMessage)> = match (self.step, message) {
            (SecureStep::PublicKeys, AgentMessage::SecAggKeys(keys)) => {
                server.add_keys(index, keys).map_err(protocol).map_err(reply_unexpected)
            }
            (SecureStep::KeyShares, AgentMessage::SecAggShares(shares)) => server
                .add_shares(index, shares)
                .map_err(protocol)
                .map_err(reply_unexpected),
            (SecureStep::MaskedUpdate, AgentMessage::Update(update)) => {
                let words: &[u32] = bytemuck::cast_slice(&payload);
                let weight = if self.noised { 1 } else { update.num_samples };
                let fold = || server.add_masked(index, words, weight);
                step.round
                    .on_masked_update(agent, &update, words.len(), step.now, fold)
                    .map_err(|e| (FailureReason::Refused(e.clone()), e))
            }
            (SecureStep::UnmaskingShares, AgentMessage::SecAggReveal(reveals)) => server
                .add_reveal(index, reveals)
                .map_err(protocol)
                .map_err(reply_unexpected),
            (_, AgentMessage::Decline(d)) => Err(reply_unexpected(FailureReason::Declined(d.reason))),
            (_, AgentMessage::Error(e)) => Err(reply_unexpected(FailureReason::AgentError(e))),
            (step, other) => Err(reply_unexpected(FailureReason::Unexpected {
                expected: expected(step).into(),
                got: other.name().to_owned(),
            })),
        };
        if let Err((cause, error)) = accepted {
            let current = self.step;
            warn!(%agent, "secure aggregation, {current}: {cause}");
            step.round.on_failure(
                agent,
                FailureReason::SecureStep {
                    step: current,
                    cause: Box::new(cause),
                },
            );
            if let Some(exchange) = self.drop_member(agent, step.exchanges) {
                step.actions.push_back(Action::Close {
                    exchange,
                    message: Some(AggregatorMessage::Error(error)),
                });
            }
        }
        self.advance_if_complete(step)
    }

    /// `agent`'s exchange failed or its connection went away (the exchange is already
    /// gone); it drops out of the protocol.
    pub(super) fn on_lost(&mut self, agent: &str, cause: FailureReason, step: Step<'_>) -> StepOutcome {
        if self.members.remove(agent).is_none() {
            return StepOutcome::Pending;
        }
        let current = self.step;
        warn!(%agent, "no {current}: {cause}");
        self.awaiting.remove(agent);
        step.round.on_failure(
            agent,
            FailureReason::SecureStep {
                step: current,
                cause: Box::new(cause),
            },
        );
        self.advance_if_complete(step)
    }

    /// The step's deadline passed: members that did not answer drop out.
    pub(super) fn on_deadline(&mut self, step: Step<'_>) -> StepOutcome {
        let current = self.step;
        for agent in std::mem::take(&mut self.awaiting) {
            step.round.on_failure(&agent, FailureReason::SecureDeadline(current));
            if let Some(exchange) = self.drop_member(&agent, step.exchanges) {
                step.actions.push_back(Action::Abandon { exchange });
            }
        }
        self.advance_if_complete(step)
    }

    /// Whether the step is complete now that a member answered or dropped out; if so,
    /// the next step's messages go out.
    pub(super) fn advance_if_complete(&mut self, step: Step<'_>) -> StepOutcome {
        let Step {
            round,
            exchanges,
            now,
            actions,
        } = step;
        if !self.awaiting.is_empty() {
            return StepOutcome::Pending;
        }
        let Some(server) = self.server.as_mut() else {
            return StepOutcome::Pending;
        };
        let next = match self.step {
            SecureStep::PublicKeys => match server.roster() {
                Ok(_) => {
                    // Each member gets the keys of its neighbourhood only.
                    let mut rosters: BTreeMap<u32, _> = self
                        .members
                        .values()
                        .map(|m| (m.index, server.roster_for(m.index)))
                        .collect();
                    self.ask_all(
                        |member| {
                            let roster = rosters.remove(&member.index).unwrap_or_default();
                            (AggregatorMessage::SecAggRoster(roster), Answer::Control)
                        },
                        actions,
                    );
                    Ok(SecureStep::KeyShares)
                }
                Err(e) => Err(e),
            },
            SecureStep::KeyShares => server.close_shares().map(|survivors| {
                let dropped: Vec<String> = self
                    .members
                    .iter()
                    .filter(|(_, m)| !survivors.contains(&m.index))
                    .map(|(a, _)| a.clone())
                    .collect();
                for agent in dropped {
                    if let Some(exchange) = self.drop_member(&agent, exchanges) {
                        actions.push_back(Action::Abandon { exchange });
                    }
                }
                SecureStep::MaskedUpdate
            }),
            SecureStep::MaskedUpdate => server.close_inputs().map(|contributors| {
                let message = AggregatorMessage::SecAggUnmask(contributors);
                self.ask_all(|_| (message.clone(), Answer::Control), actions);
                SecureStep::UnmaskingShares
            }),
            SecureStep::UnmaskingShares => {
                let server = self.server.take();
                let finished = server.map(ServerRound::finish);
                return match finished {
                    Some(Ok(unmasked)) => {
                        info!(
                            contributors = unmasked.contributors.len(),
                            dropped = unmasked.dropped.len(),
                            revealed = self.members.len(),
                            "secure aggregation unmasked the round's sum"
                        );
                        let (trial, round_number) = (round.spec().trial, round.spec().round);
                        for member in std::mem::take(&mut self.members).into_values() {
                            exchanges.remove(&member.exchange);
                            actions.push_back(Action::Close {
                                exchange: member.exchange,
                                message: Some(AggregatorMessage::Ack(Ack {
                                    trial,
                                    round: round_number,
                                })),
                            });
                        }
                        StepOutcome::Done(Ok(unmasked.mean))
                    }
                    Some(Err(e)) => self.abandon(round, exchanges, e.into(), actions),
                    None => StepOutcome::Done(Err(SecureError::AlreadyUnmasked)),
                };
            }
        };
        match next {
            Ok(step) => {
                if step == SecureStep::MaskedUpdate
                    && let Some(server) = self.server.as_ref()
                {
                    // Each member of U2 gets the shares addressed to it.
                    for member in self.members.values() {
                        actions.push_back(Action::Ask {
                            exchange: member.exchange,
                            message: AggregatorMessage::SecAggShares(server.shares_for(member.index)),
                            answer: Answer::Update {
                                bytes: self.update_bytes,
                            },
                        });
                    }
                }
                self.step = step;
                self.deadline = match step {
                    SecureStep::MaskedUpdate => self.round_deadline,
                    _ => now + self.step_timeout,
                };
                self.awaiting = self.members.keys().cloned().collect();
                StepOutcome::Pending
            }
            Err(e) => self.abandon(round, exchanges, e.into(), actions),
        }
    }

    /// Removes `agent` from the protocol and its exchange from the round; the exchange, if
    /// it had one, for the caller to close or abandon.
    fn drop_member(&mut self, agent: &str, exchanges: &mut BTreeMap<ExchangeId, String>) -> Option<ExchangeId> {
        let member = self.members.remove(agent)?;
        exchanges.remove(&member.exchange);
        Some(member.exchange)
    }

    fn ask_all(&self, mut message: impl FnMut(&Member) -> (AggregatorMessage, Answer), actions: &mut VecDeque<Action>) {
        for member in self.members.values() {
            let (message, answer) = message(member);
            actions.push_back(Action::Ask {
                exchange: member.exchange,
                message,
                answer,
            });
        }
    }

    /// Ends a round that cannot be unmasked: every remaining member is told why.
    fn abandon(
        &mut self,
        round: &mut Round,
        exchanges: &mut BTreeMap<ExchangeId, String>,
        reason: SecureError,
        actions: &mut VecDeque<Action>,
    ) -> StepOutcome {
        warn!("secure aggregation failed this round: {reason}");
        self.server = None;
        for (agent, member) in std::mem::take(&mut self.members) {
            round.on_failure(&agent, FailureReason::SecureFailed(reason.to_string()));
            exchanges.remove(&member.exchange);
            actions.push_back(Action::Close {
                exchange: member.exchange,
                message: Some(AggregatorMessage::Error(ErrorMessage::new(
                    ErrorCode::Internal,
                    reason.to_string(),
                ))),
            });
        }
        StepOutcome::Done(Err(reason))
    }
}

fn reply_unexpected(cause: FailureReason) -> (FailureReason, ErrorMessage) {
    let error = ErrorMessage::new(ErrorCode::Unexpected, cause.to_string());
    (cause, error)
}

fn expected(step: SecureStep) -> &'static str {
    match step {
        SecureStep::PublicKeys => "SecAggKeys",
        SecureStep::KeyShares => "SecAggShares",
        SecureStep::MaskedUpdate => "Update",
        SecureStep::UnmaskingShares => "SecAggReveal",
    }
}
