//! `fedtune.simulate`: an aggregator and N Python agents in this process, over loopback
//! QUIC with mutual TLS and certificates made on the fly — the `simulation` example's
//! federation ([`fedtune::sim::run_local`]) with Python training.

use std::path::PathBuf;

use fedtune_aggregator::{AggregatorConfig, Hooks, service};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::agent::{PyTrainer, Slots, array, layout, run_interruptibly};
use crate::errors;
use fedtune_protocol::freeze::Trainable;

/// `name` of `agent`: an attribute (a client object with `fit` and `evaluate` methods),
/// or a key (a dict).
fn member<'py>(agent: &Bound<'py, PyAny>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    if let Ok(dict) = agent.cast::<PyDict>() {
        return dict.get_item(name);
    }
    match agent.getattr(name) {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(agent.py()) => Ok(None),
        Err(e) => Err(e),
    }
}

fn trainer(index: usize, agent: &Bound<'_, PyAny>) -> PyResult<PyTrainer> {
    let fit = member(agent, "fit")?
        .filter(|f| f.is_callable())
        .ok_or_else(|| errors::value(format!("agents[{index}] has no callable `fit`")))?;
    let evaluate = member(agent, "evaluate")?.filter(|e| !e.is_none());
    let count = |name: &str| -> PyResult<u64> {
        Ok(match member(agent, name)? {
            Some(n) if !n.is_none() => n
                .extract()
                .map_err(|_| errors::value(format!("agents[{index}].{name} is not a non-negative int")))?,
            _ => 0,
        })
    };
    Ok(PyTrainer::new(
        fit.unbind(),
        evaluate.map(Bound::unbind),
        count("train_samples")?,
        count("validation_samples")?,
    ))
}

/// Runs a federation in this process: the aggregator `aggregator` (a TOML file as
/// `fedtune-aggregator serve` reads; its `listen` and `[pki]` are replaced by a port on
/// 127.0.0.1 and certificates made for this run) and one agent per item of `agents`.
///
/// Each agent is an object (or a dict) with `fit` and, optionally, `evaluate`,
/// `train_samples` and `validation_samples`, as `fedtune.Agent` takes them. `rounds`
/// overrides `[federation] rounds`. The aggregator waits for every agent. The agents
/// share this interpreter, so at most one per core trains at a time (more only take
/// turns at its lock).
///
/// Returns the run's report as a dict: `rounds` (one dict per round: `updates`,
/// `train_loss`, `federated_accuracy`, `agent_accuracy`, `seconds`, …),
/// `final_agent_evaluation` (per agent: `loss`, `accuracy`, `samples`),
/// `final_accuracy` (their mean), `final_fairness`, and `model`, the final tensors by
/// name as numpy arrays. `[model] save` and `report` are written as `serve` writes them.
#[pyfunction]
#[pyo3(signature = (aggregator, agents, *, rounds=None))]
pub fn simulate<'py>(
    py: Python<'py>,
    aggregator: PathBuf,
    agents: Vec<Bound<'py, PyAny>>,
    rounds: Option<u64>,
) -> PyResult<Bound<'py, PyDict>> {
    if agents.is_empty() {
        return Err(errors::value("simulate needs at least one agent"));
    }
    let mut config = AggregatorConfig::load(&aggregator).map_err(errors::value)?;
    if let Some(rounds) = rounds {
        config.federation.rounds = rounds;
    }
    config.federation.min_agents = agents.len();
    config.federation.loopback = true;
    service::load_initial_model(&mut config).map_err(errors::value)?;
    // One agent per core trains at a time: they share this interpreter's lock.
    let slots = Slots::new(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let trainers = agents
        .iter()
        .enumerate()
        .map(|(i, a)| trainer(i, a).map(|t| t.sharing(slots.clone())))
        .collect::<PyResult<Vec<_>>>()?;
    let spec = config.model.spec.clone();
    let (save, save_layout, report_path) = (
        config.model.save.clone(),
        config.model.save_layout,
        config.report.clone(),
    );
    let report = run_interruptibly(py, move |stopped| async move {
        // Ctrl-C: the watch is the agents' and the aggregator's stop signal.
        let run = fedtune::sim::run_local(config, trainers, Hooks::default());
        tokio::select! {
            report = run => report,
            () = async {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            } => Err("interrupted".into()),
        }
    })?
    .map_err(errors::fedtune)?;
    if let Some(path) = save.filter(|_| !report.global.is_empty()) {
        service::save_model(&spec, &report.global, &path, save_layout).map_err(errors::fedtune)?;
    }
    let json = serde_json::to_string(&report).map_err(errors::fedtune)?;
    if let Some(path) = report_path {
        std::fs::write(&path, &json).map_err(|e| errors::fedtune(format!("{}: {e}", path.display())))?;
    }
    let out = py
        .import("json")?
        .call_method1("loads", (json,))?
        .cast_into::<PyDict>()?;
    let accuracies: Vec<f64> = report.final_agent_evaluation.values().map(|e| e.accuracy).collect();
    let mean = (!accuracies.is_empty()).then(|| accuracies.iter().sum::<f64>() / accuracies.len() as f64);
    out.set_item("final_accuracy", mean)?;
    let model = PyDict::new(py);
    // A run stopped before its first round has no model of its own.
    if report.global.len() == spec.manifest().numel() {
        for (tensor, range, _) in layout(&spec, &Trainable::all(report.global.len())) {
            model.set_item(&tensor.name, array(py, report.global[range].to_vec(), &tensor.shape)?)?;
        }
    }
    out.set_item("model", model)?;
    Ok(out)
}
