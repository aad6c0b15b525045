//! `fedtune.Agent`: an agent daemon whose training is Python.
//!
//! The daemon is `fedtune-agent`'s own ([`fedtune_agent::daemon::serve`]): QUIC with
//! mutual TLS, reconnects, deadlines, secure aggregation, distributed DP noise, frozen
//! tensors and LoRA all run in Rust. Only the training step crosses into Python, through
//! [`PyTrainer`], an implementation of the agent's [`Trainer`] seam.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fedtune_agent::cancel::Cancel;
use fedtune_agent::client::Exit;
use fedtune_agent::config::AgentConfig;
use fedtune_agent::train::peak_rss_bytes;
use fedtune_agent::trainer::{FitOutcome, Trainer, TrainerError};
use fedtune_protocol::freeze::Trainable;
use fedtune_protocol::{Capabilities, Evaluate, Evaluation, ModelSpec, Task, TensorSpec, TrainMetrics};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors;

/// What `fit` and `evaluate` are told about the task beside its tensors and
/// hyperparameters: `trial`, `round`, `seed`, the frozen tensors, and `cancelled()`.
#[pyclass(module = "fedtune", frozen)]
pub struct Context {
    cancel: Cancel,
    /// The trial the task belongs to.
    #[pyo3(get)]
    trial: u64,
    /// The round within the trial.
    #[pyo3(get)]
    round: u64,
    /// A seed for the round's local shuffling, so it is reproducible.
    #[pyo3(get)]
    seed: u64,
    /// The tensors that do not train (frozen by the aggregator, or a LoRA model's base),
    /// by name; empty when everything trains.
    #[pyo3(get)]
    frozen: Py<PyDict>,
    /// Seconds left before the aggregator stops waiting for this task (None: no deadline).
    deadline: Option<Instant>,
}

#[pymethods]
impl Context {
    /// Whether the task was abandoned: its deadline passed or the aggregator dropped it.
    /// A long `fit` should check it between batches and return (its result is not sent).
    fn cancelled(&self) -> bool {
        self.cancel.check().is_err()
    }

    /// Seconds left until the deadline, or None.
    fn time_left(&self) -> Option<f64> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64())
    }
}

/// The tensors of `spec` with their place in the flat buffer, and whether they train.
pub(crate) fn layout(spec: &ModelSpec, trainable: &Trainable) -> Vec<(TensorSpec, std::ops::Range<usize>, bool)> {
    let mut offset = 0;
    spec.manifest()
        .tensors
        .into_iter()
        .map(|t| {
            let range = offset..offset + t.numel();
            offset = range.end;
            let trains = !range.is_empty() && trainable.contains(range.clone());
            (t, range, trains)
        })
        .collect()
}

/// `values` as a numpy array of `shape` that owns them.
pub(crate) fn array<'py>(py: Python<'py>, values: Vec<f32>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, values).reshape(shape.to_vec())?.into_any())
}

/// Trains with Python's `fit` and measures with its `evaluate`.
pub struct PyTrainer {
    fit: Py<PyAny>,
    evaluate: Option<Py<PyAny>>,
    capabilities: Capabilities,
    slots: Option<Arc<Slots>>,
}

/// At most so many Python agents of one process train at once. Agents in one process
/// share its interpreter lock: ten threads taking turns at every small torch call spend
/// their time switching, while one per core keeps the cores busy.
pub struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    /// `n` slots (at least one).
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        })
    }

    /// Waits for a slot; it is given back when the guard drops.
    fn take(self: &Arc<Self>) -> SlotGuard {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        SlotGuard(self.clone())
    }
}

/// A slot taken from [`Slots`].
struct SlotGuard(Arc<Slots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.0.freed.notify_one();
    }
}

impl PyTrainer {
    /// A trainer calling `fit` and `evaluate`, declaring `train_samples` and
    /// `validation_samples` in its hello.
    pub fn new(fit: Py<PyAny>, evaluate: Option<Py<PyAny>>, train_samples: u64, validation_samples: u64) -> Self {
        Self {
            fit,
            evaluate,
            capabilities: Capabilities {
                cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                memory_bytes: 0,
                backend: "python".into(),
                train_samples,
                validation_samples,
            },
            slots: None,
        }
    }

    /// Trains only while it holds one of `slots`, shared with the process's other agents.
    #[must_use]
    pub fn sharing(mut self, slots: Arc<Slots>) -> Self {
        self.slots = Some(slots);
        self
    }
}

/// What a Python call failed with, as the decline the aggregator is sent.
fn declined(what: &str, e: &PyErr) -> TrainerError {
    Python::attach(|py| {
        let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_default();
        TrainerError::Declined(format!("{what} raised {kind}: {}", e.value(py)))
    })
}

