//! `fedtune.SearchSpace`: a search space written as a dict of the textual forms users
//! already write in TOML (`"loguniform(1e-5, 1e-2)"`, `"choice(adam, sgd)"`, …).

use fedtune_tuning::space::file::ParamTable;
use fedtune_tuning::space::{Distribution, ParamSpec, Scope};
use fedtune_tuning::{parse_space_toml, space};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::convert::choice_from_py;
use crate::errors;

/// A search space: named hyperparameters and the distributions they are drawn from.
///
/// Each value of the dict is one of
/// - the textual form: ``"uniform(0, 1)"``, ``"loguniform(1e-5, 1e-2)"``,
///   ``"int(1, 5)"``, ``"intlog(16, 512)"``, ``"choice(16, 32, 64)"``, ``"choice(adam, sgd)"``
///   (``step=`` for a grid: ``"uniform(0, 1, step=0.25)"``, ``"int(16, 512, step=16)"``);
/// - a list or tuple of choices: ``[16, 32, 64]``, ``["adam", "sgd"]``;
/// - a dict as the TOML table form takes it: ``{"spec": "int(1, 5)", "adaptive": True}``
///   or ``{"type": "float", "low": 0.1, "high": 1.0, "log": True}``.
///
/// ``adaptive`` marks a parameter the "bayes+rl" strategy may move within a trial.
/// A space that does not parse raises ``ValueError`` naming the parameter.
#[pyclass(module = "fedtune", frozen, eq)]
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    pub(crate) inner: space::SearchSpace,
}

impl SearchSpace {
    /// The space `object` describes: a `SearchSpace`, or a dict as its constructor takes.
    pub fn from_py(object: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(space) = object.cast::<Self>() {
            return Ok(space.get().clone());
        }
        let dict = object.cast::<PyDict>().map_err(|_| {
            errors::value(format!(
                "a search space is a fedtune.SearchSpace or a dict, not {}",
                object.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?;
        Self::new(dict)
    }
}

fn param(name: &str, value: &Bound<'_, PyAny>) -> PyResult<ParamSpec> {
    let refused = |message: String| errors::value(format!("search space: parameter `{name}`: {message}"));
    if let Ok(text) = value.cast::<PyString>() {
        return ParamSpec::parse(name, &text.to_cow()?).map_err(|e| errors::value(format!("search space: {e}")));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let choices = value
            .try_iter()?
            .map(|item| choice_from_py(&item?))
            .collect::<PyResult<Vec<_>>>()
            .map_err(|e| refused(e.to_string()))?;
        let distribution = Distribution::categorical(choices).map_err(|e| refused(e.to_string()))?;
        return Ok(ParamSpec::new(name, distribution));
    }
    if value.is_instance_of::<PyDict>() {
        // The table form, read by the same code as TOML's `[params.NAME]` tables.
        let json = value.py().import("json")?.call_method1("dumps", (value,))?;
        let table: ParamTable = serde_json::from_str(&json.extract::<String>()?).map_err(|e| refused(e.to_string()))?;
        return table
            .into_spec(name)
            .map_err(|e| errors::value(format!("search space: {e}")));
    }
    Err(refused(format!(
        "expected a distribution such as \"uniform(0, 1)\", a list of choices, or a dict; got {}",
        value.get_type().name()?
    )))
}

#[pymethods]
impl SearchSpace {
    /// A space from ``{name: distribution}``; see the class documentation.
    #[new]
    fn new(params: &Bound<'_, PyDict>) -> PyResult<Self> {
        let mut specs = Vec::with_capacity(params.len());
        for (name, value) in params.iter() {
            let name = name
                .cast::<PyString>()
                .map_err(|_| errors::value("search space: parameter names are str"))?
                .to_cow()?
                .into_owned();
            specs.push(param(&name, &value)?);
        }
        let inner = space::SearchSpace::new(specs).map_err(|e| errors::value(format!("search space: {e}")))?;
        Ok(Self { inner })
    }

    /// The space in the ``[params]`` table of a TOML file (as ``fedtune-aggregator tune
    /// --space`` and ``[tuning] space`` read it).
    #[staticmethod]
    fn from_toml(path: std::path::PathBuf) -> PyResult<Self> {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("{}: {e}", path.display())))?;
        let inner = parse_space_toml(&text).map_err(|e| errors::value(format!("{}: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// The parameters' names, in the space's order.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.inner.params.iter().map(|p| p.name.clone()).collect()
    }

    /// The names of the parameters marked ``adaptive``.
    #[getter]
    fn adaptive(&self) -> Vec<String> {
        self.inner
            .params
            .iter()
            .filter(|p| p.adaptive)
            .map(|p| p.name.clone())
            .collect()
    }

    /// Each parameter's distribution in its textual form.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for p in &self.inner.params {
            if p.adaptive || p.scope == Scope::Server {
                let table = PyDict::new(py);
                table.set_item("spec", p.distribution.to_string())?;
                table.set_item("adaptive", p.adaptive)?;
                if p.scope == Scope::Server {
                    table.set_item("scope", "server")?;
                }
                dict.set_item(&p.name, table)?;
            } else {
                dict.set_item(&p.name, p.distribution.to_string())?;
            }
        }
        Ok(dict)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, name: &str) -> bool {
        self.inner.get(name).is_some()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("SearchSpace({})", self.to_dict(py)?.repr()?))
    }
}
