//! `fedtune.split`: the shares fedtune's own agents would hold, for Python agents.

use fedtune_agent::config::split_labels;
use fedtune_agent::partition::PartitionSpec;
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors;

/// Splits rows by their `labels` among `clients` clients as fedtune's agents do
/// (`--partition` of the examples, `[data] partition` of an agent): `"iid"`,
/// `"dirichlet:ALPHA"` (label skew) or `"file:PATH"` (a split file), seeded by `seed`.
/// 20% of the rows are held out as a global test set and 20% of each client's rows as
/// its validation split.
///
/// Returns a dict: `test` (row indices of the global test set) and `clients`, one dict
/// per client with `train` and `validation` row indices (int64 numpy arrays). The same
/// labels, partition and seed give the rows a Burn agent of the same federation holds.
#[pyfunction]
#[pyo3(signature = (labels, clients, partition="dirichlet:0.5", seed=0))]
pub fn split<'py>(
    py: Python<'py>,
    labels: PyReadonlyArray1<'py, i64>,
    clients: usize,
    partition: &str,
    seed: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let spec: PartitionSpec = partition.parse().map_err(errors::value)?;
    let labels = labels
        .as_array()
        .iter()
        .map(|&l| u32::try_from(l).map_err(|_| errors::value(format!("label {l} is not a class index"))))
        .collect::<PyResult<Vec<u32>>>()?;
    let split = py
        .detach(|| split_labels(&labels, &spec, clients, seed))
        .map_err(errors::value)?;
    let rows = |r: &[usize]| PyArray1::from_vec(py, r.iter().map(|&i| i as i64).collect());
    let out = PyDict::new(py);
    out.set_item("test", rows(&split.global_test))?;
    let list = PyList::empty(py);
    for client in &split.clients {
        let entry = PyDict::new(py);
        entry.set_item("train", rows(&client.train))?;
        entry.set_item("validation", rows(&client.test))?;
        list.append(entry)?;
    }
    out.set_item("clients", list)?;
    Ok(out)
}
