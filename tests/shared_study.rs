//! Two aggregators run one study through one PostgreSQL database, each with its own
//! agents (real processes, real QUIC): the store numbers their trials, and when one
//! aggregator is SIGKILLed inside a trial, the other takes that trial over from its last
//! committed round once the dead one's heartbeat is older than `trial_timeout_secs`.
//! The study ends with every trial once, every trial's rounds once, and no two trials
//! with the same parameters.
//!
//! Needs `FEDTUNE_TEST_POSTGRES_URL` (set by `bash .ci/test`, which starts a throwaway
//! server on 127.0.0.1).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Processes, agent_config, agent_process, wait_for_exit, wait_until};
use fedtune_store::{PostgresStore, RunKind, RunStatus, Storage};
use fedtune_tuning::TrialState;

const TRIALS: usize = 6;
const TRIAL_ROUNDS: u64 = 2;
const OWNERS: [&str; 2] = ["aggregator-a", "aggregator-b"];

/// A fresh database on the test server, dropped at the end.
struct TestDatabase {
    admin: String,
    name: String,
    url: String,
}

impl TestDatabase {
    fn new() -> Self {
        let admin = std::env::var("FEDTUNE_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "FEDTUNE_TEST_POSTGRES_URL is not set, and this test needs a PostgreSQL server: run \
                 `bash .ci/test`, which starts a throwaway one on 127.0.0.1 and sets it"
            )
        });
        let name = format!("fedtune_shared_{}_{:x}", std::process::id(), rand::random::<u32>());
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        // Same server and credentials, the new database.
        let (base, _) = admin.rsplit_once('/').expect("a postgresql://…/database URL");
        let url = format!("{base}/{name}");
        Self { admin, name, url }
    }

    fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url).unwrap()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// The aggregator config of `owner` on `port`, over the study in `db`.
fn aggregator_config(dir: &Path, owner: &str, port: u16, db: &str, space: &Path) -> (PathBuf, PathBuf) {
    let report = dir.join(format!("{owner}-report.json"));
    let toml = std::fs::read_to_string(common::repo().join("config/aggregator.toml"))
        .unwrap()
        .replace("127.0.0.1:4433", &format!("127.0.0.1:{port}"))
        .replace("min_agents = 3", "min_agents = 2")
        .replace("wait_for_agents_secs = 120", "wait_for_agents_secs = 60")
        .replace("aggregator-report.json", report.to_str().unwrap())
        .replace("local_epochs = 2", "local_epochs = 60")
        .replace(
            "db = \"fedtune.db\"",
            &format!("db = {db:?}\nowner = {owner:?}\ntrial_timeout_secs = 2"),
        );
    let toml = format!(
        "{toml}\n[tuning]\nspace = {space:?}\nsampler = \"tpe\"\ntrials = {TRIALS}\nrounds = {TRIAL_ROUNDS}\n\
         startup_trials = 2\n"
    );
    let path = dir.join(format!("{owner}.toml"));
    std::fs::write(&path, toml).unwrap();
    (path, report)
}

