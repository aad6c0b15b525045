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

/// Two aggregators, `a` and `b`, serving one run of one store: the run's lease, its
/// heartbeat, its takeover once silent, its release when the run ends.
pub(super) fn lease_suite(a: &mut dyn Storage, b: &mut dyn Storage) {
    use std::time::Duration;
    a.set_owner("host-a:4433");
    b.set_owner("host-a:4434");
    let hour = Duration::from_secs(3600);
    let (found, created) = a.find_or_create_run(&new_run("served")).unwrap();
    assert!(created);
    let run = found.id;
    assert_eq!(found.owner, None, "a run is leased by take_run, not by its creation");
    a.take_run(run, hour).unwrap();
    assert_eq!(a.run(run).unwrap().owner.as_deref(), Some("host-a:4433"));
    a.commit_round(run, &record(0, None), state(1, 10), 3).unwrap();

    // A second aggregator finds the same run, and is refused it while a lives: the error
    // names a and says how long ago it was last seen.
    let (again, created) = b.find_or_create_run(&new_run("served")).unwrap();
    assert_eq!((again.id, created), (run, false));
    let err = b.take_run(run, hour).unwrap_err();
    match &err {
        StoreError::RunBusy {
            run: busy,
            owner,
            seen_secs_ago,
            timeout_secs,
        } => {
            assert_eq!((*busy, owner.as_str()), (run, "host-a:4433"));
            assert!((0.0..60.0).contains(seen_secs_ago), "{err}");
            assert_eq!(*timeout_secs, 3600.0);
        }
        other => panic!("expected RunBusy, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("`host-a:4433`") && text.contains("last seen") && text.contains("s ago"),
        "{text}"
    );
    // Nor does it write the run: not a round, not a status.
    let err = b.commit_round(run, &record(1, None), state(2, 10), 3).unwrap_err();
    assert!(
        matches!(&err, StoreError::RunTaken { owner, .. } if owner == "host-a:4433"),
        "{err}"
    );
    let err = b.set_status(run, RunStatus::Failed, None).unwrap_err();
    assert!(matches!(err, StoreError::RunTaken { .. }), "{err}");
    let now = a.run(run).unwrap();
    assert_eq!((now.status, now.rounds_committed), (RunStatus::Running, 1));

    // The owner's own restart (same name) takes it straight back.
    a.take_run(run, hour).unwrap();
    a.commit_round(run, &record(1, None), state(2, 10), 3).unwrap();

    // Heartbeats keep the lease live; silence for longer than the timeout loses it.
    let timeout = Duration::from_millis(500);
    std::thread::sleep(Duration::from_millis(700));
    a.heartbeat(run).unwrap();
    assert!(
        matches!(b.take_run(run, timeout), Err(StoreError::RunBusy { .. })),
        "a heartbeat renews the lease"
    );
    std::thread::sleep(Duration::from_millis(700));
    b.take_run(run, timeout).unwrap();
    assert_eq!(b.run(run).unwrap().owner.as_deref(), Some("host-a:4434"));
    // From then on a, come back, writes nothing and cannot take the run back while b lives.
    let err = a.commit_round(run, &record(2, None), state(3, 10), 3).unwrap_err();
    assert!(
        matches!(&err, StoreError::RunTaken { owner, .. } if owner == "host-a:4434"),
        "{err}"
    );
    assert!(matches!(
        a.set_status(run, RunStatus::Failed, None),
        Err(StoreError::RunTaken { .. })
    ));
    a.heartbeat(run).unwrap();
    assert!(matches!(a.take_run(run, hour), Err(StoreError::RunBusy { .. })));
    b.commit_round(run, &record(2, None), state(3, 10), 3).unwrap();
    assert_eq!(b.run(run).unwrap().status, RunStatus::Running);

    // Ending the run releases the lease: anyone takes it, however recent the heartbeat.
    b.set_status(run, RunStatus::Interrupted, None).unwrap();
    let ended = a.resumable_run("served", RunKind::Run).unwrap().unwrap();
    assert_eq!(
        (ended.id, ended.owner.as_deref()),
        (run, Some("host-a:4434")),
        "an ended run names who served it last"
    );
    a.take_run(run, hour).unwrap();
    a.set_status(run, RunStatus::Running, None).unwrap();
    a.set_status(run, RunStatus::Finished, None).unwrap();
    assert!(matches!(b.take_run(9999, hour), Err(StoreError::NoSuchRun(9999))));
}

/// The writer thread's heartbeat keeps its run's lease for as long as it runs; ending the
/// run through it releases the lease.
pub(super) fn writer_keeps_the_lease(mut a: Box<dyn Storage>, b: &mut dyn Storage) {
    use std::time::Duration;
    a.set_owner("writer-a");
    b.set_owner("writer-b");
    let run = a.create_run(&new_run("kept")).unwrap();
    a.take_run(run, Duration::from_secs(3600)).unwrap();
    let timeout = Duration::from_millis(600);
    let writer = StoreWriter::spawn_with_heartbeat(a, run, 3, Some(timeout / 4));
    // Three times the timeout: only the writer's heartbeats keep the lease live.
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(300));
        let err = b.take_run(run, timeout).unwrap_err();
        assert!(matches!(err, StoreError::RunBusy { .. }), "{err}");
        writer.commit(record(round, None), state(round + 1, 10)).unwrap();
    }
    writer.set_status(RunStatus::Finished, None).unwrap();
    writer.finish().unwrap();
    b.take_run(run, Duration::from_secs(3600)).unwrap();
    assert_eq!(b.run(run).unwrap().rounds_committed, 6);
}
