//! Durable state: runs, their committed rounds and checkpoints, in one store.
//!
//! A [`Storage`] holds what must survive the aggregator process:
//!
//! - **runs** (a `serve` federation, or a study), with their status and how many rounds
//!   were planned and committed, and a run's lease: the aggregator serving it and its last
//!   heartbeat, so a second `serve` of a live run is refused;
//! - **rounds**: each committed [`RoundRecord`] (cohort, per-agent accuracies and
//!   refusals, fairness report, timings, bytes, server learning rate), with one row per
//!   agent of the round for exports;
//! - **checkpoints**: the federation's [`FederationState`] after a round — global model,
//!   strategy state, server-LR controller, fairness history, cohort RNG position, round
//!   number, a trial's within-trial policy. The last `keep_checkpoints` and the best one
//!   are kept per trial;
//! - **trials** of a study: parameters, state, values, intermediate values per round, why
//!   a failed one failed, and the study's space and objectives, so a restarted study
//!   refuses another's file.
//!
//! A round and its checkpoint commit in one transaction, so a run restarted after a
//! crash resumes from exactly the rounds in the store: none lost once committed, none
//! counted twice. [`SqliteStore`] is the embedded default (one file, WAL mode, so
//! readers such as `fedtune-aggregator runs` never block the run). [`PostgresStore`] keeps
//! the same tables in a PostgreSQL database, for state that lives on a server; like any
//! blocking store it is called off the async runtime. The run itself writes through a
//! [`StoreWriter`], one thread that owns the store, so the federation never waits on the
//! disk.
//!
//! # Layout
//!
//! - `ops.rs`: every [`Storage`] operation and its transaction, written once;
//! - `sql.rs`: the seam they are written over — a database that runs statements, with
//!   the few pieces of SQL each dialect spells its own way;
//! - `sqlite.rs`, `postgres.rs`: each database's schema and migrations, opening or
//!   connecting, its bulk insert and its errors;
//! - `checkpoint.rs`: the checkpoint's binary encoding; `study.rs`: a trial's columns and
//!   the study storage over a store; `writer.rs`: the writer thread.

mod checkpoint;
mod ops;
mod postgres;
mod sql;
mod sqlite;
mod study;
#[cfg(test)]
mod tests;
mod writer;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use checkpoint::{CheckpointError, decode_checkpoint, encode_checkpoint};
pub use postgres::PostgresStore;
pub use sqlite::{SCHEMA_VERSION, SqliteStore};
pub use study::StudyStore;
pub use writer::{StoreWriter, WriterStats};

use fedtune_federation::{FederationState, RoundRecord};
use fedtune_tuning::{Created, FrozenTrial, Params, StudyHeader};

/// A run's id in its store.
pub type RunId = i64;

/// What a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// One federation (`serve` without `[tuning]`, the simulation).
    Run,
    /// A federated study.
    Study,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Started and not ended (or its process died: a restart resumes it).
    Running,
    /// Ran every round it planned.
    Finished,
    /// Stopped early on request (SIGTERM, Ctrl-C); a restart resumes it.
    Interrupted,
    /// Stopped by an error; a restart resumes it.
    Failed,
}

impl RunKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Study => "study",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "run" => Ok(Self::Run),
            "study" => Ok(Self::Study),
            other => Err(StoreError::Corrupt(format!("unknown run kind `{other}`"))),
        }
    }
}

impl RunStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Interrupted => "interrupted",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "running" => Ok(Self::Running),
            "finished" => Ok(Self::Finished),
            "interrupted" => Ok(Self::Interrupted),
            "failed" => Ok(Self::Failed),
            other => Err(StoreError::Corrupt(format!("unknown run status `{other}`"))),
        }
    }
}

/// A run about to start.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// The run's name (`federation.study`); a restart resumes the latest unfinished run
    /// of the same name.
    pub name: String,
    /// Run or study.
    pub kind: RunKind,
    /// Rounds the run is configured for.
    pub rounds_planned: u64,
    /// The model's manifest hash (hex): a run resumes only with the same model.
    pub manifest_hash: String,
    /// The configuration, as JSON, for the record.
    pub config: String,
}

