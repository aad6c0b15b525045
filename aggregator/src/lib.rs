//! The fedtune aggregator service: accepts agents over mutual-TLS QUIC and drives
//! federations and studies. The decisions live in the crates it drives: the federation
//! core (`fedtune-federation`), the search (`fedtune-tuning`) and the durable state
//! (`fedtune-store`); this crate is the service around them.
//!
//! # Layout
//! - [`config`]: the service's typed TOML configuration.
//! - [`identity`]: the federation's CA, server and agent certificates (the PKI).
//! - [`tls`]: the server's mutual-TLS configuration; agent ids from certificates.
//! - [`revocation`]: revoked agent certificates, refused at the handshake, re-read on change.
//! - [`verifier`]: the agents' certificate verifier: revocation, and a log line naming each
//!   refused agent.
//! - [`restart`]: keys that survive a restart, so agents learn of it at once (stateless reset).
//! - [`transport`]: QUIC transport tuning and the UDP endpoint.
//! - [`registry`]: the accept loop, the hello handshake, connected agents.
//! - [`driver`]: the tokio driver that moves frames between QUIC and the federation.
//! - [`dashboard`]: the web dashboard over a store (server-rendered pages and SVG charts),
//!   over HTTPS beyond loopback.
//! - [`durable`]: a run that commits every round to a store and resumes after a crash.
//! - [`evaluate`]: a weights file's accuracy and loss on a dataset's test split.
//! - [`predict`]: a model's class and class probabilities for each row of a user's file.
//! - [`metrics`]: the Prometheus metrics `/metrics` serves.
//! - [`plot`]: a run's or a study's charts as SVG and PNG files.
//! - [`progress`]: console progress (bars on a terminal, plain lines otherwise).
//! - [`service`]: from configuration to a bound endpoint and a starting model; the final
//!   model written out.
//! - [`trial_metric`]: what a federated trial is scored on.
//! - [`tune`]: federated studies: each trial a federation, pruned on rounds, several at once.
//! - [`wire`]: the aggregator's error replies (frames themselves move through `fedtune_protocol::wire`).
//!
//! The `fedtune-aggregator` binary's subcommands live beside these in `src/cli/`, one file
//! each; they are modules of `main.rs`, not of this library.

#![forbid(unsafe_code)]

pub mod config;
pub mod dashboard;
pub mod driver;
pub mod durable;
pub mod evaluate;
#[cfg(test)]
mod fixtures;
pub mod identity;
pub mod metrics;
pub mod plot;
pub mod predict;
pub mod progress;
pub mod registry;
pub mod restart;
pub mod revocation;
pub mod service;
pub mod tls;
pub mod transport;
pub mod trial_metric;
pub mod tune;
pub mod verifier;
pub mod wire;

pub use config::AggregatorConfig;
pub use driver::{FederationError, Hooks, run};
pub use durable::{StoredReport, StoredTuneReport, run_stored, tune_stored};
pub use fedtune_federation::{
    Action, Evaluator, Event, FailureReason, FailureRecord, Federation, FederationState, GlobalEvaluation, RoundRecord,
    RunReport,
};
