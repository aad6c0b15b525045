//! The embedded store: one SQLite file in WAL mode.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open; a
//! file from a newer fedtune is refused, and a file that is not a fedtune store or does
//! not pass SQLite's integrity check is an error at open — never a silent fresh start.
//!
//! What the store does is written once for both databases ([`ops`](super::ops)); this is
//! the file: its schema, opening it, and running [`ops`](super::ops)' statements on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql, ffi, params_from_iter};

use super::sql::{Cell, Database, DbError, Row, Value, Violation};
use super::{AgentRow, LOCAL_OWNER, RunId, StoreError};

/// Identifies a fedtune store among SQLite files (`PRAGMA application_id`, "FDTN").
const APPLICATION_ID: i64 = 0x4644_544E;

/// The newest schema this build writes.
pub const SCHEMA_VERSION: i64 = 5;

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
    // 3 → 4: why a failed trial failed
    "ALTER TABLE trials ADD COLUMN fail_reason TEXT;",
    // 4 → 5: a run's lease (the aggregator serving it, and since when alive)
    "ALTER TABLE runs ADD COLUMN owner TEXT;
    ALTER TABLE runs ADD COLUMN heartbeat_at REAL;",
];

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

/// A failed statement, with the constraint it violated.
fn db_error(e: rusqlite::Error) -> DbError {
    let violation = match &e {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.extended_code {
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Some(Violation::ForeignKey),
            ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE => Some(Violation::Unique),
            _ => None,
        },
        _ => None,
    };
    DbError {
        violation,
        message: e.to_string(),
    }
}

impl ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Self::Int(v) => v.to_sql(),
            Self::Real(v) => v.to_sql(),
            Self::Bool(v) => v.to_sql(),
            Self::Text(v) => v.to_sql(),
            Self::Blob(v) => v.to_sql(),
        }
    }
}

fn cell(value: ValueRef<'_>) -> Result<Cell, StoreError> {
    Ok(match value {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(v) => Cell::Int(v),
        ValueRef::Real(v) => Cell::Real(v),
        ValueRef::Text(v) => Cell::Text(
            String::from_utf8(v.to_vec()).map_err(|e| StoreError::Corrupt(format!("text that is not UTF-8: {e}")))?,
        ),
        ValueRef::Blob(v) => Cell::Blob(v.to_vec()),
    })
}

impl Database for SqliteStore {
    const NOW: &'static str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    const EPOCH_NOW: &'static str = "((julianday('now') - 2440587.5) * 86400.0)";
    // The write lock at once, not at the first write: a second aggregator waits here (busy
    // timeout) rather than failing halfway, and no writer changes a row between a
    // transaction's check and its write.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    // The transaction holds the whole file's write lock already.
    const LOCK_ROWS: &'static str = "";
    const LOCK_ROWS_SKIP_LOCKED: &'static str = "";

    fn owner(&self) -> &str {
        &self.owner
    }

    fn owner_mut(&mut self) -> &mut String {
        &mut self.owner
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.conn.execute_batch(sql).map_err(db_error)
    }

    fn execute(&self, sql: &str, params: &[Value<'_>]) -> Result<u64, DbError> {
        let mut statement = self.conn.prepare_cached(sql).map_err(db_error)?;
        let changed = statement.execute(params_from_iter(params)).map_err(db_error)?;
        Ok(changed as u64)
    }

    fn query(&self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut statement = self.conn.prepare_cached(sql).map_err(db)?;
        let columns = statement.column_count();
        let mut rows = statement.query(params_from_iter(params)).map_err(db)?;
        let mut read = Vec::new();
        while let Some(row) = rows.next().map_err(db)? {
            let cells = (0..columns)
                .map(|i| cell(row.get_ref(i).map_err(db)?))
                .collect::<Result<_, _>>()?;
            read.push(Row(cells));
        }
        Ok(read)
    }

    fn lock_run_name(&self, _name: &str) -> Result<(), DbError> {
        // `BEGIN IMMEDIATE` took the write lock: the aggregators take turns already.
        Ok(())
    }

    fn insert_agents(&self, run: RunId, trial: i64, round: i64, rows: &[AgentRow]) -> Result<(), DbError> {
        let mut insert = self
            .conn
            .prepare_cached(
                "INSERT OR REPLACE INTO round_agents (run_id, trial, round, agent, outcome, detail, accuracy)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(db_error)?;
        for row in rows {
            insert
                .execute(rusqlite::params![
                    run,
                    trial,
                    round,
                    row.agent,
                    row.outcome,
                    row.detail,
                    row.accuracy
                ])
                .map_err(db_error)?;
        }
        Ok(())
    }
}
