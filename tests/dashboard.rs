//! The dashboard in a real browser: Debian's headless Chromium, driven by Playwright
//! (`tests/browser/dashboard.mjs`), against `fedtune-aggregator serve` with real agent
//! processes over QUIC, and against `fedtune-aggregator dashboard` over a store of a
//! thousand rounds and a thousand trials. Also `/metrics`, parsed as Prometheus would.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CHROMIUM`) and `tests/browser/node_modules`:
//! `bash .ci/test` installs them. Screenshots go to `FEDTUNE_SCREENSHOTS` when set (the
//! README's come from there), else to a scratch directory.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Processes, agent_config, agent_process, wait_for_exit, wait_until};
use fedtune_aggregator::fairness::{FairnessReport, History};
use fedtune_aggregator::federation::{FederationState, GlobalEvaluation, RngState, RoundRecord};
use fedtune_aggregator::store::{NewRun, RunKind, SqliteStore, Storage};
use fedtune_aggregator::strategy::StrategyState;
use fedtune_aggregator::tuning::{Direction, FrozenTrial, Objective, StudyHeader, TrialState};
use fedtune_protocol::space::{ParamSpec, ParamValue, SearchSpace};

/// Runs the browser driver; returns the JSON object it printed.
fn browser(args: &[&str]) -> serde_json::Value {
    let dir = common::repo().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run `bash .ci/test`, which installs Playwright and Chromium"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run `bash .ci/test`, which installs Debian's chromium"
    );
    let out = Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .args(args)
        .output()
        .expect("node (Node.js) runs the browser test: run `bash .ci/test`");
    assert!(
        out.status.success(),
        "the browser driver failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(
        result["page_errors"],
        serde_json::json!([]),
        "script errors in the page"
    );
    result
}

