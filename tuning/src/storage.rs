//! Where a study's trials are kept (Optuna's `StudyStorage` seam).
//!
//! [`InMemory`] keeps nothing beyond the process. [`Journal`] appends every change of a
//! trial to a JSON-lines file and syncs it before the study goes on, so a study resumes
//! after a crash from what was written: the first line describes the study, each later
//! line is a whole trial snapshot, and the last snapshot of a trial wins.
//!
//! ```text
//! {"study":{"space":{...},"objectives":[{"name":"accuracy","direction":"maximize"}]}}
//! {"trial":{"number":0,"params":{"lr":0.01},"values":null,"state":"running",...}}
//! {"trial":{"number":0,"params":{"lr":0.01},"values":[0.93],"state":"complete",...}}
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::space::SearchSpace;
use serde::{Deserialize, Serialize};

use super::trial::FrozenTrial;
use crate::objective::Objective;

/// Why the storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The journal.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the journal is not what fedtune writes.
    #[error("{path} line {line}: {message}")]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Another storage (a run's store) refused the operation.
    #[error("{0}")]
    Backend(String),
    /// Another process runs the trial now (a shared study took it over): this one must
    /// not write it.
    #[error("trial {number} is now run by `{owner}`")]
    Lost {
        /// The trial.
        number: u64,
        /// Who runs it.
        owner: String,
    },
    /// The journal belongs to a study with another space or other objectives.
    #[error("{path} holds a study with {what}; use another file or the same study")]
    Mismatch {
        /// The journal.
        path: PathBuf,
        /// What differs.
        what: String,
    },
}

/// What a study is, as written at the top of a journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyHeader {
    /// The searched space.
    pub space: SearchSpace,
    /// The objectives, primary first.
    pub objectives: Vec<Objective>,
}

/// What [`StudyStorage::create`] did with a new trial.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// Stored, under the number the storage gave it.
    Trial(FrozenTrial),
    /// The study holds all the trials it was asked for.
    Full,
    /// A trial with the same parameters exists (only refused when asked to be unique).
    Duplicate,
}

/// Keeps a study's trials.
pub trait StudyStorage: Send {
    /// Opens the storage for the study `header` describes and returns the trials it
    /// already holds, in number order.
    ///
    /// # Errors
    /// When the stored study is unreadable or is a different study.
    fn open(&mut self, header: &StudyHeader) -> Result<Vec<FrozenTrial>, StorageError>;

    /// Records the current snapshot of `trial` (new or changed); once this returns,
    /// the change survives a crash.
    ///
    /// # Errors
    /// When the snapshot cannot be written.
    fn save(&mut self, trial: &FrozenTrial) -> Result<(), StorageError>;

    /// Records a new trial. A storage several processes share numbers it itself (the
    /// trial's number is a proposal), may refuse it once the study is full and, when
    /// `unique`, refuses parameters another trial has; by default it is saved as given.
    ///
    /// # Errors
    /// When the trial cannot be written.
    fn create(&mut self, trial: &FrozenTrial, unique: bool) -> Result<Created, StorageError> {
        let _ = unique;
        self.save(trial)?;
        Ok(Created::Trial(trial.clone()))
    }

    /// Every trial as the storage holds it now, when other processes add to it (a
    /// shared study); `None` when this study is its only writer (the default).
    ///
    /// # Errors
    /// When the storage cannot be read.
    fn refresh(&mut self) -> Result<Option<Vec<FrozenTrial>>, StorageError> {
        Ok(None)
    }
}

/// No persistence: the study lives as long as the process.
#[derive(Debug, Default, Clone, Copy)]
pub struct InMemory;

impl StudyStorage for InMemory {
    fn open(&mut self, _: &StudyHeader) -> Result<Vec<FrozenTrial>, StorageError> {
        Ok(Vec::new())
    }

    fn save(&mut self, _: &FrozenTrial) -> Result<(), StorageError> {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Study(StudyHeader),
    Trial(FrozenTrial),
}

/// An append-only JSON-lines journal of a study.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
}

impl Journal {
    /// A journal at `path`, created on [`StudyStorage::open`] if it does not exist.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            file: None,
        }
    }

    /// The journal's file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StorageError {
        StorageError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn append(&mut self, line: &Line) -> Result<(), StorageError> {
        let mut text = serde_json::to_string(line).map_err(|e| self.io(e.into()))?;
        text.push('\n');
        let path = self.path.clone();
        let io = |source| StorageError::Io {
            path: path.clone(),
            source,
        };
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io(std::io::Error::other("the journal is not open")))?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)
    }

    /// Reads the journal: its header (if any) and the last snapshot of every trial. A
    /// torn last line (a crash mid-write) is cut off the file.
    fn read(&self, file: &mut File) -> Result<(Option<StudyHeader>, Vec<FrozenTrial>), StorageError> {
        let mut reader = BufReader::new(&mut *file);
        let (mut header, mut trials) = (None, Vec::<FrozenTrial>::new());
        let (mut offset, mut good_end, mut number) = (0u64, 0u64, 0usize);
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line).map_err(|e| self.io(e))?;
            if read == 0 {
                break;
            }
            number += 1;
            offset += read as u64;
            let complete = line.ends_with('\n');
            let corrupt = |message: String| StorageError::Corrupt {
                path: self.path.clone(),
                line: number,
                message,
            };
            match serde_json::from_str::<Line>(line.trim_end()) {
                Ok(Line::Study(h)) if number == 1 => header = Some(h),
                Ok(Line::Study(_)) => return Err(corrupt("a second study header".into())),
                Ok(Line::Trial(_)) if header.is_none() => {
                    return Err(corrupt("a trial before the study header".into()));
                }
                Ok(Line::Trial(t)) => {
                    let n = usize::try_from(t.number).unwrap_or(usize::MAX);
                    match n.cmp(&trials.len()) {
                        std::cmp::Ordering::Less => trials[n] = t,
                        std::cmp::Ordering::Equal => trials.push(t),
                        std::cmp::Ordering::Greater => {
                            return Err(corrupt(format!("trial {n} before trial {}", trials.len())));
                        }
                    }
                }
                // A crash can leave the last line half-written; nothing after it exists.
                Err(_) if !complete => break,
                Err(e) => return Err(corrupt(e.to_string())),
            }
            good_end = offset;
        }
        drop(reader);
        if file.metadata().map_err(|e| self.io(e))?.len() != good_end {
            tracing::warn!(path = %self.path.display(), "dropping a torn last line of the journal");
            file.set_len(good_end).map_err(|e| self.io(e))?;
        }
        file.seek(SeekFrom::End(0)).map_err(|e| self.io(e))?;
        Ok((header, trials))
    }
}

