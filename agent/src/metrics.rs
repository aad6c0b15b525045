//! The agent's Prometheus metrics, served as `/metrics` on a loopback port when the
//! configuration asks for it (`[metrics] listen = "127.0.0.1:9101"`), so a node exporter
//! or a local Prometheus on the device can watch it. Nothing else is served.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `fedtune_agent_tasks_total` | counter | `outcome`: `trained`, `resent`, `declined`, `failed`, `evaluated` |
//! | `fedtune_agent_bytes_total` | counter | `direction`: `received` (global models) or `sent` (updates) |
//! | `fedtune_agent_training_seconds_total` | counter | |
//! | `fedtune_agent_connected` | gauge | |
//! | `fedtune_agent_resident_memory_bytes` | gauge | read at scrape time |
//! | `fedtune_agent_peak_resident_memory_bytes` | gauge | read at scrape time |
//! | `fedtune_agent_build_info` | gauge (1) | `version` |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The content type of [`AgentMetrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

/// How a task ended on this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Trained and the update sent.
    Trained,
    /// Sent again: the update already trained for a task the aggregator asked again.
    Resent,
    /// Declined (abandoned, refused by the trainer, or not under secure aggregation).
    Declined,
    /// Answered with an error (bad layout, a crash).
    Failed,
    /// An evaluation request answered.
    Evaluated,
}

impl TaskOutcome {
    fn label(self) -> &'static str {
        match self {
            TaskOutcome::Trained => "trained",
            TaskOutcome::Resent => "resent",
            TaskOutcome::Declined => "declined",
            TaskOutcome::Failed => "failed",
            TaskOutcome::Evaluated => "evaluated",
        }
    }
}

/// One agent's metrics: atomic counters the client updates, encoded on a scrape.
pub struct AgentMetrics {
    registry: Registry,
    tasks: Family<Outcome, Counter>,
    bytes: Family<Direction, Counter>,
    training: Counter<f64, AtomicU64>,
    connected: Gauge,
    rss: Gauge,
    peak_rss: Gauge,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// Metrics at zero, registered under their names.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let tasks = Family::<Outcome, Counter>::default();
        registry.register("fedtune_agent_tasks", "Tasks served, by how they ended", tasks.clone());
        let bytes = Family::<Direction, Counter>::default();
        registry.register(
            "fedtune_agent_bytes",
            "Model bytes moved: global models received, updates sent",
            bytes.clone(),
        );
        let training = Counter::<f64, AtomicU64>::default();
        registry.register(
            "fedtune_agent_training_seconds",
            "Wall time spent in local training",
            training.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "fedtune_agent_connected",
            "1 while connected to the aggregator",
            connected.clone(),
        );
        let rss = Gauge::default();
        registry.register(
            "fedtune_agent_resident_memory_bytes",
            "Resident memory of the agent process",
            rss.clone(),
        );
        let peak_rss = Gauge::default();
        registry.register(
            "fedtune_agent_peak_resident_memory_bytes",
            "Peak resident memory of the agent process",
            peak_rss.clone(),
        );
        registry.register(
            "fedtune_agent_build",
            "The agent's build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry,
            tasks,
            bytes,
            training,
            connected,
            rss,
            peak_rss,
        }
    }

    /// Counts a task that ended as `outcome`.
    pub fn task(&self, outcome: TaskOutcome) {
        self.tasks
            .get_or_create(&Outcome {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Counts a global model of `parameters` f32s received.
    pub fn received(&self, parameters: usize) {
        self.add_bytes("received", parameters);
    }

    /// Counts an update of `parameters` 4-byte words sent.
    pub fn sent(&self, parameters: usize) {
        self.add_bytes("sent", parameters);
    }

    fn add_bytes(&self, direction: &'static str, parameters: usize) {
        self.bytes
            .get_or_create(&Direction { direction })
            .inc_by(parameters as u64 * 4);
    }

    /// Adds time spent training.
    pub fn trained_for(&self, elapsed: Duration) {
        self.training.inc_by(elapsed.as_secs_f64());
    }

    /// Whether the agent is connected now.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]), memory read now.
    #[must_use]
    pub fn encode(&self) -> String {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| crate::train::status_bytes(&status, name).unwrap_or(0);
        self.rss.set(i64::try_from(field("VmRSS:")).unwrap_or(i64::MAX));
        self.peak_rss.set(i64::try_from(field("VmHWM:")).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address is not loopback: the agent serves nothing to the network.
    #[error("[metrics] listen = {0} is not a loopback address; the agent serves metrics on 127.0.0.1 or ::1 only")]
    NotLoopback(SocketAddr),
    /// The port could not be bound.
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Serves `metrics` as `GET /metrics` on `listen` (loopback only) until `shutdown` turns
/// `true`; returns the bound address.
///
/// # Errors
/// [`MetricsError`] when `listen` is not loopback or cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<AgentMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, MetricsError> {
    if !listen.ip().is_loopback() {
        return Err(MetricsError::NotLoopback(listen));
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| MetricsError::Bind { addr: listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr: listen, source })?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(metrics): State<Arc<AgentMetrics>>| async move {
                ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()).into_response()
            }),
        )
        .with_state(metrics);
    tokio::spawn(async move {
        let stopped = async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_encode_under_their_names() {
        let m = AgentMetrics::new();
        m.task(TaskOutcome::Trained);
        m.task(TaskOutcome::Trained);
        m.task(TaskOutcome::Declined);
        m.received(1000);
        m.sent(250);
        m.trained_for(Duration::from_millis(1500));
        m.set_connected(true);
        let text = m.encode();
        for line in [
            r#"fedtune_agent_tasks_total{outcome="trained"} 2"#,
            r#"fedtune_agent_tasks_total{outcome="declined"} 1"#,
            r#"fedtune_agent_bytes_total{direction="received"} 4000"#,
            r#"fedtune_agent_bytes_total{direction="sent"} 1000"#,
            "fedtune_agent_training_seconds_total 1.5",
            "fedtune_agent_connected 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("fedtune_agent_resident_memory_bytes "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap();
        assert!(rss > 1 << 20, "resident memory {rss}");
    }
}
