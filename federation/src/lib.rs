//! The federation core of fedtune, sans-IO as `quinn-proto` is: one state machine per
//! federation (a run, or one trial of a study) that picks cohorts, builds tasks, steps
//! secure aggregation, drops stragglers, applies each round through a strategy, checks
//! fairness, spends and accounts differential privacy, and records every round. It never
//! reads a clock, opens a socket or touches a file: time comes in with each event, and
//! what to do comes out as actions. The aggregator's tokio driver, the simulation and the
//! tests all drive the same machine.
//!
//! # Layout
//! - [`settings`]: what a federation reads ([`Settings`]): rounds, cohorts, model, client
//!   hyperparameters, strategy, fairness, privacy, secure aggregation.
//! - `machine`: the [`Federation`] state machine: events in, [`Action`]s out, its
//!   secure-aggregation steps, the round records, and its checkpointable
//!   [`FederationState`].
//! - [`round`]: the collection of one round's updates (deadline, quorum, refusals).
//! - [`strategy`]: aggregation strategies (FedAvg, FedProx, server optimizers, q-FedAvg,
//!   robust rules) behind one trait.
//! - [`privacy`]: client-level DP-FedAvg: clipping, noise (from the operating system),
//!   adaptive clipping, the RDP accountant and the ledger.
//! - [`fairness`]: per-round fairness metrics, constraints, participation history.
//! - [`server_lr`]: the server learning rate's feedback loop.

#![forbid(unsafe_code)]

pub mod fairness;
mod machine;
pub mod privacy;
pub mod server_lr;
pub mod settings;
pub mod strategy;

pub use machine::round;
pub use machine::*;
pub use settings::{Settings, SettingsError};
