//! Hyperparameter tuning: trials, samplers and search-space specs.
//!
//! Follows Optuna's seams: samplers read immutable [`FrozenTrial`]s and propose the
//! next parameters; they never write a study's storage.
//!
//! # Layout
//! - [`trial`]: a finished or running trial as samplers see it.
//! - [`sampler`]: the [`Sampler`] trait, the optimisation [`Direction`], random and grid search.
//! - [`tpe`]: the tree-structured Parzen estimator (Optuna's defaults, independent or multivariate).
//! - [`spec`]: search spaces from TOML and from the JSON objective-spec format.
//! - [`stats`]: normal-distribution helpers the samplers share.

pub mod sampler;
pub mod spec;
pub mod stats;
pub mod tpe;
pub mod trial;

pub use sampler::{Direction, GridSampler, Params, RandomSampler, Sampler, SamplerError};
pub use spec::{ObjectiveSpec, SpecError, load_objectives, parse_objectives, parse_space_toml};
pub use tpe::{TpeConfig, TpeSampler};
pub use trial::{FrozenTrial, TrialState};