impl StudyStorage for Journal {
    fn open(&mut self, header: &StudyHeader) -> Result<Vec<FrozenTrial>, StorageError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        let (stored, trials) = self.read(&mut file)?;
        self.file = Some(file);
        match stored {
            None => self.append(&Line::Study(header.clone()))?,
            Some(stored) if stored.objectives != header.objectives => {
                return Err(StorageError::Mismatch {
                    path: self.path.clone(),
                    what: format!("objectives {:?}", stored.objectives),
                });
            }
            Some(stored) if stored.space != header.space => {
                let names: Vec<&str> = stored.space.params.iter().map(|p| p.name.as_str()).collect();
                return Err(StorageError::Mismatch {
                    path: self.path.clone(),
                    what: format!("another search space (parameters {})", names.join(", ")),
                });
            }
            Some(_) => {}
        }
        Ok(trials)
    }

    fn save(&mut self, trial: &FrozenTrial) -> Result<(), StorageError> {
        self.append(&Line::Trial(trial.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::Direction;
    use crate::space::{ParamSpec, ParamValue};
    use crate::trial::TrialState;
    use std::collections::BTreeMap;

    fn header() -> StudyHeader {
        StudyHeader {
            space: SearchSpace::new(vec![
                ParamSpec::parse("lr", "loguniform(1e-4, 1)").unwrap(),
                ParamSpec::parse("epochs", "int(1, 5)").unwrap(),
                ParamSpec::parse("opt", "choice(adam, sgd)").unwrap(),
            ])
            .unwrap(),
            objectives: vec![Objective::new("accuracy", Direction::Maximize)],
        }
    }

    fn trial(number: u64, state: TrialState) -> FrozenTrial {
        FrozenTrial {
            number,
            params: BTreeMap::from([
                ("lr".to_string(), ParamValue::Float(0.01)),
                ("epochs".to_string(), ParamValue::Int(3)),
                ("opt".to_string(), ParamValue::Categorical("sgd".into())),
            ]),
            values: (state == TrialState::Complete).then(|| vec![0.9]),
            state,
            feasible: true,
            intermediate: BTreeMap::from([(1, vec![0.5])]),
            fail_reason: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fedtune-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        dir
    }

    #[test]
    fn a_journal_reopens_with_the_last_snapshot_of_every_trial() {
        let path = scratch("reopen");
        let mut journal = Journal::new(&path);
        assert!(journal.open(&header()).unwrap().is_empty());
        journal.save(&trial(0, TrialState::Running)).unwrap();
        journal.save(&trial(1, TrialState::Running)).unwrap();
        journal.save(&trial(0, TrialState::Complete)).unwrap();
        drop(journal);

        let trials = Journal::new(&path).open(&header()).unwrap();
        assert_eq!(
            trials,
            vec![trial(0, TrialState::Complete), trial(1, TrialState::Running)]
        );
        assert_eq!(trials[0].params["epochs"], ParamValue::Int(3), "integers stay integers");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_appends_stay_clean() {
        let path = scratch("torn");
        let mut journal = Journal::new(&path);
        journal.open(&header()).unwrap();
        journal.save(&trial(0, TrialState::Complete)).unwrap();
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"trial\":{\"number\":1,\"par").unwrap();
        drop(file);

        let mut journal = Journal::new(&path);
        assert_eq!(journal.open(&header()).unwrap().len(), 1);
        journal.save(&trial(1, TrialState::Running)).unwrap();
        drop(journal);
        assert_eq!(Journal::new(&path).open(&header()).unwrap().len(), 2);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn another_study_or_a_corrupt_line_is_refused() {
        let path = scratch("mismatch");
        Journal::new(&path).open(&header()).unwrap();
        let mut other = header();
        other.objectives[0].direction = Direction::Minimize;
        let err = Journal::new(&path).open(&other).unwrap_err();
        assert!(matches!(err, StorageError::Mismatch { .. }), "{err}");
        other = header();
        other.space.params.pop();
        let err = Journal::new(&path).open(&other).unwrap_err().to_string();
        assert!(err.contains("another search space"), "{err}");

        std::fs::write(
            &path,
            "{\"study\":{\"space\":{\"params\":[]},\"objectives\":[]}}\nnot json\n{}\n",
        )
        .unwrap();
        let err = Journal::new(&path).open(&header()).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
