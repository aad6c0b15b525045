//! The fedtune aggregator: accepts agents over mutual-TLS QUIC and runs federated rounds.
//!
//! # Layout
//! - [`adapt`]: the server learning rate's feedback loop.
//! - [`config`]: the service's typed TOML configuration.
//! - [`identity`]: the federation's CA, server and agent certificates (the PKI).
//! - [`tls`]: the server's mutual-TLS configuration; agent ids from certificates.
//! - [`transport`]: QUIC transport tuning and the UDP endpoint.
//! - [`registry`]: the accept loop, the hello handshake, connected agents.
//! - [`federation`]: the federation as one sans-IO state machine (cohorts, tasks,
//!   secure-aggregation steps, deadlines, apply, fairness, records), and its state.
//! - [`round`]: the collection of one round's updates (deadline, quorum, refusals).
//! - [`fairness`]: per-round fairness metrics, constraints, participation history.
//! - [`driver`]: the tokio driver that moves frames between QUIC and the federation.
//! - [`dashboard`]: the web dashboard over a store (server-rendered pages and SVG charts).
//! - [`durable`]: a run that commits every round to a store and resumes after a crash.
//! - [`store`]: the durable state: runs, committed rounds, checkpoints (SQLite).
//! - [`evaluate`]: a weights file's accuracy and loss on a dataset's test split.
//! - [`metrics`]: the Prometheus metrics `/metrics` serves.
//! - [`plot`]: a run's or a study's charts as SVG and PNG files.
//! - [`progress`]: console progress (bars on a terminal, plain lines otherwise).
//! - [`service`]: from configuration to a bound endpoint and a starting model; the final
//!   model written out.
//! - [`tune`]: federated studies: each trial a federation, pruned on rounds, several at once.
//! - [`tuning`]: hyperparameter search: trials, samplers (random, grid, TPE), space specs.
//! - [`strategy`]: aggregation strategies (FedAvg, server optimizers, q-FedAvg, robust rules).
//! - [`wire`]: the aggregator's error replies (frames themselves move through `fedtune_protocol::wire`).

#![forbid(unsafe_code)]

pub mod adapt;
pub mod config;
pub mod dashboard;
pub mod driver;
pub mod durable;
pub mod evaluate;
pub mod fairness;
pub mod federation;
pub mod identity;
pub mod metrics;
pub mod plot;
pub mod privacy;
pub mod progress;
pub mod registry;
pub mod revocation;
pub mod round;
pub mod service;
pub mod store;
pub mod strategy;
pub mod tls;
pub mod transport;
pub mod tune;
pub mod tuning;
pub mod wire;

pub use config::AggregatorConfig;
pub use driver::{FederationError, Hooks, run};
pub use durable::{StoredReport, StoredTuneReport, run_stored, tune_stored};
pub use federation::{
    Action, Evaluator, Event, FailureReason, FailureRecord, Federation, FederationState, GlobalEvaluation, RoundRecord,
    RunReport,
};
