//! One task on the agent: training it off the async runtime (stopped when the aggregator
//! drops it), the update that reports it, and the count of how it ended. Plain and
//! secure-aggregation exchanges share these.

use std::sync::{Arc, Mutex};

use fedtune_protocol::{Task, Update};
use tracing::debug;

use crate::cancel::Cancel;
use crate::metrics::{AgentMetrics, TaskOutcome};
use crate::trainer::{FitOutcome, Trainer, TrainerError};

/// Counts a task's outcome when the agent keeps metrics.
pub(crate) fn count(metrics: Option<&AgentMetrics>, outcome: TaskOutcome) {
    if let Some(m) = metrics {
        m.task(outcome);
    }
}

/// The trainer, even when a panic poisoned its lock.
pub(crate) fn lock<T>(trainer: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Training state is rebuilt from each task, so a trainer poisoned by a panic is
    // still safe to use for the next one.
    trainer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `task` on a blocking thread with `cancel`; if `stopped` (the task stream's
/// `SendStream::stopped`) resolves meanwhile — the aggregator dropped the stream or the
/// connection — the task is marked dropped so training stops
/// at its next batch and the trainer is free for the next task.
pub(crate) async fn train_until_abandoned<T: Trainer>(
    stopped: impl Future<Output = Result<Option<quinn::VarInt>, quinn::StoppedError>>,
    trainer: Arc<Mutex<T>>,
    task: Task,
    global: Vec<f32>,
    cancel: Cancel,
    metrics: Option<Arc<AgentMetrics>>,
) -> Result<(Task, Result<FitOutcome, TrainerError>), tokio::task::JoinError> {
    let watch = cancel.clone();
    let mut training = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let result = lock(&trainer).fit(&task, &global, &cancel);
        (task, result, started.elapsed())
    });
    let done = |(task, result, elapsed): (Task, _, std::time::Duration)| {
        if let Some(m) = &metrics {
            m.trained_for(elapsed);
        }
        (task, result)
    };
    tokio::select! {
        finished = &mut training => finished.map(done),
        _ = stopped => {
            debug!("the aggregator dropped the task; stopping local training");
            watch.drop_task();
            training.await.map(done)
        }
    }
}

/// The update message that reports `fit`, the outcome of `task` (its payload is sent
/// separately).
pub(crate) fn update_for(task: &Task, fit: &FitOutcome) -> Update {
    Update {
        trial: task.trial,
        round: task.round,
        manifest_hash: task.manifest_hash,
        num_samples: fit.num_samples,
        metrics: fit.metrics.clone(),
        used: task.hyperparameters.clone(),
        proposal: fit.proposal.clone(),
        replayed: false,
    }
}
