//! The federation machine on its own: injected time, no sockets, no sleeping.
//!
//! Rounds, deadlines, refusals and resuming here; secure aggregation and privacy in
//! their own files.

use std::time::Duration;

use fedtune_protocol::secagg::{ClientRound, DistributedNoise, RoundContext};
use fedtune_protocol::{Decline, MlpSpec, ModelSpec, Task, TrainMetrics, Update};
use rand::rngs::StdRng;

use super::*;
use crate::settings::FederationConfig;

const TIMEOUT: Duration = Duration::from_secs(10);

fn config(rounds: u64, secure: bool) -> Settings {
    let mut config = Settings {
        federation: FederationConfig {
            rounds,
            round_timeout_secs: TIMEOUT.as_secs_f64(),
            final_evaluation: false,
            seed: 7,
            ..FederationConfig::default()
        },
        model: ModelSpec::Mlp(MlpSpec {
            input: 3,
            hidden: vec![],
            classes: 2,
        })
        .into(),
        ..Settings::default()
    };
    config.secure_aggregation.enabled = secure;
    config.secure_aggregation.step_timeout_secs = 2.0;
    config
}

/// A federation whose privacy noise is seeded, so that tests read the same noise every run.
fn machine(config: Settings, agents: &[&str], now: Instant) -> Federation {
    let fed = Federation::new(Arc::new(config), 0).unwrap().with_noise_seed(11);
    connect(fed, agents, now)
}

fn connect(mut fed: Federation, agents: &[&str], now: Instant) -> Federation {
    for agent in agents {
        fed.handle_event(
            now,
            Event::AgentConnected {
                agent: (*agent).into(),
                capabilities: Capabilities {
                    train_samples: 10,
                    ..Capabilities::default()
                },
                holds_base: None,
            },
        );
    }
    fed
}

fn drain(fed: &mut Federation) -> Vec<Action> {
    std::iter::from_fn(|| fed.poll_action()).collect()
}

/// The tasks a round opened, by agent.
fn tasks(actions: &[Action]) -> BTreeMap<String, (ExchangeId, Task)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Open {
                exchange,
                agent,
                message: AggregatorMessage::Task(task),
                ..
            } => Some((agent.clone(), (*exchange, task.clone()))),
            _ => None,
        })
        .collect()
}

fn update_for(task: &Task, samples: u64) -> AgentMessage {
    AgentMessage::Update(Update {
        trial: task.trial,
        round: task.round,
        manifest_hash: task.manifest_hash,
        num_samples: samples,
        metrics: TrainMetrics {
            accuracy_before: 0.5,
            loss_before: 1.0,
            ..TrainMetrics::default()
        },
        used: task.hyperparameters.clone(),
        proposal: None,
        replayed: false,
    })
}

fn numel(fed: &Federation) -> usize {
    fed.model().manifest().numel()
}

fn committed(actions: &[Action]) -> Vec<&RoundRecord> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RoundCommitted(r) => Some(&**r),
            _ => None,
        })
        .collect()
}

fn reply_to(actions: &[Action], exchange: ExchangeId) -> Option<&AggregatorMessage> {
    actions.iter().find_map(|a| match a {
        Action::Close {
            exchange: e,
            message: Some(m),
        } if *e == exchange => Some(m),
        _ => None,
    })
}

mod privacy;
mod secure;

