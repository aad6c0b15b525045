//! `fedtune-aggregator`: create a federation's certificates, or serve one.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedtune_aggregator::identity::{generate, issue_agent, load_ca_certificate, validate_agent_id};
use fedtune_aggregator::{AggregatorConfig, Hooks, run, service};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "fedtune-aggregator", version, about = "fedtune aggregator service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a federation CA, a server certificate and agent certificates.
    Init {
        /// Directory to write the PKI into (must not already hold one).
        #[arg(long)]
        out: PathBuf,
        /// Number of agent certificates (ids `agent-0` … `agent-{N-1}`).
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Names the server certificate is valid for.
        #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        server_names: Vec<String>,
    },
    /// Issue one more agent certificate from an existing federation CA.
    Issue {
        /// Directory made by `init`.
        #[arg(long)]
        pki: PathBuf,
        /// Agent id (the certificate's common name).
        #[arg(long)]
        agent: String,
    },
    /// Serve a federation as the configuration says.
    Serve {
        /// TOML configuration (see config/aggregator.toml).
        #[arg(long)]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match Cli::parse().command {
        Command::Init {
            out,
            agents,
            server_names,
        } => {
            let ids: Vec<String> = (0..agents).map(|i| format!("agent-{i}")).collect();
            let pki = generate(&ids, &server_names)?;
            pki.write_to_dir(&out)?;
            println!("wrote CA, server and {agents} agent certificates to {}", out.display());
        }
        Command::Issue { pki, agent } => {
            validate_agent_id(&agent)?;
            let ca_cert = load_ca_certificate(&pki.join("ca.pem"))?;
            let ca_key = std::fs::read_to_string(pki.join("ca.key"))
                .with_context(|| format!("reading {}", pki.join("ca.key").display()))?;
            let identity = issue_agent(&ca_cert, &ca_key, &agent)?;
            let dir = pki.join("agents");
            std::fs::create_dir_all(&dir)?;
            identity.write_to(&dir.join(format!("{agent}.pem")), &dir.join(format!("{agent}.key")))?;
            println!("issued {agent} in {}", dir.display());
        }
        Command::Serve { config } => serve(config).await?,
    }
    Ok(())
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = AggregatorConfig::load(&path)?;
    let endpoint = service::bind_from_config(&config)?;
    tracing::info!("serving on {}", endpoint.local_addr()?);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C: finishing the current step and telling agents to stop");
            let _ = stop.send(true);
        }
    });
    let report_path = config.report.clone();
    let report = run(endpoint, config, Hooks::default(), shutdown).await?;
    for r in &report.rounds {
        println!(
            "round {:>3}  updates {:>3}  failures {:>2}  train loss {:.4}  federated accuracy {:.4}  {:.2}s",
            r.round,
            r.updates,
            r.failures.len(),
            r.train_loss,
            r.federated_accuracy,
            r.seconds
        );
    }
    if !report.final_agent_evaluation.is_empty() {
        let accs: Vec<f64> = report.final_agent_evaluation.values().map(|e| e.accuracy).collect();
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        let worst = accs.iter().copied().fold(f64::INFINITY, f64::min);
        println!("final model on agents' validation splits: mean accuracy {mean:.4}, worst {worst:.4}");
    }
    if let Some(path) = report_path {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing report {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}
