//! A study's trials in the store: the columns a trial is kept in, and [`StudyStore`],
//! which lets a [`Study`](fedtune_tuning::Study) keep its trials in a run's store.

use std::sync::Arc;

use super::{RunId, StoreError, StoreWriter};
use fedtune_tuning::{Created, FrozenTrial, StorageError, StudyHeader, StudyStorage};

/// A trial as text columns (JSON where the value is structured).
pub(super) struct TrialColumns {
    pub(super) state: String,
    pub(super) params: String,
    pub(super) values: Option<String>,
    pub(super) intermediate: String,
    pub(super) fail_reason: Option<String>,
}

/// `value` as JSON text.
pub(super) fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn trial_columns(trial: &FrozenTrial) -> Result<TrialColumns, StoreError> {
    Ok(TrialColumns {
        state: trial.state.as_str().to_owned(),
        params: json(&trial.params)?,
        values: trial.values.as_ref().map(json).transpose()?,
        intermediate: json(&trial.intermediate)?,
        fail_reason: trial.fail_reason.clone(),
    })
}

pub(super) fn trial_from_columns(
    run: RunId,
    number: u64,
    columns: TrialColumns,
    feasible: bool,
) -> Result<FrozenTrial, StoreError> {
    let corrupt =
        |what: &str, e: serde_json::Error| StoreError::Corrupt(format!("trial {number} of run {run}: {what}: {e}"));
    let state = serde_json::from_value(serde_json::Value::String(columns.state)).map_err(|e| corrupt("state", e))?;
    Ok(FrozenTrial {
        number,
        params: serde_json::from_str(&columns.params).map_err(|e| corrupt("parameters", e))?,
        values: columns
            .values
            .map(|v| serde_json::from_str(&v))
            .transpose()
            .map_err(|e| corrupt("values", e))?,
        state,
        feasible,
        intermediate: serde_json::from_str(&columns.intermediate).map_err(|e| corrupt("intermediate values", e))?,
        fail_reason: columns.fail_reason,
    })
}

/// A stored study header, decoded.
pub(super) fn parse_header(run: RunId, stored: &str) -> Result<StudyHeader, StoreError> {
    serde_json::from_str(stored).map_err(|e| StoreError::Corrupt(format!("study header of run {run}: {e}")))
}

/// Refuses a stored study header that is not `header`.
pub(super) fn check_header(run: RunId, stored: &str, header: &StudyHeader) -> Result<(), StoreError> {
    let stored = parse_header(run, stored)?;
    let other = |what: String| Err(StoreError::OtherStudy { run, what });
    if stored.objectives != header.objectives {
        let names: Vec<&str> = stored.objectives.iter().map(|o| o.name.as_str()).collect();
        return other(format!("holds a study with other objectives ({})", names.join(", ")));
    }
    if stored.space != header.space {
        let names: Vec<&str> = stored.space.params.iter().map(|p| p.name.as_str()).collect();
        return other(format!(
            "holds a study of another search space (parameters {})",
            names.join(", ")
        ));
    }
    Ok(())
}

/// Keeps a study's trials in run `run` of a store, through its writer: every save is
/// committed before the study goes on. The store numbers new trials (up to `limit`), and
/// the study reloads them before each ask, so aggregators sharing the store share the
/// study.
#[derive(Debug, Clone)]
pub struct StudyStore {
    writer: Arc<StoreWriter>,
    run: RunId,
    limit: u64,
}

impl StudyStore {
    /// The trials of study `run`, written by `writer`; the study holds at most `limit`.
    pub fn new(writer: Arc<StoreWriter>, run: RunId, limit: u64) -> Self {
        Self { writer, run, limit }
    }
}

fn storage_error(e: StoreError) -> StorageError {
    match e {
        StoreError::NotOwner { trial, owner, .. } => StorageError::Lost { number: trial, owner },
        e => StorageError::Backend(e.to_string()),
    }
}

impl StudyStorage for StudyStore {
    fn open(&mut self, header: &StudyHeader) -> Result<Vec<FrozenTrial>, StorageError> {
        let (run, header) = (self.run, header.clone());
        self.writer
            .call(move |store| store.open_study(run, &header))
            .map_err(storage_error)
    }

    fn save(&mut self, trial: &FrozenTrial) -> Result<(), StorageError> {
        let (run, trial) = (self.run, trial.clone());
        self.writer
            .call(move |store| store.save_trial(run, &trial))
            .map_err(storage_error)
    }

    fn create(&mut self, trial: &FrozenTrial, unique: bool) -> Result<Created, StorageError> {
        let (run, params, limit) = (self.run, trial.params.clone(), self.limit);
        self.writer
            .call(move |store| store.create_trial(run, &params, limit, unique))
            .map_err(storage_error)
    }

    fn refresh(&mut self) -> Result<Option<Vec<FrozenTrial>>, StorageError> {
        let run = self.run;
        self.writer
            .call(move |store| store.trials(run))
            .map(|trials| Some(trials.into_iter().map(|t| t.trial).collect()))
            .map_err(storage_error)
    }
}
