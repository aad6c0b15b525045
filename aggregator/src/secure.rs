//! Secure-aggregation rounds: the aggregator's side of the key exchange.
//!
//! Each cohort member gets one stream for the whole round. On it the aggregator sends
//! the task (with the member's [`SecureRound`] parameters) and then one message per
//! step of the protocol, reading the member's answer each time:
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
//! The cryptography and the bookkeeping of who is in which set live in the sans-IO
//! [`ServerRound`]; this module only moves its messages and enforces deadlines. An
//! agent that misses a step is dropped from the round, and the protocol removes its
//! masks from the others' sum.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fedtune_protocol::secagg::{RoundContext, ServerRound};
use fedtune_protocol::{Ack, AgentMessage, AggregatorMessage, ErrorCode, ErrorMessage, Limits, Task};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::SecureAggregationConfig;
use crate::registry::AgentHandle;
use crate::round::Round;
use crate::wire::{read_agent_frame, reply_error, write_frame_shared, write_message};

/// One cohort member's open stream, carried from step to step.
struct Member {
    agent: AgentHandle,
    index: u32,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// An answer read from a member: the message, its payload and the buffer permit that
/// bounds how many payloads sit in memory.
type Answer = (AgentMessage, Vec<f32>, Option<OwnedSemaphorePermit>);

/// What a secure round needs besides the tasks.
pub(crate) struct SecureRoundSetup<'a> {
    pub config: &'a SecureAggregationConfig,
    pub limits: Limits,
    pub buffers: Arc<Semaphore>,
}

