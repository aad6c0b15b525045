//! `fedtune.FrozenTrial`: a trial as stored.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::convert::params_to_py;

/// A trial as stored: its parameters, state, values and intermediate values.
#[pyclass(module = "fedtune", frozen, get_all)]
pub struct FrozenTrial {
    /// The trial's number in its study.
    pub(crate) number: u64,
    /// "running", "complete", "pruned" or "failed".
    pub(crate) state: String,
    /// The parameters it ran with.
    pub(crate) params: Py<PyDict>,
    /// One value per objective once complete, else None.
    pub(crate) values: Option<Vec<f64>>,
    /// The first objective's value once complete, else None.
    value: Option<f64>,
    /// The first objective's value at each reported step.
    intermediate_values: Py<PyDict>,
    /// Why a failed trial failed.
    pub(crate) fail_reason: Option<String>,
    /// Whether every constraint held.
    feasible: bool,
}

impl FrozenTrial {
    pub(crate) fn clone_ref(&self, py: Python<'_>) -> PyResult<Self> {
        Ok(Self {
            number: self.number,
            state: self.state.clone(),
            params: self.params.clone_ref(py),
            values: self.values.clone(),
            value: self.value,
            intermediate_values: self.intermediate_values.clone_ref(py),
            fail_reason: self.fail_reason.clone(),
            feasible: self.feasible,
        })
    }

    pub(crate) fn from_trial(py: Python<'_>, t: &fedtune_tuning::FrozenTrial) -> PyResult<Self> {
        let intermediate = PyDict::new(py);
        for (step, values) in &t.intermediate {
            match values.as_slice() {
                [one] => intermediate.set_item(step, one)?,
                many => intermediate.set_item(step, PyList::new(py, many)?)?,
            }
        }
        Ok(Self {
            number: t.number,
            state: t.state.as_str().to_owned(),
            params: params_to_py(py, &t.params)?.unbind(),
            values: t.values.clone(),
            value: t.values.as_ref().and_then(|v| v.first().copied()),
            intermediate_values: intermediate.unbind(),
            fail_reason: t.fail_reason.clone(),
            feasible: t.feasible,
        })
    }
}

#[pymethods]
impl FrozenTrial {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let values = match &self.values {
            Some(values) => format!("{values:?}"),
            None => "None".into(),
        };
        Ok(format!(
            "FrozenTrial(number={}, state='{}', values={values}, params={})",
            self.number,
            self.state,
            self.params.bind(py).repr()?
        ))
    }
}
