//! `fedtune-agent`: the edge daemon.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedtune_agent::config::AgentConfig;
use fedtune_agent::daemon;
use fedtune_agent::model::default_device;
use fedtune_agent::own::LocalData;
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

/// Logs go to stderr, coloured only on a terminal without `NO_COLOR`; an error is one
/// line of words (its causes not already in it) and a non-zero exit, with no backtrace:
/// backtraces are for panics, which are bugs.
fn main() -> ExitCode {
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let Command::Run { config } = Cli::parse().command;
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(serve(&config)));
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    let mut text = error.to_string();
    for cause in error.chain().skip(1).map(ToString::to_string) {
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    eprintln!("error: {text}");
    ExitCode::FAILURE
}

/// Runs the agent the configuration at `path` describes until the federation ends, it
/// is stopped, or an error that retrying cannot heal.
async fn serve(path: &Path) -> anyhow::Result<()> {
    let config = AgentConfig::load(path)?;
    let endpoint = daemon::endpoint(&config)?;
    let data = config.data.as_ref().with_context(|| {
        format!(
            "{}: no [data] table: fedtune-agent trains on the local data it names (see config/agent.toml)",
            path.display()
        )
    })?;
    let local = fedtune_agent::own::load(data)?;
    match &local {
        LocalData::Ready(train, validation) => {
            tracing::info!(train = train.len(), validation = validation.len(), "local data loaded");
        }
        LocalData::Rows(rows) => {
            tracing::info!(
                train = rows.train_rows(),
                validation = rows.validation_rows(),
                "own rows read; they become features for each task's model"
            );
        }
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop.send(true);
        }
    });
    let trainer = local.trainer(default_device());
    daemon::serve(&config, endpoint, trainer, stopped).await?;
    Ok(())
}
