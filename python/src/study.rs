//! `fedtune.create_study`, `Study`, `Trial` and `FrozenTrial`: Optuna's ask/tell
//! interface over fedtune's [`fedtune_tuning::Study`].
//!
//! Samplers and pruners run in Rust with the GIL released. Under the "bayes+rl"
//! strategy a trial also carries a FedEx policy over the space's `adaptive`
//! parameters (see [`Trial`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use fedtune_store::RunStatus;
use fedtune_tuning::{Direction, FedExConfig, FedExPolicy, Objective, Outcome, Params, PrunerConfig, SamplerKind};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::convert::{params_to_py, value_from_py, values_from_py};
use crate::errors;
use crate::frozen::FrozenTrial;
use crate::objective::objectives;
use crate::policy::{Adapting, TrialProgress};
use crate::space::SearchSpace;
use crate::storage::{self, Described, Location, StoreRun};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the native study holds behind its lock.
struct Inner {
    study: fedtune_tuning::Study,
    /// Parameters queued by `enqueue_trial`, asked before the sampler's.
    queued: VecDeque<Params>,
    /// The store's run.
    run: Option<StoreRun>,
    /// The run was marked ended (`close`); the next `ask` marks it running again.
    closed: bool,
}

/// A study: one search over a space towards one or more objectives.
///
/// Made by `fedtune.create_study`. `ask()` starts a trial, `tell()` finishes it;
/// `optimize(func, n_trials)` runs an objective in a loop (see the package's Python
/// part). Trials are stored as they change: a study in a SQLite file or PostgreSQL
/// database is the store the dashboard reads, and reopening it with
/// `load_if_exists=True` goes on where it stopped, with a sampler that never proposes
/// the earlier sessions' parameters again.
#[pyclass(module = "fedtune", frozen)]
pub struct Study {
    inner: Mutex<Inner>,
    name: String,
    sampler: SamplerKind,
    pruner: String,
    seed: u64,
    location: Location,
    space: SearchSpace,
    objectives: Vec<Objective>,
}

/// A fresh seed when the user gave none (Optuna's default: a new stream every run).
fn entropy_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// This process as the owner of the trials it runs in a shared store.
fn owner() -> String {
    let host = fedtune_store::host_name().unwrap_or_else(|| "localhost".into());
    format!("python:{host}:{}", std::process::id())
}

