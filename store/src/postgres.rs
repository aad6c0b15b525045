//! A store in a PostgreSQL database, for an aggregator whose state lives on a server.
//!
//! The tables and columns are [`SqliteStore`](super::SqliteStore)'s, in PostgreSQL types,
//! and schema version N means the same tables in both stores. The version is the one row
//! of `fedtune_schema`; connecting migrates it forward in one transaction, refuses a
//! database from a newer fedtune, and refuses a database that holds tables with the
//! store's names but no version — never a silent fresh start over someone else's data.
//!
//! Timestamps are TEXT in SQLite's format (`2025-01-02T03:04:05.678Z`, UTC, milliseconds),
//! so a run's `created_at` reads the same whichever store holds it. Round records stay
//! JSON text rather than JSONB: JSONB reorders keys and would not give back the bytes
//! written.

use std::cell::{RefCell, RefMut};
use std::path::PathBuf;
use std::time::Duration;

use postgres::config::Host;
use postgres::error::SqlState;
use postgres::types::FromSql;
use postgres::{Client, Config, NoTls, Row, Transaction};

use super::checkpoint::{decode_checkpoint, encode_checkpoint};
use super::study::{TrialColumns, check_header, parse_header, trial_columns, trial_from_columns};
use super::{
    LOCAL_OWNER, NewRun, RunId, RunKind, RunStatus, RunSummary, SCHEMA_VERSION, Storage, StoreError, StoredRound,
    StoredTrial, agent_rows,
};
use fedtune_federation::{FederationState, RoundRecord};
use fedtune_tuning::{Created, FrozenTrial, Params, StudyHeader, TrialState};

/// The current time as SQLite's `strftime('%Y-%m-%dT%H:%M:%fZ', 'now')` writes it. The
/// clock, not the transaction's start: like SQLite's, each write is stamped when it happens.
macro_rules! now {
    () => {
        "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
    };
}

/// The table that holds the schema version, in exactly one row.
pub(super) const VERSION_TABLE: &str = "CREATE TABLE fedtune_schema (
        one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
        version BIGINT NOT NULL
    )";

/// The tables a fedtune store holds; any of them without a version row is someone else's.
const TABLES: &[&str] = &[
    "fedtune_schema",
    "runs",
    "rounds",
    "round_agents",
    "checkpoints",
    "studies",
    "trials",
];

/// Serialises connects that might migrate (`pg_advisory_xact_lock`; "FDTN", as SQLite's
/// application id).
const MIGRATION_LOCK: i64 = 0x4644_544E;

