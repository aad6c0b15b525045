//! `fedtune-agent`: the edge daemon.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedtune_agent::client::{Exit, client_endpoint, run};
use fedtune_agent::config::AgentConfig;
use fedtune_agent::metrics::{self, AgentMetrics};
use fedtune_agent::model::default_device;
use fedtune_agent::tls::{client_config, default_transport};
use fedtune_agent::trainer::BurnTrainer;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "fedtune-agent", version, about = "fedtune edge agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the federation the configuration names and serve its tasks.
    Run {
        /// TOML configuration (see config/agent.toml).
        #[arg(long)]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let Command::Run { config } = Cli::parse().command;
    let config = AgentConfig::load(&config)?;
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let tls = client_config(
        &read(&config.pki.ca_cert)?,
        &read(&config.pki.cert)?,
        &read(&config.pki.key)?,
        Arc::new(default_transport(config.loopback)),
    )?;
    let (train, validation) = config.data.load()?;
    tracing::info!(train = train.len(), validation = validation.len(), "local data loaded");
    let endpoint = client_endpoint(tls, config.aggregator, config.loopback)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop.send(true);
        }
    });
    let mut options = config.options();
    if let Some(listen) = config.metrics.listen {
        let metrics = Arc::new(AgentMetrics::new());
        let addr = metrics::serve(listen, metrics.clone(), stopped.clone()).await?;
        println!("metrics on http://{addr}/metrics");
        options.metrics = Some(metrics);
    }
    let trainer = BurnTrainer::new(train, validation, default_device());
    match run(endpoint.clone(), options, trainer, stopped).await? {
        Exit::Shutdown(reason) => tracing::info!("federation over: {reason}"),
        Exit::Stopped => tracing::info!("stopped"),
    }
    endpoint.wait_idle().await;
    Ok(())
}