/// Creates (or, with `load_if_exists`, reopens) a study.
///
/// Args:
///     search_space: a `SearchSpace`, or a dict as its constructor takes.
///     direction: "minimize" (default) or "maximize", for one objective.
///     directions: one direction per objective, or a dict from objective name to
///         direction.
///     sampler: "tpe" (default), "gp", "random", "grid" or "bayes+rl".
///     pruner: "none" (default), "median" or "asha".
///     storage: None (in memory), a SQLite file ("study.db", "sqlite:///study.db"), a
///         PostgreSQL URL ("postgresql://…"), or a JSON-lines journal ("study.jsonl").
///     study_name: the study's name in the storage; a new name by default.
///     load_if_exists: reopen a stored study of that name instead of raising
///         `DuplicatedStudyError`.
///     seed: the sampler's seed (a fresh one by default).
///     objective_names: names for the objectives ("value", or "objective_0", … by default).
///     n_startup_trials: random trials before TPE or GP model the results (10 by default).
#[pyfunction]
#[pyo3(signature = (
    search_space, *, direction=None, directions=None, sampler="tpe", pruner="none", storage=None,
    study_name=None, load_if_exists=false, seed=None, objective_names=None, n_startup_trials=None
))]
#[allow(clippy::too_many_arguments)]
pub fn create_study(
    py: Python<'_>,
    search_space: &Bound<'_, PyAny>,
    direction: Option<&str>,
    directions: Option<&Bound<'_, PyAny>>,
    sampler: &str,
    pruner: &str,
    storage: Option<&str>,
    study_name: Option<String>,
    load_if_exists: bool,
    seed: Option<u64>,
    objective_names: Option<Vec<String>>,
    n_startup_trials: Option<usize>,
) -> PyResult<Study> {
    let space = SearchSpace::from_py(search_space)?;
    let objectives = objectives(direction, directions, objective_names)?;
    let kind: SamplerKind = sampler.parse().map_err(errors::value)?;
    let pruner_config: PrunerConfig = pruner.parse().map_err(|e| errors::value(format!("pruner: {e}")))?;
    let seed = seed.unwrap_or_else(entropy_seed);
    let name = study_name.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("study-{now}-{}", std::process::id())
    });
    let location = Location::parse(storage);
    let owner = owner();
    let config = serde_json::json!({
        "python": {
            "sampler": kind.name(),
            "pruner": pruner_config.name(),
            "seed": seed,
            "space": &space.inner,
            "objectives": &objectives,
        }
    })
    .to_string();
    let described = Described {
        name: &name,
        config,
        owner: &owner,
    };
    let inner = py.detach(|| -> PyResult<Inner> {
        let opened = storage::open(&location, &described, load_if_exists)?;
        let study = fedtune_tuning::Study::new(
            space.inner.clone(),
            objectives.clone(),
            kind.build_with_startup(seed, n_startup_trials),
            pruner_config.build(),
        )
        .map_err(errors::study)?;
        let study = match &opened.run {
            // A shared store: trials other processes run stay theirs; those whose
            // process stopped (no heartbeat) are failed.
            Some(run) => {
                let (mut study, _running) = study.resume_from(opened.storage).map_err(errors::study)?;
                let id = run.run;
                while let Some(stale) = run
                    .writer
                    .call(move |store| store.claim_trial(id, storage::STALE_AFTER, &[]))
                    .map_err(errors::storage)?
                {
                    study.sync().map_err(errors::study)?;
                    study
                        .tell(
                            stale.number,
                            Outcome::failed("its process stopped without telling it (no heartbeat for 60 s)"),
                        )
                        .map_err(errors::study)?;
                }
                study
            }
            None => study.with_storage(opened.storage).map_err(errors::study)?,
        };
        // A resumed study's sampler goes on from the trials it holds: seeded as on the
        // first day, it would propose that day's trials again.
        let held = study.trials().len() as u64;
        let study = if held > 0 {
            study.with_sampler(kind.build_resumed(seed, held, None, n_startup_trials))
        } else {
            study
        };
        Ok(Inner {
            study,
            queued: VecDeque::new(),
            run: opened.run,
            closed: false,
        })
    })?;
    Ok(Study {
        inner: Mutex::new(inner),
        name,
        sampler: kind,
        pruner: pruner_config.name().to_owned(),
        seed,
        location,
        space,
        objectives,
    })
}

impl Study {
    fn trial_number(trial: &Bound<'_, PyAny>) -> PyResult<u64> {
        if let Ok(t) = trial.cast::<Trial>() {
            return Ok(t.get().number);
        }
        trial
            .extract::<u64>()
            .map_err(|_| errors::value("tell takes a Trial or a trial number"))
    }

    /// Objective values from a number, a sequence, or a dict keyed by objective name.
    pub(crate) fn values(&self, values: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
        let Ok(dict) = values.cast::<PyDict>() else {
            return values_from_py(values);
        };
        let names: Vec<&str> = self.objectives.iter().map(|o| o.name.as_str()).collect();
        let mut out = Vec::with_capacity(names.len());
        for name in &names {
            let value = dict.get_item(name)?.ok_or_else(|| {
                errors::value(format!(
                    "the objective returned no `{name}`; the study's objectives are {}",
                    names.join(", ")
                ))
            })?;
            out.push(
                value
                    .extract::<f64>()
                    .map_err(|_| errors::value(format!("objective `{name}` is not a number")))?,
            );
        }
        if dict.len() != names.len() {
            let extra: Vec<String> = dict
                .keys()
                .iter()
                .filter_map(|k| k.extract::<String>().ok())
                .filter(|k| !names.contains(&k.as_str()))
                .collect();
            return Err(errors::value(format!(
                "the objective returned {} which the study does not have; its objectives are {}",
                extra.join(", "),
                names.join(", ")
            )));
        }
        Ok(out)
    }

    fn frozen(&self, py: Python<'_>, number: u64) -> PyResult<FrozenTrial> {
        let inner = lock(&self.inner);
        let trial = inner
            .study
            .trial(number)
            .ok_or_else(|| errors::fedtune(format!("there is no trial {number}")))?;
        FrozenTrial::from_trial(py, trial)
    }
}

