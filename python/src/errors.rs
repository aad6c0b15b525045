//! The exceptions the package raises, and how Rust errors become them.

use fedtune_tuning::StudyError;
use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};

create_exception!(
    fedtune,
    FedtuneError,
    PyException,
    "An operation fedtune refused or could not complete; the message says why."
);
create_exception!(
    fedtune,
    DuplicatedStudyError,
    FedtuneError,
    "`create_study` found a study of that name in the storage and `load_if_exists` is false."
);
create_exception!(
    fedtune,
    TrialPruned,
    FedtuneError,
    "Raised by an objective to stop its trial early (after `trial.should_prune()`); the trial is told pruned."
);
create_exception!(
    fedtune,
    StorageError,
    FedtuneError,
    "The study's storage (a journal, SQLite file or PostgreSQL database) failed or holds another study."
);

/// A [`FedtuneError`] saying `message`.
pub fn fedtune(message: impl std::fmt::Display) -> PyErr {
    FedtuneError::new_err(message.to_string())
}

/// A `ValueError` saying `message`.
pub fn value(message: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(message.to_string())
}

/// A [`StorageError`] saying `message`.
pub fn storage(message: impl std::fmt::Display) -> PyErr {
    StorageError::new_err(message.to_string())
}

/// The exception for a study's refusal: values that do not fit the study are a
/// `ValueError`, storage failures a [`StorageError`], the rest a [`FedtuneError`].
pub fn study(e: StudyError) -> PyErr {
    match e {
        StudyError::WrongValueCount { .. }
        | StudyError::NonFinite { .. }
        | StudyError::NoObjectives
        | StudyError::DuplicateObjective(_)
        | StudyError::Weights(_) => value(e),
        StudyError::Storage(_) | StudyError::Lost { .. } => storage(e),
        e => fedtune(e),
    }
}
