//! Abandoning a task: its deadline, or the aggregator dropping it, stops local training.
//!
//! The aggregator stops waiting for a straggler at the round's deadline. An agent that
//! went on training would hold its trainer, so its next task would wait behind the
//! abandoned one and it would stay late round after round. A [`Cancel`] travels with
//! each task into [`Trainer::fit`](crate::trainer::Trainer::fit); the built-in trainer
//! checks it between batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Why a task was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Abandoned {
    /// The task's deadline passed: the aggregator no longer waits for its update.
    #[error("its deadline passed")]
    Deadline,
    /// The aggregator dropped the task (it reset the task's stream, or shut down).
    #[error("the aggregator dropped it")]
    Dropped,
}

/// Says whether the task being run is still wanted. Cheap to clone and to check.
#[derive(Debug, Clone)]
pub struct Cancel {
    deadline: Option<Instant>,
    dropped: Arc<AtomicBool>,
}

impl Cancel {
    /// A task that is never abandoned (evaluation, benchmarks, tests).
    pub fn never() -> Self {
        Self {
            deadline: None,
            dropped: Arc::default(),
        }
    }

    /// A task abandoned at `deadline`, or earlier when [`drop_task`](Self::drop_task) is called.
    pub fn until(deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
            dropped: Arc::default(),
        }
    }

    /// Marks the task as dropped by the aggregator; every clone sees it.
    pub fn drop_task(&self) {
        self.dropped.store(true, Ordering::Relaxed);
    }

    /// The task's deadline, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the task is still wanted.
    ///
    /// # Errors
    /// [`Abandoned`] once the task was dropped or its deadline passed.
    pub fn check(&self) -> Result<(), Abandoned> {
        if self.dropped.load(Ordering::Relaxed) {
            return Err(Abandoned::Dropped);
        }
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(Abandoned::Deadline),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_task_is_abandoned_at_its_deadline_or_when_dropped() {
        assert_eq!(Cancel::never().check(), Ok(()));
        let later = Cancel::until(Instant::now() + Duration::from_secs(60));
        assert_eq!(later.check(), Ok(()));
        let seen_elsewhere = later.clone();
        later.drop_task();
        assert_eq!(seen_elsewhere.check(), Err(Abandoned::Dropped));
        let past = Cancel::until(Instant::now() - Duration::from_millis(1));
        assert_eq!(past.check(), Err(Abandoned::Deadline));
    }
}