/// A run as the store knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// Its id.
    pub id: RunId,
    /// Its name.
    pub name: String,
    /// Run or study.
    pub kind: RunKind,
    /// Where it is.
    pub status: RunStatus,
    /// Rounds in the store.
    pub rounds_committed: u64,
    /// Rounds it is configured for.
    pub rounds_planned: u64,
    /// The model's manifest hash (hex).
    pub manifest_hash: String,
    /// When it was created (UTC, RFC 3339).
    pub created_at: String,
    /// When it last changed (UTC, RFC 3339).
    pub updated_at: String,
    /// The aggregator that serves it, or served it last (`[state] owner`): the holder of
    /// its lease ([`Storage::take_run`]). `None` for a run never leased, and for a study,
    /// whose trials have owners instead.
    pub owner: Option<String>,
}

/// A committed round as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredRound {
    /// The trial it belongs to (0 outside a study).
    pub trial: u64,
    /// When it was committed (UTC, RFC 3339).
    pub committed_at: String,
    /// What happened in it.
    pub record: RoundRecord,
}

/// A trial of a study as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredTrial {
    /// The trial.
    #[serde(flatten)]
    pub trial: FrozenTrial,
    /// The aggregator that runs it, or ran it last (`[state] owner`).
    pub owner: Option<String>,
    /// When it was asked (UTC, RFC 3339).
    pub created_at: String,
    /// When it last changed (UTC, RFC 3339).
    pub updated_at: String,
}

/// One cohort member's part in a committed round (a row of `export`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRow {
    /// The trial (0 outside a study).
    pub trial: u64,
    /// The round.
    pub round: u64,
    /// The agent.
    pub agent: String,
    /// `update` when its update counted, else why not (`straggler`, `refused`, …).
    pub outcome: String,
    /// The failure in words, when it failed.
    pub detail: Option<String>,
    /// Its validation accuracy of the round's incoming global model, when it measured it.
    pub accuracy: Option<f64>,
}

/// The per-agent rows of a round: one per cohort member.
pub fn agent_rows(trial: u64, record: &RoundRecord) -> Vec<AgentRow> {
    record
        .cohort
        .iter()
        .map(|agent| {
            let failure = record.failures.iter().find(|f| &f.agent == agent);
            AgentRow {
                trial,
                round: record.round,
                agent: agent.clone(),
                outcome: failure.map_or_else(|| "update".to_owned(), |f| failure_kind(&f.reason)),
                detail: failure.map(|f| f.reason.to_string()),
                accuracy: record.agent_accuracy.get(agent).copied(),
            }
        })
        .collect()
}

