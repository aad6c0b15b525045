//! The one writer of a run's store: a thread that owns the [`Storage`] and commits what
//! the federation hands it, so the run never waits on the disk.

use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{RunId, RunStatus, Storage, StoreError};
use fedtune_federation::{FederationState, RoundRecord};

/// Commits queued before [`StoreWriter::commit`] waits for the writer to catch up.
const QUEUE: usize = 2;

/// An operation run on the writer thread; it answers its caller itself.
type Call = Box<dyn FnOnce(&mut dyn Storage) + Send>;

/// Work handed to the writer thread, done in order.
enum Write {
    Round(Box<(RoundRecord, FederationState)>),
    Status(RunStatus, Option<u64>),
    /// Any other operation.
    Call(Call),
}

/// What committing cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WriterStats {
    /// Rounds committed.
    pub commits: u64,
    /// Seconds spent committing them (encoding, SQL, sync), summed.
    pub commit_seconds: f64,
    /// The slowest commit, in seconds.
    pub max_commit_seconds: f64,
}

/// Hands rounds, checkpoints and status changes of one run to its writer thread.
pub struct StoreWriter {
    run: RunId,
    queue: Option<SyncSender<Write>>,
    thread: Option<JoinHandle<(WriterStats, Box<dyn Storage>)>>,
    failed: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter").field("run", &self.run).finish()
    }
}

impl StoreWriter {
    /// Starts the writer of run `run`, keeping `keep` checkpoints per trial.
    pub fn spawn(store: Box<dyn Storage>, run: RunId, keep: usize) -> Self {
        Self::spawn_with_heartbeat(store, run, keep, None)
    }

    /// As [`spawn`](Self::spawn), refreshing this owner's heartbeats in the run every
    /// `heartbeat` while it waits for work ([`Storage::heartbeat`]): its lease on a run,
    /// its running trials of a study, which stay its own while the process lives.
    pub fn spawn_with_heartbeat(
        mut store: Box<dyn Storage>,
        run: RunId,
        keep: usize,
        heartbeat: Option<Duration>,
    ) -> Self {
        let (queue, writes) = sync_channel::<Write>(QUEUE);
        let failed = Arc::new(Mutex::new(None));
        let error = failed.clone();
        let thread = std::thread::spawn(move || {
            let mut stats = WriterStats::default();
            let mut last_beat = Instant::now();
            loop {
                let next = match heartbeat {
                    Some(every) => match writes.recv_timeout(every.saturating_sub(last_beat.elapsed())) {
                        Ok(write) => Some(write),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                    None => match writes.recv() {
                        Ok(write) => Some(write),
                        Err(_) => break,
                    },
                };
                if heartbeat.is_some_and(|every| last_beat.elapsed() >= every) {
                    last_beat = Instant::now();
                    if let Err(e) = store.heartbeat(run) {
                        // Not fatal: the next one may pass; a long outage hands the run or its trials on.
                        tracing::warn!(run, "store heartbeat: {e}");
                    }
                }
                let Some(write) = next else { continue };
                let result = match write {
                    Write::Round(round) => {
                        let (record, state) = *round;
                        let started = Instant::now();
                        let result = store.commit_round(run, &record, state, keep);
                        let seconds = started.elapsed().as_secs_f64();
                        stats.commits += u64::from(result.is_ok());
                        stats.commit_seconds += seconds;
                        stats.max_commit_seconds = stats.max_commit_seconds.max(seconds);
                        result
                    }
                    Write::Status(status, planned) => store.set_status(run, status, planned),
                    Write::Call(call) => {
                        call(store.as_mut());
                        Ok(())
                    }
                };
                if let Err(StoreError::NotOwner { trial, owner, .. }) = &result {
                    // The trial stops at its next report; the run's other trials go on.
                    tracing::warn!(run, trial, "round not committed: trial {trial} is now run by `{owner}`");
                    continue;
                }
                if let Err(e) = result {
                    tracing::error!(run, "store: {e}");
                    let mut slot = error.lock().unwrap_or_else(PoisonError::into_inner);
                    slot.get_or_insert(e.to_string());
                }
            }
            (stats, store)
        });
        Self {
            run,
            queue: Some(queue),
            thread: Some(thread),
            failed,
        }
    }

    /// The run written.
    pub fn run(&self) -> RunId {
        self.run
    }

    /// The first error the writer met, if any.
    pub fn error(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn send(&self, write: Write) -> Result<(), StoreError> {
        if let Some(e) = self.error() {
            return Err(StoreError::WriterGone(e));
        }
        let queue = self.queue.as_ref().ok_or(StoreError::WriterGone("closed".into()))?;
        // Blocks only when the writer is `QUEUE` commits behind.
        queue
            .send(write)
            .map_err(|_| StoreError::WriterGone("the writer thread ended".into()))
    }

    /// Queues a committed round and the state after it.
    ///
    /// # Errors
    /// [`StoreError::WriterGone`] when an earlier write failed.
    pub fn commit(&self, record: RoundRecord, state: FederationState) -> Result<(), StoreError> {
        self.send(Write::Round(Box::new((record, state))))
    }

    /// Runs `operation` on the store after everything queued before it and waits for
    /// its answer (for small writes the caller must see committed, such as a study's
    /// trials, and for reads of what the run wrote).
    ///
    /// # Errors
    /// What `operation` returns, or [`StoreError::WriterGone`] when an earlier write
    /// failed.
    pub fn call<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&mut dyn Storage) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = sync_channel(1);
        self.send(Write::Call(Box::new(move |store| {
            let _ = answer.send(operation(store));
        })))?;
        answered
            .recv()
            .map_err(|_| StoreError::WriterGone("the writer thread ended".into()))?
    }

    /// Queues a status change.
    ///
    /// # Errors
    /// [`StoreError::WriterGone`] when an earlier write failed.
    pub fn set_status(&self, status: RunStatus, rounds_planned: Option<u64>) -> Result<(), StoreError> {
        self.send(Write::Status(status, rounds_planned))
    }

    /// Waits until everything queued is written; returns the cost and the store.
    ///
    /// # Errors
    /// [`StoreError::WriterGone`] with the first error any write met.
    pub fn finish(mut self) -> Result<(WriterStats, Box<dyn Storage>), StoreError> {
        drop(self.queue.take());
        let thread = self.thread.take().expect("a writer finishes once");
        let done = thread
            .join()
            .map_err(|_| StoreError::WriterGone("the writer thread panicked".into()))?;
        match self.error() {
            Some(e) => Err(StoreError::WriterGone(e)),
            None => Ok(done),
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
