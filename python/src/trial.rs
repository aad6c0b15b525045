//! `fedtune.Trial`: a running trial as the objective sees it, with the within-trial
//! FedEx policy of "bayes+rl".

use std::sync::Mutex;

use fedtune_tuning::{Direction, Draw, FedExPolicy, Params};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::params_to_py;
use crate::study::{Study, lock};

/// A trial's own FedEx policy ("bayes+rl"): the values of the current step and the last
/// reported value, to reward the next report against.
pub(crate) struct Adapting {
    policy: FedExPolicy,
    draw: Draw,
    last: Option<f64>,
}

impl Adapting {
    pub(crate) fn new(mut policy: FedExPolicy) -> Self {
        let draw = policy.draw();
        Self {
            policy,
            draw,
            last: None,
        }
    }

    /// Rewards the values in use with the improvement from the last report to
    /// `value` (higher is better after `direction`), then draws the next step's.
    fn observe(&mut self, value: f64, direction: Direction) {
        let score = match direction {
            Direction::Maximize => value,
            Direction::Minimize => -value,
        };
        if let Some(last) = self.last {
            self.policy.observe(&[(self.draw.clone(), score - last)]);
        }
        self.last = Some(score);
        self.draw = self.policy.draw();
    }
}

pub(crate) struct TrialProgress {
    pub(crate) pruned: bool,
    pub(crate) policy: Option<Adapting>,
}

/// A running trial, handed to the objective.
///
/// `params` are the values to train with. Under "bayes+rl", parameters the space marks
/// `adaptive` are moved within the trial by a FedEx policy: each `report(step, value)`
/// rewards the values in use with the improvement of `value` since the previous report
/// and draws the values for the next step from the policy's updated distribution, so an
/// objective reads `trial.params` again after each report. The trial is recorded with
/// the values the between-trial sampler proposed; `policy_best` gives the values the
/// policy favours.
#[pyclass(module = "fedtune", frozen)]
pub struct Trial {
    pub(crate) study: Py<Study>,
    pub(crate) number: u64,
    pub(crate) params: Params,
    pub(crate) state: Mutex<TrialProgress>,
}

#[pymethods]
impl Trial {
    /// The trial's number in its study.
    #[getter]
    fn number(&self) -> u64 {
        self.number
    }

    /// The values to use now: the sampler's, with adaptive parameters at the policy's
    /// current draw under "bayes+rl".
    #[getter]
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let state = lock(&self.state);
        match &state.policy {
            Some(adapting) => params_to_py(py, &adapting.draw.params),
            None => params_to_py(py, &self.params),
        }
    }

    /// The values the between-trial sampler proposed (what the study records).
    #[getter]
    fn suggested_params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        params_to_py(py, &self.params)
    }

    /// The values the within-trial policy favours (its most probable arm of each
    /// adaptive parameter); the suggested values outside "bayes+rl".
    #[getter]
    fn policy_best<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let state = lock(&self.state);
        match &state.policy {
            Some(adapting) => params_to_py(py, &adapting.policy.best()),
            None => params_to_py(py, &self.params),
        }
    }

    /// Records the objective's value after `step` (an epoch, a round) and returns
    /// whether the pruner would stop the trial there (also kept for `should_prune`).
    fn report(&self, py: Python<'_>, step: u64, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        let study = self.study.bind(py).get();
        let values = study.values(value)?;
        let prune = study.report(py, self.number, step, values.clone())?;
        let mut state = lock(&self.state);
        state.pruned = prune;
        if let Some(adapting) = &mut state.policy {
            adapting.observe(values[0], study.primary_direction());
        }
        Ok(prune)
    }

    /// Whether the pruner would stop the trial at its last report.
    fn should_prune(&self) -> bool {
        lock(&self.state).pruned
    }

    /// The study the trial belongs to.
    #[getter]
    fn study(&self, py: Python<'_>) -> Py<Study> {
        self.study.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        let params: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("Trial(number={}, params={{{}}})", self.number, params.join(", "))
    }
}
