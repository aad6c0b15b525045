//! A federation that survives its process: every round commits to a [`Storage`] with
//! the state after it, and a restart with the same configuration resumes the run.
//!
//! The run is found by name (`federation.study`): the latest run of that name that did
//! not finish is resumed from its last checkpoint — same run id, the rounds after the
//! last committed one, none counted twice; otherwise a new run starts. A run resumes
//! only with the model it was made for (the manifest hash is checked).

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{error, info};

use crate::config::AggregatorConfig;
use crate::driver::{FederationError, Flow, Hooks, serve_federation};
use crate::federation::{Federation, FederationState, RoundRecord, RunReport};
use crate::store::{NewRun, ResumeError, RunId, RunKind, RunStatus, Storage, StoreError, StoreWriter, WriterStats};

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
    /// The run: its rounds are every committed round, those before the resume included.
    #[serde(flatten)]
    pub report: RunReport,
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
    mut store: Box<dyn Storage>,
    keep: usize,
    hooks: Hooks,
    shutdown: watch::Receiver<bool>,
) -> Result<StoredReport, FederationError> {
    config.validate()?;
    let opened = open_run(store.as_mut(), &config)?;
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
    let result = {
        let writer = &writer;
        let failed = failed.clone();
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
        )
        .await
    };
    let status = match &result {
        _ if writer.error().is_some() => RunStatus::Failed,
        Ok(report) if !report.interrupted => RunStatus::Finished,
        Ok(_) => RunStatus::Interrupted,
        Err(_) => RunStatus::Failed,
    };
    let _ = writer.set_status(status, None);
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
        report,
    })
}