#[test]
fn a_round_with_a_straggler_closes_at_the_deadline_and_drops_it() {
    let t0 = Instant::now();
    let mut fed = machine(config(2, false), &["a", "b", "c"], t0);
    assert_eq!(fed.poll_timeout(), Some(t0), "the first round is ready at once");
    fed.handle_timeout(t0);
    let opened = tasks(&drain(&mut fed));
    assert_eq!(opened.len(), 3);
    for agent in ["a", "b"] {
        let (exchange, task) = &opened[agent];
        let payload = vec![1.0; numel(&fed)];
        fed.handle_event(
            t0 + Duration::from_secs(1),
            Event::Received {
                exchange: *exchange,
                message: Box::new(update_for(task, 5)),
                payload,
            },
        );
        let actions = drain(&mut fed);
        assert!(matches!(reply_to(&actions, *exchange), Some(AggregatorMessage::Ack(_))));
    }
    // One nanosecond before the deadline the round still waits for c.
    let deadline = t0 + TIMEOUT;
    assert_eq!(fed.poll_timeout(), Some(deadline));
    fed.handle_timeout(deadline - Duration::from_nanos(1));
    assert!(committed(&drain(&mut fed)).is_empty());
    // At the deadline exactly it closes; c's stream is reset and c is a straggler.
    fed.handle_timeout(deadline);
    let actions = drain(&mut fed);
    let c = opened["c"].0;
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Abandon { exchange } if *exchange == c))
    );
    let records = committed(&actions);
    assert_eq!(records.len(), 1);
    let record = records[0];
    assert_eq!((record.round, record.updates, record.applied), (0, 2, true));
    assert_eq!(
        record.failures,
        vec![FailureRecord {
            agent: "c".into(),
            reason: FailureReason::Straggler
        }]
    );
    assert_eq!(record.seconds, TIMEOUT.as_secs_f64());
    assert!(fed.global().iter().all(|v| v.is_finite()));
    // c's late update is answered "too late", and counts for nothing.
    fed.handle_event(
        deadline,
        Event::Received {
            exchange: c,
            message: Box::new(update_for(&opened["c"].1, 5)),
            payload: vec![0.0; numel(&fed)],
        },
    );
    let late = drain(&mut fed);
    assert!(matches!(
        reply_to(&late, c),
        Some(AggregatorMessage::Error(e)) if e.code == ErrorCode::TooLate
    ));
    assert_eq!(fed.state().round, 1);
}

#[test]
fn an_update_at_the_deadline_exactly_is_too_late() {
    let t0 = Instant::now();
    let mut fed = machine(config(1, false), &["a", "b"], t0);
    fed.handle_timeout(t0);
    let opened = tasks(&drain(&mut fed));
    let (exchange, task) = &opened["a"];
    fed.handle_event(
        t0 + TIMEOUT,
        Event::Received {
            exchange: *exchange,
            message: Box::new(update_for(task, 5)),
            payload: vec![1.0; numel(&fed)],
        },
    );
    let actions = drain(&mut fed);
    assert!(matches!(
        reply_to(&actions, *exchange),
        Some(AggregatorMessage::Error(e)) if e.code == ErrorCode::TooLate
    ));
    // The deadline has come: the round closes on this input without b.
    let record = committed(&actions)[0];
    assert_eq!(record.updates, 0);
    assert!(!record.applied);
    let reasons: Vec<_> = record.failures.iter().map(|f| (f.agent.as_str(), &f.reason)).collect();
    assert!(matches!(reasons[0], ("a", FailureReason::Refused(e)) if e.code == ErrorCode::TooLate));
    assert_eq!(reasons[1], ("b", &FailureReason::Straggler));
}

#[test]
fn too_few_updates_leave_the_model_unchanged() {
    let t0 = Instant::now();
    let mut config = config(1, false);
    config.federation.min_updates = 2;
    let mut fed = machine(config, &["a", "b"], t0);
    let before = fed.global().to_vec();
    fed.handle_timeout(t0);
    let opened = tasks(&drain(&mut fed));
    let (a, task) = &opened["a"];
    fed.handle_event(
        t0,
        Event::Received {
            exchange: *a,
            message: Box::new(update_for(task, 5)),
            payload: vec![1.0; numel(&fed)],
        },
    );
    let (b, _) = opened["b"];
    let decline = AgentMessage::Decline(Decline {
        trial: 0,
        round: 0,
        reason: "battery low".into(),
    });
    fed.handle_event(
        t0,
        Event::Received {
            exchange: b,
            message: Box::new(decline),
            payload: Vec::new(),
        },
    );
    let actions = drain(&mut fed);
    let record = committed(&actions)[0];
    assert!(!record.applied);
    assert_eq!(record.updates, 1);
    assert_eq!(record.failures[0].reason, FailureReason::Declined("battery low".into()));
    assert_eq!(fed.global(), &before[..]);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Finished(r) if !r.interrupted))
    );
    assert!(fed.is_finished());
}

