//! The seam between the store's operations, written once in [`ops`](super::ops), and the
//! two databases that run them.
//!
//! A [`Database`] runs a statement with parameters and hands back [`Row`]s of owned
//! [`Cell`]s, opens and ends transactions, and supplies the few pieces of SQL the two
//! dialects spell differently (the clock, row locks). The statements are written with
//! SQLite's numbered placeholders (`?1`, `?2`, …), which PostgreSQL's adapter renumbers as
//! `$1`, `$2`, …. What stays per database is what only it can do: its schema and
//! migrations, opening or connecting, the bulk insert of a round's agents, and sorting
//! its errors into the [`Violation`]s the operations answer differently.

use super::{AgentRow, RunId, StoreError};

/// A statement's parameter. Each variant is one SQL type, so PostgreSQL, which checks a
/// parameter's type against the column's, gets a typed value even when it is `NULL`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    /// `BIGINT` (SQLite `INTEGER`).
    Int(Option<i64>),
    /// `DOUBLE PRECISION` (SQLite `REAL`).
    Real(Option<f64>),
    /// `BOOLEAN` (SQLite stores 0 or 1).
    Bool(bool),
    /// `TEXT`.
    Text(Option<&'a str>),
    /// `BYTEA` (SQLite `BLOB`).
    Blob(&'a [u8]),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}

impl From<Option<i64>> for Value<'_> {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}

impl From<f64> for Value<'_> {
    fn from(v: f64) -> Self {
        Self::Real(Some(v))
    }
}

impl From<Option<f64>> for Value<'_> {
    fn from(v: Option<f64>) -> Self {
        Self::Real(v)
    }
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Self::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Self::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Self::Blob(v)
    }
}

/// A column's value in a result row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    /// `NULL`.
    Null,
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// A PostgreSQL `BOOLEAN` (SQLite's are integers).
    Bool(bool),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Cell {
    fn kind(&self) -> &'static str {
        match self {
            Self::Null => "NULL",
            Self::Int(_) => "an integer",
            Self::Real(_) => "a real",
            Self::Bool(_) => "a boolean",
            Self::Text(_) => "text",
            Self::Blob(_) => "bytes",
        }
    }
}

/// A result row. Its getters take the column's index; a value of a type the schema does
/// not give that column is a corrupt store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row(pub(crate) Vec<Cell>);

impl Row {
    fn cell(&self, column: usize) -> Result<&Cell, StoreError> {
        self.0
            .get(column)
            .ok_or_else(|| StoreError::Corrupt(format!("column {column}: missing")))
    }

    fn wrong(&self, column: usize, expected: &str) -> StoreError {
        let found = self.0.get(column).map_or("nothing", Cell::kind);
        StoreError::Corrupt(format!("column {column}: expected {expected}, found {found}"))
    }

    /// An integer column.
    pub(crate) fn int(&self, column: usize) -> Result<i64, StoreError> {
        match self.cell(column)? {
            Cell::Int(v) => Ok(*v),
            _ => Err(self.wrong(column, "an integer")),
        }
    }

    /// A boolean column: PostgreSQL's `BOOLEAN`, SQLite's 0 or 1.
    pub(crate) fn bool(&self, column: usize) -> Result<bool, StoreError> {
        match self.cell(column)? {
            Cell::Bool(v) => Ok(*v),
            Cell::Int(v) => Ok(*v != 0),
            _ => Err(self.wrong(column, "a boolean")),
        }
    }

    /// A text column that is never `NULL`.
    pub(crate) fn text(&self, column: usize) -> Result<&str, StoreError> {
        self.opt_text(column)?.ok_or_else(|| self.wrong(column, "text"))
    }

    /// A text column that may be `NULL`.
    pub(crate) fn opt_text(&self, column: usize) -> Result<Option<&str>, StoreError> {
        match self.cell(column)? {
            Cell::Text(v) => Ok(Some(v)),
            Cell::Null => Ok(None),
            _ => Err(self.wrong(column, "text")),
        }
    }