/// What an objective's call came to.
enum Told {
    Complete(Vec<f64>),
    Pruned,
    /// Failed for the reason; the exception to raise when it is not caught.
    Failed(String, Option<PyErr>),
}

/// Logs a finished trial as Optuna does, on the `fedtune` logger.
fn log_trial(logger: &Bound<'_, PyAny>, study: &Study, trial: &FrozenTrial) -> PyResult<()> {
    let py = logger.py();
    let params = trial.params.bind(py).repr()?;
    let message = match trial.state.as_str() {
        "complete" => {
            let best = lock(&study.inner)
                .study
                .best_trial()
                .map(|b| (b.number, b.values.clone().unwrap_or_default()));
            let best = best.map_or(String::new(), |(n, v)| {
                format!(" Best is trial {n} with value(s) {v:?}.")
            });
            format!(
                "Trial {} finished with value(s) {:?} and parameters: {params}.{best}",
                trial.number,
                trial.values.as_deref().unwrap_or(&[])
            )
        }
        "pruned" => format!("Trial {} pruned.", trial.number),
        _ => format!(
            "Trial {} failed with parameters: {params}: {}",
            trial.number,
            trial.fail_reason.as_deref().unwrap_or("no reason given")
        ),
    };
    let level = if trial.state == "failed" { "warning" } else { "info" };
    logger.call_method1(level, (message,))?;
    Ok(())
}

impl Study {
    /// Commits the status of the study's run in its store, if it has one.
    fn set_status(&self, py: Python<'_>, status: RunStatus) -> PyResult<()> {
        let mut inner = lock(&self.inner);
        let Some(run) = &inner.run else { return Ok(()) };
        let (id, writer) = (run.run, run.writer.clone());
        py.detach(|| writer.call(move |store| store.set_status(id, status, None)))
            .map_err(errors::storage)?;
        inner.closed = status != RunStatus::Running;
        Ok(())
    }

    /// Records trial `number`'s `values` after `step`; whether the pruner would stop it.
    pub(crate) fn report(&self, py: Python<'_>, number: u64, step: u64, values: Vec<f64>) -> PyResult<bool> {
        py.detach(|| lock(&self.inner).study.report(number, step, values))
            .map_err(errors::study)
    }

    /// The direction of the first objective (what "bayes+rl" rewards within a trial).
    pub(crate) fn primary_direction(&self) -> Direction {
        self.objectives[0].direction
    }

    /// Tells trial `number` its outcome and returns it as stored.
    fn tell_outcome(&self, py: Python<'_>, number: u64, outcome: Outcome) -> PyResult<FrozenTrial> {
        py.detach(|| lock(&self.inner).study.tell(number, outcome).map(|_| ()))
            .map_err(errors::study)?;
        self.frozen(py, number)
    }
}

#[pymethods]
impl Study {
    /// Starts a trial: parameters from `enqueue_trial`'s queue, else from the sampler.
    fn ask(slf: &Bound<'_, Self>) -> PyResult<Trial> {
        let py = slf.py();
        let this = slf.get();
        if lock(&this.inner).closed {
            this.set_status(py, RunStatus::Running)?;
        }
        let asked = py.detach(|| {
            let mut inner = lock(&this.inner);
            match inner.queued.pop_front() {
                Some(params) => inner.study.ask_with(params),
                None => inner.study.ask(),
            }
        });
        let asked = asked.map_err(errors::study)?;
        let policy = if this.sampler.adapts_within_trials() {
            let policy = FedExPolicy::new(
                &this.space.inner,
                &asked.params,
                FedExConfig::default(),
                this.seed ^ asked.number.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )
            .map_err(errors::fedtune)?;
            (!policy.is_empty()).then(|| Adapting::new(policy))
        } else {
            None
        };
        Ok(Trial {
            study: slf.clone().unbind(),
            number: asked.number,
            params: asked.params,
            state: Mutex::new(TrialProgress { pruned: false, policy }),
        })
    }