#[test]
fn refused_updates_are_answered_and_the_round_goes_on() {
    let t0 = Instant::now();
    let mut fed = machine(config(1, false), &["a", "b", "c", "d"], t0);
    fed.handle_timeout(t0);
    let opened = tasks(&drain(&mut fed));
    let n = numel(&fed);
    let mut nan = vec![0.0; n];
    nan[0] = f32::NAN;
    let mut stale = opened["c"].1.clone();
    stale.round = 9;
    let answers = [
        ("a", update_for(&opened["a"].1, 5), nan),
        ("b", update_for(&opened["b"].1, 5), vec![0.0; n - 1]),
        ("c", update_for(&stale, 5), vec![0.0; n]),
        ("d", update_for(&opened["d"].1, 5), vec![2.0; n]),
    ];
    let mut codes = BTreeMap::new();
    for (agent, message, payload) in answers {
        let exchange = opened[agent].0;
        fed.handle_event(
            t0,
            Event::Received {
                exchange,
                message: Box::new(message),
                payload,
            },
        );
        let actions = drain(&mut fed);
        if let Some(AggregatorMessage::Error(e)) = reply_to(&actions, exchange) {
            codes.insert(agent, e.code);
        }
        if agent == "d" {
            let record = committed(&actions)[0];
            assert_eq!(record.updates, 1);
            assert_eq!(record.failures.len(), 3);
            assert!(
                record
                    .failures
                    .iter()
                    .all(|f| matches!(f.reason, FailureReason::Refused(_)))
            );
        }
    }
    assert_eq!(codes["a"], ErrorCode::NonFinite);
    assert_eq!(codes["b"], ErrorCode::ManifestMismatch);
    assert_eq!(codes["c"], ErrorCode::NotInRound);
    assert!(!codes.contains_key("d"));
}

#[test]
fn an_agent_that_goes_away_fails_its_round_at_once() {
    let t0 = Instant::now();
    let mut fed = machine(config(1, false), &["a", "b"], t0);
    fed.handle_timeout(t0);
    let opened = tasks(&drain(&mut fed));
    let (a, task) = &opened["a"];
    fed.handle_event(
        t0,
        Event::Received {
            exchange: *a,
            message: Box::new(update_for(task, 5)),
            payload: vec![1.0; numel(&fed)],
        },
    );
    fed.handle_event(t0, Event::AgentGone { agent: "b".into() });
    let actions = drain(&mut fed);
    let record = committed(&actions)[0];
    assert_eq!(record.failures[0].reason, FailureReason::Disconnected);
    assert!(record.applied);
}

#[test]
fn the_state_is_one_value_and_a_resumed_machine_goes_on_identically() {
    let t0 = Instant::now();
    let agents = ["a", "b", "c", "d", "e"];
    let mut cfg = config(3, false);
    cfg.federation.cohort = 3.0;
    cfg.strategy = crate::strategy::StrategyConfig::FedAvgM(crate::strategy::FedAvgMConfig::default());
    let answer_round = |fed: &mut Federation, now: Instant| {
        let opened = tasks(&drain(fed));
        for (exchange, task) in opened.values() {
            let value = (task.seed % 7) as f32 / 7.0;
            fed.handle_event(
                now,
                Event::Received {
                    exchange: *exchange,
                    message: Box::new(update_for(task, 1 + task.seed % 5)),
                    payload: vec![value; numel(fed)],
                },
            );
        }
        (opened, drain(fed))
    };
    let mut straight = machine(cfg.clone(), &agents, t0);
    straight.handle_timeout(t0);
    answer_round(&mut straight, t0);
    let saved = serde_json::to_string(&straight.state()).unwrap();
    straight.handle_timeout(t0);
    let (cohort_a, _) = answer_round(&mut straight, t0);

    let state: FederationState = serde_json::from_str(&saved).unwrap();
    assert_eq!(state.round, 1);
    let mut resumed = Federation::resume(Arc::new(cfg), state).unwrap();
    for agent in agents {
        resumed.handle_event(
            t0,
            Event::AgentConnected {
                agent: agent.into(),
                capabilities: Capabilities::default(),
                holds_base: None,
            },
        );
    }
    resumed.handle_timeout(t0);
    let (cohort_b, _) = answer_round(&mut resumed, t0);
    let seeds = |c: &BTreeMap<String, (ExchangeId, Task)>| {
        c.iter()
            .map(|(a, (_, t))| (a.clone(), t.seed, t.round))
            .collect::<Vec<_>>()
    };
    assert_eq!(seeds(&cohort_a), seeds(&cohort_b), "same cohort, same task seeds");
    assert_eq!(straight.state(), resumed.state());
}

