//! A federation that survives its process: every round commits to a [`Storage`] with
//! the state after it, and a restart with the same configuration resumes the run.
//!
//! The run is found by name (`federation.study`): the latest run of that name that did
//! not finish is resumed from its last checkpoint — same run id, the rounds after the
//! last committed one, none counted twice; otherwise a new run starts. A run resumes
//! only with the model it was made for (the manifest hash is checked).
//!
//! A run has one aggregator at a time. The one serving it holds the run's lease in the
//! store, under its `[state] owner`, and its writer thread renews it every quarter of
//! `[state] trial_timeout_secs`; ending the run releases it. Another `serve` of the same
//! run is refused while the lease is live, with the holder's name and when it was last
//! seen; once the holder has been silent for longer than the timeout, the next `serve`
//! takes the run over. A restart under the same owner (the same configuration, after a
//! crash) takes its own lease straight back and resumes at once.
//!
//! A study has no such lease: several aggregators serve one study by design, each trial
//! leased to one of them ([`tune_stored`]).

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{error, info};

use crate::config::AggregatorConfig;
use crate::driver::{FederationError, Flow, Hooks, serve_federation};
use crate::tune::{
    Durable, TuneConfig, TuneError, TuneHooks, TuneReport, new_study, reseed_for_resume, run_study, study_status,
};
use fedtune_federation::{Federation, FederationState, RoundRecord, RunReport};
use fedtune_store::{
    NewRun, ResumeError, RunId, RunKind, RunStatus, Storage, StoreError, StoreWriter, StudyStore, WriterStats,
};
use fedtune_tuning::StudyError;

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

/// The owner this aggregator writes as: `[state] owner`, by default the host and the port
/// it is bound to (the bound one, so that two aggregators listening on port 0 do not share
/// a name).
fn owner(config: &AggregatorConfig, endpoint: &quinn::Endpoint) -> String {
    config.state.owner(endpoint.local_addr().unwrap_or(config.listen))
}