/// Where a screenshot goes.
fn screenshot(name: &str, scratch: &Path) -> PathBuf {
    match std::env::var_os("FEDTUNE_SCREENSHOTS") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            PathBuf::from(dir).join(name)
        }
        None => scratch.join(name),
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1; returns the status code and the body.
fn get(port: u16, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // axum answers small bodies whole, large ones chunked: undo the chunking.
    let body = if response.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `config/aggregator.toml` for two agents on `port`, slowed so a browser sees it live,
/// its store in `dir`, and the dashboard on `http`; `extra` is appended.
fn aggregator_config(dir: &Path, port: u16, http: u16, rounds: u64, extra: &str) -> PathBuf {
    let toml = std::fs::read_to_string(common::repo().join("config/aggregator.toml"))
        .unwrap()
        .replace("127.0.0.1:4433", &format!("127.0.0.1:{port}"))
        .replace("min_agents = 3", "min_agents = 2")
        .replace("rounds = 30", &format!("rounds = {rounds}"))
        .replace("local_epochs = 2", "local_epochs = 20")
        .replace("aggregator-report.json", dir.join("report.json").to_str().unwrap())
        .replace("db = \"fedtune.db\"", &format!("db = {:?}", dir.join("fedtune.db")));
    let toml = format!("{toml}\n[dashboard]\nlisten = \"127.0.0.1:{http}\"\n{extra}");
    let path = dir.join("aggregator.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn serve(config: &Path) -> Child {
    Command::new(common::binary("fedtune-aggregator"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        // Slow the run down so the browser sees rounds arrive.
        .env("FEDTUNE_TEST_HOLD_AFTER_COMMIT_MS", "400")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The one run in the SQLite store at `db`, once there is one.
fn first_run(db: &Path) -> i64 {
    let mut id = None;
    wait_until(Duration::from_secs(60), "the run in the store", || {
        id = SqliteStore::open_read_only(db)
            .ok()
            .and_then(|s| s.runs().ok())
            .and_then(|r| r.first().map(|r| r.id));
        id.is_some()
    });
    id.unwrap()
}

#[test]
fn a_live_run_shows_its_rounds_in_the_browser_and_its_metrics_parse() {
    let dir = common::scratch_dir("dashboard-run");
    common::init_pki(&dir, 2);
    let (port, http) = (common::free_udp_port(), free_tcp_port());
    let config = aggregator_config(&dir, port, http, 10, "");
    let mut aggregator = Processes(vec![serve(&config)]);
    let _agents = Processes((0..2).map(|i| agent_process(&agent_config(&dir, port, i))).collect());
    let db = dir.join("fedtune.db");
    let run = first_run(&db);

    // Opened while the run is at its first rounds, the page shows round 3 without a reload.
    let shot = screenshot("dashboard-run.png", &dir);
    let seen = browser(&[
        "run",
        &format!("http://127.0.0.1:{http}/runs/{run}"),
        "3",
        shot.to_str().unwrap(),
    ]);
    assert_eq!(seen["reloaded"], false);
    let latest = seen["latest_round"].as_u64().unwrap();
    assert!(latest >= 3, "{seen}");
    // What the chart plots is what the store holds, to the last bit.
    let store = SqliteStore::open_read_only(&db).unwrap();
    let rounds = store.rounds(run, Some(0)).unwrap();
    let points = seen["points"].as_array().unwrap();
    assert!(points.len() as u64 > latest, "a point per round: {seen}");
    for point in points {
        let round = point["x"].as_u64().unwrap();
        let stored = &rounds[round as usize].record;
        assert_eq!(stored.round, round);
        assert_eq!(point["y"].as_f64().unwrap(), stored.federated_accuracy, "round {round}");
    }

    // /metrics parses as Prometheus text and agrees with the store.
    let (status, text) = get(http, "/metrics", None).unwrap();
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let committed = store.rounds(run, Some(0)).unwrap().len() as f64;
    let counted = value("fedtune_rounds_total", None).expect("fedtune_rounds_total");
    assert!(
        counted >= latest as f64 + 1.0 && counted <= committed + 1.0,
        "{counted} vs {committed}\n{text}"
    );
    assert_eq!(value("fedtune_connected_agents", None), Some(2.0), "{text}");
    assert!(value("fedtune_updates_total", Some(("outcome", "accepted"))).is_some_and(|v| v >= 2.0 * counted));
    assert!(value("fedtune_update_bytes_total", Some(("direction", "received"))).is_some_and(|v| v > 0.0));
    assert!(text.contains("fedtune_build_info{version="), "{text}");
    assert!(text.contains("fedtune_round_duration_seconds_bucket"), "{text}");
    assert!(!text.contains("agent-0"), "no per-agent labels:\n{text}");

    // The JSON API and the page agree on the run.
    let (status, body) = get(http, "/api/runs", None).unwrap();
    assert_eq!(status, 200);
    let runs: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(runs[0]["id"], run);
    let (status, _) = get(http, "/runs/99999", None).unwrap();
    assert_eq!(status, 404);

    let (success, stdout) = wait_for_exit(&mut aggregator.0[0], Duration::from_secs(240));
    assert!(success, "{stdout}");
    assert!(
        stdout.contains(&format!("dashboard on http://127.0.0.1:{http}")),
        "{stdout}"
    );
}

#[test]
fn a_study_page_counts_its_trials_and_sorts_them() {
    const TRIALS: usize = 4;
    let dir = common::scratch_dir("dashboard-study");
    common::init_pki(&dir, 2);
    let space = dir.join("space.toml");
    std::fs::write(
        &space,
        "[params]\nlearning_rate = \"loguniform(1e-3, 1e-1)\"\noptimizer = \"choice(adam, sgd)\"\n",
    )
    .unwrap();
    let (port, unused) = (common::free_udp_port(), free_tcp_port());
    let tuning = format!("\n[tuning]\nspace = {space:?}\nsampler = \"tpe\"\ntrials = {TRIALS}\nrounds = 2\n");
    let config = aggregator_config(&dir, port, unused, 2, &tuning);
    let mut aggregator = Processes(vec![serve(&config)]);
    let _agents = Processes((0..2).map(|i| agent_process(&agent_config(&dir, port, i))).collect());
    let db = dir.join("fedtune.db");
    let study = first_run(&db);
    let (success, stdout) = wait_for_exit(&mut aggregator.0[0], Duration::from_secs(240));
    assert!(success, "{stdout}");
    // The finished study, through `dashboard` over its store.
    let (_dashboard, http) = dashboard(&db);

    let shot = screenshot("dashboard-study.png", &dir);
    let seen = browser(&[
        "study",
        &format!("http://127.0.0.1:{http}/studies/{study}"),
        &TRIALS.to_string(),
        shot.to_str().unwrap(),
    ]);
    assert_eq!(seen["trial_count"], TRIALS);
    assert_eq!(seen["rows"], TRIALS);
    // Sorted by number, descending: the last trial first.
    assert_eq!(seen["first_after_sort"], TRIALS - 1);
    let charts: Vec<&str> = seen["charts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    for chart in ["history-chart", "intermediate-chart", "parallel-chart"] {
        assert!(charts.contains(&chart), "{chart} in {charts:?}");
    }
}

/// `fedtune-aggregator dashboard` over `db` on a free port; returns it and the port.
fn dashboard(db: &Path) -> (Processes, u16) {
    let mut dashboard = Command::new(common::binary("fedtune-aggregator"))
        .args(["dashboard", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(dashboard.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (Processes(vec![dashboard]), port)
}

fn state(round: u64) -> FederationState {
    FederationState {
        trial: 0,
        round,
        global: vec![0.0; 16],
        strategy: StrategyState::Stateless,
        server_lr: None,
        history: History::default(),
        rng: RngState {
            seed: [1; 32],
            stream: 0,
            word_pos: 0,
        },
        tuner: None,
    }
}

fn record(round: u64) -> RoundRecord {
    let t = round as f64;
    let cohort: Vec<String> = (0..10).map(|i| format!("agent-{i}")).collect();
    RoundRecord {
        round,
        agent_accuracy: cohort
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), 0.5 + 0.04 * i as f64))
            .collect(),
        cohort,
        updates: 10,
        applied: true,
        failures: Vec::new(),
        aggregation_error: None,
        train_loss: 2.0 / (1.0 + t / 50.0),
        federated_accuracy: 1.0 - 0.9 / (1.0 + t / 50.0),
        federated_loss: 2.0 / (1.0 + t / 40.0),
        server_learning_rate: None,
        fairness: FairnessReport {
            agents: 10,
            mean_accuracy: 0.7,
            worst_accuracy: 0.5,
            worst_10pct_accuracy: 0.5,
            jain_index: 0.97,
            ..FairnessReport::default()
        },
        violations: Vec::new(),
        test: Some(GlobalEvaluation {
            loss: 2.0 / (1.0 + t / 40.0),
            accuracy: 1.0 - 0.9 / (1.0 + t / 45.0),
            samples: 360,
        }),
        seconds: 0.02,
        device_seconds: 0.15,
        payload_bytes: 20 * 64 * 4,
        contributions: Default::default(),
        secure: false,
    }
}

/// A store with a run of 1,000 rounds and a study of 1,000 trials of 20 rounds each.
fn big_store(path: &Path) -> (i64, i64) {
    let mut store = SqliteStore::open(path).unwrap();
    let new = |name: &str, kind| NewRun {
        name: name.into(),
        kind,
        rounds_planned: 1000,
        manifest_hash: String::new(),
        config: "{}".into(),
    };
    let run = store.create_run(&new("long-run", RunKind::Run)).unwrap();
    for round in 0..1000 {
        store.commit_round(run, &record(round), state(round + 1), 1).unwrap();
    }
    let study = store.create_run(&new("big-study", RunKind::Study)).unwrap();
    let header = StudyHeader {
        space: SearchSpace::new(vec![
            ParamSpec::parse("learning_rate", "loguniform(1e-4, 1)").unwrap(),
            ParamSpec::parse("batch_size", "choice(16, 32, 64)").unwrap(),
            ParamSpec::parse("local_epochs", "int(1, 5)").unwrap(),
        ])
        .unwrap(),
        objectives: vec![
            Objective::new("accuracy", Direction::Maximize),
            Objective::new("bytes", Direction::Minimize),
        ],
    };
    store.open_study(study, &header).unwrap();
    for number in 0..1000u64 {
        let lr = 10f64.powf(-4.0 + 4.0 * ((number * 7919) % 1000) as f64 / 1000.0);
        let accuracy = 0.95 - 0.1 * (lr.log10() + 2.0).powi(2) / 4.0;
        let mut params = std::collections::BTreeMap::new();
        params.insert("learning_rate".to_owned(), ParamValue::Float(lr));
        params.insert(
            "batch_size".to_owned(),
            ParamValue::Int([16, 32, 64][number as usize % 3]),
        );
        params.insert("local_epochs".to_owned(), ParamValue::Int(1 + (number % 5) as i64));
        let pruned = number % 4 == 3;
        let trial = FrozenTrial {
            number,
            params,
            values: (!pruned).then(|| vec![accuracy, 1e6 * (1.0 + (number % 5) as f64)]),
            state: if pruned {
                TrialState::Pruned
            } else {
                TrialState::Complete
            },
            feasible: true,
            intermediate: (1..=if pruned { 5 } else { 20 })
                .map(|step| (step, vec![accuracy * (1.0 - 0.5 / step as f64), 0.0]))
                .collect(),
        };
        store.save_trial(study, &trial).unwrap();
    }
    (run, study)
}

#[test]
fn a_thousand_rounds_and_a_thousand_trials_show_their_first_plot_within_a_second() {
    let dir = common::scratch_dir("dashboard-scale");
    let db = dir.join("big.db");
    let (run, study) = big_store(&db);
    let (_dashboard, port) = dashboard(&db);
    let addr = format!("127.0.0.1:{port}");

    // A dashboard over a store alone has no metrics, and says why.
    let (status, body) = get(port, "/metrics", None).unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("serve"), "{body}");

    let mut times = Vec::new();
    for (what, path, chart, shot) in [
        (
            "1,000-round run",
            format!("/runs/{run}"),
            "accuracy-chart",
            "dashboard-scale-run.png",
        ),
        (
            "1,000-trial study",
            format!("/studies/{study}"),
            "history-chart",
            "dashboard-scale-study.png",
        ),
    ] {
        // The first load warms the browser and the store's pages.
        let url = format!("http://{addr}{path}");
        browser(&["first-plot", &url, chart]);
        let shot = screenshot(shot, &dir);
        // The machine is shared with the other tests: the best of three loads.
        let ms = (0..3)
            .map(|_| {
                browser(&["first-plot", &url, chart, shot.to_str().unwrap()])["first_plot_ms"]
                    .as_f64()
                    .unwrap()
            })
            .fold(f64::INFINITY, f64::min);
        eprintln!("first plot of the {what}: {ms:.0} ms");
        times.push((what, ms));
    }
    for (what, ms) in times {
        assert!(ms < 1000.0, "the {what} showed its first plot after {ms} ms");
    }
}
