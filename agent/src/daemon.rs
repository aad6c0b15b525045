//! An agent daemon as `fedtune-agent run` runs it, for any [`Trainer`]: mutual TLS from
//! `[pki]`, the QUIC endpoint, `/metrics` when `[metrics] listen` is set, and the
//! connection loop until the federation ends or `stop` fires. The Python package's
//! `fedtune.Agent` runs the same daemon around a trainer that calls Python.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::client::{Exit, client_endpoint, run};
use crate::config::AgentConfig;
use crate::metrics::{self, AgentMetrics};
use crate::tls::{TlsError, client_config, default_transport};
use crate::trainer::Trainer;

/// The agent's QUIC endpoint for `config`: mutual TLS from `[pki]`. Called before the
/// local data is loaded, so a missing or mismatched certificate fails at once.
///
/// # Errors
/// A certificate file that cannot be read or does not fit its key, or an endpoint that
/// cannot bind.
pub fn endpoint(config: &AgentConfig) -> anyhow::Result<quinn::Endpoint> {
    let read = |setting: &str, p: &std::path::PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("[pki] {setting}: {}", p.display()))
    };
    let tls = client_config(
        &read("ca_cert", &config.pki.ca_cert)?,
        &read("cert", &config.pki.cert)?,
        &read("key", &config.pki.key)?,
        Arc::new(default_transport(config.loopback)),
    )
    .map_err(|e| match e {
        TlsError::Tls(rustls::Error::InconsistentKeys(_)) => anyhow::anyhow!(
            "the key in {} ([pki] key) does not belong to the certificate in {} ([pki] cert): use the .key file \
             written next to that certificate",
            config.pki.key.display(),
            config.pki.cert.display()
        ),
        other => other.into(),
    })?;
    Ok(client_endpoint(tls, config.aggregator, config.loopback)?)
}

/// Serves the federation `config` names over `endpoint` (from [`endpoint`]) with
/// `trainer` until the aggregator says it is over or `stop` becomes true; waits until
/// the connection is closed cleanly.
///
/// # Errors
/// A metrics port that cannot be served, and every error [`crate::client::run`] gives
/// up with.
pub async fn serve<T: Trainer>(
    config: &AgentConfig,
    endpoint: quinn::Endpoint,
    trainer: T,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Exit> {
    let mut options = config.options();
    if let Some(listen) = config.metrics.listen {
        let metrics = Arc::new(AgentMetrics::new());
        let addr = metrics::serve(listen, metrics.clone(), stop.clone()).await?;
        println!("metrics on http://{addr}/metrics");
        options.metrics = Some(metrics);
    }
    let exit = run(endpoint.clone(), options, trainer, stop).await?;
    match &exit {
        Exit::Shutdown(reason) => tracing::info!("federation over: {reason}"),
        Exit::Stopped => tracing::info!("stopped"),
    }
    endpoint.wait_idle().await;
    Ok(exit)
}