/// Each migration takes the schema from its index to the next version, as SQLite's do.
pub(super) const MIGRATIONS: &[&str] = &[
    // 0 → 1
    concat!(
        "CREATE TABLE runs (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('run', 'study')),
            status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted', 'failed')),
            rounds_planned BIGINT NOT NULL,
            manifest_hash TEXT NOT NULL,
            config TEXT NOT NULL,
            created_at TEXT NOT NULL DEFAULT (",
        now!(),
        "),
            updated_at TEXT NOT NULL DEFAULT (",
        now!(),
        ")
        );
        CREATE INDEX runs_by_name ON runs (name, kind);
        CREATE TABLE rounds (
            run_id BIGINT NOT NULL REFERENCES runs (id),
            trial BIGINT NOT NULL,
            round BIGINT NOT NULL,
            committed_at TEXT NOT NULL DEFAULT (",
        now!(),
        "),
            updates BIGINT NOT NULL,
            applied BOOLEAN NOT NULL,
            train_loss DOUBLE PRECISION,
            federated_accuracy DOUBLE PRECISION,
            test_accuracy DOUBLE PRECISION,
            test_loss DOUBLE PRECISION,
            server_learning_rate DOUBLE PRECISION,
            seconds DOUBLE PRECISION NOT NULL,
            payload_bytes BIGINT NOT NULL,
            record TEXT NOT NULL,
            PRIMARY KEY (run_id, trial, round)
        );
        CREATE TABLE round_agents (
            run_id BIGINT NOT NULL,
            trial BIGINT NOT NULL,
            round BIGINT NOT NULL,
            agent TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT,
            accuracy DOUBLE PRECISION,
            PRIMARY KEY (run_id, trial, round, agent),
            FOREIGN KEY (run_id, trial, round) REFERENCES rounds (run_id, trial, round)
        );
        CREATE TABLE checkpoints (
            run_id BIGINT NOT NULL REFERENCES runs (id),
            trial BIGINT NOT NULL,
            round BIGINT NOT NULL,
            created_at TEXT NOT NULL DEFAULT (",
        now!(),
        "),
            score DOUBLE PRECISION,
            state BYTEA NOT NULL,
            PRIMARY KEY (run_id, trial, round)
        );
        -- Model values do not compress: store them out of line as they are.
        ALTER TABLE checkpoints ALTER COLUMN state SET STORAGE EXTERNAL;"
    ),
    // 1 → 2: studies and their trials
    concat!(
        "CREATE TABLE studies (
            run_id BIGINT PRIMARY KEY REFERENCES runs (id),
            header TEXT NOT NULL
        );
        CREATE TABLE trials (
            run_id BIGINT NOT NULL REFERENCES studies (run_id),
            number BIGINT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('running', 'complete', 'pruned', 'failed')),
            params TEXT NOT NULL,
            objective_values TEXT,
            feasible BOOLEAN NOT NULL,
            intermediate TEXT NOT NULL,
            created_at TEXT NOT NULL DEFAULT (",
        now!(),
        "),
            updated_at TEXT NOT NULL DEFAULT (",
        now!(),
        "),
            PRIMARY KEY (run_id, number)
        );"
    ),
    // 2 → 3: trials shared by several aggregators (who runs each, and since when alive)
    "ALTER TABLE trials ADD COLUMN owner TEXT, ADD COLUMN heartbeat_at DOUBLE PRECISION;",
];

/// Now, in seconds since the Unix epoch, on the server's clock (one clock for every
/// aggregator sharing the database).
macro_rules! epoch_now {
    () => {
        "extract(epoch FROM clock_timestamp())::DOUBLE PRECISION"
    };
}

/// The advisory-lock class of run names (`pg_advisory_xact_lock(class, hashtext(name))`):
/// aggregators finding or creating a run of one name take turns.
const RUN_NAME_LOCK: i32 = 0x4644_5452;

// Version N is the same schema in both stores: a SQLite migration needs its PostgreSQL twin.
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// A store in a PostgreSQL database.
///
/// **Never call it from a thread that drives a tokio runtime** (an `async fn`, a task):
/// the `postgres` client blocks on a runtime of its own and panics there ("Cannot start a
/// runtime from within a runtime"), dropping the store included. The aggregator calls it
/// from its [`StoreWriter`](super::StoreWriter) thread, and opens it inside
/// `tokio::task::spawn_blocking`; both are fine.
///
/// It connects without TLS: point it at a server on this machine or on a network you
/// trust. Errors name the server and database, never the password.
pub struct PostgresStore {
    // A cell because the trait's readers take `&self` and a query needs `&mut Client`;
    // the store is used from one thread at a time (`Storage` is `Send`, not `Sync`).
    client: RefCell<Client>,
    location: String,
    owner: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.location)
            .finish()
    }
}

/// The server's words for what failed (the client's own `Display` is only "db error").
fn message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.to_string().replace('\n', "; ");
    }
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

fn db(e: postgres::Error) -> StoreError {
    StoreError::Database(message(&e))
}

fn is(e: &postgres::Error, state: &SqlState) -> bool {
    e.code() == Some(state)
}

/// A column's value; a type the schema does not give it is a corrupt store.
fn get<'a, T: FromSql<'a>>(row: &'a Row, column: usize) -> Result<T, StoreError> {
    row.try_get(column)
        .map_err(|e| StoreError::Corrupt(format!("column {column}: {}", message(&e))))
}