impl PyTrainer {
    /// `evaluate`'s (loss, accuracy, count) on the global model, or on it plus `delta`
    /// (the trainable tensors' change); None without an evaluate function.
    fn score(
        &self,
        py: Python<'_>,
        tensors: &[(TensorSpec, std::ops::Range<usize>, bool)],
        global: &[f32],
        delta: Option<&[f32]>,
    ) -> Result<Option<(f64, f64, u64)>, TrainerError> {
        let Some(evaluate) = &self.evaluate else {
            return Ok(None);
        };
        let fail = |e: PyErr| declined("evaluate", &e);
        let dict = PyDict::new(py);
        let mut at = 0;
        for (spec, range, trains) in tensors {
            let mut values = global[range.clone()].to_vec();
            if let (Some(delta), true) = (delta, *trains) {
                for (v, d) in values.iter_mut().zip(&delta[at..at + range.len()]) {
                    *v += d;
                }
                at += range.len();
            }
            dict.set_item(&spec.name, array(py, values, &spec.shape).map_err(fail)?)
                .map_err(fail)?;
        }
        let returned = evaluate.call1(py, (dict,)).map_err(fail)?;
        let scores = returned.extract(py).map_err(|_| {
            TrainerError::Declined("evaluate must return (loss: float, accuracy: float, count: int)".into())
        })?;
        Ok(Some(scores))
    }

    /// The tensors `fit` returned, checked against the trainable layout, as
    /// `local - global` in manifest order.
    fn delta(
        returned: &Bound<'_, PyAny>,
        tensors: &[(TensorSpec, std::ops::Range<usize>, bool)],
        global: &[f32],
    ) -> Result<Vec<f32>, String> {
        let dict = returned
            .cast::<PyDict>()
            .map_err(|_| "fit must return (params: dict of numpy arrays, num_samples, metrics)".to_owned())?;
        let expected: Vec<&str> = tensors.iter().filter(|t| t.2).map(|t| t.0.name.as_str()).collect();
        let mut unexpected = Vec::new();
        for key in dict.keys() {
            let key: String = key.extract().map_err(|_| "tensor names are str".to_owned())?;
            if !expected.contains(&key.as_str()) {
                unexpected.push(key);
            }
        }
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|name| !dict.contains(name).unwrap_or(false))
            .collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(format!(
                "fit returned the wrong tensors: missing [{}], unexpected [{}]; the trainable tensors are [{}]",
                missing.join(", "),
                unexpected.join(", "),
                expected.join(", ")
            ));
        }
        let mut delta = Vec::with_capacity(tensors.iter().filter(|t| t.2).map(|t| t.1.len()).sum());
        for (spec, range, _) in tensors.iter().filter(|t| t.2) {
            let value = dict
                .get_item(&spec.name)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("tensor `{}` vanished", spec.name))?;
            let array: PyReadonlyArrayDyn<'_, f32> = value.extract().map_err(|_| {
                let kind = value
                    .getattr("dtype")
                    .map(|d| d.to_string())
                    .unwrap_or_else(|_| value.get_type().name().map(|n| n.to_string()).unwrap_or_default());
                format!(
                    "tensor `{}` is {kind}, not a float32 numpy array (use .astype(numpy.float32); a torch \
                     tensor: .detach().cpu().numpy())",
                    spec.name
                )
            })?;
            if array.shape() != spec.shape.as_slice() {
                return Err(format!(
                    "tensor `{}` has shape {:?}; the model's is {:?}",
                    spec.name,
                    array.shape(),
                    spec.shape
                ));
            }
            let before = &global[range.clone()];
            let start = delta.len();
            match array.as_slice() {
                Ok(values) => delta.extend(values.iter().zip(before).map(|(a, b)| a - b)),
                // Not contiguous (a transposed view): walk it in logical order.
                Err(_) => delta.extend(array.as_array().iter().zip(before).map(|(a, b)| a - b)),
            }
            if let Some(bad) = delta[start..].iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "tensor `{}` holds a non-finite value at flat index {bad}",
                    spec.name
                ));
            }
        }
        Ok(delta)
    }
}

/// A metric from `fit`'s dict, when present.
fn metric(metrics: Option<&Bound<'_, PyDict>>, name: &str) -> Result<Option<f64>, String> {
    let Some(metrics) = metrics else { return Ok(None) };
    match metrics.get_item(name).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => v
            .extract::<f64>()
            .map(Some)
            .map_err(|_| format!("metric `{name}` is not a number")),
    }
}

