//! Parameter values between Rust and Python: floats, ints, and choices (bool, int, float
//! or str).

use fedtune_tuning::Params;
use fedtune_tuning::space::{Choice, ParamValue};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use crate::errors;

/// `value` as the Python object a user expects: `float`, `int`, `bool` or `str`.
pub fn value_to_py<'py>(py: Python<'py>, value: &ParamValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        ParamValue::Float(x) => PyFloat::new(py, *x).into_any(),
        ParamValue::Int(i) => i.into_pyobject(py)?.into_any(),
        ParamValue::Categorical(c) => choice_to_py(py, c)?,
    })
}

fn choice_to_py<'py>(py: Python<'py>, choice: &Choice) -> PyResult<Bound<'py, PyAny>> {
    Ok(match choice {
        Choice::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Choice::Int(i) => i.into_pyobject(py)?.into_any(),
        Choice::Float(x) => PyFloat::new(py, *x).into_any(),
        Choice::Str(s) => PyString::new(py, s).into_any(),
    })
}

/// `params` as a `dict` from name to value, in the space's name order.
pub fn params_to_py<'py>(py: Python<'py>, params: &Params) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in params {
        dict.set_item(name, value_to_py(py, value)?)?;
    }
    Ok(dict)
}

/// A Python scalar as a categorical choice: `bool`, `int`, `float` or `str`.
pub fn choice_from_py(object: &Bound<'_, PyAny>) -> PyResult<Choice> {
    // `bool` is a subclass of `int` in Python: test it first.
    if object.is_instance_of::<PyBool>() {
        return Ok(Choice::Bool(object.extract()?));
    }
    if object.is_instance_of::<PyInt>() {
        return Ok(Choice::Int(object.extract()?));
    }
    if object.is_instance_of::<PyFloat>() {
        let x: f64 = object.extract()?;
        if !x.is_finite() {
            return Err(errors::value(format!("choice {x} is not finite")));
        }
        return Ok(Choice::Float(x));
    }
    if let Ok(s) = object.cast::<PyString>() {
        return Ok(Choice::Str(s.to_cow()?.into_owned()));
    }
    Err(errors::value(format!(
        "a choice is a bool, int, float or str, not {}",
        object.get_type().name()?
    )))
}

/// A Python value as a parameter value, before the space gives it its kind
/// ([`fedtune_tuning::space::SearchSpace::canonicalize`]).
pub fn value_from_py(object: &Bound<'_, PyAny>) -> PyResult<ParamValue> {
    Ok(match choice_from_py(object)? {
        Choice::Int(i) => ParamValue::Int(i),
        Choice::Float(x) => ParamValue::Float(x),
        other => ParamValue::Categorical(other),
    })
}

/// Objective values from what an objective returned or a user told: one number, or a
/// sequence of numbers.
pub fn values_from_py(object: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
    if let Ok(x) = object.extract::<f64>() {
        return Ok(vec![x]);
    }
    if object.is_instance_of::<PyString>() {
        return Err(errors::value("an objective value is a number, not a str"));
    }
    let mut values = Vec::new();
    for item in object.try_iter().map_err(|_| {
        errors::value(format!(
            "objective values are a number or a sequence of numbers, not {}",
            object.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })? {
        let item = item?;
        values.push(item.extract::<f64>().map_err(|_| {
            errors::value(format!(
                "objective values are numbers, not {}",
                item.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?);
    }
    Ok(values)
}
