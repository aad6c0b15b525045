//! What a store does, written once for both databases: every [`Storage`] operation and
//! its transaction, over the [`Database`] seam.
//!
//! The transactions hold because of how each database's [`Database::BEGIN`] and row locks
//! work. SQLite's `BEGIN IMMEDIATE` takes the file's write lock first, so the whole
//! transaction runs alone among writers and its row locks are nothing. PostgreSQL's
//! transactions run side by side: there, the rows an operation checks and then writes are
//! locked as they are read ([`Database::LOCK_ROWS`]), trials are numbered under the
//! study's row lock, and runs are found or created under a lock on their name.
//!
//! Leases — a run's, a trial's — are an owner and a heartbeat time (seconds since the
//! epoch on the database's clock, [`Database::EPOCH_NOW`], so that aggregators on several
//! machines agree on how old a heartbeat is).

use std::time::Duration;

use super::checkpoint::{decode_checkpoint, encode_checkpoint};
use super::sql::{Database, DbError, Row, Value, Violation};
use super::study::{TrialColumns, check_header, json, parse_header, trial_columns, trial_from_columns};
use super::{NewRun, RunId, RunKind, RunStatus, RunSummary, Storage, StoreError, StoredRound, StoredTrial, agent_rows};
use fedtune_federation::{FederationState, RoundRecord};
use fedtune_tuning::{Created, FrozenTrial, Params, StudyHeader, TrialState};

/// A run with the number of its committed rounds, as [`summary`] reads it.
const SUMMARY: &str = "SELECT r.id, r.name, r.kind, r.status,
        (SELECT count(*) FROM rounds WHERE run_id = r.id),
        r.rounds_planned, r.manifest_hash, r.created_at, r.updated_at, r.owner
    FROM runs r";

/// The trials of study `?1`, as [`stored_trial`] reads them.
const TRIALS: &str = "SELECT number, state, params, objective_values, feasible, intermediate, created_at, updated_at,
        owner, fail_reason
    FROM trials WHERE run_id = ?1";

fn summary(row: &Row) -> Result<RunSummary, StoreError> {
    Ok(RunSummary {
        id: row.int(0)?,
        name: row.text(1)?.to_owned(),
        kind: RunKind::parse(row.text(2)?)?,
        status: RunStatus::parse(row.text(3)?)?,
        rounds_committed: row.int(4)? as u64,
        rounds_planned: row.int(5)? as u64,
        manifest_hash: row.text(6)?.to_owned(),
        created_at: row.text(7)?.to_owned(),
        updated_at: row.text(8)?.to_owned(),
        owner: row.opt_text(9)?.map(str::to_owned),
    })
}

fn stored_trial(run: RunId, row: &Row) -> Result<StoredTrial, StoreError> {
    let columns = TrialColumns {
        state: row.text(1)?.to_owned(),
        params: row.text(2)?.to_owned(),
        values: row.opt_text(3)?.map(str::to_owned),
        intermediate: row.text(5)?.to_owned(),
        fail_reason: row.opt_text(9)?.map(str::to_owned),
    };
    Ok(StoredTrial {
        trial: trial_from_columns(run, row.int(0)? as u64, columns, row.bool(4)?)?,
        owner: row.opt_text(8)?.map(str::to_owned),
        created_at: row.text(6)?.to_owned(),
        updated_at: row.text(7)?.to_owned(),
    })
}

/// The error of a statement writing into `run`: a missing run when the database says its
/// row is not there.
fn in_run(run: RunId) -> impl FnOnce(DbError) -> StoreError {
    move |e| match e.violation {
        Some(Violation::ForeignKey) => StoreError::NoSuchRun(run),
        _ => e.into(),
    }
}

/// Runs `body` in a transaction: committed when it succeeds, rolled back when it fails.
/// A failed rollback is not reported over the failure that caused it.
fn transaction<D: Database, T>(db: &D, body: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    db.batch(D::BEGIN)?;
    let done = body().and_then(|value| Ok(db.batch("COMMIT").map(|()| value)?));
    if done.is_err() {
        // Also after a failed COMMIT: SQLite's transaction may still be open then (PostgreSQL's
        // has ended, and it only warns).
        let _ = db.batch("ROLLBACK");
    }
    done
}

/// The owner of trial `number` of study `run` when it is not `me`; locks the trial's row
/// until the transaction ends, so a claim cannot slip in before the write.
fn other_owner<D: Database>(db: &D, run: RunId, number: u64, me: &str) -> Result<Option<String>, StoreError> {
    let rows = db.query(
        &format!(
            "SELECT owner FROM trials WHERE run_id = ?1 AND number = ?2{}",
            D::LOCK_ROWS
        ),
        &[run.into(), (number as i64).into()],
    )?;
    let owner = match rows.first() {
        Some(row) => row.opt_text(0)?,
        None => None,
    };
    Ok(owner.filter(|o| *o != me).map(str::to_owned))
}