impl Trainer for PyTrainer {
    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    fn fit(&mut self, task: &Task, global: &[f32], cancel: &Cancel) -> Result<FitOutcome, TrainerError> {
        let started = Instant::now();
        let trainable = task.trainable().map_err(|e| TrainerError::Declined(e.to_string()))?;
        let tensors = layout(&task.model, &trainable);
        let _slot = self.slots.as_ref().map(Slots::take);
        let outcome = Python::attach(|py| -> Result<FitOutcome, TrainerError> {
            let fail = |what: &str, e: PyErr| declined(what, &e);
            let params = PyDict::new(py);
            let frozen = PyDict::new(py);
            for (spec, range, trains) in &tensors {
                let target = if *trains { &params } else { &frozen };
                let value = array(py, global[range.clone()].to_vec(), &spec.shape).map_err(|e| fail("fit", e))?;
                target.set_item(&spec.name, value).map_err(|e| fail("fit", e))?;
            }
            let config = hyperparameters(py, task).map_err(|e| fail("fit", e))?;
            let context = Context {
                cancel: cancel.clone(),
                trial: task.trial,
                round: task.round,
                seed: task.seed,
                frozen: frozen.unbind(),
                deadline: cancel.deadline(),
            };
            let returned = self
                .fit
                .call1(py, (params, config, context))
                .map_err(|e| fail("fit", e))?;
            // A task abandoned meanwhile is not sent, whatever fit returned.
            cancel.check()?;
            let returned = returned.bind(py);
            let wrong = |m: String| TrainerError::Declined(format!("fit: {m}"));
            let tuple = returned
                .cast::<PyTuple>()
                .ok()
                .filter(|t| t.len() == 2 || t.len() == 3)
                .ok_or_else(|| wrong("must return (params, num_samples) or (params, num_samples, metrics)".into()))?;
            let delta =
                Self::delta(&tuple.get_item(0).map_err(|e| fail("fit", e))?, &tensors, global).map_err(wrong)?;
            let num_samples: u64 = tuple
                .get_item(1)
                .and_then(|n| n.extract())
                .map_err(|_| wrong("num_samples must be a non-negative int".into()))?;
            let metrics = match tuple.get_item(2) {
                Ok(m) if !m.is_none() => Some(
                    m.cast_into::<PyDict>()
                        .map_err(|_| wrong("metrics must be a dict".into()))?,
                ),
                _ => None,
            };
            let m = metrics.as_ref();
            let get = |name: &str| metric(m, name).map_err(wrong);
            // What fit did not measure, evaluate measures (as the Burn trainer does: the
            // received model before, the trained one after); without evaluate, 0.
            let mut before = (get("loss_before")?, get("accuracy_before")?);
            if (before.0.is_none() || before.1.is_none())
                && let Some(scores) = self.score(py, &tensors, global, None)?
            {
                before = (before.0.or(Some(scores.0)), before.1.or(Some(scores.1)));
            }
            let mut after = (
                get("val_loss")?.or(get("loss_after")?),
                get("accuracy")?.or(get("accuracy_after")?),
            );
            if (after.0.is_none() || after.1.is_none())
                && let Some(scores) = self.score(py, &tensors, global, Some(&delta))?
            {
                after = (after.0.or(Some(scores.0)), after.1.or(Some(scores.1)));
            }
            let metrics = TrainMetrics {
                loss_before: before.0.unwrap_or(0.0),
                train_loss_before: get("train_loss_before")?,
                accuracy_before: before.1.unwrap_or(0.0),
                loss_after: after.0.unwrap_or(0.0),
                accuracy_after: after.1.unwrap_or(0.0),
                train_loss: get("loss")?.or(get("train_loss")?).unwrap_or(0.0),
                validation_samples: get("validation_samples")?
                    .map_or(self.capabilities.validation_samples, |n| n as u64),
                wall_seconds: started.elapsed().as_secs_f64(),
                peak_memory_bytes: peak_rss_bytes(),
            };
            Ok(FitOutcome {
                delta,
                num_samples,
                metrics,
                proposal: None,
            })
        })?;
        Ok(outcome)
    }

    fn evaluate(&mut self, request: &Evaluate, params: &[f32]) -> Result<Evaluation, TrainerError> {
        let tensors = layout(&request.model, &Trainable::all(params.len()));
        let scores = Python::attach(|py| self.score(py, &tensors, params, None))?;
        let (loss, accuracy, samples) = scores
            .ok_or_else(|| TrainerError::UnsupportedModel("this Python agent was given no evaluate function".into()))?;
        Ok(Evaluation {
            trial: request.trial,
            round: request.round,
            loss,
            accuracy,
            samples,
        })
    }
}

