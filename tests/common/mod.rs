//! Shared set-up for the end-to-end tests: a federation on 127.0.0.1:0.
#![allow(dead_code)]

pub mod browser;
pub mod synthetic;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fedtune::agent::client::{AgentError, Exit};
use fedtune::agent::config::FederatedData;
use fedtune::agent::model::default_device;
use fedtune::agent::trainer::{BurnTrainer, Trainer};
use fedtune::aggregator::config::FederationConfig;
use fedtune::aggregator::identity::FederationPki;
use fedtune::aggregator::{AggregatorConfig, Hooks, RunReport, run};
use fedtune::protocol::ClientHyperparameters;
use fedtune::sim::{bind_aggregator, ephemeral_pki, spawn_agents};
use tokio::task::JoinSet;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shared digits split.
pub fn digits() -> FederatedData {
    fedtune::sim::digits_split().expect("digits split loads")
}

/// Burn trainers for the first `n` clients of the digits split.
pub fn digits_trainers(data: &FederatedData, n: usize) -> Vec<BurnTrainer> {
    data.burn_trainers(n, &default_device()).expect("clients exist")
}

/// A small federation config for the digits MLP.
pub fn config(agents: usize, rounds: u64) -> AggregatorConfig {
    AggregatorConfig {
        federation: FederationConfig {
            rounds,
            min_agents: agents,
            wait_for_agents_secs: 30.0,
            round_timeout_secs: 30.0,
            ..FederationConfig::default()
        },
        model: fedtune::sim::digits_mlp().into(),
        client: ClientHyperparameters::default(),
        ..AggregatorConfig::default()
    }
}

/// A running federation: the aggregator's result and the agents' exits.
pub struct Federation {
    pub pki: FederationPki,
    pub addr: std::net::SocketAddr,
    pub aggregator: tokio::task::JoinHandle<Result<RunReport, fedtune::aggregator::FederationError>>,
    pub stop: tokio::sync::watch::Sender<bool>,
}

/// Starts an aggregator for `pki_agents` certificates on 127.0.0.1:0.
pub fn start_aggregator(pki_agents: usize, mut config: AggregatorConfig, hooks: Hooks) -> Federation {
    let pki = ephemeral_pki(pki_agents).expect("pki");
    let endpoint = bind_aggregator(&pki, false).expect("bind");
    let addr = endpoint.local_addr().expect("addr");
    config.listen = addr;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let aggregator = tokio::spawn(run(endpoint, config, hooks, stopped));
    Federation {
        pki,
        addr,
        aggregator,
        stop,
    }
}

/// Starts agents with `trainers` against `fed`.
pub fn start_agents<T: Trainer>(fed: &Federation, trainers: Vec<T>) -> JoinSet<Result<Exit, AgentError>> {
    spawn_agents(&fed.pki, fed.addr, trainers, false, fed.stop.subscribe()).expect("agents start")
}

/// Runs `n` honest digits agents for `rounds` rounds and returns the report.
pub async fn run_digits(n: usize, rounds: u64, evaluator: bool) -> RunReport {
    let data = digits();
    let hooks = Hooks {
        evaluator: evaluator.then(|| {
            Arc::new(fedtune::evaluate::TestSetEvaluator::new(
                data.global_test().expect("test"),
                default_device(),
            )) as Arc<dyn fedtune::aggregator::Evaluator>
        }),
        ..Hooks::default()
    };
    let fed = start_aggregator(n, config(n, rounds), hooks);
    let mut agents = start_agents(&fed, digits_trainers(&data, n));
    let report = fed.aggregator.await.expect("aggregator task").expect("federation runs");
    while let Some(exit) = agents.join_next().await {
        assert!(matches!(exit.expect("agent task"), Ok(Exit::Shutdown(_))));
    }
    report
}

/// A binary of this workspace, built next to the test executable by
/// `cargo test --workspace`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A unique scratch directory under the system temp dir, removed when dropped unless
/// the test failed (then it is kept for a look at what the run wrote).
pub fn scratch_dir(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("fedtune-{name}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for a look", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64)
}

