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
//!
//! What the store does is written once for both databases ([`ops`](super::ops)); this is
//! the database: its schema, connecting to it, and running [`ops`](super::ops)' statements
//! on it.

use std::cell::{RefCell, RefMut};
use std::path::PathBuf;
use std::time::Duration;

use postgres::config::Host;
use postgres::error::SqlState;
use postgres::types::{FromSql, ToSql, Type};
use postgres::{Client, Config, NoTls, Transaction};

use super::sql::{Cell, Database, DbError, Row, Value, Violation};
use super::{AgentRow, LOCAL_OWNER, RunId, SCHEMA_VERSION, StoreError};

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
    // 3 → 4: why a failed trial failed
    "ALTER TABLE trials ADD COLUMN fail_reason TEXT;",
    // 4 → 5: a run's lease (the aggregator serving it, and since when alive)
    "ALTER TABLE runs ADD COLUMN owner TEXT, ADD COLUMN heartbeat_at DOUBLE PRECISION;",
];

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

/// A column's value; a type the schema does not give it is a corrupt store.
fn get<'a, T: FromSql<'a>>(row: &'a postgres::Row, column: usize) -> Result<T, StoreError> {
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

/// A failed statement, with the constraint it violated.
fn db_error(e: postgres::Error) -> DbError {
    let violation = match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => Some(Violation::Unique),
        Some(code) if *code == SqlState::FOREIGN_KEY_VIOLATION => Some(Violation::ForeignKey),
        _ => None,
    };
    DbError {
        violation,
        message: message(&e),
    }
}

/// `sql` with SQLite's numbered placeholders (`?1`) as PostgreSQL's (`$1`); quoted text
/// and names are left as they are.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            // A doubled quote inside quotes closes and reopens them: the same text.
            (Some(q), _) if c == q => quote = None,
            (None, '?') if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// A parameter as the client sends it: typed, so the server's type check passes for `NULL`s.
fn param<'a>(value: &'a Value<'_>) -> &'a (dyn ToSql + Sync) {
    match value {
        Value::Int(v) => v,
        Value::Real(v) => v,
        Value::Bool(v) => v,
        Value::Text(v) => v,
        Value::Blob(v) => v,
    }
}

fn cells(row: &postgres::Row) -> Result<Row, StoreError> {
    (0..row.len())
        .map(|i| {
            let cell = match *row.columns()[i].type_() {
                Type::INT8 => get::<Option<i64>>(row, i)?.map(Cell::Int),
                Type::INT4 => get::<Option<i32>>(row, i)?.map(|v| Cell::Int(v.into())),
                Type::FLOAT8 => get::<Option<f64>>(row, i)?.map(Cell::Real),
                Type::BOOL => get::<Option<bool>>(row, i)?.map(Cell::Bool),
                Type::TEXT => get::<Option<String>>(row, i)?.map(Cell::Text),
                Type::BYTEA => get::<Option<Vec<u8>>>(row, i)?.map(Cell::Blob),
                ref other => {
                    return Err(StoreError::Corrupt(format!(
                        "column {i} is of type {other}, which the store does not use"
                    )));
                }
            };
            Ok(cell.unwrap_or(Cell::Null))
        })
        .collect::<Result<_, _>>()
        .map(Row)
}

impl Database for PostgresStore {
    const NOW: &'static str = now!();
    const EPOCH_NOW: &'static str = "extract(epoch FROM clock_timestamp())::DOUBLE PRECISION";
    // Transactions run side by side: the operations lock what they check.
    const BEGIN: &'static str = "BEGIN";
    const LOCK_ROWS: &'static str = " FOR UPDATE";
    // A trial another aggregator is claiming or writing is not this one's.
    const LOCK_ROWS_SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    fn owner(&self) -> &str {
        &self.owner
    }

    fn owner_mut(&mut self) -> &mut String {
        &mut self.owner
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.client().batch_execute(sql).map_err(db_error)
    }

    fn execute(&self, sql: &str, params: &[Value<'_>]) -> Result<u64, DbError> {
        let params: Vec<_> = params.iter().map(param).collect();
        self.client().execute(&numbered(sql), &params).map_err(db_error)
    }

    fn query(&self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        let params: Vec<_> = params.iter().map(param).collect();
        let rows = self.client().query(&numbered(sql), &params).map_err(db)?;
        rows.iter().map(cells).collect()
    }

    fn lock_run_name(&self, name: &str) -> Result<(), DbError> {
        self.client()
            .execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&RUN_NAME_LOCK, &name],
            )
            .map_err(db_error)?;
        Ok(())
    }

    fn insert_agents(&self, run: RunId, trial: i64, round: i64, rows: &[AgentRow]) -> Result<(), DbError> {
        // The whole cohort in one statement (one round trip, not one per agent). A cohort
        // names an agent once; were it twice, its rows would be equal, so keeping the first
        // is SQLite's `INSERT OR REPLACE`.
        let agents: Vec<&str> = rows.iter().map(|r| r.agent.as_str()).collect();
        let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
        let details: Vec<Option<&str>> = rows.iter().map(|r| r.detail.as_deref()).collect();
        let accuracies: Vec<Option<f64>> = rows.iter().map(|r| r.accuracy).collect();
        self.client()
            .execute(
                "INSERT INTO round_agents (run_id, trial, round, agent, outcome, detail, accuracy)
                 SELECT $1::BIGINT, $2::BIGINT, $3::BIGINT, a.agent, a.outcome, a.detail, a.accuracy
                 FROM unnest($4::TEXT[], $5::TEXT[], $6::TEXT[], $7::DOUBLE PRECISION[])
                     AS a (agent, outcome, detail, accuracy)
                 ON CONFLICT (run_id, trial, round, agent) DO NOTHING",
                &[&run, &trial, &round, &agents, &outcomes, &details, &accuracies],
            )
            .map_err(db_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn placeholders_are_renumbered_outside_quotes() {
        assert_eq!(
            numbered("SELECT ?1, '?2', \"a?3\", ?10 FROM t WHERE x = 'it''s ?4' AND y = ?2"),
            "SELECT $1, '?2', \"a?3\", $10 FROM t WHERE x = 'it''s ?4' AND y = $2"
        );
        assert_eq!(numbered("SELECT 1 WHERE a ? b"), "SELECT 1 WHERE a ? b");
    }
}
