//! The contract's studies: trials, and trials shared by several aggregators.

use super::*;

/// The study half of the contract: trials, their rounds and checkpoints.
pub(super) fn study_suite(store: &mut dyn Storage) {
    use fedtune_tuning::TrialState;
    let study = store
        .create_run(&NewRun {
            kind: RunKind::Study,
            ..new_run("search")
        })
        .unwrap();
    assert_eq!(store.study_header(study).unwrap(), None);
    assert!(store.open_study(study, &header("accuracy")).unwrap().is_empty());
    assert_eq!(store.study_header(study).unwrap(), Some(header("accuracy")));
    store.save_trial(study, &trial(0, TrialState::Running, 0)).unwrap();
    store.save_trial(study, &trial(1, TrialState::Running, 2)).unwrap();
    store.save_trial(study, &trial(0, TrialState::Complete, 3)).unwrap();
    store.save_trial(study, &trial(1, TrialState::Failed, 2)).unwrap();
    // Reopened, the study has the last snapshot of every trial, a failed one's reason too.
    let trials = store.open_study(study, &header("accuracy")).unwrap();
    assert_eq!(
        trials,
        vec![trial(0, TrialState::Complete, 3), trial(1, TrialState::Failed, 2)]
    );
    let stored = store.trials(study).unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored[0].updated_at >= stored[0].created_at);
    assert_eq!(stored[0].trial.fail_reason, None);
    assert_eq!(
        stored[1].trial.fail_reason.as_deref(),
        Some("trial parameters: trial 1's `dropout` does not fit the model")
    );
    // Each save stores the snapshot's reason, none included.
    store.save_trial(study, &trial(1, TrialState::Running, 2)).unwrap();
    assert_eq!(store.trials(study).unwrap()[1].trial.fail_reason, None);
    store.save_trial(study, &trial(1, TrialState::Failed, 2)).unwrap();
    // Another study under the same run, or a run taken for a study, is refused.
    let err = store.open_study(study, &header("loss")).unwrap_err();
    assert!(
        matches!(err, StoreError::OtherStudy { .. }) && err.to_string().contains("objectives"),
        "{err}"
    );
    let run = store.create_run(&new_run("plain")).unwrap();
    assert!(matches!(
        store.open_study(run, &header("accuracy")),
        Err(StoreError::OtherStudy { .. })
    ));
    assert!(matches!(
        store.save_trial(9999, &trial(0, TrialState::Running, 0)),
        Err(StoreError::NoSuchRun(9999))
    ));
    // Each trial has its own rounds and checkpoints, the policy state included.
    for number in [0, 1] {
        for round in 0..3 {
            let mut after = state(round + 1, 100);
            after.trial = number;
            after.tuner = Some(serde_json::json!({"trial": number, "round": round}));
            store.commit_round(study, &record(round, None), after, 5).unwrap();
        }
    }
    assert_eq!(store.rounds(study, Some(1)).unwrap().len(), 3);
    assert_eq!(store.rounds(study, None).unwrap().len(), 6);
    let latest = store.latest_checkpoint(study, 1).unwrap().unwrap();
    assert_eq!((latest.trial, latest.round), (1, 3));
    assert_eq!(latest.tuner, Some(serde_json::json!({"trial": 1, "round": 2})));
    assert_eq!(store.run(study).unwrap().rounds_committed, 6);
}