/// Finds the run to serve, or registers it, and takes its lease as `owner`.
fn open_run(store: &mut dyn Storage, config: &AggregatorConfig, owner: &str) -> Result<Opened, ResumeError> {
    let fed = &config.federation;
    let hash = manifest_hex(config);
    let timeout = config.state.trial_timeout();
    store.set_owner(owner);
    let (found, created) = store.find_or_create_run(&NewRun {
        name: fed.study.clone(),
        kind: RunKind::Run,
        rounds_planned: fed.rounds,
        manifest_hash: hash.clone(),
        config: serde_json::to_string(config).unwrap_or_default(),
    })?;
    if created {
        // Another aggregator may find the new run before its lease is taken: then one of
        // the two is refused here.
        store.take_run(found.id, timeout)?;
        return Ok(Opened {
            run: found.id,
            state: None,
            previous: Vec::new(),
        });
    }
    if found.manifest_hash != hash {
        return Err(ResumeError::OtherModel {
            run: found.id,
            name: found.name,
            stored: found.manifest_hash,
            configured: hash,
        });
    }
    // Before reading the rounds: refused while another aggregator serves the run (it
    // would be resuming a run still being written), taken over once it went silent.
    store.take_run(found.id, timeout)?;
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
    let owner = owner(&config, &endpoint);
    let (store, opened) = off_runtime(store, {
        let (config, owner) = (config.clone(), owner.clone());
        move |store| open_run(store, &config, &owner)
    })
    .await?;
    let opened = match opened {
        Ok(opened) => opened,
        Err(e) => {
            drop_off_runtime(store).await;
            return Err(e.into());
        }
    };
    let config = Arc::new(config);
    let resumed_from = opened.state.as_ref().map(|s| s.round);
    let federation = match opened.state {
        Some(state) => Federation::resume(Arc::new(config.settings()), state)?,
        None => Federation::new(Arc::new(config.settings()), 0)?,
    };
    let run = opened.run;
    match resumed_from {
        Some(round) => info!(
            run,
            round, owner, "resuming run {run} at round {round} of {}", config.federation.rounds
        ),
        None => info!(run, owner, "starting run {run}"),
    }
    // The writer renews the run's lease while this process lives.
    let timeout = config.state.trial_timeout();
    let writer = StoreWriter::spawn_with_heartbeat(store, run, keep, Some(timeout / 4));
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
    let (commits, store) = finished.map_err(FederationError::Store)?;
    drop_off_runtime(store).await;
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

/// Finds the latest unfinished study of this name, or registers a new one (atomically:
/// aggregators sharing the study find the same run).
fn open_study_run(
    store: &mut dyn Storage,
    config: &AggregatorConfig,
    tune: &TuneConfig,
    owner: &str,
) -> Result<RunId, ResumeError> {
    let fed = &config.federation;
    let hash = manifest_hex(config);
    let planned = tune.trials as u64 * tune.rounds;
    store.set_owner(owner);
    let (found, created) = store.find_or_create_run(&NewRun {
        name: fed.study.clone(),
        kind: RunKind::Study,
        rounds_planned: planned,
        manifest_hash: hash.clone(),
        config: serde_json::to_string(config).unwrap_or_default(),
    })?;
    if found.manifest_hash != hash {
        return Err(ResumeError::OtherModel {
            run: found.id,
            name: found.name,
            stored: found.manifest_hash,
            configured: hash,
        });
    }
    if !created {
        store.set_status(found.id, RunStatus::Running, Some(planned))?;
    }
    Ok(found.id)
}

/// Runs the federated study `tune` describes like [`crate::tune::tune`], keeping its
/// trials, every trial's rounds and their checkpoints in `store`. A restart with the
/// same configuration resumes the latest unfinished study of the same name: finished
/// trials stay as they are, the trials that were running go on from their last
/// committed round (with their within-trial policy), and new trials are asked from a
/// sampler reseeded past the trials already held.
///
/// Several aggregators, each with its own agents, may run one study together from one
/// store (a PostgreSQL database, or a SQLite file on one machine): each gives the same
/// `[federation] study` name and its own `[state] owner`. The store numbers their trials
/// (`tuning.trials` in all), each sampler sees every trial before it proposes, and a
/// trial whose aggregator stops answering for `[state] trial_timeout_secs` is taken over
/// from its last committed round by the next aggregator with a free slot.
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
    let owner = owner(&config, &endpoint);
    let (store, run) = off_runtime(store, {
        let (config, tune, owner) = (config.clone(), tune.clone(), owner.clone());
        move |store| open_study_run(store, &config, &tune, &owner)
    })
    .await?;
    let run = match run {
        Ok(run) => run,
        Err(e) => {
            drop_off_runtime(store).await;
            return Err(FederationError::from(e).into());
        }
    };
    let stale_after = config.state.trial_timeout();
    let writer = Arc::new(StoreWriter::spawn_with_heartbeat(
        store,
        run,
        keep,
        Some(stale_after / 4),
    ));
    let resume_error = |e: StoreError| TuneError::Federation(FederationError::Resume(e.into()));
    let (study, _) = study
        .resume_from(Box::new(StudyStore::new(writer.clone(), run, tune.trials as u64)))
        .map_err(|e| match e {
            StudyError::Storage(message) => resume_error(StoreError::Database(message)),
            e => e.into(),
        })?;
    let resumed_trials = study.trials().len();
    let study = reseed_for_resume(study, &tune, config.state.owner.as_deref());
    if resumed_trials > 0 {
        info!(run, trials = resumed_trials, owner, "resuming study {run}");
    } else {
        info!(run, owner, "starting study {run}");
    }
    let durable = Durable {
        run,
        writer: writer.clone(),
        owner,
        stale_after,
    };
    let result = run_study(endpoint, config, tune, study, Some(durable), hooks, shutdown).await;
    let status = study_status(&result, writer.error().is_some());
    let writer = Arc::try_unwrap(writer).map_err(|_| {
        TuneError::Federation(FederationError::Store(StoreError::WriterGone(
            "the study still holds its writer".into(),
        )))
    })?;
    let (_, store) = writer
        .finish()
        .map_err(|e| TuneError::Federation(FederationError::Store(e)))?;
    drop_off_runtime(store).await;
    Ok(StoredTuneReport {
        study: run,
        resumed_trials,
        status,
        report: result?,
    })
}

/// Drops a store on a blocking thread (a PostgreSQL client must not be dropped on the
/// async runtime).
async fn drop_off_runtime(store: Box<dyn Storage>) {
    let _ = tokio::task::spawn_blocking(move || drop(store)).await;
}
