//! The PostgreSQL store: the contract on a throwaway server's database, and connecting,
//! migrating and refusing databases. These tests need `FEDTUNE_TEST_POSTGRES_URL`.

use std::path::Path;

use super::runs::{lease_suite, suite, writer_keeps_the_lease};
use super::studies::{sharing_suite, study_suite};
use super::*;

#[test]
fn store_locations_hide_passwords() {
    let url = Path::new("postgresql://fedtune:s3cret@127.0.0.1:5432/fedtune");
    assert!(is_postgres_url(url) && !is_postgres_url(Path::new("postgres.db")));
    assert_eq!(display_location(url), "postgresql://fedtune@127.0.0.1:5432/fedtune");
    assert_eq!(display_location(Path::new("runs/fedtune.db")), "runs/fedtune.db");
    // A URL opens PostgreSQL, never a file of that name.
    let Err(err) = open(Path::new("postgresql://nobody:pw@127.0.0.1:1/none?connect_timeout=1")) else {
        panic!("nothing listens on port 1");
    };
    assert!(
        matches!(err, StoreError::Open { .. }) && !err.to_string().contains("pw@"),
        "{err}"
    );
}

/// The variable `bash .ci/test` sets to its throwaway server's URL.
const POSTGRES_URL: &str = "FEDTUNE_TEST_POSTGRES_URL";

/// A fresh database on the test server, dropped (with any connection left to it) when
/// this is dropped. Declare it before the stores that use it, so it drops after them.
struct TempPg {
    server: ::postgres::Config,
    name: String,
    url: String,
}

/// A libpq key/value string quoted as libpq reads it.
fn pg_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl TempPg {
    fn new(label: &str) -> Self {
        let url = std::env::var(POSTGRES_URL).unwrap_or_else(|_| {
            panic!(
                "{POSTGRES_URL} is not set, and the PostgreSQL store's tests need a server: run `bash .ci/test`, \
                 which starts a throwaway one on 127.0.0.1 and sets it (or set it to a postgresql:// URL of a \
                 test server on 127.0.0.1 whose user may create databases)"
            )
        });
        let server: ::postgres::Config = url
            .parse()
            .unwrap_or_else(|e| panic!("{POSTGRES_URL} is not a PostgreSQL URL: {e}"));
        let loopback = |host: &::postgres::config::Host| match host {
            ::postgres::config::Host::Tcp(name) => ["127.0.0.1", "localhost", "::1"].contains(&name.as_str()),
            _ => false,
        };
        assert!(
            !server.get_hosts().is_empty() && server.get_hosts().iter().all(loopback),
            "{POSTGRES_URL} must name a server on 127.0.0.1: these tests create and drop databases"
        );
        let name = format!(
            "fedtune_test_{label}_{}_{:x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut admin = server
            .connect(::postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot reach the test server at {POSTGRES_URL}: {e:?}"));
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let mut url = format!("dbname={name}");
        if let ::postgres::config::Host::Tcp(host) = &server.get_hosts()[0] {
            url += &format!(" host={}", pg_quote(host));
        }
        if let Some(port) = server.get_ports().first() {
            url += &format!(" port={port}");
        }
        if let Some(user) = server.get_user() {
            url += &format!(" user={}", pg_quote(user));
        }
        if let Some(password) = server.get_password() {
            url += &format!(" password={}", pg_quote(std::str::from_utf8(password).unwrap()));
        }
        Self { server, name, url }
    }

    fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url).unwrap()
    }

    /// A plain connection, to change the database behind the store's back.
    fn sql(&self) -> ::postgres::Client {
        ::postgres::Client::connect(&self.url, ::postgres::NoTls).unwrap()
    }

    fn version(&self) -> i64 {
        self.sql()
            .query_one("SELECT version FROM fedtune_schema", &[])
            .unwrap()
            .get(0)
    }
}

