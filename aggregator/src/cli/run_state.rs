//! What `serve` and a served study share: the store the run writes, and the dashboard
//! over it.

use std::path::Path;
use std::sync::Arc;

use fedtune_aggregator::AggregatorConfig;
use fedtune_aggregator::dashboard;
use fedtune_aggregator::metrics::Metrics;
use fedtune_store::{self as store, Storage};

/// Opens the store `[state] db` names, off the async runtime.
pub async fn open_store(db: &Path) -> anyhow::Result<Box<dyn Storage>> {
    use anyhow::Context as _;
    let db = db.to_owned();
    tokio::task::spawn_blocking(move || store::open(&db))
        .await?
        .context("[state] db")
}

/// Starts `[dashboard]` over the store at `db` when the configuration asks for it, with
/// the metrics the run is to update.
pub async fn start_dashboard(
    config: &AggregatorConfig,
    db: &Path,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<Arc<Metrics>>> {
    let Some(listen) = config.dashboard.listen else {
        return Ok(None);
    };
    let metrics = Arc::new(Metrics::new());
    // Beyond loopback, HTTPS with the federation's own server certificate unless
    // `[dashboard]` names one (or says `insecure`).
    let options = dashboard::Options {
        metrics: Some(metrics.clone()),
        ..dashboard::Options::from_config(&config.dashboard, Some(config.pki.server_certificate()))?
    };
    let scheme = options.scheme();
    let addr = dashboard::start(listen, db, options, shutdown).await?;
    println!("dashboard on {scheme}://{addr} (metrics on {scheme}://{addr}/metrics)");
    Ok(Some(metrics))
}
