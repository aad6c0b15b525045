//! A federation that survives its process: every round commits to a [`Storage`] with
//! the state after it, and a restart with the same configuration resumes the run.
//!
//! The run is found by name (`federation.study`): the latest run of that name that did
//! not finish is resumed from its last checkpoint — same run id, the rounds after the
//! last committed one, none counted twice; otherwise a new run starts. A run resumes
//! only with the model it was made for (the manifest hash is checked).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{error, info};

use crate::config::AggregatorConfig;
use crate::driver::{FederationError, Flow, Hooks, serve_federation};
use crate::federation::{Federation, FederationState, RoundRecord, RunReport};
use crate::store::{
    NewRun, ResumeError, RunId, RunKind, RunStatus, Storage, StoreError, StoreWriter, StudyStore, WriterStats,
};
use crate::tune::{
    Durable, Resumed, TuneConfig, TuneError, TuneHooks, TuneReport, new_study, reseed_for_resume, run_study,
    study_status,
};
use crate::tuning::StudyError;

/// The report of a stored run.
#[derive(Debug, Clone, Serialize)]
pub struct StoredReport {
    /// The run's id in the store.
    pub run: RunId,
    /// The round it resumed from (`None` for a fresh start).
    pub resumed_from: Option<u64>,
    /// Where the run is now.
    pub status: RunStatus,
    /// What committing cost.
    pub commits: WriterStats,
    /// CRC-32 of the final global model's parameters (f32, little-endian), to check it
    /// against a checkpoint or an exported file; `None` when the run trained nothing.
    pub final_model_crc32: Option<u32>,
    /// The run: its rounds are every committed round, those before the resume included.
    #[serde(flatten)]
    pub report: RunReport,
}

/// CRC-32 of `params` as little-endian f32, `None` for no parameters.
pub fn model_crc32(params: &[f32]) -> Option<u32> {
    (!params.is_empty()).then(|| crc32fast::hash(&fedtune_protocol::tensor::f32_to_le_bytes(params)))
}