impl Drop for TempPg {
    fn drop(&mut self) {
        let dropped = self
            .server
            .connect(::postgres::NoTls)
            .and_then(|mut admin| admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)));
        if let Err(e) = dropped {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

/// A timestamp with its digits as zeros: the same for SQLite's and PostgreSQL's stores.
fn shape(timestamp: &str) -> String {
    timestamp
        .chars()
        .map(|c| if c.is_ascii_digit() { '0' } else { c })
        .collect()
}

#[test]
fn postgres_keeps_the_storage_contract() {
    let db = TempPg::new("suite");
    let mut store = db.store();
    suite(&mut store);
    study_suite(&mut store);
    drop(store);
    assert_eq!(db.version(), SCHEMA_VERSION);
    // Everything is still there after a reconnect, which migrates nothing.
    let store = db.store();
    assert_eq!(db.version(), SCHEMA_VERSION);
    let runs = store.runs().unwrap();
    assert_eq!(runs.len(), 4);
    assert_eq!(store.rounds(1, Some(0)).unwrap().len(), 6);
    assert_eq!(store.trials(3).unwrap().len(), 2);
    assert!(
        store.trials(3).unwrap()[1].trial.fail_reason.is_some(),
        "a failed trial keeps its reason"
    );
    assert_eq!(store.checkpoint_rounds(1, 0).unwrap(), vec![1, 4, 5]);
    assert_eq!(store.latest_checkpoint(1, 0).unwrap().unwrap(), state(6, 1000));
    // Per-agent rows are stored as SQLite stores them.
    let agents: Vec<(String, String, Option<f64>)> = db
        .sql()
        .query(
            "SELECT agent, outcome, accuracy FROM round_agents WHERE run_id = 1 AND round = 0 ORDER BY agent",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        agents,
        vec![
            ("a".into(), "update".into(), Some(0.6)),
            ("b".into(), "update".into(), Some(0.4)),
            ("c".into(), "straggler".into(), None),
        ]
    );
    // Timestamps read as SQLite's do: `2025-01-02T03:04:05.678Z`.
    let sqlite = TempDb::new("shape");
    let mut reference = SqliteStore::open(&sqlite.0).unwrap();
    reference.create_run(&new_run("digits")).unwrap();
    let expected = shape(&reference.runs().unwrap()[0].created_at);
    assert_eq!(expected, "0000-00-00T00:00:00.000Z");
    let committed = &store.rounds(1, Some(0)).unwrap()[0].committed_at;
    let trial = &store.trials(3).unwrap()[0];
    for timestamp in [
        &runs[0].created_at,
        &runs[0].updated_at,
        committed,
        &trial.created_at,
        &trial.updated_at,
    ] {
        assert_eq!(shape(timestamp), expected, "{timestamp}");
    }
    assert!(runs[0].updated_at > runs[0].created_at, "{runs:?}");
}

#[test]
fn postgres_studies_are_shared_between_aggregators() {
    let db = TempPg::new("shared");
    let (mut a, mut b) = (db.store(), db.store());
    sharing_suite(&mut a, &mut b);
}

#[test]
fn postgres_runs_have_one_aggregator_at_a_time() {
    let db = TempPg::new("lease");
    let (mut a, mut b) = (db.store(), db.store());
    lease_suite(&mut a, &mut b);
    writer_keeps_the_lease(Box::new(a), &mut b);
}

#[test]
fn postgres_readers_see_committed_rounds_while_the_writer_commits() {
    let db = TempPg::new("reader");
    let mut store = db.store();
    let run = store.create_run(&new_run("live")).unwrap();
    let writer = StoreWriter::spawn(Box::new(store), run, 3);
    let reader = db.store();
    let mut seen = 0;
    for round in 0..40 {
        writer.commit(record(round, None), state(round + 1, 50_000)).unwrap();
        let now = reader.run(run).unwrap().rounds_committed;
        assert!(now >= seen, "committed rounds went back from {seen} to {now}");
        // A reader sees a round with its checkpoint, never one without the other.
        if let Some(latest) = reader.latest_checkpoint(run, 0).unwrap() {
            assert!(
                latest.round >= now,
                "round {} checkpoint with {now} rounds",
                latest.round
            );
        }
        seen = now;
    }
    let (stats, _) = writer.finish().unwrap();
    assert_eq!(stats.commits, 40);
    assert_eq!(reader.rounds(run, Some(0)).unwrap().len(), 40);
    assert_eq!(reader.latest_checkpoint(run, 0).unwrap().unwrap(), state(40, 50_000));
    assert_eq!(reader.checkpoint_rounds(run, 0).unwrap(), vec![37, 38, 39]);
}

#[test]
fn a_first_version_postgres_store_migrates_and_keeps_its_runs() {
    let db = TempPg::new("v1");
    db.sql()
        .batch_execute(&format!(
            "{}; INSERT INTO fedtune_schema (version) VALUES (1); {};
             INSERT INTO runs (name, kind, status, rounds_planned, manifest_hash, config)
             VALUES ('old', 'run', 'finished', 3, 'ab', '{{}}')",
            crate::postgres::VERSION_TABLE,
            crate::postgres::MIGRATIONS[0]
        ))
        .unwrap();
    let mut store = db.store();
    assert_eq!(db.version(), SCHEMA_VERSION);
    assert_eq!(store.runs().unwrap()[0].name, "old");
    study_suite(&mut store);
}

#[test]
fn postgres_refuses_foreign_and_newer_databases() {
    // Another application's tables under the store's names: refused, and left as they were.
    let foreign = TempPg::new("foreign");
    foreign
        .sql()
        .batch_execute("CREATE TABLE runs (x INTEGER); INSERT INTO runs VALUES (1);")
        .unwrap();
    let err = PostgresStore::connect(&foreign.url).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert!(
        err.to_string().contains("not a fedtune store") && err.to_string().contains("runs"),
        "{err}"
    );
    assert!(err.to_string().contains(&foreign.name), "{err}");
    let tables: i64 = foreign
        .sql()
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[])
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "a refused connect created tables");

    // The version table without its row.
    let unversioned = TempPg::new("unversioned");
    drop(unversioned.store());
    unversioned.sql().batch_execute("DELETE FROM fedtune_schema").unwrap();
    let err = PostgresStore::connect(&unversioned.url).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("version"), "{err}");

    // A store from a newer fedtune.
    let newer = TempPg::new("newer");
    let mut store = newer.store();
    store.create_run(&new_run("r")).unwrap();
    drop(store);
    newer
        .sql()
        .batch_execute("UPDATE fedtune_schema SET version = 99")
        .unwrap();
    let err = PostgresStore::connect(&newer.url).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerSchema {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(newer.version(), 99);
}

#[test]
fn postgres_connect_errors_name_the_server_never_the_password() {
    // Port 1 on loopback: nothing listens, the connect is refused at once.
    let err = PostgresStore::connect("postgresql://fedtune:hunter2-secret@127.0.0.1:1/runs").unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("postgres://fedtune@127.0.0.1:1/runs"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let err = PostgresStore::connect("postgresql://fedtune:hunter2-secret@127.0.0.1:notaport/runs").unwrap_err();
    assert!(
        matches!(err, StoreError::Open { .. }) && !err.to_string().contains("hunter2"),
        "{err}"
    );
}