/// `postgres://user@host:port/database`, without the password, for messages.
fn location(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let database = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("postgres://{user}{}/{database}", hosts.join(","))
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgresql://user:password@host:port/database`
    /// or `host=… port=… user=… dbname=…`), creating the schema in an empty database and
    /// migrating an older one forward, in one transaction.
    ///
    /// Call it off any tokio runtime thread (see the type's docs). Without a
    /// `connect_timeout` in the URL, it gives up on an unreachable server after 10 s.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the URL does not parse or the server cannot be reached or
    /// refuses the login, [`StoreError::Damaged`] for a database holding tables with the
    /// store's names but no schema version, [`StoreError::NewerSchema`] for one from a
    /// newer fedtune, [`StoreError::Database`] when the migration fails.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: Config = url.parse().map_err(|e: postgres::Error| StoreError::Open {
            path: "the PostgreSQL URL".into(),
            message: message(&e),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("fedtune");
        }
        let location = location(&config);
        let client = config.connect(NoTls).map_err(|e| StoreError::Open {
            path: PathBuf::from(&location),
            message: message(&e),
        })?;
        let store = Self {
            client: RefCell::new(client),
            location,
            owner: LOCAL_OWNER.to_owned(),
        };
        store.prepare()?;
        Ok(store)
    }

    /// The server and database, as `postgres://user@host:port/database` (no password).
    pub fn location(&self) -> &str {
        &self.location
    }

    fn client(&self) -> RefMut<'_, Client> {
        self.client.borrow_mut()
    }

    fn damaged(&self, message: impl Into<String>) -> StoreError {
        StoreError::Damaged {
            path: PathBuf::from(&self.location),
            message: message.into(),
        }
    }

    /// Migrates the schema to [`SCHEMA_VERSION`], all of it or nothing.
    fn prepare(&self) -> Result<(), StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction().map_err(db)?;
        // Two aggregators connecting at once: the second waits, then sees the migrated schema.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(db)?;
        let version = self.version(&mut tx)?;
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let to = from as i64 + 1;
            let migrate = |e: postgres::Error| {
                StoreError::Database(format!("migrating the schema to version {to}: {}", message(&e)))
            };
            tx.batch_execute(sql).map_err(migrate)?;
            tx.execute("UPDATE fedtune_schema SET version = $1", &[&to])
                .map_err(migrate)?;
        }
        tx.commit().map_err(db)
    }

    /// The database's schema version (0 for a database without the store's tables, which
    /// it then gets `fedtune_schema` in).
    fn version(&self, tx: &mut Transaction<'_>) -> Result<i64, StoreError> {
        let names: Vec<&str> = TABLES.to_vec();
        let found: Vec<String> = tx
            .query(
                "SELECT tablename::text FROM pg_tables
                 WHERE schemaname = current_schema() AND tablename::text = ANY($1) ORDER BY 1",
                &[&names],
            )
            .map_err(db)?
            .iter()
            .map(|row| get(row, 0))
            .collect::<Result<_, _>>()?;
        if !found.iter().any(|t| t == "fedtune_schema") {
            if !found.is_empty() {
                return Err(self.damaged(format!(
                    "it holds tables named {} but no fedtune schema version: not a fedtune store; \
                     use another database",
                    found.join(", ")
                )));
            }
            tx.batch_execute(&format!(
                "{VERSION_TABLE}; INSERT INTO fedtune_schema (version) VALUES (0)"
            ))
            .map_err(db)?;
            return Ok(0);
        }
        let rows = tx
            .query("SELECT version FROM fedtune_schema", &[])
            .map_err(|e| self.damaged(format!("its fedtune_schema table does not read: {}", message(&e))))?;
        let [row] = rows.as_slice() else {
            return Err(self.damaged(format!(
                "its fedtune_schema table holds {} version rows, not one",
                rows.len()
            )));
        };
        let version: i64 = get(row, 0)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: PathBuf::from(&self.location),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < 0 {
            return Err(self.damaged(format!("its schema version {version} is not one fedtune writes")));
        }
        Ok(version)
    }
}

const SUMMARY: &str = "SELECT r.id, r.name, r.kind, r.status,
        (SELECT count(*) FROM rounds WHERE run_id = r.id),
        r.rounds_planned, r.manifest_hash, r.created_at, r.updated_at
    FROM runs r";

fn to_summary(row: &Row) -> Result<RunSummary, StoreError> {
    Ok(RunSummary {
        id: get(row, 0)?,
        name: get(row, 1)?,
        kind: RunKind::parse(get(row, 2)?)?,
        status: RunStatus::parse(get(row, 3)?)?,
        rounds_committed: get::<i64>(row, 4)? as u64,
        rounds_planned: get::<i64>(row, 5)? as u64,
        manifest_hash: get(row, 6)?,
        created_at: get(row, 7)?,
        updated_at: get(row, 8)?,
    })
}

