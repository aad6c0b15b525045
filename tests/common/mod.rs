//! Shared set-up for the end-to-end tests: a federation on 127.0.0.1:0.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fedtune::agent::client::{AgentError, Exit};
use fedtune::agent::config::FederatedData;
use fedtune::agent::model::default_device;
use fedtune::agent::trainer::{BurnTrainer, Trainer};
use fedtune::aggregator::config::FederationConfig;
use fedtune::aggregator::identity::FederationPki;
use fedtune::aggregator::{AggregatorConfig, Hooks, RunReport, run};
use fedtune::protocol::{ClientHyperparameters, MlpSpec, ModelSpec};
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
        model: ModelSpec::Mlp(MlpSpec {
            input: 64,
            hidden: vec![64],
            classes: 10,
        }),
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

/// A unique scratch directory under the system temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedtune-{name}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64)
}