/// The failure's kind as a word (`straggler`, `refused`, …).
fn failure_kind(reason: &fedtune_federation::FailureReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "failed".to_owned())
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or created.
    #[error("cannot open the store {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file is not a fedtune store, or it is damaged (truncated, corrupt).
    #[error("the store {path} is not usable: {message}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The file was written by a newer fedtune.
    #[error(
        "the store {path} has schema version {found}, newer than this fedtune's {supported}; \
         use the fedtune that wrote it, or another file"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build reads.
        supported: i64,
    },
    /// No such run.
    #[error("no run {0} in the store")]
    NoSuchRun(RunId),
    /// The round is already in the store: a commit would count it twice.
    #[error("round {round} of run {run} (trial {trial}) is already committed")]
    AlreadyCommitted {
        /// The run.
        run: RunId,
        /// The trial.
        trial: u64,
        /// The round.
        round: u64,
    },
    /// The run holds another study (other space or objectives), or is not a study.
    #[error("run {run} {what}; give [federation] study a new name or use another store")]
    OtherStudy {
        /// The run.
        run: RunId,
        /// What differs.
        what: String,
    },
    /// Another aggregator runs the trial now (it took it over when this one's heartbeat
    /// stopped): nothing of this aggregator's is written for it.
    #[error("trial {trial} of study {run} is now run by `{owner}`")]
    NotOwner {
        /// The study.
        run: RunId,
        /// The trial.
        trial: u64,
        /// Who runs it.
        owner: String,
    },
    /// Another aggregator serves the run: it holds the run's lease and its heartbeat is
    /// recent. A run has one aggregator at a time.
    #[error(
        "run {run} is being served by `{owner}`, last seen {seen_secs_ago:.1} s ago: stop that aggregator first, \
         or give [federation] study another name; a run whose aggregator has been silent for \
         {timeout_secs} s ([state] trial_timeout_secs) is taken over"
    )]
    RunBusy {
        /// The run.
        run: RunId,
        /// Who serves it (`[state] owner`).
        owner: String,
        /// Seconds since its last heartbeat, on the store's clock.
        seen_secs_ago: f64,
        /// How long a silent aggregator keeps the run, in seconds.
        timeout_secs: f64,
    },
    /// Another aggregator took the run over (this one's heartbeat had stopped for longer
    /// than the timeout): nothing of this aggregator's is written for it.
    #[error("run {run} is now served by `{owner}`: this aggregator lost it and writes nothing more to it")]
    RunTaken {
        /// The run.
        run: RunId,
        /// Who serves it now.
        owner: String,
    },
    /// A stored value does not decode.
    #[error("a stored value is corrupt: {0}")]
    Corrupt(String),
    /// A checkpoint does not decode.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The database refused an operation.
    #[error("store: {0}")]
    Database(String),
    /// The writer thread stopped (after an earlier error).
    #[error("the store writer stopped: {0}")]
    WriterGone(String),
}

/// Why a stored run could not resume.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run was made for another model.
    #[error(
        "run {run} (`{name}`) was made for another model (manifest {stored}, this configuration's is {configured}); \
         give [federation] study a new name or use another store"
    )]
    OtherModel {
        /// The run.
        run: RunId,
        /// Its name.
        name: String,
        /// The stored manifest hash.
        stored: String,
        /// This configuration's.
        configured: String,
    },
    /// The store's rounds and its last checkpoint disagree.
    #[error("run {run}: {rounds} rounds are committed but the last checkpoint is at round {checkpoint}")]
    Inconsistent {
        /// The run.
        run: RunId,
        /// Rounds in the store.
        rounds: u64,
        /// The checkpoint's next round.
        checkpoint: u64,
    },
}

/// Where runs, rounds and checkpoints live. Implementations must make
/// [`commit_round`](Storage::commit_round) atomic: the record, its per-agent rows and
/// the checkpoint are all stored, or none is.
///
/// Several aggregators may share one store's study (each with its own agents, all on
/// one PostgreSQL database, or one SQLite file on one machine). Each writes as its
/// [`owner`](Storage::set_owner): a trial belongs to the aggregator that created or
/// claimed it, whose writer thread refreshes its heartbeat; the store numbers new trials
/// itself ([`create_trial`](Storage::create_trial)), hands a trial whose owner's heartbeat
/// stopped to whoever asks ([`claim_trial`](Storage::claim_trial)), and refuses writes for
/// a trial from anyone but its owner ([`StoreError::NotOwner`]).
///
/// A run of kind [`RunKind::Run`] has one aggregator at a time, by the same means at the
/// run's level: the aggregator that serves it takes its lease
/// ([`take_run`](Storage::take_run)), its writer's [`heartbeat`](Storage::heartbeat) renews
/// it, and ending the run ([`set_status`](Storage::set_status) to anything but `running`)
/// releases it. Another owner is refused while the lease is live
/// ([`StoreError::RunBusy`]) and takes it over once the heartbeat is older than its
/// timeout; from then on the run's rounds and status are written only by the new holder
/// ([`StoreError::RunTaken`]).
pub trait Storage: Send {
    /// Names the aggregator this store writes for (default `local`).
    fn set_owner(&mut self, owner: &str);

