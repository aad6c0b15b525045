//! The embedded store: one SQLite file in WAL mode.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open; a
//! file from a newer fedtune is refused, and a file that is not a fedtune store or does
//! not pass SQLite's integrity check is an error at open — never a silent fresh start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::checkpoint::{decode_checkpoint, encode_checkpoint};
use super::study::{TrialColumns, check_header, parse_header, trial_columns, trial_from_columns};
use super::{
    LOCAL_OWNER, NewRun, RunId, RunKind, RunStatus, RunSummary, Storage, StoreError, StoredRound, StoredTrial,
    agent_rows,
};
use fedtune_federation::{FederationState, RoundRecord};
use fedtune_tuning::{Created, FrozenTrial, Params, StudyHeader, TrialState};

/// Identifies a fedtune store among SQLite files (`PRAGMA application_id`, "FDTN").
const APPLICATION_ID: i64 = 0x4644_544E;

/// The newest schema this build writes.
pub const SCHEMA_VERSION: i64 = 3;

/// Each migration takes the schema from its index to the next version.
pub(super) const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('run', 'study')),
        status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted', 'failed')),
        rounds_planned INTEGER NOT NULL,
        manifest_hash TEXT NOT NULL,
        config TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX runs_by_name ON runs (name, kind);
    CREATE TABLE rounds (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        trial INTEGER NOT NULL,
        round INTEGER NOT NULL,
        committed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        updates INTEGER NOT NULL,
        applied INTEGER NOT NULL,
        train_loss REAL,
        federated_accuracy REAL,
        test_accuracy REAL,
        test_loss REAL,
        server_learning_rate REAL,
        seconds REAL NOT NULL,
        payload_bytes INTEGER NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (run_id, trial, round)
    );
    CREATE TABLE round_agents (
        run_id INTEGER NOT NULL,
        trial INTEGER NOT NULL,
        round INTEGER NOT NULL,
        agent TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT,
        accuracy REAL,
        PRIMARY KEY (run_id, trial, round, agent),
        FOREIGN KEY (run_id, trial, round) REFERENCES rounds (run_id, trial, round)
    );
    CREATE TABLE checkpoints (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        trial INTEGER NOT NULL,
        round INTEGER NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        score REAL,
        state BLOB NOT NULL,
        PRIMARY KEY (run_id, trial, round)
    );",
    // 1 → 2: studies and their trials
    "CREATE TABLE studies (
        run_id INTEGER PRIMARY KEY REFERENCES runs (id),
        header TEXT NOT NULL
    );
    CREATE TABLE trials (
        run_id INTEGER NOT NULL REFERENCES studies (run_id),
        number INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'complete', 'pruned', 'failed')),
        params TEXT NOT NULL,
        objective_values TEXT,
        feasible INTEGER NOT NULL,
        intermediate TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        PRIMARY KEY (run_id, number)
    );",
    // 2 → 3: trials shared by several aggregators (who runs each, and since when alive)
    "ALTER TABLE trials ADD COLUMN owner TEXT;
    ALTER TABLE trials ADD COLUMN heartbeat_at REAL;",
];

/// Now, in seconds since the Unix epoch, on the database's clock (one clock for every
/// aggregator sharing the file).
const EPOCH_NOW: &str = "((julianday('now') - 2440587.5) * 86400.0)";

/// A store in one SQLite file.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    owner: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