/// The owner of trial `number` of study `run` when it is not `me`; locks the trial's row
/// until the transaction ends, so a claim cannot slip in before the write.
fn other_owner(tx: &mut Transaction<'_>, run: RunId, number: u64, me: &str) -> Result<Option<String>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT owner FROM trials WHERE run_id = $1 AND number = $2 FOR UPDATE",
            &[&run, &(number as i64)],
        )
        .map_err(db)?;
    let owner: Option<String> = match row {
        Some(row) => get(&row, 0)?,
        None => None,
    };
    Ok(owner.filter(|o| o != me))
}

fn create_run_in(tx: &mut Transaction<'_>, run: &NewRun) -> Result<RunId, StoreError> {
    let row = tx
        .query_one(
            "INSERT INTO runs (name, kind, status, rounds_planned, manifest_hash, config)
             VALUES ($1, $2, 'running', $3, $4, $5) RETURNING id",
            &[
                &run.name,
                &run.kind.as_str(),
                &(run.rounds_planned as i64),
                &run.manifest_hash,
                &run.config,
            ],
        )
        .map_err(db)?;
    get(&row, 0)
}

fn trial_rows(rows: &[Row], run: RunId) -> Result<Vec<StoredTrial>, StoreError> {
    rows.iter()
        .map(|row| {
            let columns = TrialColumns {
                state: get(row, 1)?,
                params: get(row, 2)?,
                values: get(row, 3)?,
                intermediate: get(row, 5)?,
            };
            Ok(StoredTrial {
                trial: trial_from_columns(run, get::<i64>(row, 0)? as u64, columns, get(row, 4)?)?,
                owner: get(row, 8)?,
                created_at: get(row, 6)?,
                updated_at: get(row, 7)?,
            })
        })
        .collect()
}

const TRIALS: &str = "SELECT number, state, params, objective_values, feasible, intermediate, created_at, updated_at,
        owner
    FROM trials WHERE run_id = $1";

impl Storage for PostgresStore {
    fn set_owner(&mut self, owner: &str) {
        owner.clone_into(&mut self.owner);
    }