/// Refuses a write to trial `number` of study `run` by anyone but its owner.
fn check_owner<D: Database>(db: &D, run: RunId, number: u64) -> Result<(), StoreError> {
    match other_owner(db, run, number, db.owner())? {
        Some(owner) => Err(StoreError::NotOwner {
            run,
            trial: number,
            owner,
        }),
        None => Ok(()),
    }
}

/// A run's lease as stored: its status, its holder, and the age of the holder's last
/// heartbeat in seconds (`None` when it never beat).
struct Lease {
    status: RunStatus,
    owner: Option<String>,
    age: Option<f64>,
}

impl Lease {
    /// Reads run `run`'s lease and locks its row until the transaction ends, so that the
    /// write that follows the check is the checker's.
    fn of<D: Database>(db: &D, run: RunId) -> Result<Self, StoreError> {
        let rows = db.query(
            &format!(
                "SELECT status, owner, {} - heartbeat_at FROM runs WHERE id = ?1{}",
                D::EPOCH_NOW,
                D::LOCK_ROWS
            ),
            &[run.into()],
        )?;
        let row = rows.first().ok_or(StoreError::NoSuchRun(run))?;
        Ok(Self {
            status: RunStatus::parse(row.text(0)?)?,
            owner: row.opt_text(1)?.map(str::to_owned),
            age: row.opt_real(2)?,
        })
    }

    /// The owner other than `me` that holds the lease now, and how many seconds ago it was
    /// last seen: a run that has not ended, under another owner whose heartbeat is at most
    /// `stale_after` old. An ended run, a run never leased, one of `me`'s (a restart under
    /// the same owner) or one whose holder went silent is free.
    fn live_holder(&self, me: &str, stale_after: Duration) -> Option<(&str, f64)> {
        let owner = self.owner.as_deref().filter(|owner| *owner != me)?;
        let age = self.age?;
        (self.status == RunStatus::Running && age <= stale_after.as_secs_f64()).then_some((owner, age.max(0.0)))
    }