    /// Registers a new run (status `running`) and returns its id.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn create_run(&mut self, run: &NewRun) -> Result<RunId, StoreError>;

    /// The latest run of `run`'s name and kind that did not finish, or, when there is
    /// none, a new run registered from `run`; `true` when it is new. Atomic: aggregators
    /// starting at once on one store find the same run.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn find_or_create_run(&mut self, run: &NewRun) -> Result<(RunSummary, bool), StoreError>;

    /// The latest run named `name` of `kind` that did not finish, if any.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn resumable_run(&self, name: &str, kind: RunKind) -> Result<Option<RunSummary>, StoreError>;

    /// One run.
    ///
    /// # Errors
    /// [`StoreError::NoSuchRun`], [`StoreError::Database`].
    fn run(&self, run: RunId) -> Result<RunSummary, StoreError>;

    /// Every run, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn runs(&self) -> Result<Vec<RunSummary>, StoreError>;

    /// Sets a run's status (and, when reopened, the rounds it now plans). Any status but
    /// `running` ends the run and releases its lease.
    ///
    /// # Errors
    /// [`StoreError::RunTaken`] when another aggregator holds the run's lease,
    /// [`StoreError::NoSuchRun`], [`StoreError::Database`].
    fn set_status(&mut self, run: RunId, status: RunStatus, rounds_planned: Option<u64>) -> Result<(), StoreError>;

    /// Takes run `run`'s lease for this store's owner and marks the run `running` (a run
    /// of kind [`RunKind::Run`]; a study's trials are leased one by one instead), so that
    /// no other aggregator serves it while this one lives. The lease is free when the run has ended (its status is
    /// not `running`), was never leased, is this owner's already (a restart under the
    /// same owner takes it straight back), or its holder's last heartbeat is older than
    /// `stale_after`; otherwise it is refused. Atomic: of two aggregators taking one
    /// lease, one gets it.
    ///
    /// # Errors
    /// [`StoreError::RunBusy`] naming the holder and when it was last seen,
    /// [`StoreError::NoSuchRun`], [`StoreError::Database`].
    fn take_run(&mut self, run: RunId, stale_after: Duration) -> Result<(), StoreError>;

    /// Commits a round and the federation's state after it, in one transaction; keeps the
    /// last `keep` checkpoints of the trial and its best one.
    ///
    /// # Errors
    /// [`StoreError::AlreadyCommitted`] when the round is stored already (nothing is
    /// written then), [`StoreError::RunTaken`] when another aggregator holds the run's
    /// lease, [`StoreError::NotOwner`] when another owns the trial,
    /// [`StoreError::Database`].
    fn commit_round(
        &mut self,
        run: RunId,
        record: &RoundRecord,
        state: FederationState,
        keep: usize,
    ) -> Result<(), StoreError>;

    /// A run's committed rounds of `trial` (all trials when `None`), in order.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    fn rounds(&self, run: RunId, trial: Option<u64>) -> Result<Vec<StoredRound>, StoreError>;

    /// The state after the last committed round of a run's trial.
    ///
    /// # Errors
    /// [`StoreError::Checkpoint`] when it does not decode, [`StoreError::Database`].
    fn latest_checkpoint(&self, run: RunId, trial: u64) -> Result<Option<FederationState>, StoreError>;

    /// The rounds whose checkpoints are kept for a run's trial, in order.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn checkpoint_rounds(&self, run: RunId, trial: u64) -> Result<Vec<u64>, StoreError>;

    /// Opens study `run` as `header` describes it: records the header the first time,
    /// refuses another study's, and returns the trials stored, in number order.
    ///
    /// # Errors
    /// [`StoreError::OtherStudy`] when the run holds another study or is not a study,
    /// [`StoreError::Corrupt`], [`StoreError::Database`].
    fn open_study(&mut self, run: RunId, header: &StudyHeader) -> Result<Vec<FrozenTrial>, StoreError>;