impl SqliteStore {
    /// Opens the store at `path`, creating it (and its schema) when the file does not
    /// exist, migrating an older schema forward.
    ///
    /// # Errors
    /// [`StoreError::Damaged`] for a file that is not a fedtune store or fails the
    /// integrity check, [`StoreError::NewerSchema`] for one from a newer fedtune,
    /// [`StoreError::Open`] when it cannot be opened.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let existed = path.exists();
        let conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.into(),
            message: e.to_string(),
        })?;
        let store = Self {
            conn,
            path: path.into(),
            owner: LOCAL_OWNER.to_owned(),
        };
        store.prepare(existed)?;
        Ok(store)
    }

    /// Opens an existing store read-only (for the inspection commands): it never
    /// creates, migrates or locks out the run writing it.
    ///
    /// # Errors
    /// As [`open`](Self::open); also when the file does not exist.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Open {
                path: path.into(),
                message: "no such file".into(),
            });
        }
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| StoreError::Open {
                    path: path.into(),
                    message: e.to_string(),
                })?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        let store = Self {
            conn,
            path: path.into(),
            owner: LOCAL_OWNER.to_owned(),
        };
        let version = store.check_identity()?;
        if version < SCHEMA_VERSION {
            return Err(store.damaged(format!(
                "schema version {version} is older than {SCHEMA_VERSION}; open it once with `serve` to migrate"
            )));
        }
        Ok(store)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn damaged(&self, message: impl Into<String>) -> StoreError {
        StoreError::Damaged {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Checks the file is an intact fedtune store this build can read; returns its schema
    /// version (0 for an empty file).
    fn check_identity(&self) -> Result<i64, StoreError> {
        let pragma = |name: &str| -> Result<i64, StoreError> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .map_err(|e| self.damaged(e.to_string()))
        };
        let app = pragma("application_id")?;
        let version = pragma("user_version")?;
        let tables: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| self.damaged(e.to_string()))?;
        if app != APPLICATION_ID && !(app == 0 && version == 0 && tables == 0) {
            return Err(self.damaged(format!("not a fedtune store (application id {app:#x})")));
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let check: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| self.damaged(e.to_string()))?;
        if check != "ok" {
            return Err(self.damaged(format!("integrity check failed: {check}")));
        }
        Ok(version)
    }

    fn prepare(&self, existed: bool) -> Result<(), StoreError> {
        self.conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        let version = self.check_identity()?;
        if existed && version == 0 {
            let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
            if size > 0 {
                return Err(self.damaged("the file holds no fedtune schema"));
            }
        }
        if version == 0 {
            // Checkpoints are megabytes: large pages keep their overflow chains short
            // (set before the first table; WAL keeps it from then on).
            self.conn.execute_batch("PRAGMA page_size = 65536;").map_err(db)?;
        }
        // WAL: readers see the last committed round while the run writes the next.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(format!("WAL mode refused (journal mode {mode})")));
        }
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(db)?;
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let to = from as i64 + 1;
            self.conn
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE; {sql}; PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {to}; COMMIT;"
                ))
                .map_err(|e| {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    StoreError::Database(format!("migrating the schema to version {to}: {e}"))
                })?;
        }
        Ok(())
    }
}

const SUMMARY: &str = "SELECT r.id, r.name, r.kind, r.status,
        (SELECT count(*) FROM rounds WHERE run_id = r.id),
        r.rounds_planned, r.manifest_hash, r.created_at, r.updated_at
    FROM runs r";

type SummaryRow = (RunId, String, String, String, i64, i64, String, String, String);

fn summary(row: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
    ))
}

fn to_summary(row: SummaryRow) -> Result<RunSummary, StoreError> {
    let (id, name, kind, status, committed, planned, manifest_hash, created_at, updated_at) = row;
    Ok(RunSummary {
        id,
        name,
        kind: RunKind::parse(&kind)?,
        status: RunStatus::parse(&status)?,
        rounds_committed: committed as u64,
        rounds_planned: planned as u64,
        manifest_hash,
        created_at,
        updated_at,
    })
}