/// Two aggregators, `a` and `b`, sharing one store's study: one run found by both, trials
/// numbered by the store, ownership, heartbeats, takeover.
pub(super) fn sharing_suite(a: &mut dyn Storage, b: &mut dyn Storage) {
    use fedtune_tuning::{Created, TrialState};
    use std::time::Duration;
    a.set_owner("aggregator-a");
    b.set_owner("aggregator-b");
    let study_run = NewRun {
        kind: RunKind::Study,
        ..new_run("shared")
    };
    let (found, created) = a.find_or_create_run(&study_run).unwrap();
    assert!(created);
    let (again, created) = b.find_or_create_run(&study_run).unwrap();
    assert_eq!((again.id, created), (found.id, false));
    let run = found.id;
    a.open_study(run, &header("accuracy")).unwrap();
    assert!(b.open_study(run, &header("accuracy")).unwrap().is_empty());
    assert!(matches!(
        b.open_study(run, &header("loss")),
        Err(StoreError::OtherStudy { .. })
    ));

    // The store numbers trials across aggregators and stops at the limit.
    let params = |lr: f64| {
        trial(0, TrialState::Running, 0)
            .params
            .into_iter()
            .map(|(k, v)| {
                let v = if k == "learning_rate" {
                    fedtune_tuning::space::ParamValue::Float(lr)
                } else {
                    v
                };
                (k, v)
            })
            .collect::<fedtune_tuning::Params>()
    };
    let number = |c: Created| match c {
        Created::Trial(t) => {
            assert_eq!(t.state, TrialState::Running);
            t.number
        }
        other => panic!("expected a trial, got {other:?}"),
    };
    assert_eq!(number(a.create_trial(run, &params(0.1), 3, true).unwrap()), 0);
    assert_eq!(number(b.create_trial(run, &params(0.2), 3, false).unwrap()), 1);
    assert_eq!(b.create_trial(run, &params(0.1), 3, true).unwrap(), Created::Duplicate);
    assert_eq!(number(a.create_trial(run, &params(0.3), 3, false).unwrap()), 2);
    assert_eq!(b.create_trial(run, &params(0.4), 3, false).unwrap(), Created::Full);
    let owners: Vec<Option<String>> = a.trials(run).unwrap().into_iter().map(|t| t.owner).collect();
    assert_eq!(
        owners,
        [Some("aggregator-a"), Some("aggregator-b"), Some("aggregator-a")].map(|o| o.map(str::to_owned))
    );

    // Only a trial's owner writes it: its snapshots and its rounds.
    let mut t0 = a.trials(run).unwrap()[0].trial.clone();
    t0.intermediate.insert(1, vec![0.5]);
    a.save_trial(run, &t0).unwrap();
    let err = b.save_trial(run, &t0).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotOwner { trial: 0, owner, .. } if owner == "aggregator-a"),
        "{err}"
    );
    let mut after = state(1, 10);
    after.trial = 0;
    let err = b.commit_round(run, &record(0, None), after.clone(), 3).unwrap_err();
    assert!(matches!(err, StoreError::NotOwner { trial: 0, .. }), "{err}");
    assert!(b.rounds(run, Some(0)).unwrap().is_empty());
    a.commit_round(run, &record(0, None), after, 3).unwrap();

    // A live owner keeps its trials; its own restart takes them straight back.
    let hour = Duration::from_secs(3600);
    assert!(b.claim_trial(run, hour, &[1]).unwrap().is_none());
    assert_eq!(a.claim_trial(run, hour, &[]).unwrap().map(|t| t.number), Some(0));
    assert_eq!(a.claim_trial(run, hour, &[0]).unwrap().map(|t| t.number), Some(2));
    assert_eq!(b.claim_trial(run, hour, &[]).unwrap().map(|t| t.number), Some(1));
    a.heartbeat(run).unwrap();
    // A silent one loses them, lowest number first, each to one claimant.
    std::thread::sleep(Duration::from_millis(50));
    let taken = b.claim_trial(run, Duration::from_millis(10), &[1]).unwrap().unwrap();
    assert_eq!((taken.number, taken.intermediate.len()), (0, 1));
    let err = a.save_trial(run, &t0).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotOwner { owner, .. } if owner == "aggregator-b"),
        "{err}"
    );
    let mut after = state(2, 10);
    after.trial = 0;
    assert!(matches!(
        a.commit_round(run, &record(1, None), after.clone(), 3),
        Err(StoreError::NotOwner { .. })
    ));
    b.commit_round(run, &record(1, None), after, 3).unwrap();
    assert_eq!(b.rounds(run, Some(0)).unwrap().len(), 2);
    // Finished trials are nobody's to claim.
    let mut done = b.trials(run).unwrap()[1].trial.clone();
    done.state = TrialState::Complete;
    done.values = Some(vec![0.9]);
    b.save_trial(run, &done).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let left: Vec<u64> = std::iter::from_fn(|| a.claim_trial(run, Duration::from_millis(10), &[]).unwrap())
        .take(5)
        .map(|t| t.number)
        .collect();
    // Trial 0 is b's (stale by now) and 2 is a's own: a claims one at a time, the same
    // lowest one again while it does not mark it busy.
    assert_eq!(left, vec![0; 5]);
    assert_eq!(a.claim_trial(run, hour, &[0]).unwrap().map(|t| t.number), Some(2));
    assert!(a.claim_trial(run, hour, &[0, 2]).unwrap().is_none());
}