/// The full manifest hash, in hex.
pub fn manifest_hex(config: &AggregatorConfig) -> String {
    config
        .model
        .manifest()
        .hash()
        .0
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `operation` on `store` on a blocking thread (a store may block on disk or network,
/// and a client with its own runtime must not run inside this one); hands the store back.
async fn off_runtime<T: Send + 'static>(
    mut store: Box<dyn Storage>,
    operation: impl FnOnce(&mut dyn Storage) -> T + Send + 'static,
) -> Result<(Box<dyn Storage>, T), FederationError> {
    tokio::task::spawn_blocking(move || {
        let out = operation(store.as_mut());
        (store, out)
    })
    .await
    .map_err(|e| FederationError::Store(StoreError::WriterGone(format!("opening the store: {e}"))))
}

/// A run opened in a store: new, or resumed with its committed rounds and last state.
struct Opened {
    run: RunId,
    state: Option<FederationState>,
    previous: Vec<RoundRecord>,
}

fn open_run(store: &mut dyn Storage, config: &AggregatorConfig) -> Result<Opened, ResumeError> {
    let fed = &config.federation;
    let hash = manifest_hex(config);
    let Some(found) = store.resumable_run(&fed.study, RunKind::Run)? else {
        let config_json = serde_json::to_string(config).unwrap_or_default();
        let run = store.create_run(&NewRun {
            name: fed.study.clone(),
            kind: RunKind::Run,
            rounds_planned: fed.rounds,
            manifest_hash: hash,
            config: config_json,
        })?;
        return Ok(Opened {
            run,
            state: None,
            previous: Vec::new(),
        });
    };
    if found.manifest_hash != hash {
        return Err(ResumeError::OtherModel {
            run: found.id,
            name: found.name,
            stored: found.manifest_hash,
            configured: hash,
        });
    }
    let previous: Vec<RoundRecord> = store.rounds(found.id, Some(0))?.into_iter().map(|r| r.record).collect();
    let state = store.latest_checkpoint(found.id, 0)?;
    let checkpoint = state.as_ref().map_or(0, |s| s.round);
    if checkpoint != previous.len() as u64 {
        return Err(ResumeError::Inconsistent {
            run: found.id,
            rounds: previous.len() as u64,
            checkpoint,
        });
    }
    store.set_status(found.id, RunStatus::Running, Some(fed.rounds))?;
    Ok(Opened {
        run: found.id,
        state,
        previous,
    })
}

/// Runs the federation `config` describes like [`crate::run`], committing every round
/// and its checkpoint to `store`, and resuming the latest unfinished run of the same name
/// if there is one. `keep` checkpoints are kept per run (and the best one).
///
/// # Errors
/// [`FederationError`] as [`crate::run`], plus [`FederationError::Resume`] when the
/// store cannot be read or the run cannot resume, and [`FederationError::Store`] when a
/// commit failed (the run stops there; what was committed stays).
pub async fn run_stored(
    endpoint: quinn::Endpoint,
    config: AggregatorConfig,
    store: Box<dyn Storage>,
    keep: usize,
    hooks: Hooks,
    shutdown: watch::Receiver<bool>,
) -> Result<StoredReport, FederationError> {
    config.validate()?;
    let (store, opened) = off_runtime(store, {
        let config = config.clone();
        move |store| open_run(store, &config)
    })
    .await?;
    let opened = opened?;
    let config = Arc::new(config);
    let resumed_from = opened.state.as_ref().map(|s| s.round);
    let federation = match opened.state {
        Some(state) => Federation::resume(config.clone(), state)?,
        None => Federation::new(config.clone(), 0)?,
    };
    let run = opened.run;
    match resumed_from {
        Some(round) => info!(
            run,
            round, "resuming run {run} at round {round} of {}", config.federation.rounds
        ),
        None => info!(run, "starting run {run}"),
    }
    let writer = StoreWriter::spawn(store, run, keep);
    let failed: Arc<Mutex<Option<StoreError>>> = Arc::default();
    let mut status = RunStatus::Failed;
    let result = {
        let writer = &writer;
        let failed = failed.clone();
        let status = &mut status;
        serve_federation(
            endpoint,
            federation,
            hooks,
            shutdown,
            move |record, federation| match writer.commit(record.clone(), federation.state()) {
                Ok(()) => Flow::Continue,
                Err(e) => {
                    error!(run, "stopping: the round could not be committed: {e}");
                    failed.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(e);
                    Flow::Stop
                }
            },
            |result| {
                *status = match result {
                    _ if writer.error().is_some() => RunStatus::Failed,
                    Ok(report) if !report.interrupted => RunStatus::Finished,
                    Ok(_) => RunStatus::Interrupted,
                    Err(_) => RunStatus::Failed,
                };
                let end = *status;
                // Committed before the agents are told to stop.
                let _ = writer.call(move |store| store.set_status(run, end, None));
            },
        )
        .await
    };
    let finished = writer.finish();
    if let Some(e) = failed.lock().unwrap_or_else(PoisonError::into_inner).take() {
        return Err(FederationError::Store(e));
    }
    let (commits, _store) = finished.map_err(FederationError::Store)?;
    let mut report = result?;
    let mut rounds = opened.previous;
    rounds.append(&mut report.rounds);
    report.rounds = rounds;
    Ok(StoredReport {
        run,
        resumed_from,
        status,
        commits,
        final_model_crc32: model_crc32(&report.global),
        report,
    })
}

/// The report of a study kept in a store.
#[derive(Debug, Clone, Serialize)]
pub struct StoredTuneReport {
    /// The study's id in the store.
    pub study: RunId,
    /// Trials the store already held when this session started (0 for a fresh study).
    pub resumed_trials: usize,
    /// Where the study is now.
    pub status: RunStatus,
    /// The study: its trials are every trial, those of earlier sessions included.
    #[serde(flatten)]
    pub report: TuneReport,
}

/// Finds the latest unfinished study of this name, or registers a new one.
fn open_study_run(store: &mut dyn Storage, config: &AggregatorConfig, tune: &TuneConfig) -> Result<RunId, ResumeError> {
    let fed = &config.federation;
    let hash = manifest_hex(config);
    let planned = tune.trials as u64 * tune.rounds;
    match store.resumable_run(&fed.study, RunKind::Study)? {
        Some(found) if found.manifest_hash != hash => Err(ResumeError::OtherModel {
            run: found.id,
            name: found.name,
            stored: found.manifest_hash,
            configured: hash,
        }),
        Some(found) => {
            store.set_status(found.id, RunStatus::Running, Some(planned))?;
            Ok(found.id)
        }
        None => Ok(store.create_run(&NewRun {
            name: fed.study.clone(),
            kind: RunKind::Study,
            rounds_planned: planned,
            manifest_hash: hash,
            config: serde_json::to_string(config).unwrap_or_default(),
        })?),
    }
}

/// Runs the federated study `tune` describes like [`crate::tune::tune`], keeping its
/// trials, every trial's rounds and their checkpoints in `store`. A restart with the
/// same configuration resumes the latest unfinished study of the same name: finished
/// trials stay as they are, the trials that were running go on from their last
/// committed round (with their within-trial policy), and new trials are asked from a
/// sampler reseeded past the trials already held.
///
/// # Errors
/// [`TuneError`] as [`crate::tune::tune`], plus [`FederationError::Resume`] when the
/// store cannot be read or holds another study under this name.
pub async fn tune_stored(
    endpoint: quinn::Endpoint,
    config: AggregatorConfig,
    tune: TuneConfig,
    store: Box<dyn Storage>,
    keep: usize,
    hooks: TuneHooks,
    shutdown: watch::Receiver<bool>,
) -> Result<StoredTuneReport, TuneError> {
    let study = new_study(&config, &tune)?;
    let (store, run) = off_runtime(store, {
        let (config, tune) = (config.clone(), tune.clone());
        move |store| open_study_run(store, &config, &tune)
    })
    .await?;
    let run = run.map_err(FederationError::from)?;
    let writer = Arc::new(StoreWriter::spawn(store, run, keep));
    let resume_error = |e: StoreError| TuneError::Federation(FederationError::Resume(e.into()));
    let (study, running) = study
        .resume_from(Box::new(StudyStore::new(writer.clone(), run)))
        .map_err(|e| match e {
            StudyError::Storage(message) => resume_error(StoreError::Database(message)),
            e => e.into(),
        })?;
    let resumed_trials = study.trials().len();
    let study = reseed_for_resume(study, &tune);
    let mut resume = VecDeque::new();
    for trial in running {
        let number = trial.number;
        let state = writer
            .call(move |s| s.latest_checkpoint(run, number))
            .map_err(resume_error)?;
        let rounds: Vec<RoundRecord> = writer
            .call(move |s| s.rounds(run, Some(number)))
            .map_err(resume_error)?
            .into_iter()
            .map(|r| r.record)
            .collect();
        let checkpoint = state.as_ref().map_or(0, |s| s.round);
        if checkpoint != rounds.len() as u64 {
            return Err(resume_error(StoreError::Corrupt(format!(
                "trial {number}: {} rounds are committed but the last checkpoint is at round {checkpoint}",
                rounds.len()
            ))));
        }
        info!(run, trial = number, round = checkpoint, "the trial will resume");
        resume.push_back((trial, state.map(|state| Resumed { state, rounds })));
    }
    if resumed_trials > 0 {
        info!(run, trials = resumed_trials, "resuming study {run}");
    } else {
        info!(run, "starting study {run}");
    }
    let durable = Durable {
        run,
        writer: writer.clone(),
        resume,
    };
    let result = run_study(endpoint, config, tune, study, Some(durable), hooks, shutdown).await;
    let status = study_status(&result, writer.error().is_some());
    let writer = Arc::try_unwrap(writer).map_err(|_| {
        TuneError::Federation(FederationError::Store(StoreError::WriterGone(
            "the study still holds its writer".into(),
        )))
    })?;
    writer
        .finish()
        .map_err(|e| TuneError::Federation(FederationError::Store(e)))?;
    Ok(StoredTuneReport {
        study: run,
        resumed_trials,
        status,
        report: result?,
    })
}