/// The task's hyperparameters as a dict (`learning_rate`, `batch_size`,
/// `local_epochs`, `optimizer`, …), as the aggregator's TOML names them.
fn hyperparameters<'py>(py: Python<'py>, task: &Task) -> PyResult<Bound<'py, PyAny>> {
    let json = serde_json::to_string(&task.hyperparameters).map_err(errors::fedtune)?;
    py.import("json")?.call_method1("loads", (json,))
}

/// An agent whose training step is Python, connected as `fedtune-agent` is.
///
/// ``config`` is an agent TOML file (``config/agent.toml``: the aggregator's address,
/// ``[pki]`` certificate files, ``[reconnect]``, ``[metrics]``); a ``[data]`` table is
/// not read, the data is the Python code's own.
///
/// ``fit(params, config, ctx)`` gets the trainable tensors as a dict of float32 numpy
/// arrays named by the model's manifest, the task's hyperparameters as a dict, and a
/// context (``ctx.trial``, ``ctx.round``, ``ctx.seed``, ``ctx.frozen``,
/// ``ctx.cancelled()``). It returns ``(params, num_samples, metrics)``: the new tensors
/// (same names, shapes, float32), the number of training samples, and a dict that may
/// hold ``loss`` (training loss), ``accuracy`` and ``val_loss`` (local validation after
/// training), ``loss_before`` and ``accuracy_before``. What does not fit is declined
/// with a message the aggregator logs; the agent goes on.
///
/// ``evaluate(params)`` returns ``(loss, accuracy, count)`` on local validation data.
///
/// ``train_samples`` and ``validation_samples`` are what the agent declares in its
/// hello: the aggregator bounds an update's weight by ``train_samples``, and secure
/// aggregation sizes its fixed-point words from the cohort's.
#[pyclass(module = "fedtune")]
pub struct Agent {
    config: AgentConfig,
    trainer: Option<PyTrainer>,
}

#[pymethods]
impl Agent {
    #[new]
    #[pyo3(signature = (config, fit, evaluate=None, *, train_samples=0, validation_samples=0, name=None))]
    fn new(
        config: PathBuf,
        fit: Py<PyAny>,
        evaluate: Option<Py<PyAny>>,
        train_samples: u64,
        validation_samples: u64,
        name: Option<String>,
    ) -> PyResult<Self> {
        let mut config = AgentConfig::load(&config).map_err(errors::value)?;
        if let Some(name) = name {
            config.name = name;
        }
        Ok(Self {
            config,
            trainer: Some(PyTrainer::new(fit, evaluate, train_samples, validation_samples)),
        })
    }

    /// The agent's name (from its TOML, or `name=`).
    #[getter]
    fn name(&self) -> &str {
        &self.config.name
    }

    /// Serves the federation until the aggregator ends it; returns why it ended. Ctrl-C
    /// stops the agent cleanly (the aggregator sees it leave) and raises
    /// KeyboardInterrupt. Raises FedtuneError when the aggregator refuses this agent or
    /// stays unreachable.
    fn run(&mut self, py: Python<'_>) -> PyResult<String> {
        let trainer = self
            .trainer
            .take()
            .ok_or_else(|| errors::fedtune("this agent has run already; make a new one"))?;
        let config = self.config.clone();
        let result = run_interruptibly(py, move |stopped| async move {
            let endpoint = fedtune_agent::daemon::endpoint(&config)?;
            fedtune_agent::daemon::serve(&config, endpoint, trainer, stopped).await
        })?;
        match result {
            Ok(Exit::Shutdown(reason)) => Ok(reason),
            Ok(Exit::Stopped) => Ok("stopped".into()),
            Err(e) => Err(errors::fedtune(format!("{e:#}"))),
        }
    }
}

/// Runs the future `start` makes on a runtime of its own, off the GIL, looking at
/// Python's signals every 100 ms: Ctrl-C sets the watch `start` was given (so the
/// federation ends cleanly: agents say goodbye, the aggregator tells them it stopped)
/// and, once the future has returned, is raised as KeyboardInterrupt.
pub fn run_interruptibly<F, Fut, T>(py: Python<'_>, start: F) -> PyResult<T>
where
    F: FnOnce(tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    crate::logging::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(errors::fedtune)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut task = runtime.spawn(start(stopped));
    let mut interrupted = None;
    let joined = loop {
        let waited =
            py.detach(|| runtime.block_on(async { tokio::time::timeout(Duration::from_millis(100), &mut task).await }));
        if let Ok(joined) = waited {
            break joined;
        }
        if interrupted.is_none()
            && let Err(e) = py.check_signals()
        {
            let _ = stop.send(true);
            interrupted = Some(e);
        }
    };
    if let Some(e) = interrupted {
        return Err(e);
    }
    joined.map_err(|panic| errors::fedtune(format!("crashed: {panic}")))
}