    /// Finishes a trial.
    ///
    /// `values` is a number, a sequence with one number per objective, or a dict keyed
    /// by objective name. `state` is "complete" (the default when values are given),
    /// "pruned" or "fail"; a failed trial may say why in `fail_reason`.
    #[pyo3(signature = (trial, values=None, state=None, fail_reason=None))]
    fn tell(
        &self,
        py: Python<'_>,
        trial: &Bound<'_, PyAny>,
        values: Option<&Bound<'_, PyAny>>,
        state: Option<&str>,
        fail_reason: Option<String>,
    ) -> PyResult<FrozenTrial> {
        let number = Self::trial_number(trial)?;
        let state = state.map(|s| s.trim().to_ascii_lowercase());
        let outcome = match (state.as_deref(), values) {
            (None | Some("complete"), Some(v)) => Outcome::complete(self.values(v)?),
            (Some("pruned"), None) => Outcome::Pruned,
            (Some("fail" | "failed"), None) => Outcome::failed(fail_reason.unwrap_or_else(|| "told failed".into())),
            (Some("complete"), None) => return Err(errors::value("a complete trial needs its values")),
            (Some(s @ ("pruned" | "fail" | "failed")), Some(_)) => {
                return Err(errors::value(format!(
                    "a trial told `{s}` takes no values; only a complete trial has them"
                )));
            }
            (Some(s), _) => {
                return Err(errors::value(format!(
                    "state `{s}` is not one of complete, pruned, fail"
                )));
            }
            (None, None) => return Err(errors::value("tell needs the trial's values, or a state")),
        };
        py.detach(|| lock(&self.inner).study.tell(number, outcome).map(|_| ()))
            .map_err(errors::study)?;
        self.frozen(py, number)
    }