    fn find_or_create_run(&mut self, run: &NewRun) -> Result<(RunSummary, bool), StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction().map_err(db)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&RUN_NAME_LOCK, &run.name],
        )
        .map_err(db)?;
        let found = tx
            .query_opt(
                &format!(
                    "{SUMMARY} WHERE r.name = $1 AND r.kind = $2 AND r.status != 'finished' ORDER BY r.id DESC LIMIT 1"
                ),
                &[&run.name, &run.kind.as_str()],
            )
            .map_err(db)?;
        let (summary, created) = match found {
            Some(row) => (to_summary(&row)?, false),
            None => {
                let id = create_run_in(&mut tx, run)?;
                let row = tx
                    .query_one(&format!("{SUMMARY} WHERE r.id = $1"), &[&id])
                    .map_err(db)?;
                (to_summary(&row)?, true)
            }
        };
        tx.commit().map_err(db)?;
        Ok((summary, created))
    }

    fn create_run(&mut self, run: &NewRun) -> Result<RunId, StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction().map_err(db)?;
        let id = create_run_in(&mut tx, run)?;
        tx.commit().map_err(db)?;
        Ok(id)
    }

    fn resumable_run(&self, name: &str, kind: RunKind) -> Result<Option<RunSummary>, StoreError> {
        let row = self
            .client()
            .query_opt(
                &format!(
                    "{SUMMARY} WHERE r.name = $1 AND r.kind = $2 AND r.status != 'finished' ORDER BY r.id DESC LIMIT 1"
                ),
                &[&name, &kind.as_str()],
            )
            .map_err(db)?;
        row.as_ref().map(to_summary).transpose()
    }

    fn run(&self, run: RunId) -> Result<RunSummary, StoreError> {
        let row = self
            .client()
            .query_opt(&format!("{SUMMARY} WHERE r.id = $1"), &[&run])
            .map_err(db)?;
        to_summary(&row.ok_or(StoreError::NoSuchRun(run))?)
    }

    fn runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        let rows = self
            .client()
            .query(&format!("{SUMMARY} ORDER BY r.id"), &[])
            .map_err(db)?;
        rows.iter().map(to_summary).collect()
    }

    fn set_status(&mut self, run: RunId, status: RunStatus, rounds_planned: Option<u64>) -> Result<(), StoreError> {
        let changed = self
            .client()
            .execute(
                concat!(
                    "UPDATE runs SET status = $2, rounds_planned = coalesce($3, rounds_planned), updated_at = ",
                    now!(),
                    " WHERE id = $1"
                ),
                &[&run, &status.as_str(), &rounds_planned.map(|r| r as i64)],
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
        let already = || StoreError::AlreadyCommitted {
            run,
            trial: trial_number,
            round: record.round,
        };
        let mut client = self.client();
        // Dropped without `commit` on any error below: the transaction rolls back whole.
        let mut tx = client.transaction().map_err(db)?;
        if let Some(owner) = other_owner(&mut tx, run, trial_number, &self.owner)? {
            return Err(StoreError::NotOwner {
                run,
                trial: trial_number,
                owner,
            });
        }
        let exists: bool = get(
            &tx.query_one(
                "SELECT EXISTS (SELECT 1 FROM rounds WHERE run_id = $1 AND trial = $2 AND round = $3)",
                &[&run, &trial, &round],
            )
            .map_err(db)?,
            0,
        )?;
        if exists {
            return Err(already());
        }
        tx.execute(
            "INSERT INTO rounds (run_id, trial, round, updates, applied, train_loss, federated_accuracy,
                 test_accuracy, test_loss, server_learning_rate, seconds, payload_bytes, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &run,
                &trial,
                &round,
                &(record.updates as i64),
                &record.applied,
                &record.train_loss,
                &record.federated_accuracy,
                &record.test.map(|t| t.accuracy),
                &record.test.map(|t| t.loss),
                &record.server_learning_rate,
                &record.seconds,
                &(record.payload_bytes as i64),
                &json,
            ],
        )
        .map_err(|e| {
            // A writer that committed the same round between our check and this insert.
            if is(&e, &SqlState::UNIQUE_VIOLATION) {
                already()
            } else if is(&e, &SqlState::FOREIGN_KEY_VIOLATION) {
                StoreError::NoSuchRun(run)
            } else {
                db(e)
            }
        })?;
        // The whole cohort in one statement (one round trip, not one per agent). A cohort
        // names an agent once; were it twice, its rows would be equal, so keeping the first
        // is SQLite's `INSERT OR REPLACE`.
        let rows = agent_rows(trial_number, record);
        let agents: Vec<&str> = rows.iter().map(|r| r.agent.as_str()).collect();
        let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
        let details: Vec<Option<&str>> = rows.iter().map(|r| r.detail.as_deref()).collect();
        let accuracies: Vec<Option<f64>> = rows.iter().map(|r| r.accuracy).collect();
        tx.execute(
            "INSERT INTO round_agents (run_id, trial, round, agent, outcome, detail, accuracy)
             SELECT $1::BIGINT, $2::BIGINT, $3::BIGINT, a.agent, a.outcome, a.detail, a.accuracy
             FROM unnest($4::TEXT[], $5::TEXT[], $6::TEXT[], $7::DOUBLE PRECISION[])
                 AS a (agent, outcome, detail, accuracy)
             ON CONFLICT (run_id, trial, round, agent) DO NOTHING",
            &[&run, &trial, &round, &agents, &outcomes, &details, &accuracies],
        )
        .map_err(db)?;
        // The model after round r - 1 is what round r's agents measured: that is its score
        // when no server-side test set scores it.
        if round > 0 {
            tx.execute(
                "UPDATE checkpoints SET score = $4 WHERE run_id = $1 AND trial = $2 AND round = $3 AND score IS NULL",
                &[&run, &trial, &(round - 1), &record.federated_accuracy],
            )
            .map_err(db)?;
        }
        tx.execute(
            "INSERT INTO checkpoints (run_id, trial, round, score, state) VALUES ($1, $2, $3, $4, $5)",
            &[&run, &trial, &round, &record.test.map(|t| t.accuracy), &blob],
        )
        .map_err(db)?;
        // Keep the last `keep` and the best scored.
        tx.execute(
            "DELETE FROM checkpoints WHERE run_id = $1 AND trial = $2
               AND round NOT IN (SELECT round FROM checkpoints WHERE run_id = $1 AND trial = $2
                                 ORDER BY round DESC LIMIT $3)
               AND round NOT IN (SELECT round FROM checkpoints WHERE run_id = $1 AND trial = $2
                                 AND score IS NOT NULL ORDER BY score DESC, round DESC LIMIT 1)",
            &[&run, &trial, &(keep.max(1) as i64)],
        )
        .map_err(db)?;
        tx.execute(
            concat!("UPDATE runs SET updated_at = ", now!(), " WHERE id = $1"),
            &[&run],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn rounds(&self, run: RunId, trial: Option<u64>) -> Result<Vec<StoredRound>, StoreError> {
        let rows = self
            .client()
            .query(
                "SELECT trial, committed_at, record FROM rounds
                 WHERE run_id = $1 AND ($2::BIGINT IS NULL OR trial = $2) ORDER BY trial, round",
                &[&run, &trial.map(|t| t as i64)],
            )
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                let json: &str = get(row, 2)?;
                let record: RoundRecord = serde_json::from_str(json)
                    .map_err(|e| StoreError::Corrupt(format!("round record of run {run}: {e}")))?;
                Ok(StoredRound {
                    trial: get::<i64>(row, 0)? as u64,
                    committed_at: get(row, 1)?,
                    record,
                })
            })
            .collect()
    }

    fn latest_checkpoint(&self, run: RunId, trial: u64) -> Result<Option<FederationState>, StoreError> {
        let row = self
            .client()
            .query_opt(
                "SELECT state FROM checkpoints WHERE run_id = $1 AND trial = $2 ORDER BY round DESC LIMIT 1",
                &[&run, &(trial as i64)],
            )
            .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(decode_checkpoint(get(&row, 0)?)?))
    }

    fn checkpoint_rounds(&self, run: RunId, trial: u64) -> Result<Vec<u64>, StoreError> {
        let rows = self
            .client()
            .query(
                "SELECT round FROM checkpoints WHERE run_id = $1 AND trial = $2 ORDER BY round",
                &[&run, &(trial as i64)],
            )
            .map_err(db)?;
        rows.iter().map(|row| Ok(get::<i64>(row, 0)? as u64)).collect()
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
        self.client()
            .execute(
                "INSERT INTO studies (run_id, header) VALUES ($1, $2) ON CONFLICT (run_id) DO NOTHING",
                &[&run, &json],
            )
            .map_err(db)?;
        let stored = self
            .client()
            .query_one("SELECT header FROM studies WHERE run_id = $1", &[&run])
            .map_err(db)?;
        check_header(run, get(&stored, 0)?, header)?;
        Ok(self.trials(run)?.into_iter().map(|t| t.trial).collect())
    }

    fn study_header(&self, run: RunId) -> Result<Option<StudyHeader>, StoreError> {
        let row = self
            .client()
            .query_opt("SELECT header FROM studies WHERE run_id = $1", &[&run])
            .map_err(db)?;
        row.map(|r| parse_header(run, get(&r, 0)?)).transpose()
    }

    fn save_trial(&mut self, run: RunId, trial: &FrozenTrial) -> Result<(), StoreError> {
        let TrialColumns {
            state,
            params,
            values,
            intermediate,
        } = trial_columns(trial)?;
        let mut client = self.client();
        let mut tx = client.transaction().map_err(db)?;
        if let Some(owner) = other_owner(&mut tx, run, trial.number, &self.owner)? {
            return Err(StoreError::NotOwner {
                run,
                trial: trial.number,
                owner,
            });
        }
        tx.execute(
            concat!(
                "INSERT INTO trials (run_id, number, state, params, objective_values, feasible, intermediate,
                     owner, heartbeat_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ",
                epoch_now!(),
                ")
                 ON CONFLICT (run_id, number) DO UPDATE SET state = excluded.state, params = excluded.params,
                     objective_values = excluded.objective_values, feasible = excluded.feasible,
                     intermediate = excluded.intermediate, owner = excluded.owner,
                     heartbeat_at = excluded.heartbeat_at, updated_at = ",
                now!()
            ),
            &[
                &run,
                &(trial.number as i64),
                &state,
                &params,
                &values,
                &trial.feasible,
                &intermediate,
                &self.owner,
            ],
        )
        .map_err(|e| {
            if is(&e, &SqlState::FOREIGN_KEY_VIOLATION) {
                StoreError::NoSuchRun(run)
            } else {
                db(e)
            }
        })?;
        tx.commit().map_err(db)
    }

    fn trials(&self, run: RunId) -> Result<Vec<StoredTrial>, StoreError> {
        let rows = self
            .client()
            .query(&format!("{TRIALS} ORDER BY number"), &[&run])
            .map_err(db)?;
        trial_rows(&rows, run)
    }

    fn create_trial(&mut self, run: RunId, params: &Params, limit: u64, unique: bool) -> Result<Created, StoreError> {
        let params_json = serde_json::to_string(params).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut client = self.client();
        let mut tx = client.transaction().map_err(db)?;
        // The study's row is the lock: aggregators number their trials one at a time.
        let locked = tx
            .query_opt("SELECT 1 FROM studies WHERE run_id = $1 FOR UPDATE", &[&run])
            .map_err(db)?;
        if locked.is_none() {
            return Err(StoreError::NoSuchRun(run));
        }
        let row = tx
            .query_one(
                "SELECT count(*), coalesce(max(number) + 1, 0) FROM trials WHERE run_id = $1",
                &[&run],
            )
            .map_err(db)?;
        let (count, next): (i64, i64) = (get(&row, 0)?, get(&row, 1)?);
        if count as u64 >= limit {
            return Ok(Created::Full);
        }
        if unique {
            let rows = tx.query(&format!("{TRIALS} ORDER BY number"), &[&run]).map_err(db)?;
            if trial_rows(&rows, run)?.iter().any(|t| &t.trial.params == params) {
                return Ok(Created::Duplicate);
            }
        }
        tx.execute(
            concat!(
                "INSERT INTO trials (run_id, number, state, params, feasible, intermediate, owner, heartbeat_at)
                 VALUES ($1, $2, 'running', $3, true, '{}', $4, ",
                epoch_now!(),
                ")"
            ),
            &[&run, &next, &params_json, &self.owner],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Created::Trial(FrozenTrial {
            number: next as u64,
            params: params.clone(),
            values: None,
            state: TrialState::Running,
            feasible: true,
            intermediate: Default::default(),
        }))
    }

    fn claim_trial(
        &mut self,
        run: RunId,
        stale_after: Duration,
        busy: &[u64],
    ) -> Result<Option<FrozenTrial>, StoreError> {
        let busy: Vec<i64> = busy.iter().map(|&n| n as i64).collect();
        let mut client = self.client();
        let mut tx = client.transaction().map_err(db)?;
        // SKIP LOCKED: a trial another aggregator is claiming or writing is not this one's.
        let row = tx
            .query_opt(
                concat!(
                    "SELECT number FROM trials WHERE run_id = $1 AND state = 'running'
                       AND NOT (number = ANY($4))
                       AND (owner IS NULL OR owner = $2 OR heartbeat_at IS NULL
                            OR heartbeat_at < ",
                    epoch_now!(),
                    " - $3)
                     ORDER BY number LIMIT 1 FOR UPDATE SKIP LOCKED"
                ),
                &[&run, &self.owner, &stale_after.as_secs_f64(), &busy],
            )
            .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let number: i64 = get(&row, 0)?;
        tx.execute(
            concat!(
                "UPDATE trials SET owner = $3, heartbeat_at = ",
                epoch_now!(),
                ", updated_at = ",
                now!(),
                " WHERE run_id = $1 AND number = $2"
            ),
            &[&run, &number, &self.owner],
        )
        .map_err(db)?;
        let rows = tx
            .query(&format!("{TRIALS} AND number = $2"), &[&run, &number])
            .map_err(db)?;
        let trial = trial_rows(&rows, run)?.into_iter().next().map(|t| t.trial);
        tx.commit().map_err(db)?;
        Ok(trial)
    }

    fn heartbeat(&mut self, run: RunId) -> Result<(), StoreError> {
        self.client()
            .execute(
                concat!(
                    "UPDATE trials SET heartbeat_at = ",
                    epoch_now!(),
                    " WHERE run_id = $1 AND owner = $2 AND state = 'running'"
                ),
                &[&run, &self.owner],
            )
            .map_err(db)?;
        Ok(())
    }
}
