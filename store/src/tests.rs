use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use fedtune_federation::fairness::{FairnessReport, History};
use fedtune_federation::strategy::StrategyState;
use fedtune_federation::{FailureReason, FailureRecord, GlobalEvaluation, RngState};

/// A fresh path for a store file, removed with its WAL files when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        let n: u64 = rand::random();
        Self(std::env::temp_dir().join(format!("fedtune-store-{name}-{}-{n:x}.db", std::process::id())))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn new_run(name: &str) -> NewRun {
    NewRun {
        name: name.into(),
        kind: RunKind::Run,
        rounds_planned: 5,
        manifest_hash: "ab".repeat(32),
        config: "{}".into(),
    }
}

fn record(round: u64, test: Option<f64>) -> RoundRecord {
    RoundRecord {
        round,
        cohort: vec!["a".into(), "b".into(), "c".into()],
        updates: 2,
        applied: true,
        failures: vec![FailureRecord {
            agent: "c".into(),
            reason: FailureReason::Straggler,
        }],
        aggregation_error: None,
        train_loss: 0.5 / (round + 1) as f64,
        federated_accuracy: 0.5 + round as f64 / 100.0,
        federated_loss: 1.0,
        agent_accuracy: BTreeMap::from([("a".into(), 0.6), ("b".into(), 0.4)]),
        server_learning_rate: Some(1.0),
        fairness: FairnessReport::default(),
        violations: vec!["min_accuracy".into()],
        test: test.map(|accuracy| GlobalEvaluation {
            loss: 1.0 - accuracy,
            accuracy,
            samples: 100,
        }),
        seconds: 0.25,
        device_seconds: 0.5,
        payload_bytes: 1 << 20,
        contributions: Default::default(),
        secure: false,
        bounded_claims: Default::default(),
        epsilon: None,
        clip: None,
    }
}

fn state(round: u64, numel: usize) -> FederationState {
    FederationState {
        trial: 0,
        round,
        global: (0..numel).map(|i| i as f32 * 0.5 + round as f32).collect(),
        strategy: StrategyState::Momentum {
            server_learning_rate: 0.7,
            velocity: (0..numel).map(|i| -(i as f32)).collect(),
        },
        server_lr: None,
        history: History::default(),
        rng: RngState {
            seed: [7; 32],
            stream: 3,
            word_pos: u128::from(round) * 1000 + 17,
        },
        tuner: None,
        privacy: None,
    }
}

fn header(objective: &str) -> StudyHeader {
    use fedtune_tuning::space::{ParamSpec, SearchSpace};
    use fedtune_tuning::{Direction, Objective};
    StudyHeader {
        space: SearchSpace::new(vec![
            ParamSpec::parse("learning_rate", "loguniform(1e-4, 1)").unwrap(),
            ParamSpec::parse("optimizer", "choice(adam, sgd)").unwrap(),
        ])
        .unwrap(),
        objectives: vec![Objective::new(objective, Direction::Maximize)],
    }
}

fn trial(number: u64, state: fedtune_tuning::TrialState, rounds: u64) -> FrozenTrial {
    use fedtune_tuning::space::ParamValue;
    FrozenTrial {
        number,
        params: BTreeMap::from([
            (
                "learning_rate".to_owned(),
                ParamValue::Float(0.01 * (number + 1) as f64),
            ),
            ("optimizer".to_owned(), ParamValue::Categorical("sgd".into())),
        ]),
        values: (state == fedtune_tuning::TrialState::Complete).then(|| vec![0.9 - number as f64 / 100.0]),
        state,
        feasible: number.is_multiple_of(2),
        intermediate: (1..=rounds).map(|step| (step, vec![0.1 * step as f64])).collect(),
    }
}

