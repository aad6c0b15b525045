//! The fedtune edge agent: holds local data, trains with Burn, reports updates over
//! mutual-TLS QUIC.
//!
//! # Layout
//! - [`data`], [`model`], [`train`], [`weights`], [`cancel`]: re-exported from
//!   `fedtune-models` (datasets, the Burn models and the [`model::Classifier`] trait for
//!   your own, local training and evaluation, weight files, abandoning a task).
//! - [`partition`]: seeded partitioners (IID, Dirichlet label skew) and split files.
//! - [`trainer`]: the [`trainer::Trainer`] seam the connection loop calls, and its Burn
//!   implementation.
//! - [`custom`]: a model of your own in an agent ([`custom::ModelTrainer`]).
//! - [`client`]: connect, hello, serve tasks, reconnect.
//! - [`daemon`]: the whole daemon (TLS, endpoint, metrics, connection loop) for any trainer.
//! - [`refusal`]: a TLS handshake that no retry can fix (a certificate refused either way).
//! - [`metrics`]: the agent's Prometheus metrics, on a loopback `/metrics`.
//! - `secure`: the agent's side of a secure-aggregation round.
//! - `task`: one task trained off the runtime, and the update that reports it.
//! - [`config`]: the daemon's TOML configuration and the local data it names.
//! - [`own`]: data a device really holds (its own text or labelled rows), made into
//!   datasets for the model each task names.
//! - [`tls`]: the client side of mutual TLS.

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod custom;
pub mod daemon;
mod last_update;
pub mod metrics;
pub mod own;
pub mod partition;
pub mod refusal;
mod secure;
mod task;
pub mod tls;
pub mod trainer;

pub use fedtune_models::{cancel, data, image_folder, model, pretrained, table, text, tokenizer, train, weights};