    /// Runs `func(trial)` for `n_trials` trials (or until `timeout` seconds have
    /// passed), telling each trial what it returned: a number, a sequence with one
    /// number per objective, or a dict keyed by objective name.
    ///
    /// A trial whose objective raises `fedtune.TrialPruned` is told pruned. One that
    /// raises an exception listed in `catch` (any `Exception` by default), or returns
    /// None or NaN, is told failed with the reason and the study goes on; any other
    /// exception fails the trial and is raised. A `KeyboardInterrupt` (Ctrl-C) fails
    /// the running trial, marks a stored study "interrupted" and is raised: every
    /// finished trial is stored already. `callbacks` are called as `cb(study, trial)`
    /// with each finished `FrozenTrial`.
    #[pyo3(signature = (func, n_trials=None, timeout=None, catch=None, callbacks=None))]
    fn optimize(
        slf: &Bound<'_, Self>,
        func: &Bound<'_, PyAny>,
        n_trials: Option<u64>,
        timeout: Option<f64>,
        catch: Option<&Bound<'_, PyAny>>,
        callbacks: Option<Vec<Bound<'_, PyAny>>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if n_trials.is_none() && timeout.is_none() {
            return Err(errors::value("optimize needs n_trials or timeout (or both)"));
        }
        let catch = match catch {
            Some(c) => c.clone(),
            None => py.get_type::<pyo3::exceptions::PyException>().into_any(),
        };
        let logger = py.import("logging")?.call_method1("getLogger", ("fedtune",))?;
        let started = std::time::Instant::now();
        let mut done = 0u64;
        while n_trials.is_none_or(|n| done < n) && timeout.is_none_or(|t| started.elapsed().as_secs_f64() < t) {
            let trial = Bound::new(py, Self::ask(slf)?)?;
            let number = trial.get().number;
            let outcome = py.check_signals().and_then(|()| func.call1((trial.clone(),)));
            let told = match outcome {
                Ok(returned) if returned.is_none() => Told::Failed("the objective returned None".into(), None),
                Ok(returned) => match this.values(&returned) {
                    Ok(values) if values.iter().any(|v| v.is_nan()) => {
                        Told::Failed(format!("the objective returned {values:?}"), None)
                    }
                    Ok(values) => Told::Complete(values),
                    Err(e) => Told::Failed(e.to_string(), None),
                },
                Err(e) if e.is_instance_of::<errors::TrialPruned>(py) => Told::Pruned,
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) => {
                    let reason = "interrupted by KeyboardInterrupt".to_owned();
                    this.tell_outcome(py, number, Outcome::failed(reason))?;
                    this.close(py, "interrupted")?;
                    return Err(e);
                }
                Err(e) if e.matches(py, &catch)? => {
                    Told::Failed(format!("{}: {}", e.get_type(py).name()?, e.value(py)), None)
                }
                Err(e) => Told::Failed(format!("{}: {}", e.get_type(py).name()?, e.value(py)), Some(e)),
            };
            let (outcome, raise) = match told {
                Told::Complete(values) => (Outcome::complete(values), None),
                Told::Pruned => (Outcome::Pruned, None),
                Told::Failed(reason, raise) => (Outcome::failed(reason), raise),
            };
            let frozen = this.tell_outcome(py, number, outcome)?;
            done += 1;
            log_trial(&logger, this, &frozen)?;
            if let Some(e) = raise {
                return Err(e);
            }
            for cb in callbacks.iter().flatten() {
                cb.call1((slf.clone(), frozen.clone_ref(py)?))?;
            }
        }
        Ok(())
    }

    /// Queues parameters to run next (Optuna's `enqueue_trial`), e.g. a known-good
    /// default; the sampler's proposals follow once the queue is empty.
    fn enqueue_trial(&self, params: &Bound<'_, PyDict>) -> PyResult<()> {
        let mut values: Params = BTreeMap::new();
        for (k, v) in params.iter() {
            let name: String = k.extract()?;
            let spec = self.space.inner.get(&name).ok_or_else(|| {
                errors::value(format!(
                    "`{name}` is not a parameter of the search space ({})",
                    self.space
                        .inner
                        .params
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            let value = spec.distribution.canonical(value_from_py(&v)?);
            if !spec.distribution.contains(&value) {
                return Err(errors::value(format!(
                    "`{name}` = {value} is outside its distribution {}",
                    spec.distribution
                )));
            }
            values.insert(name, value);
        }
        if let Some(missing) = self.space.inner.params.iter().find(|p| !values.contains_key(&p.name)) {
            return Err(errors::value(format!("enqueued parameters lack `{}`", missing.name)));
        }
        lock(&self.inner).queued.push_back(values);
        Ok(())
    }

    /// Every trial, in number order.
    #[getter]
    fn trials(&self, py: Python<'_>) -> PyResult<Vec<FrozenTrial>> {
        let inner = lock(&self.inner);
        inner
            .study
            .trials()
            .iter()
            .map(|t| FrozenTrial::from_trial(py, t))
            .collect()
    }

    /// The best complete trial (by the first objective). Raises `ValueError` before any
    /// trial completes.
    #[getter]
    fn best_trial(&self, py: Python<'_>) -> PyResult<FrozenTrial> {
        let inner = lock(&self.inner);
        let best = inner
            .study
            .best_trial()
            .ok_or_else(|| errors::value("no trial has completed yet"))?;
        FrozenTrial::from_trial(py, best)
    }

    /// The best trial's parameters.
    #[getter]
    fn best_params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = lock(&self.inner);
        let best = inner
            .study
            .best_trial()
            .ok_or_else(|| errors::value("no trial has completed yet"))?;
        params_to_py(py, &best.params)
    }

    /// The best trial's value (its first objective's).
    #[getter]
    fn best_value(&self) -> PyResult<f64> {
        let inner = lock(&self.inner);
        inner
            .study
            .best_trial()
            .and_then(|t| t.values.as_ref()?.first().copied())
            .ok_or_else(|| errors::value("no trial has completed yet"))
    }

    /// The complete trials no other complete trial beats on every objective.
    fn pareto_front(&self, py: Python<'_>) -> PyResult<Vec<FrozenTrial>> {
        let inner = lock(&self.inner);
        inner
            .study
            .pareto_front()
            .into_iter()
            .map(|t| FrozenTrial::from_trial(py, t))
            .collect()
    }

    /// The Pareto front (Optuna's name for it).
    #[getter]
    fn best_trials(&self, py: Python<'_>) -> PyResult<Vec<FrozenTrial>> {
        self.pareto_front(py)
    }

    /// The study's name in its storage.
    #[getter]
    fn study_name(&self) -> &str {
        &self.name
    }

    /// One direction per objective: "minimize" or "maximize".
    #[getter]
    fn directions(&self) -> Vec<&'static str> {
        self.objectives.iter().map(|o| o.direction.name()).collect()
    }

    /// The objectives' names, in order.
    #[getter]
    fn objective_names(&self) -> Vec<String> {
        self.objectives.iter().map(|o| o.name.clone()).collect()
    }

    /// The searched space.
    #[getter]
    fn search_space(&self) -> SearchSpace {
        self.space.clone()
    }

    /// The sampler's name.
    #[getter]
    fn sampler(&self) -> &'static str {
        self.sampler.name()
    }

    /// The pruner's name.
    #[getter]
    fn pruner(&self) -> &str {
        &self.pruner
    }

    /// The sampler's seed.
    #[getter]
    fn seed(&self) -> u64 {
        self.seed
    }

    /// The store run holding the study (`fedtune-aggregator trials --db … --run ID`), or
    /// None outside a store.
    #[getter]
    fn run_id(&self) -> Option<i64> {
        lock(&self.inner).run.as_ref().map(|r| r.run)
    }

    /// Marks the study's run in its store "finished", "interrupted" or "failed" (the
    /// dashboard shows it so); every trial is committed already. Asking another trial
    /// marks it running again. Without a store it does nothing.
    #[pyo3(signature = (status="finished"))]
    fn close(&self, py: Python<'_>, status: &str) -> PyResult<()> {
        let status = match status {
            "finished" => RunStatus::Finished,
            "interrupted" => RunStatus::Interrupted,
            "failed" => RunStatus::Failed,
            other => {
                return Err(errors::value(format!(
                    "status `{other}` is not one of finished, interrupted, failed"
                )));
            }
        };
        self.set_status(py, status)
    }

    /// The trials as a pandas DataFrame (Optuna's columns: `number`, `value` or
    /// `values_<objective>`, `params_<name>`, `state`, `fail_reason`); needs pandas.
    fn trials_dataframe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let pandas = py.import("pandas").map_err(|_| {
            pyo3::exceptions::PyImportError::new_err("trials_dataframe needs pandas: pip install pandas")
        })?;
        let inner = lock(&self.inner);
        let trials = inner.study.trials();
        let columns = PyDict::new(py);
        let numbers: Vec<u64> = trials.iter().map(|t| t.number).collect();
        columns.set_item("number", numbers)?;
        for (i, objective) in self.objectives.iter().enumerate() {
            let column: Vec<Option<f64>> = trials
                .iter()
                .map(|t| t.values.as_ref().and_then(|v| v.get(i).copied()))
                .collect();
            let name = if self.objectives.len() == 1 {
                "value".to_owned()
            } else {
                format!("values_{}", objective.name)
            };
            columns.set_item(name, column)?;
        }
        for spec in &self.space.inner.params {
            let column = PyList::empty(py);
            for t in trials {
                match t.params.get(&spec.name) {
                    Some(v) => column.append(crate::convert::value_to_py(py, v)?)?,
                    None => column.append(py.None())?,
                }
            }
            columns.set_item(format!("params_{}", spec.name), column)?;
        }
        let states: Vec<&str> = trials.iter().map(|t| t.state.as_str()).collect();
        columns.set_item("state", states)?;
        let reasons: Vec<Option<&str>> = trials.iter().map(|t| t.fail_reason.as_deref()).collect();
        columns.set_item("fail_reason", reasons)?;
        pandas.call_method1("DataFrame", (columns,))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the study: "finished", or "interrupted" / "failed" when the block raised.
    fn __exit__(
        &self,
        py: Python<'_>,
        kind: Option<&Bound<'_, pyo3::types::PyType>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let status = match kind {
            None => "finished",
            Some(k) if k.is_subclass_of::<pyo3::exceptions::PyKeyboardInterrupt>()? => "interrupted",
            Some(_) => "failed",
        };
        self.close(py, status)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let n = lock(&self.inner).study.trials().len();
        let storage = match &self.location {
            Location::Memory => "memory".to_owned(),
            Location::Journal(p) => p.display().to_string(),
            Location::Store(p) => fedtune_store::display_location(p),
        };
        format!(
            "Study(name={:?}, sampler={:?}, directions={:?}, trials={n}, storage={storage:?})",
            self.name,
            self.sampler.name(),
            self.directions()
        )
    }
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
