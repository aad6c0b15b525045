//! fedtune for Python: the `fedtune._native` extension module.
//!
//! The samplers, pruners, studies, the federation and the agent daemon stay in Rust;
//! Python supplies the objective or the training step. The pure-Python part of the
//! package (`python/fedtune/`) adds `Tuner` and safetensors files with numpy.
//!
//! # Layout
//! - `space`: `SearchSpace`, the textual distributions as a dict.
//! - `objective`: directions and objective names as `create_study` takes them.
//! - `study`: `create_study`, `Study` (ask, tell, optimize, best trial, Pareto front) and
//!   the `Trial` it hands out.
//! - `policy`: the within-trial FedEx policy of "bayes+rl".
//! - `frozen`: `FrozenTrial`, a trial as stored.
//! - `storage`: memory, a journal, or a SQLite / PostgreSQL store the dashboard reads.
//! - `agent`: `Agent`, fedtune-agent's daemon around Python's `fit` and `evaluate`.
//! - `simulate`: `simulate`, an aggregator and Python agents in one process.
//! - `split`: `split`, the shares fedtune's agents hold.
//! - `convert`, `errors`, `logging`: values, exceptions and logs across the boundary.

mod agent;
mod convert;
mod errors;
mod frozen;
mod logging;
mod objective;
mod policy;
mod simulate;
mod space;
mod split;
mod storage;
mod study;

use pyo3::prelude::*;

/// The extension module: `fedtune._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("FedtuneError", py.get_type::<errors::FedtuneError>())?;
    m.add("DuplicatedStudyError", py.get_type::<errors::DuplicatedStudyError>())?;
    m.add("TrialPruned", py.get_type::<errors::TrialPruned>())?;
    m.add("StorageError", py.get_type::<errors::StorageError>())?;
    m.add_class::<space::SearchSpace>()?;
    m.add_class::<agent::Agent>()?;
    m.add_class::<agent::Context>()?;
    m.add_class::<study::Study>()?;
    m.add_class::<study::Trial>()?;
    m.add_class::<frozen::FrozenTrial>()?;
    m.add_function(wrap_pyfunction!(study::create_study, m)?)?;
    m.add_function(wrap_pyfunction!(simulate::simulate, m)?)?;
    m.add_function(wrap_pyfunction!(split::split, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
