//! `serve` with a store survives SIGKILL: the aggregator runs as an OS process with three
//! agent processes, is killed at four points of an eight-round run (as a round commits,
//! while the next round's updates arrive, later in it) and at four points of a four-trial
//! study (inside a trial, as a trial ends, inside a later one, during a trial's final
//! evaluation), restarted each time with the same configuration; the run ends with every
//! round in the store exactly once, the study with every trial once. A second `serve` of
//! a run that is live (another port, the same store) is refused, naming who serves it,
//! and the first finishes the run.

mod common;

use common::{Processes, agent_process as agent, wait_for_exit, wait_until};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fedtune_aggregator::durable::model_crc32;
use fedtune_store::{RunKind, RunStatus, SqliteStore, Storage};
use fedtune_tuning::TrialState;

const ROUNDS: u64 = 8;
/// How long `serve` holds after each commit (its hidden `--hold-after-commit-ms`), so
/// each kill lands where the test chooses.
const HOLD_MS: u64 = 400;

/// Rounds committed to the store so far (0 before the store exists).
fn committed(db: &Path) -> u64 {
    SqliteStore::open_read_only(db)
        .ok()
        .and_then(|s| s.runs().ok())
        .and_then(|runs| runs.first().map(|r| r.rounds_committed))
        .unwrap_or(0)
}