/// Child processes killed when this is dropped, however the test ends.
pub struct Processes(pub Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `done` every 5 ms; panics naming `what` after `limit`. Returns the time taken.
pub fn wait_until(limit: std::time::Duration, what: &str, mut done: impl FnMut() -> bool) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    started.elapsed()
}

/// Waits for `child` to exit; returns whether it succeeded and its stdout (when piped).
pub fn wait_for_exit(child: &mut std::process::Child, limit: std::time::Duration) -> (bool, String) {
    let mut status = None;
    wait_until(limit, "the aggregator to finish", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout).unwrap();
    }
    (status.is_some_and(|s| s.success()), stdout)
}

/// `fedtune-aggregator init --out DIR/pki --agents N`; returns the PKI directory.
pub fn init_pki(dir: &Path, agents: usize) -> PathBuf {
    let pki = dir.join("pki");
    let status = std::process::Command::new(binary("fedtune-aggregator"))
        .args(["init", "--out"])
        .arg(&pki)
        .args(["--agents", &agents.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    pki
}

/// Writes `config/agent.toml` for agent `i` (its own share of the digits) of the aggregator
/// on 127.0.0.1:`port`, with the PKI in `dir/pki`, reconnecting forever; returns the path.
pub fn agent_config(dir: &Path, port: u16, i: usize) -> PathBuf {
    let data = repo().join("data");
    let toml = std::fs::read_to_string(repo().join("config/agent.toml"))
        .unwrap()
        .replace("127.0.0.1:4433", &format!("127.0.0.1:{port}"))
        .replace("agent-0", &format!("agent-{i}"))
        .replace("client = 0", &format!("client = {i}"))
        .replace("max_ms = 5000", "max_ms = 1000")
        .replace("max_attempts = 20", "max_attempts = 0")
        .replace("../data", data.to_str().unwrap());
    let path = dir.join(format!("agent-{i}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

/// Starts the agent daemon of `config`.
pub fn agent_process(config: &Path) -> std::process::Child {
    std::process::Command::new(binary("fedtune-agent"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap()
}

/// A `fedtune-aggregator serve --config CONFIG` process, logging at `info` without colours;
/// its stdout and stderr are read line by line as they come, each line stamped with when
/// it arrived. Killed when dropped.
pub struct Serve {
    pub child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Serve {
    pub fn start(config: &Path) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(binary("fedtune-aggregator"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>> = Default::default();
        let mut readers = Vec::new();
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push((std::time::Instant::now(), line));
                }
            }));
        }
        Self { child, log, readers }
    }

    /// When each line so far that contains `text` arrived.
    pub fn seen(&self, text: &str) -> Vec<std::time::Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, line)| line.contains(text))
            .map(|(at, _)| *at)
            .collect()
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, line)| format!("{line}\n"))
            .collect()
    }

    /// Waits for the process to exit and for its output to be read; whether it succeeded.
    pub fn wait(&mut self, limit: std::time::Duration) -> bool {
        let mut status = None;
        wait_until(limit, "serve to exit", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status.is_some_and(|s| s.success())
    }

    /// Sends `signal` (e.g. `-INT`, `-KILL`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal}");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `config/aggregator.toml` for a `serve` on 127.0.0.1:`port` with the PKI in `dir/pki`,
/// no store, its report in `dir`, `edit` applied; written to `dir/aggregator.toml`.
pub fn serve_config(dir: &Path, port: u16, edit: impl FnOnce(String) -> String) -> PathBuf {
    let toml = std::fs::read_to_string(repo().join("config/aggregator.toml"))
        .unwrap()
        .replace("127.0.0.1:4433", &format!("127.0.0.1:{port}"))
        .replace("aggregator-report.json", dir.join("report.json").to_str().unwrap())
        .replace("db = \"fedtune.db\"", "# no store");
    let path = dir.join("aggregator.toml");
    std::fs::write(&path, edit(toml)).unwrap();
    path
}
