//! `fedtune-aggregator dashboard`: the web dashboard over a store, read-only, until
//! Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use fedtune_aggregator::dashboard;
use fedtune_store::display_location;

use super::signal::stop_signal;

/// The arguments of `dashboard`.
#[derive(clap::Args)]
pub struct Args {
    /// The store: a SQLite file or a `postgres://` URL.
    #[arg(long)]
    db: PathBuf,
    /// Address to serve HTTP on; other than loopback needs a token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Bearer token every request must carry (also read from
    /// FEDTUNE_DASHBOARD_TOKEN).
    #[arg(long, env = "FEDTUNE_DASHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Serves the dashboard until a stop signal.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let Args { db, listen, token } = args;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let options = dashboard::Options { token, metrics: None };
    let addr = dashboard::start(listen, &db, options, shutdown).await?;
    println!("dashboard on http://{addr} over {}", display_location(&db));
    let signal = stop_signal().await;
    println!("{signal}: dashboard stopped");
    Ok(())
}
