//! `fedtune-aggregator dashboard`: the web dashboard over a store, read-only, until
//! Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use fedtune_aggregator::config::DashboardConfig;
use fedtune_aggregator::dashboard;
use fedtune_store::display_location;

use super::signal::stop_signal;

/// The arguments of `dashboard`.
#[derive(clap::Args)]
pub struct Args {
    /// The store: a SQLite file or a `postgres://` URL.
    #[arg(long)]
    db: PathBuf,
    /// Address to serve on; other than loopback needs a token, and HTTPS (--cert and
    /// --key) or --insecure.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Bearer token every request must carry (also read from
    /// FEDTUNE_DASHBOARD_TOKEN).
    #[arg(long, env = "FEDTUNE_DASHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve HTTPS with this certificate (PEM, leaf first), on any address; with --key.
    /// The federation's own works: `--cert pki/server.pem --key pki/server.key`.
    #[arg(long, requires = "key", value_name = "PEM")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, requires = "cert", value_name = "PEM")]
    key: Option<PathBuf>,
    /// Serve plain HTTP beyond loopback, the token in clear: only when something else
    /// encrypts the way (a TLS-terminating proxy, a VPN).
    #[arg(long, conflicts_with = "cert")]
    insecure: bool,
}

/// Serves the dashboard until a stop signal.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        db,
        listen,
        token,
        cert,
        key,
        insecure,
    } = args;
    // The rules of `[dashboard]`, with no federation certificate to fall back on.
    let config = DashboardConfig {
        listen: Some(listen),
        token,
        cert,
        key,
        insecure,
    };
    config.validate()?;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let options = dashboard::Options::from_config(&config, None)?;
    let scheme = options.scheme();
    let addr = dashboard::start(listen, &db, options, shutdown).await?;
    println!("dashboard on {scheme}://{addr} over {}", display_location(&db));
    let signal = stop_signal().await;
    println!("{signal}: dashboard stopped");
    Ok(())
}
