//! The last update an agent trained, kept until the next task.
//!
//! An aggregator that dies after receiving a round's updates but before committing the
//! round resumes from its last checkpoint and sends the round's tasks again — the same
//! trial, round, seed, hyperparameters and global model. An agent that trained that task
//! answers it from here instead of training again; any other task replaces it. Nothing
//! can count twice: the aggregator only asks again for rounds it did not commit, and an
//! answer for a round it did commit is never sent, because no task asks for it.

use fedtune_protocol::{ManifestHash, Task, Update};

use crate::trainer::FitOutcome;

/// What makes two tasks the same work.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskKey {
    study: String,
    trial: u64,
    round: u64,
    seed: u64,
    manifest_hash: ManifestHash,
    hyperparameters: fedtune_protocol::ClientHyperparameters,
    measure_train_loss: bool,
    frozen: Vec<String>,
    /// The global model: its length and CRC-32.
    global: (usize, u32),
}

impl TaskKey {
    /// The key of `task` sent with the global model `global`.
    pub(crate) fn of(task: &Task, global: &[f32]) -> Self {
        Self {
            study: task.study.clone(),
            trial: task.trial,
            round: task.round,
            seed: task.seed,
            manifest_hash: task.manifest_hash,
            hyperparameters: task.hyperparameters.clone(),
            measure_train_loss: task.measure_train_loss,
            frozen: task.frozen.clone(),
            global: (
                global.len(),
                crc32fast::hash(&fedtune_protocol::tensor::f32_to_le_bytes(global)),
            ),
        }
    }
}

/// A trained task and its result.
#[derive(Debug)]
pub(crate) struct LastUpdate {
    key: TaskKey,
    /// The update message.
    pub(crate) update: Update,
    /// Its payload.
    pub(crate) delta: Vec<f32>,
}

impl LastUpdate {
    /// Keeps `fit`, the result of the task `key` names.
    pub(crate) fn new(key: TaskKey, update: Update, fit: FitOutcome) -> Self {
        Self {
            key,
            update,
            delta: fit.delta,
        }
    }

    /// Whether this is the result of the task `key` names.
    pub(crate) fn answers(&self, key: &TaskKey) -> bool {
        &self.key == key
    }
}
