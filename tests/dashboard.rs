//! The dashboard in a real browser: Debian's headless Chromium, driven by Playwright
//! (`tests/browser/dashboard.mjs`), against `fedtune-aggregator serve` with real agent
//! processes over QUIC, and against `fedtune-aggregator dashboard` over a store of a
//! thousand rounds and a thousand trials. Also `/metrics`, parsed as Prometheus would.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CHROMIUM`) and `tests/browser/node_modules`:
//! `bash .ci/test` installs them. Screenshots go to `FEDTUNE_SCREENSHOTS` when set (the
//! README's come from there), else to a scratch directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::browser::{browser, dashboard, get, screenshot};
use common::{Processes, agent_config, agent_process, wait_for_exit, wait_until};
use fedtune_store::{SqliteStore, Storage};

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
        .args(["--hold-after-commit-ms", "400"])
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

/// Prometheus text as Prometheus reads it.
fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of `name` (with `label`, when given) in `scrape`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn a_live_run_shows_its_rounds_in_the_browser_and_its_metrics_parse() {
    let dir = common::scratch_dir("dashboard-run");
    common::init_pki(&dir, 2);
    let (port, http) = (common::free_udp_port(), free_tcp_port());
    let config = aggregator_config(&dir, port, http, 10, "");
    let mut aggregator = Processes(vec![serve(&config)]);
    // Agent 0 serves its own /metrics on loopback.
    let agent_http = free_tcp_port();
    let configs: Vec<PathBuf> = (0..2).map(|i| agent_config(&dir, port, i)).collect();
    let mut agent0 = std::fs::read_to_string(&configs[0]).unwrap();
    agent0.push_str(&format!("\n[metrics]\nlisten = \"127.0.0.1:{agent_http}\"\n"));
    std::fs::write(&configs[0], agent0).unwrap();
    let _agents = Processes(configs.iter().map(|c| agent_process(c)).collect());
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
    // Live: the page showed a later round than it was loaded with, without a reload.
    if let Some(at_load) = seen["round_at_load"].as_u64() {
        assert!(latest > at_load, "{seen}");
    }
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
    let scrape = parse(&text);
    let value = |name: &str, label: Option<(&str, &str)>| sample(&scrape, name, label);
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

    // The agent's own /metrics: it trained in the rounds so far and says what it moved.
    let (status, text) = get(agent_http, "/metrics", None).unwrap();
    assert_eq!(status, 200, "{text}");
    let agent = parse(&text);
    let value = |name: &str, label: Option<(&str, &str)>| sample(&agent, name, label);
    let trained = value("fedtune_agent_tasks_total", Some(("outcome", "trained"))).unwrap_or(0.0);
    assert!(
        trained >= latest as f64,
        "{trained} tasks trained by round {latest}\n{text}"
    );
    for direction in ["received", "sent"] {
        let bytes = value("fedtune_agent_bytes_total", Some(("direction", direction))).unwrap_or(0.0);
        assert!(bytes >= trained * 4.0 * 64.0, "{bytes} bytes {direction}\n{text}");
    }
    assert!(
        value("fedtune_agent_training_seconds_total", None).is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert_eq!(value("fedtune_agent_connected", None), Some(1.0), "{text}");
    assert!(
        value("fedtune_agent_resident_memory_bytes", None).is_some_and(|v| v > 1e6),
        "{text}"
    );
    let (status, _) = get(agent_http, "/", None).unwrap();
    assert_eq!(status, 404, "the agent serves /metrics only");

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