/// The study half of the contract: trials, their rounds and checkpoints.
fn study_suite(store: &mut dyn Storage) {
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
    // Reopened, the study has the last snapshot of every trial.
    let trials = store.open_study(study, &header("accuracy")).unwrap();
    assert_eq!(
        trials,
        vec![trial(0, TrialState::Complete, 3), trial(1, TrialState::Running, 2)]
    );
    let stored = store.trials(study).unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored[0].updated_at >= stored[0].created_at);
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
fn sharing_suite(a: &mut dyn Storage, b: &mut dyn Storage) {
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

/// The contract every [`Storage`] must keep; each backend runs it on a fresh store.
fn suite(store: &mut dyn Storage) {
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

#[test]
fn sqlite_keeps_the_storage_contract() {
    let db = TempDb::new("suite");
    let mut store = SqliteStore::open(&db.0).unwrap();
    suite(&mut store);
    study_suite(&mut store);
    drop(store);
    // Everything is still there after a reopen, read-only too.
    let store = SqliteStore::open_read_only(&db.0).unwrap();
    assert_eq!(store.runs().unwrap().len(), 4);
    assert_eq!(store.rounds(1, Some(0)).unwrap().len(), 6);
    assert_eq!(store.trials(3).unwrap().len(), 2);
}

#[test]
fn store_locations_hide_passwords() {
    let url = Path::new("postgresql://fedtune:s3cret@127.0.0.1:5432/fedtune");
    assert!(is_postgres_url(url) && !is_postgres_url(Path::new("postgres.db")));
    assert_eq!(display_location(url), "postgresql://fedtune@127.0.0.1:5432/fedtune");
    assert_eq!(display_location(Path::new("runs/fedtune.db")), "runs/fedtune.db");
    // A URL opens PostgreSQL, never a file of that name.
    let Err(err) = open(Path::new("postgresql://nobody:pw@127.0.0.1:1/none?connect_timeout=1")) else {
        panic!("nothing listens on port 1");
    };
    assert!(
        matches!(err, StoreError::Open { .. }) && !err.to_string().contains("pw@"),
        "{err}"
    );
}

#[test]
fn sqlite_studies_are_shared_between_aggregators() {
    let db = TempDb::new("shared");
    let mut a = SqliteStore::open(&db.0).unwrap();
    let mut b = SqliteStore::open(&db.0).unwrap();
    sharing_suite(&mut a, &mut b);
}

#[test]
fn a_first_version_store_migrates_and_keeps_its_runs() {
    let db = TempDb::new("v1");
    let conn = rusqlite::Connection::open(&db.0).unwrap();
    conn.execute_batch(&format!(
        "{}; PRAGMA application_id = {}; PRAGMA user_version = 1;",
        super::sqlite::MIGRATIONS[0],
        0x4644_544E
    ))
    .unwrap();
    conn.execute(
        "INSERT INTO runs (name, kind, status, rounds_planned, manifest_hash, config)
         VALUES ('old', 'run', 'finished', 3, 'ab', '{}')",
        [],
    )
    .unwrap();
    drop(conn);
    assert!(
        SqliteStore::open_read_only(&db.0).is_err(),
        "a read-only open must not use an unmigrated store"
    );
    let mut store = SqliteStore::open(&db.0).unwrap();
    assert_eq!(store.runs().unwrap()[0].name, "old");
    study_suite(&mut store);
    drop(store);
    let version: i64 = rusqlite::Connection::open(&db.0)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn readers_see_committed_rounds_while_the_writer_commits() {
    let db = TempDb::new("reader");
    let mut store = SqliteStore::open(&db.0).unwrap();
    let run = store.create_run(&new_run("live")).unwrap();
    let writer = StoreWriter::spawn(Box::new(store), run, 3);
    let reader = SqliteStore::open_read_only(&db.0).unwrap();
    let mut seen = 0;
    for round in 0..40 {
        writer.commit(record(round, None), state(round + 1, 50_000)).unwrap();
        let now = reader.run(run).unwrap().rounds_committed;
        assert!(now >= seen, "committed rounds went back from {seen} to {now}");
        seen = now;
    }
    let (stats, _) = writer.finish().unwrap();
    assert_eq!(stats.commits, 40);
    assert_eq!(reader.rounds(run, Some(0)).unwrap().len(), 40);
    assert_eq!(reader.latest_checkpoint(run, 0).unwrap().unwrap(), state(40, 50_000));
}

fn store_with_rounds(path: &Path) {
    let mut store = SqliteStore::open(path).unwrap();
    let run = store.create_run(&new_run("r")).unwrap();
    for round in 0..4 {
        store
            .commit_round(run, &record(round, None), state(round + 1, 20_000), 4)
            .unwrap();
    }
}

#[test]
fn damaged_foreign_and_newer_files_are_refused_at_open() {
    // Not SQLite at all.
    let junk = TempDb::new("junk");
    std::fs::write(&junk.0, b"these bytes are not a database, they are a shopping list").unwrap();
    let err = SqliteStore::open(&junk.0).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains(&junk.0.display().to_string()), "{err}");

    // A truncated store.
    let cut = TempDb::new("truncated");
    store_with_rounds(&cut.0);
    let len = std::fs::metadata(&cut.0).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&cut.0).unwrap();
    file.set_len(len / 3).unwrap();
    drop(file);
    let err = SqliteStore::open(&cut.0).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");

    // A corrupt table page (the second page, the root of `runs`: 64 KiB pages).
    let bad = TempDb::new("corrupt");
    store_with_rounds(&bad.0);
    let mut bytes = std::fs::read(&bad.0).unwrap();
    for b in &mut bytes[65_536..65_536 + 8192] {
        *b ^= 0x5A;
    }
    std::fs::write(&bad.0, &bytes).unwrap();
    // Refused at open, or when the damaged part is read: every checkpoint is decoded.
    let result = SqliteStore::open(&bad.0).and_then(|s| {
        s.rounds(1, None)?;
        let conn = rusqlite::Connection::open(&bad.0).map_err(|e| StoreError::Database(e.to_string()))?;
        let mut stmt = conn
            .prepare("SELECT state FROM checkpoints")
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let blobs: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(|e| StoreError::Database(e.to_string()))?;
        for blob in blobs {
            decode_checkpoint(&blob)?;
        }
        Ok(())
    });
    assert!(result.is_err(), "a corrupt store opened and read whole: {result:?}");

    // Flipped bytes inside the last checkpoint's model values, which no page check sees.
    let flipped = TempDb::new("flipped");
    store_with_rounds(&flipped.0);
    let mut bytes = std::fs::read(&flipped.0).unwrap();
    let last = state(4, 20_000);
    let needle: Vec<u8> = last.global[10_000..10_004]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("the last checkpoint's values are in the file");
    bytes[at + 1] ^= 0x01;
    std::fs::write(&flipped.0, &bytes).unwrap();
    let store = SqliteStore::open(&flipped.0).unwrap();
    let err = store.latest_checkpoint(1, 0).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");

    // Another application's SQLite file.
    let foreign = TempDb::new("foreign");
    rusqlite::Connection::open(&foreign.0)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .unwrap();
    let err = SqliteStore::open(&foreign.0).unwrap_err();
    assert!(err.to_string().contains("not a fedtune store"), "{err}");

    // A store from a newer fedtune.
    let newer = TempDb::new("newer");
    store_with_rounds(&newer.0);
    rusqlite::Connection::open(&newer.0)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99;")
        .unwrap();
    let err = SqliteStore::open(&newer.0).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerSchema {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");

    // A missing file is created by `open`, refused by `open_read_only`.
    let missing = TempDb::new("missing");
    assert!(matches!(
        SqliteStore::open_read_only(&missing.0),
        Err(StoreError::Open { .. })
    ));
}

#[test]
fn checkpoints_decode_only_when_whole() {
    let full = encode_checkpoint(state(3, 257)).unwrap();
    assert_eq!(decode_checkpoint(&full).unwrap(), state(3, 257));
    // The vectors travel as raw bytes: the blob is barely larger than them.
    assert!(full.len() < 2 * 257 * 4 + 1024, "{} bytes", full.len());
    for cut in [0, 3, 5, 9, full.len() / 2, full.len() - 1] {
        assert!(
            matches!(
                decode_checkpoint(&full[..cut]),
                Err(CheckpointError::Truncated(_) | CheckpointError::BadMagic | CheckpointError::Checksum { .. })
            ),
            "cut at {cut}"
        );
    }
    let mut trailing = full.clone();
    trailing.push(0);
    assert!(matches!(
        decode_checkpoint(&trailing),
        Err(CheckpointError::Checksum { .. })
    ));
    // One flipped bit in the model's values is caught.
    let mut flipped = full.clone();
    let at = full.len() - 100;
    flipped[at] ^= 0x10;
    assert!(matches!(
        decode_checkpoint(&flipped),
        Err(CheckpointError::Checksum { .. })
    ));
    let mut newer = full.clone();
    newer[4] = 9;
    assert_eq!(decode_checkpoint(&newer), Err(CheckpointError::NewerFormat(9)));
    let mut magic = full;
    magic[0] = b'X';
    assert_eq!(decode_checkpoint(&magic), Err(CheckpointError::BadMagic));
}

/// The variable `bash .ci/test` sets to its throwaway server's URL.
const POSTGRES_URL: &str = "FEDTUNE_TEST_POSTGRES_URL";

/// A fresh database on the test server, dropped (with any connection left to it) when
/// this is dropped. Declare it before the stores that use it, so it drops after them.
struct TempPg {
    server: ::postgres::Config,
    name: String,
    url: String,
}

/// A libpq key/value string quoted as libpq reads it.
fn pg_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl TempPg {
    fn new(label: &str) -> Self {
        let url = std::env::var(POSTGRES_URL).unwrap_or_else(|_| {
            panic!(
                "{POSTGRES_URL} is not set, and the PostgreSQL store's tests need a server: run `bash .ci/test`, \
                 which starts a throwaway one on 127.0.0.1 and sets it (or set it to a postgresql:// URL of a \
                 test server on 127.0.0.1 whose user may create databases)"
            )
        });
        let server: ::postgres::Config = url
            .parse()
            .unwrap_or_else(|e| panic!("{POSTGRES_URL} is not a PostgreSQL URL: {e}"));
        let loopback = |host: &::postgres::config::Host| match host {
            ::postgres::config::Host::Tcp(name) => ["127.0.0.1", "localhost", "::1"].contains(&name.as_str()),
            _ => false,
        };
        assert!(
            !server.get_hosts().is_empty() && server.get_hosts().iter().all(loopback),
            "{POSTGRES_URL} must name a server on 127.0.0.1: these tests create and drop databases"
        );
        let name = format!(
            "fedtune_test_{label}_{}_{:x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut admin = server
            .connect(::postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot reach the test server at {POSTGRES_URL}: {e:?}"));
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let mut url = format!("dbname={name}");
        if let ::postgres::config::Host::Tcp(host) = &server.get_hosts()[0] {
            url += &format!(" host={}", pg_quote(host));
        }
        if let Some(port) = server.get_ports().first() {
            url += &format!(" port={port}");
        }
        if let Some(user) = server.get_user() {
            url += &format!(" user={}", pg_quote(user));
        }
        if let Some(password) = server.get_password() {
            url += &format!(" password={}", pg_quote(std::str::from_utf8(password).unwrap()));
        }
        Self { server, name, url }
    }

    fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url).unwrap()
    }

    /// A plain connection, to change the database behind the store's back.
    fn sql(&self) -> ::postgres::Client {
        ::postgres::Client::connect(&self.url, ::postgres::NoTls).unwrap()
    }

    fn version(&self) -> i64 {
        self.sql()
            .query_one("SELECT version FROM fedtune_schema", &[])
            .unwrap()
            .get(0)
    }
}

impl Drop for TempPg {
    fn drop(&mut self) {
        let dropped = self
            .server
            .connect(::postgres::NoTls)
            .and_then(|mut admin| admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)));
        if let Err(e) = dropped {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

/// A timestamp with its digits as zeros: the same for SQLite's and PostgreSQL's stores.
fn shape(timestamp: &str) -> String {
    timestamp
        .chars()
        .map(|c| if c.is_ascii_digit() { '0' } else { c })
        .collect()
}

#[test]
fn postgres_keeps_the_storage_contract() {
    let db = TempPg::new("suite");
    let mut store = db.store();
    suite(&mut store);
    study_suite(&mut store);
    drop(store);
    assert_eq!(db.version(), SCHEMA_VERSION);
    // Everything is still there after a reconnect, which migrates nothing.
    let store = db.store();
    assert_eq!(db.version(), SCHEMA_VERSION);
    let runs = store.runs().unwrap();
    assert_eq!(runs.len(), 4);
    assert_eq!(store.rounds(1, Some(0)).unwrap().len(), 6);
    assert_eq!(store.trials(3).unwrap().len(), 2);
    assert_eq!(store.checkpoint_rounds(1, 0).unwrap(), vec![1, 4, 5]);
    assert_eq!(store.latest_checkpoint(1, 0).unwrap().unwrap(), state(6, 1000));
    // Per-agent rows are stored as SQLite stores them.
    let agents: Vec<(String, String, Option<f64>)> = db
        .sql()
        .query(
            "SELECT agent, outcome, accuracy FROM round_agents WHERE run_id = 1 AND round = 0 ORDER BY agent",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        agents,
        vec![
            ("a".into(), "update".into(), Some(0.6)),
            ("b".into(), "update".into(), Some(0.4)),
            ("c".into(), "straggler".into(), None),
        ]
    );
    // Timestamps read as SQLite's do: `2025-01-02T03:04:05.678Z`.
    let sqlite = TempDb::new("shape");
    let mut reference = SqliteStore::open(&sqlite.0).unwrap();
    reference.create_run(&new_run("digits")).unwrap();
    let expected = shape(&reference.runs().unwrap()[0].created_at);
    assert_eq!(expected, "0000-00-00T00:00:00.000Z");
    let committed = &store.rounds(1, Some(0)).unwrap()[0].committed_at;
    let trial = &store.trials(3).unwrap()[0];
    for timestamp in [
        &runs[0].created_at,
        &runs[0].updated_at,
        committed,
        &trial.created_at,
        &trial.updated_at,
    ] {
        assert_eq!(shape(timestamp), expected, "{timestamp}");
    }
    assert!(runs[0].updated_at > runs[0].created_at, "{runs:?}");
}

#[test]
fn postgres_studies_are_shared_between_aggregators() {
    let db = TempPg::new("shared");
    let (mut a, mut b) = (db.store(), db.store());
    sharing_suite(&mut a, &mut b);
}

#[test]
fn postgres_readers_see_committed_rounds_while_the_writer_commits() {
    let db = TempPg::new("reader");
    let mut store = db.store();
    let run = store.create_run(&new_run("live")).unwrap();
    let writer = StoreWriter::spawn(Box::new(store), run, 3);
    let reader = db.store();
    let mut seen = 0;
    for round in 0..40 {
        writer.commit(record(round, None), state(round + 1, 50_000)).unwrap();
        let now = reader.run(run).unwrap().rounds_committed;
        assert!(now >= seen, "committed rounds went back from {seen} to {now}");
        // A reader sees a round with its checkpoint, never one without the other.
        if let Some(latest) = reader.latest_checkpoint(run, 0).unwrap() {
            assert!(
                latest.round >= now,
                "round {} checkpoint with {now} rounds",
                latest.round
            );
        }
        seen = now;
    }
    let (stats, _) = writer.finish().unwrap();
    assert_eq!(stats.commits, 40);
    assert_eq!(reader.rounds(run, Some(0)).unwrap().len(), 40);
    assert_eq!(reader.latest_checkpoint(run, 0).unwrap().unwrap(), state(40, 50_000));
    assert_eq!(reader.checkpoint_rounds(run, 0).unwrap(), vec![37, 38, 39]);
}

#[test]
fn a_first_version_postgres_store_migrates_and_keeps_its_runs() {
    let db = TempPg::new("v1");
    db.sql()
        .batch_execute(&format!(
            "{}; INSERT INTO fedtune_schema (version) VALUES (1); {};
             INSERT INTO runs (name, kind, status, rounds_planned, manifest_hash, config)
             VALUES ('old', 'run', 'finished', 3, 'ab', '{{}}')",
            super::postgres::VERSION_TABLE,
            super::postgres::MIGRATIONS[0]
        ))
        .unwrap();
    let mut store = db.store();
    assert_eq!(db.version(), SCHEMA_VERSION);
    assert_eq!(store.runs().unwrap()[0].name, "old");
    study_suite(&mut store);
}

#[test]
fn postgres_refuses_foreign_and_newer_databases() {
    // Another application's tables under the store's names: refused, and left as they were.
    let foreign = TempPg::new("foreign");
    foreign
        .sql()
        .batch_execute("CREATE TABLE runs (x INTEGER); INSERT INTO runs VALUES (1);")
        .unwrap();
    let err = PostgresStore::connect(&foreign.url).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert!(
        err.to_string().contains("not a fedtune store") && err.to_string().contains("runs"),
        "{err}"
    );
    assert!(err.to_string().contains(&foreign.name), "{err}");
    let tables: i64 = foreign
        .sql()
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[])
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "a refused connect created tables");

    // The version table without its row.
    let unversioned = TempPg::new("unversioned");
    drop(unversioned.store());
    unversioned.sql().batch_execute("DELETE FROM fedtune_schema").unwrap();
    let err = PostgresStore::connect(&unversioned.url).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("version"), "{err}");

    // A store from a newer fedtune.
    let newer = TempPg::new("newer");
    let mut store = newer.store();
    store.create_run(&new_run("r")).unwrap();
    drop(store);
    newer
        .sql()
        .batch_execute("UPDATE fedtune_schema SET version = 99")
        .unwrap();
    let err = PostgresStore::connect(&newer.url).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerSchema {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(newer.version(), 99);
}

#[test]
fn postgres_connect_errors_name_the_server_never_the_password() {
    // Port 1 on loopback: nothing listens, the connect is refused at once.
    let err = PostgresStore::connect("postgresql://fedtune:hunter2-secret@127.0.0.1:1/runs").unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("postgres://fedtune@127.0.0.1:1/runs"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let err = PostgresStore::connect("postgresql://fedtune:hunter2-secret@127.0.0.1:notaport/runs").unwrap_err();
    assert!(
        matches!(err, StoreError::Open { .. }) && !err.to_string().contains("hunter2"),
        "{err}"
    );
}