    /// A floating-point column that may be `NULL`.
    pub(crate) fn opt_real(&self, column: usize) -> Result<Option<f64>, StoreError> {
        match self.cell(column)? {
            Cell::Real(v) => Ok(Some(*v)),
            Cell::Int(v) => Ok(Some(*v as f64)),
            Cell::Null => Ok(None),
            _ => Err(self.wrong(column, "a real")),
        }
    }

    /// A bytes column.
    pub(crate) fn blob(&self, column: usize) -> Result<&[u8], StoreError> {
        match self.cell(column)? {
            Cell::Blob(v) => Ok(v),
            _ => Err(self.wrong(column, "bytes")),
        }
    }
}

/// A constraint the database refused a write for, which some operations answer with
/// their own error (a round committed twice, a run that does not exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A primary key or unique constraint.
    Unique,
    /// A foreign key: the row it references is missing.
    ForeignKey,
}

/// What the database said when a statement failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DbError {
    /// The constraint violated, when that is why.
    pub(crate) violation: Option<Violation>,
    /// The database's words.
    pub(crate) message: String,
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        StoreError::Database(e.message)
    }
}

/// A connection to one of the store's databases, with the SQL its dialect spells its own
/// way. Everything [`Storage`](super::Storage) does is written once over it, in
/// [`ops`](super::ops).
///
/// Every method takes `&self`: the store's readers do, and a store is used from one thread
/// at a time (`Storage` is `Send`, not `Sync`).
pub(crate) trait Database: Send {
    /// The time now as text in SQLite's `strftime('%Y-%m-%dT%H:%M:%fZ', 'now')` format
    /// (UTC, milliseconds), taken from the clock when the statement runs.
    const NOW: &'static str;
    /// The time now in seconds since the Unix epoch, on the database's clock: one clock
    /// for every aggregator sharing the store.
    const EPOCH_NOW: &'static str;
    /// Starts a transaction that the operations' reads and writes can rely on: no other
    /// writer's change between a check and the write that follows it.
    const BEGIN: &'static str;
    /// Appended to a `SELECT` of rows the transaction goes on to write: locks them until
    /// it ends.
    const LOCK_ROWS: &'static str;
    /// Appended to the `SELECT` that picks a trial to claim: locks the row picked, and
    /// passes over rows another transaction has locked.
    const LOCK_ROWS_SKIP_LOCKED: &'static str;

    /// The aggregator this store writes as.
    fn owner(&self) -> &str;

    /// The aggregator this store writes as, to change it.
    fn owner_mut(&mut self) -> &mut String;

    /// Runs statements without parameters or results (`BEGIN`, `COMMIT`, `ROLLBACK`).
    ///
    /// # Errors
    /// The database's.
    fn batch(&self, sql: &str) -> Result<(), DbError>;

    /// Runs one statement; returns how many rows it changed.
    ///
    /// # Errors
    /// The database's.
    fn execute(&self, sql: &str, params: &[Value<'_>]) -> Result<u64, DbError>;

    /// Runs one statement; returns every row it returned.
    ///
    /// # Errors
    /// [`StoreError::Database`], or [`StoreError::Corrupt`] for a value that does not read
    /// (text that is not UTF-8, a column of a type the store never writes).
    fn query(&self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError>;

    /// Inside a transaction, makes the aggregators that find or create a run named `name`
    /// take turns, so they all find the one the first created.
    ///
    /// # Errors
    /// The database's.
    fn lock_run_name(&self, name: &str) -> Result<(), DbError>;

    /// Inserts a round's per-agent rows, as one statement when the database can; an agent
    /// named twice keeps one row.
    ///
    /// # Errors
    /// The database's.
    fn insert_agents(&self, run: RunId, trial: i64, round: i64, rows: &[AgentRow]) -> Result<(), DbError>;
}