/// The owner of trial `number` of study `run` when it is not `me`.
fn other_owner(conn: &Connection, run: RunId, number: u64, me: &str) -> Result<Option<String>, StoreError> {
    let owner: Option<Option<String>> = conn
        .query_row(
            "SELECT owner FROM trials WHERE run_id = ?1 AND number = ?2",
            params![run, number as i64],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    Ok(owner.flatten().filter(|o| o != me))
}

impl Storage for SqliteStore {
    fn set_owner(&mut self, owner: &str) {
        owner.clone_into(&mut self.owner);
    }

    fn find_or_create_run(&mut self, run: &NewRun) -> Result<(RunSummary, bool), StoreError> {
        // An immediate transaction takes the write lock first: a second aggregator waits
        // here (busy timeout) and then finds the run this one made.
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
        let found = (|| {
            if let Some(found) = self.resumable_run(&run.name, run.kind)? {
                return Ok((found, false));
            }
            let id = self.create_run(run)?;
            Ok((self.run(id)?, true))
        })();
        let end = if found.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.conn.execute_batch(end).map_err(db)?;
        found
    }

    fn create_run(&mut self, run: &NewRun) -> Result<RunId, StoreError> {
        self.conn
            .execute(
                "INSERT INTO runs (name, kind, status, rounds_planned, manifest_hash, config)
                 VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
                params![
                    run.name,
                    run.kind.as_str(),
                    run.rounds_planned as i64,
                    run.manifest_hash,
                    run.config
                ],
            )
            .map_err(db)?;
        Ok(self.conn.last_insert_rowid())
    }

    fn resumable_run(&self, name: &str, kind: RunKind) -> Result<Option<RunSummary>, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!(
                    "{SUMMARY} WHERE r.name = ?1 AND r.kind = ?2 AND r.status != 'finished' ORDER BY r.id DESC LIMIT 1"
                ),
                params![name, kind.as_str()],
                summary,
            )
            .optional()
            .map_err(db)?;
        row.map(to_summary).transpose()
    }

    fn run(&self, run: RunId) -> Result<RunSummary, StoreError> {
        let row = self
            .conn
            .query_row(&format!("{SUMMARY} WHERE r.id = ?1"), params![run], summary)
            .optional()
            .map_err(db)?;
        to_summary(row.ok_or(StoreError::NoSuchRun(run))?)
    }

    fn runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        let mut stmt = self.conn.prepare(&format!("{SUMMARY} ORDER BY r.id")).map_err(db)?;
        let rows = stmt.query_map([], summary).map_err(db)?;
        rows.map(|r| to_summary(r.map_err(db)?)).collect()
    }

    fn set_status(&mut self, run: RunId, status: RunStatus, rounds_planned: Option<u64>) -> Result<(), StoreError> {
        let changed = self
            .conn
            .execute(
                "UPDATE runs SET status = ?2, rounds_planned = coalesce(?3, rounds_planned),
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE id = ?1",
                params![run, status.as_str(), rounds_planned.map(|r| r as i64)],
            )
            .map_err(db)?;
        if changed == 0 {
            return Err(StoreError::NoSuchRun(run));
        }
        Ok(())
    }

    fn commit_round(
        &mut self,
        run: RunId,
        record: &RoundRecord,
        state: FederationState,
        keep: usize,
    ) -> Result<(), StoreError> {
        let trial_number = state.trial;
        let trial = trial_number as i64;
        let round = record.round as i64;
        let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let blob = encode_checkpoint(state)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        if let Some(owner) = other_owner(&tx, run, trial_number, &self.owner)? {
            return Err(StoreError::NotOwner {
                run,
                trial: trial_number,
                owner,
            });
        }
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM rounds WHERE run_id = ?1 AND trial = ?2 AND round = ?3)",
                params![run, trial, round],
                |r| r.get(0),
            )
            .map_err(db)?;
        if exists {
            return Err(StoreError::AlreadyCommitted {
                run,
                trial: trial_number,
                round: record.round,
            });
        }
        tx.execute(
            "INSERT INTO rounds (run_id, trial, round, updates, applied, train_loss, federated_accuracy,
                 test_accuracy, test_loss, server_learning_rate, seconds, payload_bytes, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                run,
                trial,
                round,
                record.updates as i64,
                record.applied,
                record.train_loss,
                record.federated_accuracy,
                record.test.map(|t| t.accuracy),
                record.test.map(|t| t.loss),
                record.server_learning_rate,
                record.seconds,
                record.payload_bytes as i64,
                json
            ],
        )
        .map_err(db)?;
        {
            let mut agent = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO round_agents (run_id, trial, round, agent, outcome, detail, accuracy)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(db)?;
            for row in agent_rows(trial_number, record) {
                agent
                    .execute(params![
                        run,
                        trial,
                        round,
                        row.agent,
                        row.outcome,
                        row.detail,
                        row.accuracy
                    ])
                    .map_err(db)?;
            }
        }
        // The model after round r - 1 is what round r's agents measured: that is its score
        // when no server-side test set scores it.
        if round > 0 {
            tx.execute(
                "UPDATE checkpoints SET score = ?4 WHERE run_id = ?1 AND trial = ?2 AND round = ?3 AND score IS NULL",
                params![run, trial, round - 1, record.federated_accuracy],
            )
            .map_err(db)?;
        }
        tx.execute(
            "INSERT INTO checkpoints (run_id, trial, round, score, state) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![run, trial, round, record.test.map(|t| t.accuracy), blob],
        )
        .map_err(db)?;
        // Keep the last `keep` and the best scored.
        tx.execute(
            "DELETE FROM checkpoints WHERE run_id = ?1 AND trial = ?2
               AND round NOT IN (SELECT round FROM checkpoints WHERE run_id = ?1 AND trial = ?2
                                 ORDER BY round DESC LIMIT ?3)
               AND round NOT IN (SELECT round FROM checkpoints WHERE run_id = ?1 AND trial = ?2
                                 AND score IS NOT NULL ORDER BY score DESC, round DESC LIMIT 1)",
            params![run, trial, keep.max(1) as i64],
        )
        .map_err(db)?;
        tx.execute(
            "UPDATE runs SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
            params![run],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn rounds(&self, run: RunId, trial: Option<u64>) -> Result<Vec<StoredRound>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT trial, committed_at, record FROM rounds
                 WHERE run_id = ?1 AND (?2 IS NULL OR trial = ?2) ORDER BY trial, round",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![run, trial.map(|t| t as i64)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })
            .map_err(db)?;
        rows.map(|row| {
            let (trial, committed_at, json) = row.map_err(db)?;
            let record: RoundRecord = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("round record of run {run}: {e}")))?;
            Ok(StoredRound {
                trial: trial as u64,
                committed_at,
                record,
            })
        })
        .collect()
    }

    fn latest_checkpoint(&self, run: RunId, trial: u64) -> Result<Option<FederationState>, StoreError> {
        let blob: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT state FROM checkpoints WHERE run_id = ?1 AND trial = ?2 ORDER BY round DESC LIMIT 1",
                params![run, trial as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        Ok(blob.map(|b| decode_checkpoint(&b)).transpose()?)
    }

    fn checkpoint_rounds(&self, run: RunId, trial: u64) -> Result<Vec<u64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT round FROM checkpoints WHERE run_id = ?1 AND trial = ?2 ORDER BY round")
            .map_err(db)?;
        let rows = stmt
            .query_map(params![run, trial as i64], |r| r.get::<_, i64>(0))
            .map_err(db)?;
        rows.map(|r| r.map(|v| v as u64).map_err(db)).collect()
    }

    fn open_study(&mut self, run: RunId, header: &StudyHeader) -> Result<Vec<FrozenTrial>, StoreError> {
        let kind = self.run(run)?.kind;
        if kind != RunKind::Study {
            return Err(StoreError::OtherStudy {
                run,
                what: "is a run, not a study".into(),
            });
        }
        // The first aggregator of the study records its header; every one checks it.
        let json = serde_json::to_string(header).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn
            .execute(
                "INSERT OR IGNORE INTO studies (run_id, header) VALUES (?1, ?2)",
                params![run, json],
            )
            .map_err(db)?;
        let stored: String = self
            .conn
            .query_row("SELECT header FROM studies WHERE run_id = ?1", params![run], |r| {
                r.get(0)
            })
            .map_err(db)?;
        check_header(run, &stored, header)?;
        Ok(self.trials(run)?.into_iter().map(|t| t.trial).collect())
    }

    fn study_header(&self, run: RunId) -> Result<Option<StudyHeader>, StoreError> {
        let stored: Option<String> = self
            .conn
            .query_row("SELECT header FROM studies WHERE run_id = ?1", params![run], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        stored.map(|h| parse_header(run, &h)).transpose()
    }

    fn save_trial(&mut self, run: RunId, trial: &FrozenTrial) -> Result<(), StoreError> {
        let TrialColumns {
            state,
            params: params_json,
            values,
            intermediate,
        } = trial_columns(trial)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        if let Some(owner) = other_owner(&tx, run, trial.number, &self.owner)? {
            return Err(StoreError::NotOwner {
                run,
                trial: trial.number,
                owner,
            });
        }
        tx.execute(
            &format!(
                "INSERT INTO trials (run_id, number, state, params, objective_values, feasible, intermediate,
                     owner, heartbeat_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, {EPOCH_NOW})
                 ON CONFLICT (run_id, number) DO UPDATE SET state = excluded.state, params = excluded.params,
                     objective_values = excluded.objective_values, feasible = excluded.feasible,
                     intermediate = excluded.intermediate, owner = excluded.owner,
                     heartbeat_at = excluded.heartbeat_at,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
            ),
            params![
                run,
                trial.number as i64,
                state,
                params_json,
                values,
                trial.feasible,
                intermediate,
                self.owner
            ],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                StoreError::NoSuchRun(run)
            }
            e => db(e),
        })?;
        tx.commit().map_err(db)
    }

    fn trials(&self, run: RunId) -> Result<Vec<StoredTrial>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT number, state, params, objective_values, feasible, intermediate, created_at, updated_at,
                     owner
                 FROM trials WHERE run_id = ?1 ORDER BY number",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![run], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    TrialColumns {
                        state: r.get(1)?,
                        params: r.get(2)?,
                        values: r.get(3)?,
                        intermediate: r.get(5)?,
                    },
                    r.get::<_, bool>(4)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })
            .map_err(db)?;
        rows.map(|row| {
            let (number, columns, feasible, created_at, updated_at, owner) = row.map_err(db)?;
            Ok(StoredTrial {
                trial: trial_from_columns(run, number as u64, columns, feasible)?,
                owner,
                created_at,
                updated_at,
            })
        })
        .collect()
    }

    fn create_trial(&mut self, run: RunId, params: &Params, limit: u64, unique: bool) -> Result<Created, StoreError> {
        let params_json = serde_json::to_string(params).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
        let created = (|| {
            let (count, next): (i64, i64) = self
                .conn
                .query_row(
                    "SELECT count(*), coalesce(max(number) + 1, 0) FROM trials WHERE run_id = ?1",
                    params![run],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(db)?;
            if count as u64 >= limit {
                return Ok(Created::Full);
            }
            if unique && self.trials(run)?.iter().any(|t| &t.trial.params == params) {
                return Ok(Created::Duplicate);
            }
            let trial = FrozenTrial {
                number: next as u64,
                params: params.clone(),
                values: None,
                state: TrialState::Running,
                feasible: true,
                intermediate: Default::default(),
            };
            self.save_new(run, &trial, &params_json)?;
            Ok(Created::Trial(trial))
        })();
        let end = if created.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.conn.execute_batch(end).map_err(db)?;
        created
    }

    fn claim_trial(
        &mut self,
        run: RunId,
        stale_after: Duration,
        busy: &[u64],
    ) -> Result<Option<FrozenTrial>, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
        let claimed = (|| {
            let mut stmt = self
                .conn
                .prepare(&format!(
                    "SELECT number FROM trials WHERE run_id = ?1 AND state = 'running'
                       AND (owner IS NULL OR owner = ?2 OR heartbeat_at IS NULL OR heartbeat_at < {EPOCH_NOW} - ?3)
                     ORDER BY number"
                ))
                .map_err(db)?;
            let numbers = stmt
                .query_map(params![run, self.owner, stale_after.as_secs_f64()], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(db)?
                .collect::<Result<Vec<i64>, _>>()
                .map_err(db)?;
            drop(stmt);
            let Some(number) = numbers.into_iter().map(|n| n as u64).find(|n| !busy.contains(n)) else {
                return Ok(None);
            };
            self.conn
                .execute(
                    &format!(
                        "UPDATE trials SET owner = ?3, heartbeat_at = {EPOCH_NOW},
                             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                         WHERE run_id = ?1 AND number = ?2"
                    ),
                    params![run, number as i64, self.owner],
                )
                .map_err(db)?;
            Ok(self
                .trials(run)?
                .into_iter()
                .map(|t| t.trial)
                .find(|t| t.number == number))
        })();
        let end = if claimed.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.conn.execute_batch(end).map_err(db)?;
        claimed
    }

    fn heartbeat(&mut self, run: RunId) -> Result<(), StoreError> {
        self.conn
            .execute(
                &format!(
                    "UPDATE trials SET heartbeat_at = {EPOCH_NOW}
                     WHERE run_id = ?1 AND owner = ?2 AND state = 'running'"
                ),
                params![run, self.owner],
            )
            .map_err(db)?;
        Ok(())
    }
}

impl SqliteStore {
    /// Inserts a new running trial owned by this store's owner.
    fn save_new(&self, run: RunId, trial: &FrozenTrial, params_json: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                &format!(
                    "INSERT INTO trials (run_id, number, state, params, feasible, intermediate, owner, heartbeat_at)
                     VALUES (?1, ?2, 'running', ?3, 1, '{{}}', ?4, {EPOCH_NOW})"
                ),
                params![run, trial.number as i64, params_json, self.owner],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    StoreError::NoSuchRun(run)
                }
                e => db(e),
            })?;
        Ok(())
    }
}
