//! fedtune: federated tuning and fine-tuning across edge devices, without moving their
//! data.
//!
//! This crate ties the three parts together for simulations, examples and end-to-end
//! tests; the parts are usable on their own:
//! - [`protocol`] (`fedtune-protocol`): the contract between agents and the aggregator.
//! - [`tuning`] (`fedtune-tuning`): hyperparameter search on its own (spaces, studies, samplers, pruners).
//! - [`federation`] (`fedtune-federation`): the sans-IO federation core (rounds, strategies, privacy, fairness).
//! - [`store`] (`fedtune-store`): runs, rounds, checkpoints and studies in SQLite or PostgreSQL.
//! - [`agent`] (`fedtune-agent`): the edge daemon.
//! - [`aggregator`] (`fedtune-aggregator`): the service.
//!
//! # Layout
//! - [`sim`]: an aggregator and N agents in one process over real QUIC on 127.0.0.1.
//! - [`evaluate`]: server-side evaluation of the global model on a held-out test set.
//! - [`relay`]: a faulty network (loss, delay, duplicates, reordering, cuts) between an
//!   agent and the aggregator.

#![forbid(unsafe_code)]

pub use fedtune_agent as agent;
pub use fedtune_aggregator as aggregator;
pub use fedtune_federation as federation;
pub use fedtune_protocol as protocol;
pub use fedtune_store as store;
pub use fedtune_tuning as tuning;

pub mod evaluate;
pub mod relay;
pub mod sim;
