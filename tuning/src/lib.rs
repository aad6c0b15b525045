//! Hyperparameter tuning on its own, as Optuna is: search spaces, studies, trials,
//! samplers, pruners, Pareto fronts, importance, FedEx and ask/tell. No networking, no
//! models, no SQL: a study runs anywhere an objective can be computed, and the federated
//! driver (`fedtune-aggregator`) and the Python package bind the same types.
//!
//! Follows Optuna's seams: samplers read immutable [`FrozenTrial`]s and propose the
//! next parameters; they never write a study's storage.
//!
//! # Layout
//! - [`space`]: search spaces: distributions, their textual form, values, the `[params]` table.
//! - [`rng`]: a seeded stream that serializes as its position, so a draw sequence resumes.
//! - [`objective`]: an [`Objective`] and its [`Direction`].
//! - [`trial`]: a finished or running trial as samplers see it.
//! - [`sampler`]: the [`Sampler`] trait, random and grid search.
//! - [`tpe`]: the tree-structured Parzen estimator (Optuna's defaults, independent or multivariate).
//! - [`gp`]: Gaussian-process Bayesian optimisation (Matérn-5/2 ARD, log EI, ParEGO for several objectives).
//! - [`spec`]: search spaces from TOML and from the JSON objective-spec format.
//! - [`stats`]: normal-distribution helpers the samplers share.
//! - [`importance`]: parameter importance by the correlation ratio η².
//! - [`pareto`]: multi-objective helpers: dominance, non-dominated sort, crowding, hypervolume, weighted sums.
//! - [`pruner`]: the [`Pruner`] trait, median and successive-halving pruners (also multi-objective).
//! - [`fedex`]: FedEx, adapting client hyperparameters within a trial by exponentiated gradient.
//! - [`study`]: the [`Study`]: ask, report, tell; best trial and Pareto front.
//! - [`storage`]: where a study's trials live: in memory, or a JSON-lines [`Journal`] to resume from.
//! - [`ask_tell`]: the JSON-lines ask/tell protocol of `fedtune-aggregator tune`.

#![forbid(unsafe_code)]

pub mod ask_tell;
pub mod fedex;
pub mod gp;
pub mod importance;
pub mod objective;
pub mod pareto;
pub mod pruner;
pub mod rng;
pub mod sampler;
pub mod space;
pub mod spec;
pub mod stats;
pub mod storage;
pub mod study;
#[cfg(test)]
mod testing;
pub mod tpe;
pub mod trial;

pub use fedex::{
    ArmOrigin, ArmPick, ArmSummary, Draw, FedExConfig, FedExError, FedExPolicy, ParamSummary, PolicySummary,
    ProposalOutcome, StepSize,
};
pub use gp::{GpConfig, GpSampler};
pub use objective::{Direction, Objective};
pub use pareto::{ParetoError, Scalarization, dominates, hypervolume, non_dominated_ranks, pareto_front};
pub use pruner::{MedianPruner, NopPruner, Pruner, PrunerConfig, PrunerError, SuccessiveHalvingPruner};
pub use sampler::{GridSampler, Params, RandomSampler, Sampler, SamplerError};
pub use spec::{ObjectiveSpec, SpecError, load_objectives, parse_objectives, parse_space_toml};
pub use storage::{Created, InMemory, Journal, StorageError, StudyHeader, StudyStorage};
pub use study::{AskedTrial, Outcome, SamplerKind, Study, StudyError, resume_seed};
pub use tpe::{TpeConfig, TpeSampler};
pub use trial::{FrozenTrial, TrialState};