#[test]
fn interrupting_abandons_the_round_and_finishes() {
    let t0 = Instant::now();
    let mut fed = machine(config(5, false), &["a", "b"], t0);
    fed.handle_timeout(t0);
    let opened = tasks(&drain(&mut fed));
    fed.interrupt(t0);
    let actions = drain(&mut fed);
    let abandoned = actions.iter().filter(|a| matches!(a, Action::Abandon { .. })).count();
    assert_eq!(abandoned, opened.len());
    assert!(matches!(actions.last(), Some(Action::Finished(r)) if r.interrupted && r.rounds.is_empty()));
    assert_eq!(fed.poll_timeout(), None);
}

#[test]
fn the_final_evaluation_waits_for_agents_until_its_deadline() {
    let t0 = Instant::now();
    let mut cfg = config(1, false);
    cfg.federation.final_evaluation = true;
    let mut fed = machine(cfg, &["a", "b"], t0);
    fed.handle_timeout(t0);
    for (exchange, task) in tasks(&drain(&mut fed)).values() {
        fed.handle_event(
            t0,
            Event::Received {
                exchange: *exchange,
                message: Box::new(update_for(task, 3)),
                payload: vec![0.5; numel(&fed)],
            },
        );
    }
    let requests: Vec<(ExchangeId, String)> = drain(&mut fed)
        .into_iter()
        .filter_map(|a| match a {
            Action::Open {
                exchange,
                agent,
                message: AggregatorMessage::Evaluate(_),
                ..
            } => Some((exchange, agent)),
            _ => None,
        })
        .collect();
    assert_eq!(requests.len(), 2);
    let evaluation = Evaluation {
        trial: 0,
        round: 1,
        loss: 0.5,
        accuracy: 0.75,
        samples: 4,
    };
    fed.handle_event(
        t0,
        Event::Received {
            exchange: requests[0].0,
            message: Box::new(AgentMessage::Evaluation(evaluation)),
            payload: Vec::new(),
        },
    );
    assert!(!fed.is_finished());
    fed.handle_timeout(t0 + TIMEOUT);
    let actions = drain(&mut fed);
    let Some(Action::Finished(report)) = actions.last() else {
        panic!("no report: {actions:?}");
    };
    assert_eq!(report.final_agent_evaluation.len(), 1);
    assert_eq!(report.final_agent_evaluation[&requests[0].1].accuracy, 0.75);
}

/// One agent's side of a secure round, from the protocol's client state machine.
struct SecureAgent {
    client: ClientRound,
    task: Task,
    exchange: ExchangeId,
}

