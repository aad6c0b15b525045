//! Where a Python study keeps its trials: nowhere (memory), a JSON-lines journal, or a
//! fedtune store (a SQLite file or a PostgreSQL database) — the same store `serve` and
//! the dashboard use, so `fedtune-aggregator dashboard --db study.db` shows the study.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fedtune_store::{NewRun, RunId, RunKind, RunStatus, Storage, StoreWriter, StudyStore};
use fedtune_tuning::{InMemory, Journal, StudyStorage};

use crate::errors;
use pyo3::PyResult;

/// How often a study in a store renews the heartbeats of its running trials.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A running trial whose process has not beaten for this long is taken as stopped.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Where a study was asked to live.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// In this process only.
    Memory,
    /// A JSON-lines journal.
    Journal(PathBuf),
    /// A fedtune store: a SQLite file, or a `postgres://` URL.
    Store(PathBuf),
}

impl Location {
    /// The storage `text` names: `None` for memory, `*.jsonl` / `*.log` for a journal,
    /// `postgres://…` and `postgresql://…` for PostgreSQL, `sqlite:///PATH` or any other
    /// path for a SQLite file.
    pub fn parse(text: Option<&str>) -> Self {
        let Some(text) = text else { return Self::Memory };
        if let Some(path) = text.strip_prefix("sqlite:///") {
            return Self::Store(PathBuf::from(path));
        }
        let path = PathBuf::from(text);
        if fedtune_store::is_postgres_url(&path) {
            return Self::Store(path);
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "log") => Self::Journal(path),
            _ => Self::Store(path),
        }
    }
}

/// A study's run in a store, kept so its status can be set when the study closes.
pub struct StoreRun {
    /// The run's id.
    pub run: RunId,
    /// Its writer.
    pub writer: Arc<StoreWriter>,
}

/// The opened storage.
pub struct Opened {
    /// What the study keeps its trials in.
    pub storage: Box<dyn StudyStorage>,
    /// The run, for a study in a store.
    pub run: Option<StoreRun>,
}

/// What a new study records about itself in the store.
pub struct Described<'a> {
    /// `study_name`.
    pub name: &'a str,
    /// The study's settings, as JSON, for the record.
    pub config: String,
    /// This process, as the owner of the trials it runs.
    pub owner: &'a str,
}

/// Opens `location` for the study `described`; refuses an existing study unless
/// `load_if_exists`.
pub fn open(location: &Location, described: &Described<'_>, load_if_exists: bool) -> PyResult<Opened> {
    match location {
        Location::Memory => Ok(Opened {
            storage: Box::new(InMemory),
            run: None,
        }),
        Location::Journal(path) => {
            let exists = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
            if exists && !load_if_exists {
                return Err(errors::DuplicatedStudyError::new_err(format!(
                    "{} holds a study already: pass load_if_exists=True to go on with it",
                    path.display()
                )));
            }
            Ok(Opened {
                storage: Box::new(Journal::new(path)),
                run: None,
            })
        }
        Location::Store(db) => open_store(db, described, load_if_exists),
    }
}

fn open_store(db: &Path, described: &Described<'_>, load_if_exists: bool) -> PyResult<Opened> {
    let shown = fedtune_store::display_location(db);
    let failed = |e: fedtune_store::StoreError| errors::storage(format!("{shown}: {e}"));
    let mut store: Box<dyn Storage> = fedtune_store::open(db).map_err(failed)?;
    store.set_owner(described.owner);
    let existing = store
        .runs()
        .map_err(failed)?
        .into_iter()
        .filter(|r| r.kind == RunKind::Study && r.name == described.name)
        .max_by_key(|r| r.id);
    let run = match existing {
        Some(found) if !load_if_exists => {
            return Err(errors::DuplicatedStudyError::new_err(format!(
                "{shown} holds study `{}` already (run {}, {}): pass load_if_exists=True to go on with it, \
                 or give another study_name",
                described.name,
                found.id,
                found.status.as_str()
            )));
        }
        Some(found) => {
            store.set_status(found.id, RunStatus::Running, None).map_err(failed)?;
            found.id
        }
        None => store
            .create_run(&NewRun {
                name: described.name.to_owned(),
                kind: RunKind::Study,
                rounds_planned: 0,
                manifest_hash: String::new(),
                config: described.config.clone(),
            })
            .map_err(failed)?,
    };
    let writer = Arc::new(StoreWriter::spawn_with_heartbeat(store, run, 1, Some(HEARTBEAT)));
    Ok(Opened {
        storage: Box::new(StudyStore::new(writer.clone(), run, u64::MAX)),
        run: Some(StoreRun { run, writer }),
    })
}
