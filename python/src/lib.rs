//! fedtune for Python: the `fedtune._native` extension module.
//!
//! The samplers, pruners, studies and their storage stay in Rust (`fedtune-tuning`,
//! `fedtune-store`); Python supplies the objective. The pure-Python part of the package
//! (`python/fedtune/`) adds the objective loop (`Study.optimize`, `Tuner`) and pandas
//! export on top of the classes here.

mod agent;
mod convert;
mod errors;
mod logging;
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
    m.add_class::<study::FrozenTrial>()?;
    m.add_function(wrap_pyfunction!(study::create_study, m)?)?;
    m.add_function(wrap_pyfunction!(simulate::simulate, m)?)?;
    m.add_function(wrap_pyfunction!(split::split, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