fn serve(config: &Path) -> Child {
    Command::new(common::binary("fedtune-aggregator"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .arg("--hold-after-commit-ms")
        .arg(HOLD_MS.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A federation of three agent processes and an aggregator configuration with a store,
/// `edit` applied to the aggregator's TOML.
struct Federation {
    dir: common::Scratch,
    config: std::path::PathBuf,
    db: std::path::PathBuf,
    report: std::path::PathBuf,
    /// The aggregator's port.
    port: u16,
    _agents: Processes,
}

fn federation(name: &str, edit: impl FnOnce(String) -> String) -> Federation {
    let dir = common::scratch_dir(name);
    common::init_pki(&dir, 3);
    let port = common::free_udp_port();
    let db = dir.join("fedtune.db");
    let report = dir.join("report.json");
    let toml = std::fs::read_to_string(common::repo().join("config/aggregator.toml"))
        .unwrap()
        .replace("127.0.0.1:4433", &format!("127.0.0.1:{port}"))
        .replace("rounds = 30", &format!("rounds = {ROUNDS}"))
        .replace("wait_for_agents_secs = 120", "wait_for_agents_secs = 60")
        .replace("aggregator-report.json", report.to_str().unwrap())
        .replace("local_epochs = 2", "local_epochs = 8")
        .replace("db = \"fedtune.db\"", &format!("db = {:?}", db.to_str().unwrap()));
    assert!(toml.contains("[state]"), "config/aggregator.toml has a [state] section");
    let config = dir.join("aggregator.toml");
    std::fs::write(&config, edit(toml)).unwrap();
    let agents: Vec<Child> = (0..3)
        .map(|i| common::agent_process(&common::agent_config(&dir, port, i)))
        .collect();
    Federation {
        dir,
        config,
        db,
        report,
        port,
        _agents: Processes(agents),
    }
}

fn report_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A real SIGKILL: no handler runs.
fn kill(aggregator: &mut Processes) {
    let child = &mut aggregator.0[0];
    child.kill().unwrap();
    child.wait().unwrap();
}

fn cli(db: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(common::binary("fedtune-aggregator"))
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn a_stored_run_resumes_after_sigkill_at_four_points() {
    let Federation {
        dir: _dir,
        config,
        db,
        report,
        _agents,
        ..
    } = federation("resume", |toml| toml);
    resumes_after_sigkills(&config, &db, &report);
}

#[test]
fn a_secure_stored_run_resumes_after_sigkill_inside_its_secure_steps() {
    let Federation {
        dir: _dir,
        config,
        db,
        report,
        _agents,
        ..
    } = federation("resume-secure", |toml| {
        toml.replace(
            "enabled = false                      # needs a strategy",
            "enabled = true # needs a strategy",
        )
    });
    resumes_after_sigkills(&config, &db, &report);
}

#[test]
fn a_second_serve_of_a_live_run_is_refused_and_the_first_finishes_it() {
    let Federation {
        dir,
        config,
        db,
        report,
        port,
        _agents,
    } = federation("second-serve", |toml| toml);
    // The same store and run, another port: what an operator gets by copying the
    // configuration to serve "again". Both keep the default owner (host:port).
    let other_port = common::free_udp_port();
    let other = dir.join("other.toml");
    let toml = std::fs::read_to_string(&config).unwrap();
    let listen = format!("127.0.0.1:{port}");
    assert!(toml.contains(&listen));
    std::fs::write(
        &other,
        toml.replace(&listen, &format!("127.0.0.1:{other_port}"))
            .replace(report.to_str().unwrap(), dir.join("other.json").to_str().unwrap()),
    )
    .unwrap();
    let owner = fedtune_aggregator::config::StateConfig::default().owner(listen.parse().unwrap());

    let mut first = Processes(vec![serve(&config)]);
    wait_until(Duration::from_secs(90), "the first round", || committed(&db) >= 1);
    let second = Command::new(common::binary("fedtune-aggregator"))
        .args(["serve", "--config"])
        .arg(&other)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second serve ran: {stderr}");
    assert!(
        stderr.contains(&format!("being served by `{owner}`")) && stderr.contains("last seen"),
        "{stderr}"
    );
    // It left the run alone: still running, under the first's lease.
    let store = SqliteStore::open_read_only(&db).unwrap();
    let run = store.runs().unwrap()[0].clone();
    assert_eq!(
        (run.status, run.owner.as_deref()),
        (RunStatus::Running, Some(owner.as_str()))
    );

    // The first finishes its run, every round once.
    let (success, stdout) = wait_for_exit(&mut first.0[0], Duration::from_secs(120));
    assert!(success, "{stdout}");
    assert!(stdout.contains("finished"), "{stdout}");
    one_finished_run(&store, "one serve ran it");
    assert_eq!(report_json(&report)["status"], "finished");
}

/// The store's runs, checked to be one finished run that committed every round once,
/// in order (`what` says why there must be one).
fn one_finished_run(store: &SqliteStore, what: &str) -> Vec<fedtune_store::RunSummary> {
    let runs = store.runs().unwrap();
    assert_eq!(runs.len(), 1, "{what}: {runs:?}");
    assert_eq!(runs[0].status, RunStatus::Finished);
    let rounds: Vec<u64> = store
        .rounds(runs[0].id, None)
        .unwrap()
        .iter()
        .map(|r| r.record.round)
        .collect();
    assert_eq!(rounds, (0..ROUNDS).collect::<Vec<_>>(), "each round once, in order");
    runs
}

/// Kills `serve` at four points of the run, restarts it each time and checks the store,
/// the report and the inspection commands once it has finished.
fn resumes_after_sigkills(config: &Path, db: &Path, report: &Path) {
    let (config, db, report) = (config.to_path_buf(), db.to_path_buf(), report.to_path_buf());
    // Kill points: (rounds committed, delay after that commit was seen): just after the
    // commit, in the hold between rounds, and twice inside the next round (local training
    // of 8 epochs runs while the aggregator waits for updates).
    let kills = [(1, 0), (2, 200), (4, HOLD_MS + 150), (6, HOLD_MS + 50)];
    let mut resumes = Vec::new();
    for (after, delay_ms) in kills {
        let mut aggregator = Processes(vec![serve(&config)]);
        let started = Instant::now();
        let before = committed(&db);
        if before > 0 {
            // Time from restart to the first resumed round committed.
            wait_until(Duration::from_secs(60), "the first resumed round", || {
                committed(&db) > before
            });
            resumes.push(started.elapsed());
        }
        wait_until(Duration::from_secs(90), "the kill point", || committed(&db) >= after);
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill(&mut aggregator);
    }

    // The last restart finishes the run.
    let mut last = Processes(vec![serve(&config)]);
    let (success, stdout) = wait_for_exit(&mut last.0[0], Duration::from_secs(90));
    assert!(success, "{stdout}");

    let store = SqliteStore::open_read_only(&db).unwrap();
    let runs = one_finished_run(&store, "every restart resumed the same run");
    for r in store.rounds(runs[0].id, None).unwrap() {
        assert_eq!(r.record.updates, 3, "round {}: {:?}", r.record.round, r.record.failures);
    }
    let checkpoint = store.latest_checkpoint(runs[0].id, 0).unwrap().unwrap();
    assert_eq!(checkpoint.round, ROUNDS);
    let final_model = report_json(&report)["final_model_crc32"].as_u64();
    assert_eq!(
        final_model,
        model_crc32(&checkpoint.global).map(u64::from),
        "the final model is the last checkpoint's"
    );

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["run"], runs[0].id);
    let resumed_from = report["resumed_from"].as_u64().unwrap();
    assert!((6..ROUNDS).contains(&resumed_from), "{report}");
    assert_eq!(report["rounds"].as_array().unwrap().len(), ROUNDS as usize);
    assert_eq!(report["final_agent_evaluation"].as_object().unwrap().len(), 3);
    let accuracy = report["rounds"][ROUNDS as usize - 1]["federated_accuracy"]
        .as_f64()
        .unwrap();
    assert!(accuracy > 0.5, "the resumed run still learns: {accuracy}");
    assert!(stdout.contains("finished"), "{stdout}");
    eprintln!("restart → first resumed round: {resumes:?}");

    // The inspection commands read the store.
    let out = Command::new(common::binary("fedtune-aggregator"))
        .args(["runs", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["kind"], "run");
    assert_eq!(listed[0]["status"], "finished");
    assert_eq!(listed[0]["rounds_committed"], ROUNDS);
    assert_eq!(listed[0]["rounds_planned"], ROUNDS);
    let out = Command::new(common::binary("fedtune-aggregator"))
        .args(["rounds", "--json", "--run", "1", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), ROUNDS as usize);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["round"], i as u64);
        assert_eq!(line["updates"], 3);
        assert!(line["committed_at"].is_string(), "{line}");
        assert!(line.get("test_accuracy").is_some(), "{line}");
    }
    let out = Command::new(common::binary("fedtune-aggregator"))
        .args(["export", "--format", "csv", "--run", "1", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 * ROUNDS as usize, "{csv}");
    assert!(csv.starts_with("run,trial,round,agent,outcome"), "{csv}");
    let out = Command::new(common::binary("fedtune-aggregator"))
        .args(["rounds", "--run", "99", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run 99"));
}

/// Trials of `study` in the store by state, and rounds committed (0s before the store
/// or the study exists).
fn study_progress(db: &Path) -> (usize, u64) {
    let Ok(store) = SqliteStore::open_read_only(db) else {
        return (0, 0);
    };
    let Some(study) = store.runs().ok().and_then(|runs| runs.first().cloned()) else {
        return (0, 0);
    };
    let done = store
        .trials(study.id)
        .map(|t| t.iter().filter(|t| t.trial.state != TrialState::Running).count())
        .unwrap_or(0);
    (done, study.rounds_committed)
}

#[test]
fn a_stored_study_resumes_after_sigkill_at_four_points() {
    const TRIALS: usize = 4;
    const TRIAL_ROUNDS: u64 = 3;
    let space_dir = common::scratch_dir("resume-study-space");
    let space = space_dir.join("space.toml");
    std::fs::write(
        &space,
        "[params]\nlearning_rate = { spec = \"loguniform(1e-3, 1e-1)\", adaptive = true }\n\
         optimizer = \"choice(adam, sgd)\"\n",
    )
    .unwrap();
    let Federation {
        dir: _dir,
        config,
        db,
        report,
        _agents,
        ..
    } = federation("resume-study", |toml| {
        // Long enough local training that each kill lands inside a round.
        let toml = toml.replace("local_epochs = 8", "local_epochs = 120");
        format!(
            "{toml}\n[tuning]\nspace = {space:?}\nsampler = \"bayes+rl\"\ntrials = {TRIALS}\n\
             rounds = {TRIAL_ROUNDS}\nstartup_trials = 2\n"
        )
    });

    // Kill points, as (trials done, rounds committed) reached, then a delay: inside
    // trial 0 (its second round training), between trials (trial 0 told, trial 1
    // starting), inside trial 1 (training), and inside trial 2 just after a commit. The
    // last restart finishes the study.
    let kills = [((0, 1), 120), ((1, 3), 0), ((1, 5), 120), ((2, 7), 0)];
    let mut resumes = Vec::new();
    for ((done, rounds), delay_ms) in kills {
        let mut aggregator = Processes(vec![serve(&config)]);
        let started = Instant::now();
        let before = study_progress(&db);
        if before.1 > 0 {
            wait_until(Duration::from_secs(60), "the first resumed round or trial", || {
                let now = study_progress(&db);
                now.0 > before.0 || now.1 > before.1
            });
            resumes.push(started.elapsed());
        }
        wait_until(Duration::from_secs(120), "the kill point", || {
            let (d, r) = study_progress(&db);
            d >= done && r >= rounds
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill(&mut aggregator);
    }
    let mut last = Processes(vec![serve(&config)]);
    let (success, stdout) = wait_for_exit(&mut last.0[0], Duration::from_secs(120));
    assert!(success, "{stdout}");
    assert!(stdout.contains("finished"), "{stdout}");

    let store = SqliteStore::open_read_only(&db).unwrap();
    let runs = store.runs().unwrap();
    assert_eq!(runs.len(), 1, "every restart resumed the same study: {runs:?}");
    assert_eq!((runs[0].kind, runs[0].status), (RunKind::Study, RunStatus::Finished));
    let study = runs[0].id;
    let trials = store.trials(study).unwrap();
    assert_eq!(trials.len(), TRIALS, "every trial once: {trials:?}");
    for (i, t) in trials.iter().enumerate() {
        assert_eq!(t.trial.number, i as u64);
        assert_eq!(t.trial.state, TrialState::Complete, "{t:?}");
        assert_eq!(t.trial.intermediate.len(), TRIAL_ROUNDS as usize, "{t:?}");
        for other in &trials[..i] {
            assert_ne!(
                t.trial.params, other.trial.params,
                "no trial repeats another's parameters"
            );
        }
        let rounds: Vec<u64> = store
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
        let checkpoint = store.latest_checkpoint(study, i as u64).unwrap().unwrap();
        assert_eq!(checkpoint.round, TRIAL_ROUNDS);
        assert!(checkpoint.tuner.is_some(), "the FedEx policy is checkpointed");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["study"], study);
    assert_eq!(report["status"], "finished");
    assert_eq!(report["trials"].as_array().unwrap().len(), TRIALS);
    let best = report["best"].as_u64().unwrap() as usize;
    let accuracy = trials[best].trial.values.as_ref().unwrap()[0];
    assert!(accuracy > 0.5, "the resumed study still learns: {accuracy}");
    eprintln!("study: restart → first resumed round or trial: {resumes:?}");

    // `trials` and `export --study` read it.
    let listed: serde_json::Value = serde_json::from_slice(&cli(&db, &["trials", "--json", "--study", "1"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), TRIALS);
    assert_eq!(listed[0]["state"], "complete");
    assert!(listed[0]["params"]["learning_rate"].is_f64(), "{listed}");
    assert!(listed[0]["values"].is_array(), "{listed}");
    let table = String::from_utf8(cli(&db, &["trials", "--study", "1"])).unwrap();
    assert_eq!(table.lines().count(), 1 + TRIALS, "{table}");
    let csv = String::from_utf8(cli(&db, &["export", "--format", "csv", "--study", "1"])).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 * TRIALS * TRIAL_ROUNDS as usize, "{csv}");
    let out = Command::new(common::binary("fedtune-aggregator"))
        .args(["trials", "--study", "7", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn an_agent_killed_mid_training_rejoins_and_the_run_completes() {
    let Federation {
        dir,
        config,
        db,
        report,
        mut _agents,
        ..
    } = federation("agent-kill", |toml| {
        // Long enough local training that the kill lands inside it (120 epochs of an
        // agent's digits share pass within the 100 ms slack on Burn's flex backend).
        toml.replace("local_epochs = 8", "local_epochs = 600")
    });
    let mut aggregator = Processes(vec![serve(&config)]);
    wait_until(Duration::from_secs(90), "round 1", || committed(&db) >= 2);
    // The hold after round 1, then round 2 trains: kill agent 1 inside it.
    std::thread::sleep(Duration::from_millis(HOLD_MS + 100));
    let victim = &mut _agents.0[1];
    victim.kill().unwrap();
    victim.wait().unwrap();
    let killed_at = committed(&db);
    std::thread::sleep(Duration::from_millis(1500));
    _agents.0[1] = agent(&dir.join("agent-1.toml"));
    let (success, stdout) = wait_for_exit(&mut aggregator.0[0], Duration::from_secs(120));
    assert!(success, "{stdout}");

    let store = SqliteStore::open_read_only(&db).unwrap();
    let rounds = store.rounds(1, None).unwrap();
    assert_eq!(
        rounds.iter().map(|r| r.record.round).collect::<Vec<_>>(),
        (0..ROUNDS).collect::<Vec<_>>()
    );
    let missed: Vec<u64> = rounds
        .iter()
        .filter(|r| r.record.failures.iter().any(|f| f.agent == "agent-1"))
        .map(|r| r.record.round)
        .collect();
    assert!(
        missed.contains(&killed_at),
        "round {killed_at} lost agent 1 to the kill: {missed:?}"
    );
    let last = &rounds.last().unwrap().record;
    assert_eq!(last.updates, 3, "agent 1 is back by the last round: {last:?}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["final_agent_evaluation"].as_object().unwrap().len(), 3);
}
