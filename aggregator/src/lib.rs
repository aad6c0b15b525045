//! The fedtune aggregator: accepts agents over mutual-TLS QUIC and runs federated rounds.
//!
//! # Layout
//! - [`adapt`]: the server learning rate's feedback loop.
//! - [`config`]: the service's typed TOML configuration.
//! - [`identity`]: the federation's CA, server and agent certificates; TLS configs.
//! - [`registry`]: the accept loop, the hello handshake, connected agents.
//! - [`round`]: one round as a sans-IO state machine (cohort, deadline, quorum).
//! - [`fairness`]: per-round fairness metrics, constraints, participation history.
//! - [`federation`]: the driver that runs rounds over QUIC.
//! - `secure`: secure-aggregation rounds, the aggregator's side of the key exchange.
//! - [`service`]: from configuration to a bound endpoint.
//! - [`tune`]: federated studies: each trial a federation, pruned on rounds, several at once.
//! - [`tuning`]: hyperparameter search: trials, samplers (random, grid, TPE), space specs.
//! - [`strategy`]: aggregation strategies (FedAvg, server optimizers, q-FedAvg, robust rules).
//! - [`wire`]: frames over QUIC streams.

#![forbid(unsafe_code)]

pub mod adapt;
pub mod config;
pub mod fairness;
pub mod federation;
pub mod identity;
pub mod registry;
pub mod round;
mod secure;
pub mod service;
pub mod strategy;
pub mod tune;
pub mod tuning;
pub mod wire;

pub use config::AggregatorConfig;
pub use federation::{Evaluator, GlobalEvaluation, Hooks, RoundRecord, RunReport, run};
