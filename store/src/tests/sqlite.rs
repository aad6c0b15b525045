//! The SQLite store: the contract on a file, and opening, migrating and refusing files.

use std::path::Path;

use super::runs::{lease_suite, suite, writer_keeps_the_lease};
use super::studies::{sharing_suite, study_suite};
use super::*;

#[test]
fn sqlite_keeps_the_storage_contract() {
    let db = TempDb::new("suite");
    let mut store = SqliteStore::open(&db.0).unwrap();
    suite(&mut store);
    study_suite(&mut store);
    drop(store);
    // Everything is still there after a reopen, read-only too.
    let store = SqliteStore::open_read_only(&db.0).unwrap();
    assert_eq!(store.runs().unwrap().len(), 4);
    assert_eq!(store.rounds(1, Some(0)).unwrap().len(), 6);
    assert_eq!(store.trials(3).unwrap().len(), 2);
    assert!(
        store.trials(3).unwrap()[1].trial.fail_reason.is_some(),
        "a failed trial keeps its reason"
    );
}

#[test]
fn sqlite_studies_are_shared_between_aggregators() {
    let db = TempDb::new("shared");
    let mut a = SqliteStore::open(&db.0).unwrap();
    let mut b = SqliteStore::open(&db.0).unwrap();
    sharing_suite(&mut a, &mut b);
}

#[test]
fn sqlite_runs_have_one_aggregator_at_a_time() {
    let db = TempDb::new("lease");
    let mut a = SqliteStore::open(&db.0).unwrap();
    let mut b = SqliteStore::open(&db.0).unwrap();
    lease_suite(&mut a, &mut b);
    writer_keeps_the_lease(Box::new(a), &mut b);
}

#[test]
fn a_first_version_store_migrates_and_keeps_its_runs() {
    let db = TempDb::new("v1");
    let conn = rusqlite::Connection::open(&db.0).unwrap();
    conn.execute_batch(&format!(
        "{}; PRAGMA application_id = {}; PRAGMA user_version = 1;",
        crate::sqlite::MIGRATIONS[0],
        0x4644_544E
    ))
    .unwrap();
    conn.execute(
        "INSERT INTO runs (name, kind, status, rounds_planned, manifest_hash, config)
         VALUES ('old', 'run', 'finished', 3, 'ab', '{}')",
        [],
    )
    .unwrap();
    drop(conn);
    assert!(
        SqliteStore::open_read_only(&db.0).is_err(),
        "a read-only open must not use an unmigrated store"
    );
    let mut store = SqliteStore::open(&db.0).unwrap();
    assert_eq!(store.runs().unwrap()[0].name, "old");
    study_suite(&mut store);
    drop(store);
    let version: i64 = rusqlite::Connection::open(&db.0)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn readers_see_committed_rounds_while_the_writer_commits() {
    let db = TempDb::new("reader");
    let mut store = SqliteStore::open(&db.0).unwrap();
    let run = store.create_run(&new_run("live")).unwrap();
    let writer = StoreWriter::spawn(Box::new(store), run, 3);
    let reader = SqliteStore::open_read_only(&db.0).unwrap();
    let mut seen = 0;
    for round in 0..40 {
        writer.commit(record(round, None), state(round + 1, 50_000)).unwrap();
        let now = reader.run(run).unwrap().rounds_committed;
        assert!(now >= seen, "committed rounds went back from {seen} to {now}");
        seen = now;
    }
    let (stats, _) = writer.finish().unwrap();
    assert_eq!(stats.commits, 40);
    assert_eq!(reader.rounds(run, Some(0)).unwrap().len(), 40);
    assert_eq!(reader.latest_checkpoint(run, 0).unwrap().unwrap(), state(40, 50_000));
}

fn store_with_rounds(path: &Path) {
    let mut store = SqliteStore::open(path).unwrap();
    let run = store.create_run(&new_run("r")).unwrap();
    for round in 0..4 {
        store
            .commit_round(run, &record(round, None), state(round + 1, 20_000), 4)
            .unwrap();
    }
}

#[test]
fn damaged_foreign_and_newer_files_are_refused_at_open() {
    // Not SQLite at all.
    let junk = TempDb::new("junk");
    std::fs::write(&junk.0, b"these bytes are not a database, they are a shopping list").unwrap();
    let err = SqliteStore::open(&junk.0).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains(&junk.0.display().to_string()), "{err}");

    // A truncated store.
    let cut = TempDb::new("truncated");
    store_with_rounds(&cut.0);
    let len = std::fs::metadata(&cut.0).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&cut.0).unwrap();
    file.set_len(len / 3).unwrap();
    drop(file);
    let err = SqliteStore::open(&cut.0).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");

    // A corrupt table page (the second page, the root of `runs`: 64 KiB pages).
    let bad = TempDb::new("corrupt");
    store_with_rounds(&bad.0);
    let mut bytes = std::fs::read(&bad.0).unwrap();
    for b in &mut bytes[65_536..65_536 + 8192] {
        *b ^= 0x5A;
    }
    std::fs::write(&bad.0, &bytes).unwrap();
    // Refused at open, or when the damaged part is read: every checkpoint is decoded.
    let result = SqliteStore::open(&bad.0).and_then(|s| {
        s.rounds(1, None)?;
        let conn = rusqlite::Connection::open(&bad.0).map_err(|e| StoreError::Database(e.to_string()))?;
        let mut stmt = conn
            .prepare("SELECT state FROM checkpoints")
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let blobs: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(|e| StoreError::Database(e.to_string()))?;
        for blob in blobs {
            decode_checkpoint(&blob)?;
        }
        Ok(())
    });
    assert!(result.is_err(), "a corrupt store opened and read whole: {result:?}");

    // Flipped bytes inside the last checkpoint's model values, which no page check sees.
    let flipped = TempDb::new("flipped");
    store_with_rounds(&flipped.0);
    let mut bytes = std::fs::read(&flipped.0).unwrap();
    let last = state(4, 20_000);
    let needle: Vec<u8> = last.global[10_000..10_004]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("the last checkpoint's values are in the file");
    bytes[at + 1] ^= 0x01;
    std::fs::write(&flipped.0, &bytes).unwrap();
    let store = SqliteStore::open(&flipped.0).unwrap();
    let err = store.latest_checkpoint(1, 0).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");

    // Another application's SQLite file.
    let foreign = TempDb::new("foreign");
    rusqlite::Connection::open(&foreign.0)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .unwrap();
    let err = SqliteStore::open(&foreign.0).unwrap_err();
    assert!(err.to_string().contains("not a fedtune store"), "{err}");

    // A store from a newer fedtune.
    let newer = TempDb::new("newer");
    store_with_rounds(&newer.0);
    rusqlite::Connection::open(&newer.0)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99;")
        .unwrap();
    let err = SqliteStore::open(&newer.0).unwrap_err();
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
    assert!(err.to_string().contains("newer"), "{err}");

    // A missing file is created by `open`, refused by `open_read_only`.
    let missing = TempDb::new("missing");
    assert!(matches!(
        SqliteStore::open_read_only(&missing.0),
        Err(StoreError::Open { .. })
    ));
}
