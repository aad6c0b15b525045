//! An aggregator and N agents in one process, over real QUIC on 127.0.0.1 with
//! certificates generated on the fly. Used by the examples and the end-to-end tests.

use std::net::SocketAddr;
use std::sync::Arc;

use fedtune_agent::client::{AgentError, AgentOptions, Exit, Reconnect, client_endpoint, run};
use fedtune_agent::config::{ConfigError, FederatedData};
use fedtune_agent::partition::PartitionSpec;
use fedtune_agent::tls::{client_config, default_transport};
use fedtune_agent::trainer::Trainer;
use fedtune_aggregator::AggregatorConfig;
use fedtune_aggregator::config::FederationConfig;
use fedtune_aggregator::identity::{FederationPki, IdentityError, generate};
use fedtune_aggregator::service::bind;
use fedtune_aggregator::transport::TransportTuning;
use fedtune_protocol::{MlpSpec, ModelSpec};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The digits MLP 64-64-10 (the model of `config/aggregator.toml`), which the examples
/// and tests federate.
pub fn digits_mlp() -> ModelSpec {
    ModelSpec::Mlp(MlpSpec {
        input: 64,
        hidden: vec![64],
        classes: 10,
    })
}

/// A federation of `agents` agents in this process for `rounds` rounds of `model`,
/// seeded by `seed`, on the loopback transport; every other setting its default.
pub fn loopback_config(model: ModelSpec, agents: usize, rounds: u64, seed: u64) -> AggregatorConfig {
    AggregatorConfig {
        federation: FederationConfig {
            rounds,
            min_agents: agents,
            seed,
            loopback: true,
            ..FederationConfig::default()
        },
        model: model.into(),
        ..AggregatorConfig::default()
    }
}

/// The repository's `data/` directory (bundled datasets and the HPO benchmark files).
pub fn data_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// The bundled digits set (features scaled to [0, 1]).
pub fn digits_source() -> fedtune_agent::config::DataSource {
    fedtune_agent::config::DataSource::Csv {
        path: data_dir().join("digits.csv"),
        scale: 1.0 / 16.0,
        label: None,
    }
}

/// The bundled digits set with its shared 10-client split (`data/digits_partition.json`).
///
/// # Errors
/// [`ConfigError`] when the files are missing or inconsistent.
pub fn digits_split() -> Result<FederatedData, ConfigError> {
    let partition = PartitionSpec::File(data_dir().join("digits_partition.json"));
    FederatedData::load(&digits_source(), &partition, 10, 0)
}

/// A throwaway PKI for `agents` agents named `agent-0` …, valid for `localhost` and
/// `127.0.0.1`.
///
/// # Errors
/// [`IdentityError`] if certificate generation fails.
pub fn ephemeral_pki(agents: usize) -> Result<FederationPki, IdentityError> {
    let ids: Vec<String> = (0..agents).map(agent_id).collect();
    generate(&ids, &["localhost".to_string(), "127.0.0.1".to_string()])
}

/// The id of simulated agent `i`.
pub fn agent_id(i: usize) -> String {
    format!("agent-{i}")
}

/// Binds an aggregator endpoint on 127.0.0.1 with an OS-chosen port.
///
/// # Errors
/// [`IdentityError`] for bad certificates or when the socket cannot be bound.
pub fn bind_aggregator(pki: &FederationPki, loopback: bool) -> Result<quinn::Endpoint, IdentityError> {
    let tuning = if loopback {
        TransportTuning::loopback()
    } else {
        TransportTuning::default()
    };
    bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &pki.ca_cert_pem,
        &pki.server,
        &tuning,
    )
}

/// Starts one agent per trainer (agent `i` uses `pki.agents[i]`), each with its own QUIC
/// endpoint, connecting to `aggregator`. Each task ends when its agent exits.
///
/// # Errors
/// A message when there are more trainers than agent certificates or a TLS config fails.
pub fn spawn_agents<T: Trainer>(
    pki: &FederationPki,
    aggregator: SocketAddr,
    trainers: Vec<T>,
    loopback: bool,
    stop: watch::Receiver<bool>,
) -> Result<JoinSet<Result<Exit, AgentError>>, String> {
    spawn_agents_with(pki, aggregator, trainers, loopback, stop, |_, _| {})
}

/// As [`spawn_agents`], with `edit` applied to agent `i`'s options before it starts.
///
/// # Errors
/// As [`spawn_agents`].
pub fn spawn_agents_with<T: Trainer>(
    pki: &FederationPki,
    aggregator: SocketAddr,
    trainers: Vec<T>,
    loopback: bool,
    stop: watch::Receiver<bool>,
    edit: impl Fn(usize, &mut AgentOptions),
) -> Result<JoinSet<Result<Exit, AgentError>>, String> {
    if trainers.len() > pki.agents.len() {
        return Err(format!(
            "{} trainers but only {} agent certificates",
            trainers.len(),
            pki.agents.len()
        ));
    }
    let transport = Arc::new(default_transport(loopback));
    let mut agents = JoinSet::new();
    for (i, (trainer, (id, identity))) in trainers.into_iter().zip(&pki.agents).enumerate() {
        let tls = client_config(
            &pki.ca_cert_pem,
            &identity.cert_pem,
            &identity.key_pem,
            transport.clone(),
        )
        .map_err(|e| e.to_string())?;
        let endpoint = client_endpoint(tls, aggregator, loopback).map_err(|e| e.to_string())?;
        let mut options = AgentOptions {
            aggregator,
            server_name: "localhost".into(),
            name: id.clone(),
            max_payload_bytes: 1 << 32,
            require_secure_aggregation: false,
            reconnect: Reconnect {
                max_attempts: Some(5),
                ..Reconnect::default()
            },
            metrics: None,
        };
        edit(i, &mut options);
        let stop = stop.clone();
        agents.spawn(async move {
            let exit = run(endpoint.clone(), options, trainer, stop).await;
            endpoint.wait_idle().await;
            exit
        });
    }
    Ok(agents)
}

/// Runs a whole federation in this process: an aggregator configured by `config` (its
/// `listen` address is replaced by an OS-chosen port on 127.0.0.1) and one agent per
/// trainer, over loopback QUIC with a throwaway PKI. Returns the aggregator's report
/// once every agent has exited.
///
/// # Errors
/// A message when the PKI, sockets or federation fail, or an agent exits with an error.
pub async fn run_local<T: Trainer>(
    mut config: fedtune_aggregator::AggregatorConfig,
    trainers: Vec<T>,
    hooks: fedtune_aggregator::Hooks,
) -> Result<fedtune_aggregator::RunReport, String> {
    let loopback = config.federation.loopback;
    let pki = ephemeral_pki(trainers.len()).map_err(|e| e.to_string())?;
    let endpoint = bind_aggregator(&pki, loopback).map_err(|e| e.to_string())?;
    config.listen = endpoint.local_addr().map_err(|e| e.to_string())?;
    let (_stop, stopped) = watch::channel(false);
    let mut agents = spawn_agents(&pki, config.listen, trainers, loopback, stopped.clone())?;
    let report = fedtune_aggregator::run(endpoint, config, hooks, stopped)
        .await
        .map_err(|e| e.to_string())?;
    while let Some(exit) = agents.join_next().await {
        exit.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    }
    Ok(report)
}