/// Runs the secure-aggregation steps of one round for `cohort`, whose `tasks` (one per
/// member, same order) still lack their secure parameters. Masked updates are checked
/// and recorded in `state` as they arrive.
///
/// Returns `None` when shutdown was requested, else the unmasked sample-weighted mean
/// of the contributors' updates, or why it could not be computed.
pub(crate) async fn run(
    setup: SecureRoundSetup<'_>,
    cohort: &[AgentHandle],
    tasks: Vec<Task>,
    payload: Bytes,
    state: &mut Round,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Result<Vec<f32>, String>> {
    let Some(first) = tasks.first() else {
        return Some(Err("the cohort is empty".into()));
    };
    let context = RoundContext {
        study: first.study.clone(),
        trial: first.trial,
        round: first.round,
    };
    let threshold = setup.config.threshold_for(cohort.len());
    let max_weight = cohort.iter().map(|a| a.capabilities.train_samples.max(1)).sum();
    let server = u32::try_from(cohort.len())
        .map_err(|_| format!("a cohort of {} agents is too large", cohort.len()))
        .and_then(|n| {
            ServerRound::new(
                context,
                n,
                threshold as u32,
                setup.config.clip,
                state.spec().numel,
                max_weight,
            )
            .map_err(|e| e.to_string())
        });
    let mut server = match server {
        Ok(server) => server,
        Err(e) => {
            for agent in cohort {
                state.on_failure(&agent.id, format!("secure aggregation cannot run this round: {e}"));
            }
            return Some(Err(e));
        }
    };
    let step_deadline = || Instant::now() + setup.config.step_timeout();
    let control = Limits::control();

    // Step 0: the task; every member answers with its public keys before training.
    let mut opening = JoinSet::new();
    for ((index, agent), mut task) in cohort.iter().enumerate().zip(tasks) {
        let index = index as u32;
        task.secure = Some(server.params_for(index));
        opening.spawn(open(agent.clone(), index, task, payload.clone(), control));
    }
    let members = step(
        opening,
        step_deadline(),
        "public keys",
        state,
        shutdown,
        |member, message, _, _| match message {
            AgentMessage::SecAggKeys(keys) => server.add_keys(member.index, keys).map_err(|e| e.to_string()),
            other => Err(unexpected("SecAggKeys", &other)),
        },
    )
    .await?;

    // Step 1: the roster of U1; every member answers with its encrypted shares.
    let roster = match server.roster() {
        Ok(roster) => roster,
        Err(e) => return Some(Err(abandon(members, state, e.to_string()))),
    };
    let message = AggregatorMessage::SecAggRoster(roster);
    let asked = ask_all(members, |_| (message.clone(), control, None));
    let mut members = step(
        asked,
        step_deadline(),
        "key shares",
        state,
        shutdown,
        |member, message, _, _| match message {
            AgentMessage::SecAggShares(shares) => server.add_shares(member.index, shares).map_err(|e| e.to_string()),
            other => Err(unexpected("SecAggShares", &other)),
        },
    )
    .await?;

    // Step 2: each member of U2 gets the shares addressed to it, finishes training and
    // answers with its masked update.
    let survivors = match server.close_shares() {
        Ok(u2) => u2,
        Err(e) => return Some(Err(abandon(members, state, e.to_string()))),
    };
    members.retain(|m| survivors.contains(&m.index));
    let asked = ask_all(members, |m| {
        let mine = AggregatorMessage::SecAggShares(server.shares_for(m.index));
        (mine, setup.limits, Some(setup.buffers.clone()))
    });
    // Each masked update is folded into the sum as it arrives, then its buffer is freed.
    let deadline = state.deadline();
    let members = step(
        asked,
        deadline,
        "masked update",
        state,
        shutdown,
        |member, message, words, state| match message {
            AgentMessage::Update(update) => {
                let words: &[u32] = bytemuck::cast_slice(&words);
                let fold = || {
                    server
                        .add_masked(member.index, words, update.num_samples)
                        .map_err(|e| e.to_string())
                };
                state
                    .on_masked_update(&member.agent.id, &update, words.len(), Instant::now(), fold)
                    .map_err(|e| e.message)
            }
            AgentMessage::Decline(d) => Err(format!("declined: {}", d.reason)),
            other => Err(unexpected("Update", &other)),
        },
    )
    .await?;

    // Step 3: U3 is fixed; every member of it reveals the shares that remove the masks.
    let contributors = match server.close_inputs() {
        Ok(u3) => u3,
        Err(e) => return Some(Err(abandon(members, state, e.to_string()))),
    };
    let message = AggregatorMessage::SecAggUnmask(contributors.clone());
    let asked = ask_all(members, |_| (message.clone(), control, None));
    let members = step(
        asked,
        step_deadline(),
        "unmasking shares",
        state,
        shutdown,
        |member, message, _, _| match message {
            AgentMessage::SecAggReveal(reveals) => server.add_reveal(member.index, reveals).map_err(|e| e.to_string()),
            other => Err(unexpected("SecAggReveal", &other)),
        },
    )
    .await?;

    let (trial, round) = (state.spec().trial, state.spec().round);
    match server.finish() {
        Ok(unmasked) => {
            info!(
                contributors = unmasked.contributors.len(),
                dropped = unmasked.dropped.len(),
                revealed = members.len(),
                "secure aggregation unmasked the round's sum"
            );
            for mut member in members {
                tokio::spawn(async move {
                    let _ = write_message(&mut member.send, &AggregatorMessage::Ack(Ack { trial, round })).await;
                    let _ = member.send.finish();
                });
            }
            Some(Ok(unmasked.mean))
        }
        Err(e) => Some(Err(abandon(members, state, e.to_string()))),
    }
}

/// Opens a member's stream and sends its task; reads the keys it answers with.
async fn open(
    agent: AgentHandle,
    index: u32,
    task: Task,
    payload: Bytes,
    limits: Limits,
) -> (String, Result<(Member, Answer), String>) {
    let id = agent.id.clone();
    let opened = async {
        let (mut send, recv) = agent.connection.open_bi().await.map_err(|e| e.to_string())?;
        write_frame_shared(&mut send, &AggregatorMessage::Task(task), payload)
            .await
            .map_err(|e| e.to_string())?;
        let member = Member {
            agent,
            index,
            send,
            recv,
        };
        Ok(ask(member, None, limits, None).await)
    }
    .await;
    match opened {
        Ok((id, answer)) => (id, answer),
        Err(e) => (id, Err(e)),
    }
}

/// Sends `message` (if any) to a member and reads its answer.
async fn ask(
    mut member: Member,
    message: Option<AggregatorMessage>,
    limits: Limits,
    buffers: Option<Arc<Semaphore>>,
) -> (String, Result<(Member, Answer), String>) {
    let id = member.agent.id.clone();
    let answer = async {
        if let Some(message) = &message {
            write_message(&mut member.send, message)
                .await
                .map_err(|e| e.to_string())?;
        }
        let permit = async || match buffers {
            Some(buffers) => buffers.acquire_owned().await.ok(),
            None => None,
        };
        match read_agent_frame(&mut member.recv, limits, permit).await {
            Ok((message, payload, permit)) => Ok((message, payload, permit)),
            Err(e) => {
                if let Some(error) = crate::wire::error_for(&e) {
                    reply_error(&mut member.send, error).await;
                }
                Err(e.to_string())
            }
        }
    }
    .await;
    (id, answer.map(|answer| (member, answer)))
}

type Asked = JoinSet<(String, Result<(Member, Answer), String>)>;

/// Sends every member its message for the next step.
fn ask_all(
    members: Vec<Member>,
    mut message: impl FnMut(&Member) -> (AggregatorMessage, Limits, Option<Arc<Semaphore>>),
) -> Asked {
    let mut asked = JoinSet::new();
    for member in members {
        let (message, limits, buffers) = message(&member);
        asked.spawn(ask(member, Some(message), limits, buffers));
    }
    asked
}

/// Waits for the answers to one step until `deadline`, handing each to `accept` as it
/// arrives (so a payload is released before the next one is read). Members whose answer
/// is accepted go on to the next step; the others, and those that fail or miss the
/// deadline, are recorded as failures of the round (their streams are reset or told
/// why) and the protocol treats them as dropped out. `None` when shutdown was requested.
async fn step(
    mut asked: Asked,
    deadline: Instant,
    step: &str,
    state: &mut Round,
    shutdown: &mut watch::Receiver<bool>,
    mut accept: impl FnMut(&Member, AgentMessage, Vec<f32>, &mut Round) -> Result<(), String>,
) -> Option<Vec<Member>> {
    let mut kept = Vec::new();
    loop {
        tokio::select! {
            joined = asked.join_next() => match joined {
                Some(Ok((_, Ok((mut member, (message, payload, permit)))))) => {
                    let accepted = accept(&member, message, payload, state);
                    drop(permit);
                    match accepted {
                        Ok(()) => kept.push(member),
                        Err(reason) => {
                            warn!(agent = %member.agent.id, "secure aggregation, {step}: {reason}");
                            state.on_failure(&member.agent.id, format!("secure aggregation, {step}: {reason}"));
                            tokio::spawn(async move {
                                let error = ErrorMessage::new(ErrorCode::Unexpected, reason);
                                reply_error(&mut member.send, error).await;
                            });
                        }
                    }
                }
                Some(Ok((agent, Err(reason)))) => {
                    warn!(%agent, "no {step}: {reason}");
                    state.on_failure(&agent, format!("secure aggregation, {step}: {reason}"));
                }
                Some(Err(e)) => warn!("a secure-aggregation exchange ended abnormally: {e}"),
                None => return Some(kept),
            },
            _ = tokio::time::sleep_until(deadline.into()) => break,
            _ = shutdown.changed() => {
                asked.abort_all();
                return None;
            }
        }
    }
    // Whoever is still being waited on misses the step; their streams are reset.
    asked.abort_all();
    let answered: Vec<&str> = kept.iter().map(|m| m.agent.id.as_str()).collect();
    let late: Vec<String> = state
        .spec()
        .cohort
        .iter()
        .filter(|a| !answered.contains(&a.as_str()))
        .cloned()
        .collect();
    for agent in late {
        state.on_failure(&agent, format!("secure aggregation: no {step} before the deadline"));
    }
    Some(kept)
}

/// Ends a round that cannot be unmasked: every remaining member is told why.
fn abandon(members: Vec<Member>, state: &mut Round, reason: String) -> String {
    warn!("secure aggregation failed this round: {reason}");
    for mut member in members {
        state.on_failure(&member.agent.id, format!("secure aggregation failed: {reason}"));
        let error = ErrorMessage::new(ErrorCode::Internal, reason.clone());
        tokio::spawn(async move { reply_error(&mut member.send, error).await });
    }
    reason
}

fn unexpected(expected: &str, got: &AgentMessage) -> String {
    match got {
        AgentMessage::Error(e) => format!("agent error: {e}"),
        other => format!("expected {expected}, got {}", other.name()),
    }
}