fn serve(config: &Path) -> Child {
    Command::new(common::binary("fedtune-aggregator"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_aggregators_share_a_study_and_take_over_a_dead_ones_trial() {
    let db = TestDatabase::new();
    let dir = common::scratch_dir("shared-study");
    common::init_pki(&dir, 4);
    let space = dir.join("space.toml");
    std::fs::write(
        &space,
        "[params]\nlearning_rate = \"loguniform(1e-3, 1e-1)\"\noptimizer = \"choice(adam, sgd)\"\n",
    )
    .unwrap();
    let ports = [common::free_udp_port(), common::free_udp_port()];
    let configs: Vec<(PathBuf, PathBuf)> = OWNERS
        .iter()
        .zip(ports)
        .map(|(owner, port)| aggregator_config(&dir, owner, port, &db.url, &space))
        .collect();
    // Two agents each: agent-0 and agent-1 for a, agent-2 and agent-3 for b.
    let _agents = Processes(
        (0..4)
            .map(|i| agent_process(&agent_config(&dir, ports[i / 2], i)))
            .collect(),
    );
    let mut a = Processes(vec![serve(&configs[0].0)]);
    // b joins once a has finished a trial: a trial takes a fraction of a second, so a b
    // started beside it could run the whole study while a's agents are still connecting.
    let reader = db.store();
    let owned_by_a = |state: TrialState| {
        let Some(study) = reader.runs().ok().and_then(|r| r.first().cloned()) else {
            return false;
        };
        let trials = reader.trials(study.id).unwrap_or_default();
        trials
            .iter()
            .any(|t| t.owner.as_deref() == Some(OWNERS[0]) && t.trial.state == state)
    };
    wait_until(Duration::from_secs(180), "aggregator a's first trial", || {
        owned_by_a(TrialState::Complete)
    });
    let mut b = Processes(vec![serve(&configs[1].0)]);

    // Kill a inside a trial of its own, after it finished one and committed a round of
    // the next.
    let mut taken = None;
    wait_until(Duration::from_secs(180), "aggregator a inside its second trial", || {
        let Some(study) = reader.runs().ok().and_then(|r| r.first().cloned()) else {
            return false;
        };
        let trials = reader.trials(study.id).unwrap_or_default();
        let mine = |t: &&fedtune_store::StoredTrial| t.owner.as_deref() == Some(OWNERS[0]);
        let done = trials
            .iter()
            .filter(mine)
            .any(|t| t.trial.state == TrialState::Complete);
        taken = trials
            .iter()
            .filter(mine)
            .find(|t| t.trial.state == TrialState::Running && !t.trial.intermediate.is_empty())
            .map(|t| t.trial.number);
        done && taken.is_some()
    });
    let taken = taken.unwrap();
    a.0[0].kill().unwrap();
    a.0[0].wait().unwrap();

    let (success, stdout) = wait_for_exit(&mut b.0[0], Duration::from_secs(240));
    assert!(success, "{stdout}");
    eprintln!("aggregator b:\n{stdout}");

    let runs = reader.runs().unwrap();
    assert_eq!(runs.len(), 1, "both aggregators ran the same study: {runs:?}");
    assert_eq!((runs[0].kind, runs[0].status), (RunKind::Study, RunStatus::Finished));
    let study = runs[0].id;
    let trials = reader.trials(study).unwrap();
    assert_eq!(trials.len(), TRIALS, "every trial once: {trials:?}");
    for (i, t) in trials.iter().enumerate() {
        assert_eq!(t.trial.number, i as u64);
        assert_eq!(t.trial.state, TrialState::Complete, "{t:?}");
        assert_eq!(t.trial.intermediate.len(), TRIAL_ROUNDS as usize, "{t:?}");
        for other in &trials[..i] {
            assert_ne!(
                t.trial.params, other.trial.params,
                "trials {i} and {}",
                other.trial.number
            );
        }
        let rounds: Vec<u64> = reader
            .rounds(study, Some(i as u64))
            .unwrap()
            .iter()
            .map(|r| r.record.round)
            .collect();
        assert_eq!(
            rounds,
            (0..TRIAL_ROUNDS).collect::<Vec<_>>(),
            "trial {i}: each round once"
        );
    }
    let by = |owner: &str| trials.iter().filter(|t| t.owner.as_deref() == Some(owner)).count();
    let (by_a, by_b) = (by(OWNERS[0]), by(OWNERS[1]));
    eprintln!("trials finished by a: {by_a}, by b: {by_b}; trial {taken} taken over by b");
    assert!(by_a >= 1 && by_b >= 1, "both aggregators ran trials: {trials:?}");
    assert_eq!(
        trials[taken as usize].owner.as_deref(),
        Some(OWNERS[1]),
        "b took trial {taken} over"
    );
    // b's report holds the whole study, a's trials included.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&configs[1].1).unwrap()).unwrap();
    assert_eq!(report["status"], "finished");
    assert_eq!(report["trials"].as_array().unwrap().len(), TRIALS);

    // The inspection commands read the study from PostgreSQL.
    let out = Command::new(common::binary("fedtune-aggregator"))
        .args(["trials", "--json", "--study", &study.to_string(), "--db", &db.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), TRIALS);
    assert!(
        listed.as_array().unwrap().iter().all(|t| t["owner"].is_string()),
        "{listed}"
    );
    drop(reader);
}

/// An aggregator that joins a study and fails (no agent of its own ever connects) while
/// another runs trials of it leaves the study `running`: the study is the other's to end.
#[test]
fn an_aggregator_failing_beside_a_live_one_leaves_the_study_running() {
    // The database is made and dropped off the runtime (its client blocks), whether the
    // test passes or not.
    let db = TestDatabase::new();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(failing_beside_a_live_one(db.url.clone()));
}

async fn failing_beside_a_live_one(url: String) {
    use fedtune::aggregator::tune::{TuneConfig, TuneEvent, TuneHooks};
    use fedtune::sim::{bind_aggregator, ephemeral_pki, spawn_agents};
    use fedtune::tuning::SamplerKind;
    use fedtune::tuning::space::{ParamSpec, SearchSpace};
    let connect = |url: String| async move {
        tokio::task::spawn_blocking(move || PostgresStore::connect(&url))
            .await
            .unwrap()
            .unwrap()
    };
    let space = SearchSpace::new(vec![
        ParamSpec::parse("learning_rate", "loguniform(1e-3, 1e-1)").unwrap(),
    ])
    .unwrap();
    let study = TuneConfig {
        sampler: SamplerKind::Random,
        ..TuneConfig::new(space, 2, 200)
    };

    // a: two agents, a long trial; it says when the trial's first round is in.
    let pki = ephemeral_pki(2).unwrap();
    let endpoint = bind_aggregator(&pki, false).unwrap();
    let mut config = common::config(2, 200);
    config.listen = endpoint.local_addr().unwrap();
    config.state.owner = Some(OWNERS[0].into());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let data = common::digits();
    let mut agents = spawn_agents(
        &pki,
        config.listen,
        common::digits_trainers(&data, 2),
        false,
        stop.subscribe(),
    )
    .unwrap();
    let (first_round, mut round_seen) = tokio::sync::watch::channel(false);
    let hooks = TuneHooks {
        on_event: Some(Box::new(move |event: &TuneEvent| {
            if matches!(event, TuneEvent::Round { .. }) {
                let _ = first_round.send(true);
            }
        })),
        ..TuneHooks::default()
    };
    let a = tokio::spawn(fedtune::aggregator::tune_stored(
        endpoint,
        config,
        study.clone(),
        Box::new(connect(url.clone()).await),
        2,
        hooks,
        stopped,
    ));
    round_seen.wait_for(|seen| *seen).await.unwrap();

    // b: the same study, no agents; it gives up waiting for them.
    let pki_b = ephemeral_pki(1).unwrap();
    let endpoint_b = bind_aggregator(&pki_b, false).unwrap();
    let mut config_b = common::config(1, 200);
    config_b.listen = endpoint_b.local_addr().unwrap();
    config_b.state.owner = Some(OWNERS[1].into());
    config_b.federation.wait_for_agents_secs = 1.0;
    let (_stop_b, stopped_b) = tokio::sync::watch::channel(false);
    let failed = fedtune::aggregator::tune_stored(
        endpoint_b,
        config_b,
        study,
        Box::new(connect(url.clone()).await),
        2,
        TuneHooks::default(),
        stopped_b,
    )
    .await;
    assert!(failed.is_err(), "b had no agents");
    let read = move || {
        let store = PostgresStore::connect(&url).unwrap();
        let runs = store.runs().unwrap();
        let trials = store.trials(runs[0].id).unwrap();
        (runs, trials)
    };
    let (runs, trials) = tokio::task::spawn_blocking(read.clone()).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, RunStatus::Running, "b's failure left a's study running");
    assert!(
        trials
            .iter()
            .any(|t| t.trial.state == TrialState::Running && t.owner.as_deref() == Some(OWNERS[0])),
        "{trials:?}"
    );

    // a, stopped, ends the study as its last aggregator.
    stop.send(true).unwrap();
    let stored = a.await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Interrupted);
    while agents.join_next().await.is_some() {}
    let (runs, _) = tokio::task::spawn_blocking(read).await.unwrap();
    assert_eq!(runs[0].status, RunStatus::Interrupted);
}

/// A plain run (`serve` without `[tuning]`) kept in PostgreSQL: opened, written and closed
/// from the async runtime without blocking it, every round committed once, the final
/// model's CRC-32 that of the last checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_commits_its_rounds_to_postgres() {
    use fedtune::sim::{bind_aggregator, ephemeral_pki, spawn_agents};
    // The test's own client blocks too: off the runtime.
    let db = tokio::task::spawn_blocking(TestDatabase::new).await.unwrap();
    let url = db.url.clone();
    let store = tokio::task::spawn_blocking(move || PostgresStore::connect(&url))
        .await
        .unwrap()
        .unwrap();
    let pki = ephemeral_pki(2).unwrap();
    let endpoint = bind_aggregator(&pki, false).unwrap();
    let mut config = common::config(2, 3);
    config.listen = endpoint.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let data = common::digits();
    let mut agents = spawn_agents(
        &pki,
        config.listen,
        common::digits_trainers(&data, 2),
        false,
        stop.subscribe(),
    )
    .unwrap();
    let stored = fedtune::aggregator::run_stored(
        endpoint,
        config,
        Box::new(store),
        2,
        fedtune::aggregator::Hooks::default(),
        stopped,
    )
    .await
    .unwrap();
    while agents.join_next().await.is_some() {}
    assert_eq!(stored.status, RunStatus::Finished);
    assert_eq!(stored.report.rounds.len(), 3);
    let run = stored.run;
    let (runs, rounds, checkpoint) = tokio::task::spawn_blocking(move || {
        let store = db.store();
        let checkpoint = store.latest_checkpoint(run, 0).unwrap().unwrap();
        (store.runs().unwrap(), store.rounds(run, None).unwrap(), checkpoint)
    })
    .await
    .unwrap();
    assert_eq!(
        (runs.len(), runs[0].status, runs[0].rounds_committed),
        (1, RunStatus::Finished, 3)
    );
    assert_eq!(rounds.iter().map(|r| r.record.round).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(checkpoint.round, 3);
    assert_eq!(
        stored.final_model_crc32,
        fedtune_aggregator::durable::model_crc32(&checkpoint.global)
    );
}
