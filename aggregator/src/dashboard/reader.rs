//! The dashboard's read-only view of a store, on a thread of its own.
//!
//! The stores' clients block (SQLite's calls, PostgreSQL's client on its own runtime),
//! and a PostgreSQL client must not even be dropped on an async runtime's thread. So the
//! store lives on one plain thread for its whole life and the HTTP handlers send it
//! closures. A SQLite store in WAL mode lets these reads run beside the run's writer
//! without blocking it.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;

use fedtune_store::{self as store, Storage, StoreError};

type Job = Box<dyn FnOnce(&dyn Storage) + Send>;

/// A handle to the reading thread; cheap to clone. The thread and its store end when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Reader {
    jobs: mpsc::Sender<Job>,
    location: String,
}

impl Reader {
    /// Opens the store at `db` (a SQLite file or a `postgres://` URL) read-only, on a
    /// new thread.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be opened (a missing file is an error: the
    /// dashboard never creates one).
    pub fn open(db: &Path) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (opened, result) = mpsc::channel();
        let path: PathBuf = db.to_owned();
        std::thread::Builder::new()
            .name("dashboard-store".into())
            .spawn(move || match store::open_read_only(&path) {
                Ok(store) => {
                    let _ = opened.send(Ok(()));
                    for job in queue {
                        job(store.as_ref());
                    }
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                }
            })
            .map_err(|e| StoreError::Open {
                path: db.to_owned(),
                message: format!("cannot start the reading thread: {e}"),
            })?;
        let lost = || StoreError::Open {
            path: db.to_owned(),
            message: "the reading thread ended".into(),
        };
        result.recv().map_err(|_| lost())??;
        Ok(Self {
            jobs,
            location: store::display_location(db),
        })
    }

    /// Where the store is, for display (passwords hidden).
    #[must_use]
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Runs `read` on the store's thread and returns what it returned.
    ///
    /// # Errors
    /// What `read` returned, or [`StoreError::Database`] when the thread is gone.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Storage) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            let _ = reply.send(read(store));
        });
        let gone = || StoreError::Database("the dashboard's store thread has stopped".into());
        self.jobs.send(job).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}