    /// The header study `run` was opened with (its space and objectives), once an
    /// aggregator has opened it.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`], [`StoreError::Database`].
    fn study_header(&self, run: RunId) -> Result<Option<StudyHeader>, StoreError>;

    /// Stores the current snapshot of a trial of study `run`, new or changed.
    ///
    /// # Errors
    /// [`StoreError::NoSuchRun`], [`StoreError::Database`].
    fn save_trial(&mut self, run: RunId, trial: &FrozenTrial) -> Result<(), StoreError>;

    /// The trials of study `run`, in number order.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`], [`StoreError::Database`].
    fn trials(&self, run: RunId) -> Result<Vec<StoredTrial>, StoreError>;

    /// Starts a new trial of study `run` with `params`, owned by this store's owner, under
    /// the next free number — unless the study already holds `limit` trials
    /// ([`Created::Full`]) or, when `unique`, a trial with these parameters
    /// ([`Created::Duplicate`]). Atomic across aggregators.
    ///
    /// # Errors
    /// [`StoreError::NoSuchRun`], [`StoreError::Database`].
    fn create_trial(&mut self, run: RunId, params: &Params, limit: u64, unique: bool) -> Result<Created, StoreError>;

    /// Takes over the lowest-numbered running trial of study `run` that is this owner's
    /// from an earlier session, has no owner, or whose owner's heartbeat is older than
    /// `stale_after` — leaving out the trials in `busy` (those running here). Atomic: two
    /// aggregators never claim the same trial.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`], [`StoreError::Database`].
    fn claim_trial(
        &mut self,
        run: RunId,
        stale_after: Duration,
        busy: &[u64],
    ) -> Result<Option<FrozenTrial>, StoreError>;

    /// Refreshes this owner's heartbeats in run `run`: its lease on the run, when it holds
    /// it, and its running trials of a study.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    fn heartbeat(&mut self, run: RunId) -> Result<(), StoreError>;
}

/// The owner a store writes as until told otherwise.
pub const LOCAL_OWNER: &str = "local";

/// This machine's name (`HOSTNAME`, else the kernel's), for owner names that say where
/// a writer runs; `None` when neither says.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// Whether `db` (a `[state] db` or `--db` value) names a PostgreSQL database
/// (`postgres://…` or `postgresql://…`) rather than a SQLite file.
pub fn is_postgres_url(db: &std::path::Path) -> bool {
    db.to_str()
        .is_some_and(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// Opens the store `db` names: a PostgreSQL database for a `postgres://` URL, else a
/// SQLite file (created when missing). Blocking: call it off the async runtime.
///
/// # Errors
/// As [`SqliteStore::open`] and [`PostgresStore::connect`].
pub fn open(db: &std::path::Path) -> Result<Box<dyn Storage>, StoreError> {
    if is_postgres_url(db) {
        return Ok(Box::new(PostgresStore::connect(&db.to_string_lossy())?));
    }
    Ok(Box::new(SqliteStore::open(db)?))
}

/// Opens the store `db` names for reading (the inspection commands): a SQLite file is
/// opened read-only and must exist; a PostgreSQL database is only read. Blocking.
///
/// # Errors
/// As [`SqliteStore::open_read_only`] and [`PostgresStore::connect`].
pub fn open_read_only(db: &std::path::Path) -> Result<Box<dyn Storage>, StoreError> {
    if is_postgres_url(db) {
        return Ok(Box::new(PostgresStore::connect(&db.to_string_lossy())?));
    }
    Ok(Box::new(SqliteStore::open_read_only(db)?))
}

/// `db` for messages: a PostgreSQL URL without its password, or the file's path.
pub fn display_location(db: &std::path::Path) -> String {
    let text = db.to_string_lossy();
    if !is_postgres_url(db) {
        return text.into_owned();
    }
    // postgres://user:password@host/… → postgres://user@host/…
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &text[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &text[..scheme + 3], &text[at + 1..])
        }
        _ => text.into_owned(),
    }
}
