//! The fedtune edge agent: holds local data, trains with Burn, reports updates over
//! mutual-TLS QUIC.
//!
//! # Layout
//! - [`data`]: in-memory datasets and loaders for CSV and IDX files.
//! - [`partition`]: seeded partitioners (IID, Dirichlet label skew) and split files.
//! - [`model`]: the Burn models a task's model spec describes (MLP, CNN), the
//!   [`model::Classifier`] trait for your own, flat parameter I/O by module path.
//! - [`train`]: local training and evaluation (of the zoo's models or your own).
//! - [`weights`]: weight files in (safetensors, PyTorch `.pt`, burnpack) and out.
//! - [`trainer`]: the [`trainer::Trainer`] seam the connection loop calls, and its Burn
//!   implementation.
//! - [`cancel`]: abandoning a task at its deadline or when the aggregator drops it.
//! - [`client`]: connect, hello, serve tasks, reconnect.
//! - [`metrics`]: the agent's Prometheus metrics, on a loopback `/metrics`.
//! - `secure`: the agent's side of a secure-aggregation round.
//! - [`config`]: the daemon's TOML configuration and the local data it names.
//! - [`tls`]: the client side of mutual TLS.

#![forbid(unsafe_code)]

pub mod cancel;
pub mod client;
pub mod config;
pub mod data;
mod last_update;
pub mod metrics;
pub mod model;
pub mod partition;
mod secure;
pub mod tls;
pub mod train;
pub mod trainer;
pub mod weights;
