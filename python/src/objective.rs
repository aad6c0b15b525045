//! Directions and objectives as `create_study` takes them.

use fedtune_tuning::{Direction, Objective};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors;

fn direction(text: &str) -> PyResult<Direction> {
    text.parse().map_err(|e| errors::value(format!("direction {e}")))
}

/// The objectives from `directions` (a list of directions, or a dict from name to
/// direction), `direction` (one) and `objective_names`.
pub fn objectives(
    direction_one: Option<&str>,
    directions: Option<&Bound<'_, PyAny>>,
    names: Option<Vec<String>>,
) -> PyResult<Vec<Objective>> {
    let mut named: Vec<(Option<String>, Direction)> = Vec::new();
    match (direction_one, directions) {
        (Some(_), Some(_)) => return Err(errors::value("give `direction` or `directions`, not both")),
        (Some(d), None) => named.push((None, direction(d)?)),
        (None, Some(ds)) => {
            if let Ok(dict) = ds.cast::<PyDict>() {
                for (k, v) in dict.iter() {
                    named.push((Some(k.extract()?), direction(&v.extract::<String>()?)?));
                }
            } else if ds.is_instance_of::<PyString>() {
                named.push((None, direction(&ds.extract::<String>()?)?));
            } else {
                for d in ds.try_iter()? {
                    named.push((None, direction(&d?.extract::<String>()?)?));
                }
            }
        }
        (None, None) => named.push((None, Direction::Minimize)),
    }
    if named.is_empty() {
        return Err(errors::value("a study needs at least one direction"));
    }
    if let Some(names) = names {
        if names.len() != named.len() {
            return Err(errors::value(format!(
                "{} objective name(s) for {} direction(s)",
                names.len(),
                named.len()
            )));
        }
        if named.iter().any(|(n, _)| n.is_some()) {
            return Err(errors::value(
                "`directions` as a dict names the objectives already; drop `objective_names`",
            ));
        }
        for (slot, name) in named.iter_mut().zip(names) {
            slot.0 = Some(name);
        }
    }
    let single = named.len() == 1;
    Ok(named
        .into_iter()
        .enumerate()
        .map(|(i, (name, d))| {
            let name = name.unwrap_or_else(|| {
                if single {
                    "value".into()
                } else {
                    format!("objective_{i}")
                }
            });
            Objective::new(name, d)
        })
        .collect())
}