    /// Refuses a write to the run by anyone but the lease's holder, once it has one.
    fn check_holder(&self, run: RunId, me: &str) -> Result<(), StoreError> {
        match self.owner.as_deref() {
            Some(owner) if owner != me => Err(StoreError::RunTaken {
                run,
                owner: owner.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

/// Registers a new run (status `running`); returns its id.
fn insert_run<D: Database>(db: &D, run: &NewRun) -> Result<RunId, StoreError> {
    let rows = db.query(
        "INSERT INTO runs (name, kind, status, rounds_planned, manifest_hash, config)
         VALUES (?1, ?2, 'running', ?3, ?4, ?5) RETURNING id",
        &[
            (&run.name).into(),
            run.kind.as_str().into(),
            (run.rounds_planned as i64).into(),
            (&run.manifest_hash).into(),
            (&run.config).into(),
        ],
    )?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Database("inserting a run returned no id".into()))?;
    row.int(0)
}

/// One run, if it exists.
fn find_run<D: Database>(db: &D, run: RunId) -> Result<Option<RunSummary>, StoreError> {
    let rows = db.query(&format!("{SUMMARY} WHERE r.id = ?1"), &[run.into()])?;
    rows.first().map(summary).transpose()
}

/// The trials of study `run`, in number order.
fn trials_of<D: Database>(db: &D, run: RunId) -> Result<Vec<StoredTrial>, StoreError> {
    let rows = db.query(&format!("{TRIALS} ORDER BY number"), &[run.into()])?;
    rows.iter().map(|row| stored_trial(run, row)).collect()
}

impl<D: Database> Storage for D {
    fn set_owner(&mut self, owner: &str) {
        owner.clone_into(self.owner_mut());
    }

    fn create_run(&mut self, run: &NewRun) -> Result<RunId, StoreError> {
        insert_run(self, run)
    }

    fn find_or_create_run(&mut self, run: &NewRun) -> Result<(RunSummary, bool), StoreError> {
        transaction(self, || {
            self.lock_run_name(&run.name)?;
            if let Some(found) = self.resumable_run(&run.name, run.kind)? {
                return Ok((found, false));
            }
            let id = insert_run(self, run)?;
            Ok((self.run(id)?, true))
        })
    }

    fn resumable_run(&self, name: &str, kind: RunKind) -> Result<Option<RunSummary>, StoreError> {
        let rows = self.query(
            &format!(
                "{SUMMARY} WHERE r.name = ?1 AND r.kind = ?2 AND r.status != 'finished' ORDER BY r.id DESC LIMIT 1"
            ),
            &[name.into(), kind.as_str().into()],
        )?;
        rows.first().map(summary).transpose()
    }

    fn run(&self, run: RunId) -> Result<RunSummary, StoreError> {
        find_run(self, run)?.ok_or(StoreError::NoSuchRun(run))
    }

    fn runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        let rows = self.query(&format!("{SUMMARY} ORDER BY r.id"), &[])?;
        rows.iter().map(summary).collect()
    }

    fn set_status(&mut self, run: RunId, status: RunStatus, rounds_planned: Option<u64>) -> Result<(), StoreError> {
        transaction(self, || {
            Lease::of(self, run)?.check_holder(run, self.owner())?;
            // An ended run's lease is free: its owner stays, as who served it last.
            self.execute(
                &format!(
                    "UPDATE runs SET status = ?2, rounds_planned = coalesce(?3, rounds_planned), updated_at = {}
                     WHERE id = ?1",
                    D::NOW
                ),
                &[
                    run.into(),
                    status.as_str().into(),
                    rounds_planned.map(|r| r as i64).into(),
                ],
            )?;
            Ok(())
        })
    }

    fn take_run(&mut self, run: RunId, stale_after: Duration) -> Result<(), StoreError> {
        transaction(self, || {
            let lease = Lease::of(self, run)?;
            if let Some((owner, seen_secs_ago)) = lease.live_holder(self.owner(), stale_after) {
                return Err(StoreError::RunBusy {
                    run,
                    owner: owner.to_owned(),
                    seen_secs_ago,
                    timeout_secs: stale_after.as_secs_f64(),
                });
            }
            // Running at once: a lease on a run still marked ended would look free to others.
            self.execute(
                &format!(
                    "UPDATE runs SET owner = ?2, heartbeat_at = {}, status = 'running', updated_at = {} WHERE id = ?1",
                    D::EPOCH_NOW,
                    D::NOW
                ),
                &[run.into(), self.owner().into()],
            )?;
            Ok(())
        })
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
        let json = json(record)?;
        let blob = encode_checkpoint(state)?;
        let already = || StoreError::AlreadyCommitted {
            run,
            trial: trial_number,
            round: record.round,
        };
        transaction(self, || {
            Lease::of(self, run)?.check_holder(run, self.owner())?;
            check_owner(self, run, trial_number)?;
            let exists = self.query(
                "SELECT EXISTS (SELECT 1 FROM rounds WHERE run_id = ?1 AND trial = ?2 AND round = ?3)",
                &[run.into(), trial.into(), round.into()],
            )?;
            if exists.first().map(|row| row.bool(0)).transpose()? == Some(true) {
                return Err(already());
            }
            self.execute(
                "INSERT INTO rounds (run_id, trial, round, updates, applied, train_loss, federated_accuracy,
                     test_accuracy, test_loss, server_learning_rate, seconds, payload_bytes, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                &[
                    run.into(),
                    trial.into(),
                    round.into(),
                    (record.updates as i64).into(),
                    record.applied.into(),
                    record.train_loss.into(),
                    record.federated_accuracy.into(),
                    record.test.map(|t| t.accuracy).into(),
                    record.test.map(|t| t.loss).into(),
                    record.server_learning_rate.into(),
                    record.seconds.into(),
                    (record.payload_bytes as i64).into(),
                    json.as_str().into(),
                ],
            )
            .map_err(|e| match e.violation {
                // A writer that committed the same round between our check and this insert.
                Some(Violation::Unique) => already(),
                Some(Violation::ForeignKey) => StoreError::NoSuchRun(run),
                None => e.into(),
            })?;
            self.insert_agents(run, trial, round, &agent_rows(trial_number, record))?;
            // The model after round r - 1 is what round r's agents measured: that is its
            // score when no server-side test set scores it.
            if round > 0 {
                self.execute(
                    "UPDATE checkpoints SET score = ?4 WHERE run_id = ?1 AND trial = ?2 AND round = ?3 AND score IS NULL",
                    &[
                        run.into(),
                        trial.into(),
                        (round - 1).into(),
                        record.federated_accuracy.into(),
                    ],
                )?;
            }
            self.execute(
                "INSERT INTO checkpoints (run_id, trial, round, score, state) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    run.into(),
                    trial.into(),
                    round.into(),
                    record.test.map(|t| t.accuracy).into(),
                    blob.as_slice().into(),
                ],
            )?;
            // Keep the last `keep` and the best scored.
            self.execute(
                "DELETE FROM checkpoints WHERE run_id = ?1 AND trial = ?2
                   AND round NOT IN (SELECT round FROM checkpoints WHERE run_id = ?1 AND trial = ?2
                                     ORDER BY round DESC LIMIT ?3)
                   AND round NOT IN (SELECT round FROM checkpoints WHERE run_id = ?1 AND trial = ?2
                                     AND score IS NOT NULL ORDER BY score DESC, round DESC LIMIT 1)",
                &[run.into(), trial.into(), (keep.max(1) as i64).into()],
            )?;
            self.execute(
                &format!("UPDATE runs SET updated_at = {} WHERE id = ?1", D::NOW),
                &[run.into()],
            )?;
            Ok(())
        })
    }

    fn rounds(&self, run: RunId, trial: Option<u64>) -> Result<Vec<StoredRound>, StoreError> {
        // The cast tells PostgreSQL the parameter's type where `IS NULL` alone does not.
        let rows = self.query(
            "SELECT trial, committed_at, record FROM rounds
             WHERE run_id = ?1 AND (CAST(?2 AS BIGINT) IS NULL OR trial = ?2) ORDER BY trial, round",
            &[run.into(), trial.map(|t| t as i64).into()],
        )?;
        rows.iter()
            .map(|row| {
                let record: RoundRecord = serde_json::from_str(row.text(2)?)
                    .map_err(|e| StoreError::Corrupt(format!("round record of run {run}: {e}")))?;
                Ok(StoredRound {
                    trial: row.int(0)? as u64,
                    committed_at: row.text(1)?.to_owned(),
                    record,
                })
            })
            .collect()
    }

    fn latest_checkpoint(&self, run: RunId, trial: u64) -> Result<Option<FederationState>, StoreError> {
        let rows = self.query(
            "SELECT state FROM checkpoints WHERE run_id = ?1 AND trial = ?2 ORDER BY round DESC LIMIT 1",
            &[run.into(), (trial as i64).into()],
        )?;
        let Some(row) = rows.first() else { return Ok(None) };
        Ok(Some(decode_checkpoint(row.blob(0)?)?))
    }

    fn checkpoint_rounds(&self, run: RunId, trial: u64) -> Result<Vec<u64>, StoreError> {
        let rows = self.query(
            "SELECT round FROM checkpoints WHERE run_id = ?1 AND trial = ?2 ORDER BY round",
            &[run.into(), (trial as i64).into()],
        )?;
        rows.iter().map(|row| Ok(row.int(0)? as u64)).collect()
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
        let json = json(header)?;
        self.execute(
            "INSERT INTO studies (run_id, header) VALUES (?1, ?2) ON CONFLICT (run_id) DO NOTHING",
            &[run.into(), json.as_str().into()],
        )?;
        let rows = self.query("SELECT header FROM studies WHERE run_id = ?1", &[run.into()])?;
        let stored = rows
            .first()
            .ok_or_else(|| StoreError::Database(format!("the header of study {run} vanished")))?;
        check_header(run, stored.text(0)?, header)?;
        Ok(trials_of(self, run)?.into_iter().map(|t| t.trial).collect())
    }

    fn study_header(&self, run: RunId) -> Result<Option<StudyHeader>, StoreError> {
        let rows = self.query("SELECT header FROM studies WHERE run_id = ?1", &[run.into()])?;
        rows.first().map(|row| parse_header(run, row.text(0)?)).transpose()
    }

    fn save_trial(&mut self, run: RunId, trial: &FrozenTrial) -> Result<(), StoreError> {
        let TrialColumns {
            state,
            params,
            values,
            intermediate,
            fail_reason,
        } = trial_columns(trial)?;
        transaction(self, || {
            check_owner(self, run, trial.number)?;
            self.execute(
                &format!(
                    "INSERT INTO trials (run_id, number, state, params, objective_values, feasible, intermediate,
                         owner, heartbeat_at, fail_reason)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, {epoch_now}, ?9)
                     ON CONFLICT (run_id, number) DO UPDATE SET state = excluded.state, params = excluded.params,
                         objective_values = excluded.objective_values, feasible = excluded.feasible,
                         intermediate = excluded.intermediate, owner = excluded.owner,
                         heartbeat_at = excluded.heartbeat_at, fail_reason = excluded.fail_reason,
                         updated_at = {now}",
                    epoch_now = D::EPOCH_NOW,
                    now = D::NOW,
                ),
                &[
                    run.into(),
                    (trial.number as i64).into(),
                    state.as_str().into(),
                    params.as_str().into(),
                    values.as_deref().into(),
                    trial.feasible.into(),
                    intermediate.as_str().into(),
                    self.owner().into(),
                    fail_reason.as_deref().into(),
                ],
            )
            .map_err(in_run(run))?;
            Ok(())
        })
    }

