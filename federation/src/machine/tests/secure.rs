//! Secure aggregation rounds: unmasking, dropouts at each step, too many dropouts.

use super::*;

/// Answers every pending `Ask` of a secure round as an honest agent would, except the
/// agents in `silent`, which never answer the step `silent_at`.
pub(super) fn run_secure(fed: &mut Federation, silent: &[&str], silent_at: SecureStep, now: Instant) -> Vec<Action> {
    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(4);
    let opened = tasks(&drain(fed));
    let mut agents: BTreeMap<ExchangeId, (String, SecureAgent)> = BTreeMap::new();
    let mut pending: Vec<(ExchangeId, AgentMessage, Vec<f32>)> = Vec::new();
    for (agent, (exchange, task)) in opened {
        let context = RoundContext {
            study: task.study.clone(),
            trial: task.trial,
            round: task.round,
        };
        let (client, keys) = ClientRound::new(context, task.secure.unwrap(), &mut rng).unwrap();
        if !(silent.contains(&agent.as_str()) && silent_at == SecureStep::PublicKeys) {
            pending.push((exchange, AgentMessage::SecAggKeys(keys), Vec::new()));
        }
        agents.insert(exchange, (agent, SecureAgent { client, task, exchange }));
    }
    let mut seen = Vec::new();
    loop {
        for (exchange, message, payload) in pending.drain(..) {
            fed.handle_event(
                now,
                Event::Received {
                    exchange,
                    message: Box::new(message),
                    payload,
                },
            );
        }
        let actions = drain(fed);
        if actions.is_empty() {
            // Nobody else answers: the step's deadline passes.
            match fed.poll_timeout() {
                Some(deadline) if !fed.is_finished() => {
                    fed.handle_timeout(deadline);
                    continue;
                }
                _ => return seen,
            }
        }
        for action in &actions {
            let Action::Ask { exchange, message, .. } = action else {
                continue;
            };
            let (agent, member) = agents.get_mut(exchange).unwrap();
            let step = match message {
                AggregatorMessage::SecAggRoster(_) => SecureStep::KeyShares,
                AggregatorMessage::SecAggShares(_) => SecureStep::MaskedUpdate,
                _ => SecureStep::UnmaskingShares,
            };
            if silent.contains(&agent.as_str()) && step == silent_at {
                continue;
            }
            let answer = match message {
                AggregatorMessage::SecAggRoster(roster) => {
                    AgentMessage::SecAggShares(member.client.share_keys(roster, &mut rng).unwrap())
                }
                AggregatorMessage::SecAggShares(shares) => {
                    member.client.receive_shares(shares).unwrap();
                    let mut delta = vec![1.0; numel(fed)];
                    // Distributed DP: clipped, noised, and counted once.
                    let weight = match member.client.params().noise {
                        Some(noise) => {
                            noise.apply(&mut delta, &mut rng);
                            1
                        }
                        None => 2,
                    };
                    let masked = member.client.mask(&delta, weight).unwrap();
                    let words: Vec<f32> = bytemuck::cast_slice(&masked).to_vec();
                    pending.push((member.exchange, update_for(&member.task, 2), words));
                    continue;
                }
                AggregatorMessage::SecAggUnmask(survivors) => {
                    AgentMessage::SecAggReveal(member.client.reveal(survivors).unwrap())
                }
                other => panic!("unexpected {}", other.name()),
            };
            pending.push((*exchange, answer, Vec::new()));
        }
        seen.extend(actions);
        if fed.is_finished() && pending.is_empty() {
            return seen;
        }
    }
}

#[test]
fn a_secure_round_unmasks_the_mean() {
    let t0 = Instant::now();
    let mut fed = machine(config(1, true), &["a", "b", "c"], t0);
    let before = fed.global().to_vec();
    fed.handle_timeout(t0);
    let actions = run_secure(&mut fed, &[], SecureStep::PublicKeys, t0);
    let record = committed(&actions)[0];
    assert!(record.applied, "{:?}", record.failures);
    assert_eq!(record.updates, 3);
    for (after, before) in fed.global().iter().zip(&before) {
        assert!((after - before - 1.0).abs() < 1e-3, "{after} vs {before} + 1");
    }
    let acks = actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Close {
                    message: Some(AggregatorMessage::Ack(_)),
                    ..
                }
            )
        })
        .count();
    assert_eq!(acks, 3);
}

#[test]
fn a_dropout_at_each_secure_step_is_recovered_or_refused_cleanly() {
    let steps = [
        SecureStep::PublicKeys,
        SecureStep::KeyShares,
        SecureStep::MaskedUpdate,
        SecureStep::UnmaskingShares,
    ];
    for step in steps {
        let t0 = Instant::now();
        let mut fed = machine(config(1, true), &["a", "b", "c", "d"], t0);
        let before = fed.global().to_vec();
        fed.handle_timeout(t0);
        let actions = run_secure(&mut fed, &["d"], step, t0);
        let record = committed(&actions)[0];
        assert!(
            record.applied,
            "{step}: {:?} {:?}",
            record.failures, record.aggregation_error
        );
        let expected_updates = if step == SecureStep::UnmaskingShares { 4 } else { 3 };
        assert_eq!(record.updates, expected_updates, "{step}");
        if step != SecureStep::UnmaskingShares {
            assert!(
                record
                    .failures
                    .iter()
                    .any(|f| f.agent == "d" && f.reason == FailureReason::SecureDeadline(step)),
                "{step}: {:?}",
                record.failures
            );
        }
        // Whoever dropped out, the survivors' masks cancel: the model moves by their mean.
        for (after, before) in fed.global().iter().zip(&before) {
            assert!((after - before - 1.0).abs() < 1e-3, "{step}: {after} vs {before} + 1");
        }
        assert!(fed.is_finished());
    }
}

#[test]
fn too_many_dropouts_abandon_the_secure_round_and_say_why() {
    let t0 = Instant::now();
    let mut fed = machine(config(1, true), &["a", "b", "c", "d"], t0);
    let before = fed.global().to_vec();
    fed.handle_timeout(t0);
    let actions = run_secure(&mut fed, &["c", "d"], SecureStep::KeyShares, t0);
    let record = committed(&actions)[0];
    assert!(!record.applied);
    assert_eq!(fed.global(), &before[..]);
    assert!(
        record
            .failures
            .iter()
            .any(|f| matches!(f.reason, FailureReason::SecureFailed(_))),
        "{:?}",
        record.failures
    );
    let told = actions
        .iter()
        .filter(|a| {
            matches!(a, Action::Close { message: Some(AggregatorMessage::Error(e)), .. } if e.code == ErrorCode::Internal)
        })
        .count();
    assert_eq!(told, 2, "the remaining members are told why");
}