#[test]
fn a_federation_starts_from_the_initial_model_when_one_was_read() {
    let mut config = config(2, false);
    let fresh = Federation::new(Arc::new(config.clone()), 0).unwrap();
    let initial: Vec<f32> = (0..8).map(|i| i as f32 / 8.0).collect();
    config.model.initial = Some(Arc::new(initial.clone()));
    let now = Instant::now();
    let mut started = machine(config, &["a", "b"], now);
    assert_eq!(started.global(), initial.as_slice());
    assert_ne!(fresh.global(), initial.as_slice());
    // The tasks carry it.
    started.handle_timeout(now);
    let actions = drain(&mut started);
    let opened = actions
        .iter()
        .filter_map(|a| match a {
            Action::Open { payload, .. } => Some(payload.clone()),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert!(!opened.is_empty());
    for payload in opened {
        assert_eq!(fedtune_protocol::tensor::f32_from_le_bytes(&payload).unwrap(), initial);
    }
}

#[test]
fn agents_holding_the_frozen_values_get_the_trainable_ones_and_the_whole_model_after_a_miss() {
    // A 3 -> 2 linear model: weight [3, 2] (frozen), bias [2] (trained).
    let mut settings = config(3, false);
    settings.model.freeze = vec!["layers.0.weight".into()];
    let now = Instant::now();
    let mut fed = machine(settings.clone(), &["a", "b"], now);
    // Per agent: the exchange, the task, and the values sent down.
    let opened = |actions: &[Action]| -> BTreeMap<String, (ExchangeId, Task, usize)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Open {
                    exchange,
                    agent,
                    message: AggregatorMessage::Task(task),
                    payload,
                    ..
                } => Some((agent.clone(), (*exchange, task.clone(), payload.len() / 4))),
                _ => None,
            })
            .collect()
    };
    let answer = |fed: &mut Federation, exchange: ExchangeId, message: AgentMessage| {
        fed.handle_event(
            now,
            Event::Received {
                exchange,
                message: Box::new(message),
                payload: vec![0.5; 2],
            },
        );
    };

    // Round 0: the whole model to both.
    fed.handle_timeout(now);
    let round0 = opened(&drain(&mut fed));
    assert_eq!(round0.len(), 2);
    for (exchange, task, len) in round0.values() {
        assert_eq!((task.base, *len), (None, 8));
        answer(&mut fed, *exchange, update_for(task, 10));
    }
    fed.handle_timeout(now);
    // Round 1: both hold the frozen weight; only the bias goes down, named by checksum.
    let actions = drain(&mut fed);
    let round1 = opened(&actions);
    // The frozen weight (6 values) went down whole to both in round 0, a one-time cost.
    let record0 = committed(&actions)[0];
    assert_eq!(record0.base_bytes, 2 * 6 * 4);
    assert_eq!(record0.configuration_bytes(), record0.payload_bytes - 48);
    let checksum = round1["a"].1.base.expect("a holds the frozen values");
    assert_eq!(
        (round1["a"].2, round1["b"].1.base, round1["b"].2),
        (2, Some(checksum), 2)
    );
    // a lost them: it says so, and gets the whole model in the next round.
    answer(
        &mut fed,
        round1["a"].0,
        AgentMessage::Error(ErrorMessage::new(ErrorCode::MissingBase, "no base")),
    );
    answer(&mut fed, round1["b"].0, update_for(&round1["b"].1, 10));
    fed.handle_timeout(now);
    let actions = drain(&mut fed);
    let round2 = opened(&actions);
    assert_eq!(committed(&actions)[0].base_bytes, 0);
    assert_eq!((round2["a"].1.base, round2["a"].2), (None, 8));
    assert_eq!((round2["b"].1.base, round2["b"].2), (Some(checksum), 2));

    // A new run (a study's next trial) over connections that hold these frozen values
    // sends them only the trainable ones; a connection holding others gets everything.
    let mut next = Federation::new(Arc::new(settings), 1).unwrap();
    for (agent, holds_base) in [("a", Some(checksum)), ("b", Some(checksum ^ 1))] {
        next.handle_event(
            now,
            Event::AgentConnected {
                agent: agent.into(),
                capabilities: Capabilities {
                    train_samples: 10,
                    ..Capabilities::default()
                },
                holds_base,
            },
        );
    }
    assert_eq!(next.base_holders(), Some((checksum, vec!["a".to_string()])));
    next.handle_timeout(now);
    let first = opened(&drain(&mut next));
    assert_eq!((first["a"].1.base, first["a"].2), (Some(checksum), 2));
    assert_eq!((first["b"].1.base, first["b"].2), (None, 8));
}

#[test]
fn an_update_the_agent_replayed_is_marked_in_the_round_record() {
    let t0 = Instant::now();
    let mut fed = machine(config(1, false), &["a", "b"], t0);
    fed.handle_timeout(t0);
    let opened = tasks(&drain(&mut fed));
    let mut actions = Vec::new();
    for (agent, replayed) in [("a", true), ("b", false)] {
        let (exchange, task) = &opened[agent];
        let AgentMessage::Update(update) = update_for(task, 5) else {
            unreachable!()
        };
        fed.handle_event(
            t0,
            Event::Received {
                exchange: *exchange,
                message: Box::new(AgentMessage::Update(Update { replayed, ..update })),
                payload: vec![1.0; numel(&fed)],
            },
        );
        actions.extend(drain(&mut fed));
    }
    let record = committed(&actions)[0];
    assert!(record.contributions["a"].replayed);
    assert!(!record.contributions["b"].replayed);
    let json = serde_json::to_value(record).unwrap();
    assert_eq!(json["contributions"]["a"]["replayed"], true);
    assert!(json["contributions"]["b"].get("replayed").is_none(), "{json}");
}
