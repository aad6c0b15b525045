//! The contract's runs, rounds and checkpoints.

use super::*;

/// The contract every [`Storage`] must keep; each backend runs it on a fresh store.
pub(super) fn suite(store: &mut dyn Storage) {
    // Runs: created running, resumable until finished.
    let a = store.create_run(&new_run("digits")).unwrap();
    let b = store.create_run(&new_run("other")).unwrap();
    assert_ne!(a, b);
    let runs = store.runs().unwrap();
    assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!(runs[0].status, RunStatus::Running);
    assert_eq!((runs[0].rounds_committed, runs[0].rounds_planned), (0, 5));
    assert_eq!(store.resumable_run("digits", RunKind::Run).unwrap().unwrap().id, a);
    assert!(store.resumable_run("digits", RunKind::Study).unwrap().is_none());
    assert!(matches!(store.run(9999), Err(StoreError::NoSuchRun(9999))));

    // Rounds and checkpoints round-trip, bit for bit.
    for round in 0..6 {
        let test = (round == 1).then_some(0.99);
        store
            .commit_round(a, &record(round, test), state(round + 1, 1000), 2)
            .unwrap();
    }
    let rounds = store.rounds(a, None).unwrap();
    assert_eq!(rounds.len(), 6);
    for (i, stored) in rounds.iter().enumerate() {
        let test = (i == 1).then_some(0.99);
        assert_eq!(stored.record, record(i as u64, test));
        assert_eq!(stored.trial, 0);
        assert!(stored.committed_at.ends_with('Z'), "{}", stored.committed_at);
    }
    assert_eq!(store.latest_checkpoint(a, 0).unwrap().unwrap(), state(6, 1000));
    assert!(store.latest_checkpoint(b, 0).unwrap().is_none());
    // The last two, and the best (round 1's model scored 0.99 on the test set).
    assert_eq!(store.checkpoint_rounds(a, 0).unwrap(), vec![1, 4, 5]);
    assert_eq!(store.run(a).unwrap().rounds_committed, 6);

    // A round committed twice is refused and nothing changes.
    let err = store.commit_round(a, &record(3, None), state(4, 1000), 2).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyCommitted { round: 3, .. }), "{err}");
    assert_eq!(store.rounds(a, None).unwrap().len(), 6);
    assert_eq!(store.latest_checkpoint(a, 0).unwrap().unwrap(), state(6, 1000));

    // Finished runs are not resumed; an interrupted one is, with its new plan.
    store.set_status(a, RunStatus::Finished, None).unwrap();
    assert!(store.resumable_run("digits", RunKind::Run).unwrap().is_none());
    store.set_status(b, RunStatus::Interrupted, Some(9)).unwrap();
    let resumable = store.resumable_run("other", RunKind::Run).unwrap().unwrap();
    assert_eq!(
        (resumable.status, resumable.rounds_planned),
        (RunStatus::Interrupted, 9)
    );
    assert!(matches!(
        store.set_status(9999, RunStatus::Failed, None),
        Err(StoreError::NoSuchRun(_))
    ));
}
