//! The fedtune aggregator: accepts agents over mutual-TLS QUIC and runs federated rounds.
//!
//! # Layout
//! - [`config`]: the service's typed TOML configuration.
//! - [`identity`]: the federation's CA, server and agent certificates; TLS configs.
//! - [`registry`]: the accept loop, the hello handshake, connected agents.
//! - [`round`]: one round as a sans-IO state machine (cohort, deadline, quorum).
//! - [`fairness`]: per-round fairness metrics, constraints, participation history.
//! - [`fedavg`]: sample-weighted averaging as updates arrive.
//! - [`federation`]: the driver that runs rounds over QUIC.
//! - [`service`]: from configuration to a bound endpoint.
//! - [`wire`]: frames over QUIC streams.

#![forbid(unsafe_code)]

pub mod config;
pub mod fairness;
pub mod fedavg;
pub mod federation;
pub mod identity;
pub mod registry;
pub mod round;
pub mod service;
pub mod wire;

pub use config::AggregatorConfig;
pub use federation::{Evaluator, GlobalEvaluation, Hooks, RoundRecord, RunReport, run};