    fn trials(&self, run: RunId) -> Result<Vec<StoredTrial>, StoreError> {
        trials_of(self, run)
    }

    fn create_trial(&mut self, run: RunId, params: &Params, limit: u64, unique: bool) -> Result<Created, StoreError> {
        let params_json = json(params)?;
        transaction(self, || {
            // The study's row is the lock: aggregators number their trials one at a time.
            let study = self.query(
                &format!("SELECT 1 FROM studies WHERE run_id = ?1{}", D::LOCK_ROWS),
                &[run.into()],
            )?;
            if study.is_empty() {
                return Err(StoreError::NoSuchRun(run));
            }
            let rows = self.query(
                "SELECT count(*), coalesce(max(number) + 1, 0) FROM trials WHERE run_id = ?1",
                &[run.into()],
            )?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::Database("counting trials returned no row".into()))?;
            let (count, next) = (row.int(0)?, row.int(1)?);
            if count as u64 >= limit {
                return Ok(Created::Full);
            }
            if unique && trials_of(self, run)?.iter().any(|t| &t.trial.params == params) {
                return Ok(Created::Duplicate);
            }
            self.execute(
                &format!(
                    "INSERT INTO trials (run_id, number, state, params, feasible, intermediate, owner, heartbeat_at)
                     VALUES (?1, ?2, 'running', ?3, true, '{{}}', ?4, {})",
                    D::EPOCH_NOW
                ),
                &[
                    run.into(),
                    next.into(),
                    params_json.as_str().into(),
                    self.owner().into(),
                ],
            )
            .map_err(in_run(run))?;
            Ok(Created::Trial(FrozenTrial {
                number: next as u64,
                params: params.clone(),
                values: None,
                state: TrialState::Running,
                feasible: true,
                intermediate: Default::default(),
                fail_reason: None,
            }))
        })
    }

    fn claim_trial(
        &mut self,
        run: RunId,
        stale_after: Duration,
        busy: &[u64],
    ) -> Result<Option<FrozenTrial>, StoreError> {
        // The busy trials are left out in the query, not after it: the one row it picks
        // and locks must be one this aggregator takes.
        let busy_clause = if busy.is_empty() {
            String::new()
        } else {
            let placeholders: Vec<String> = (0..busy.len()).map(|i| format!("?{}", i + 4)).collect();
            format!(" AND number NOT IN ({})", placeholders.join(", "))
        };
        let mut params: Vec<Value<'_>> = vec![run.into(), self.owner().into(), stale_after.as_secs_f64().into()];
        params.extend(busy.iter().map(|&n| Value::from(n as i64)));
        transaction(self, || {
            let rows = self.query(
                &format!(
                    "SELECT number FROM trials WHERE run_id = ?1 AND state = 'running'{busy_clause}
                       AND (owner IS NULL OR owner = ?2 OR heartbeat_at IS NULL OR heartbeat_at < {} - ?3)
                     ORDER BY number LIMIT 1{}",
                    D::EPOCH_NOW,
                    D::LOCK_ROWS_SKIP_LOCKED
                ),
                &params,
            )?;
            let Some(row) = rows.first() else { return Ok(None) };
            let number = row.int(0)?;
            self.execute(
                &format!(
                    "UPDATE trials SET owner = ?3, heartbeat_at = {}, updated_at = {}
                     WHERE run_id = ?1 AND number = ?2",
                    D::EPOCH_NOW,
                    D::NOW
                ),
                &[run.into(), number.into(), self.owner().into()],
            )?;
            let rows = self.query(&format!("{TRIALS} AND number = ?2"), &[run.into(), number.into()])?;
            rows.first()
                .map(|row| stored_trial(run, row).map(|t| t.trial))
                .transpose()
        })
    }

    fn heartbeat(&mut self, run: RunId) -> Result<(), StoreError> {
        self.execute(
            &format!(
                "UPDATE runs SET heartbeat_at = {} WHERE id = ?1 AND owner = ?2",
                D::EPOCH_NOW
            ),
            &[run.into(), self.owner().into()],
        )?;
        self.execute(
            &format!(
                "UPDATE trials SET heartbeat_at = {}
                 WHERE run_id = ?1 AND owner = ?2 AND state = 'running'",
                D::EPOCH_NOW
            ),
            &[run.into(), self.owner().into()],
        )?;
        Ok(())
    }
}
