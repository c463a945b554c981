//! The worker: takes jobs from the broker one at a time (or
//! `worker.concurrency` at a time), runs each attempt, and settles it.
//!
//! - [`session`]: connect (and reconnect) to the broker, consume, drain on
//!   shutdown;
//! - [`attempt`]: one attempt of a job as a sequence of named steps: plan,
//!   fetch, transcode (every output from one decode; the pipeline process
//!   also verifies them), store;
//! - [`store`]: storing the outputs (an HLS package file by file, its
//!   playlists last) and recognising those an earlier attempt stored;
//! - [`placement`]: whether this worker can run a job, and where a job goes
//!   that it cannot run (the queue of workers that can);
//! - [`segments`]: segmented jobs: the split, the part tasks and the join
//!   (see [`crate::segment`]);
//! - [`settle`]: the one place that turns an attempt's outcome into an
//!   ack, a retried copy, a give-back or a dead letter.
//!
//! A job is acked only after every output is stored and its `completed`
//! event is confirmed by the broker.

mod attempt;
mod placement;
mod segments;
mod session;
mod settle;
mod store;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;
use crate::capability::{Capabilities, Requirement, WaitingQueue};
use crate::config::Settings;
use crate::error::{ErrorKind, JobError};
use crate::plan::BASE_ELEMENTS;
use crate::scratch::Scratch;
use crate::status::Status;
use crate::storage::Storage;
use crate::transcoder::Transcoder;

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker's topology conflicts with ours; retrying cannot help.
    #[error(transparent)]
    Topology(BrokerError),
    /// The storage backend could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// GStreamer or an element the presets or muxers need is missing.
    #[error("{0}")]
    Plugins(String),
    /// The scratch folder is not usable.
    #[error("scratch folder {path}: {problem}")]
    Scratch {
        /// The folder.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// A transcoding worker.
#[derive(Debug)]
pub struct Worker {
    settings: Settings,
    storage: Storage,
    transcoder: Transcoder,
    scratch: Scratch,
    capabilities: Capabilities,
    /// The job history, when kept.
    history: Option<crate::history::History>,
    /// The inputs kept for the parts of segmented jobs.
    inputs: crate::segment::InputCache,
    /// Why the storage cannot settle segmented jobs' claims (`None`: it
    /// can), once asked.
    claims_flaw: tokio::sync::OnceCell<Option<String>>,
    /// Whether the storage answers range requests with ranges, once asked
    /// (before this worker's first part that would read by ranges).
    serves_ranges: tokio::sync::OnceCell<bool>,
    /// The queues of jobs waiting for capable workers that this worker has
    /// learnt of (from the requirements stream or its own moves).
    waiting: Mutex<BTreeSet<WaitingQueue>>,
    id: String,
    exit_when_idle: Option<Duration>,
    status: Status,
}

impl Worker {
    /// Makes a worker that runs pipelines with `transcoder`; `exit_when_idle`
    /// makes [`Worker::run`] return once no job has arrived for that long.
    /// Checks that GStreamer and the worker's own elements are installed,
    /// and learns what else it can run.
    pub fn new(
        settings: Settings,
        transcoder: Transcoder,
        exit_when_idle: Option<Duration>,
    ) -> Result<Arc<Worker>, WorkerError> {
        let storage = Storage::from_settings(&settings.storage)?;
        crate::pipeline::check_installed(BASE_ELEMENTS.iter().copied())
            .map_err(WorkerError::Plugins)?;
        let dir = settings.scratch_dir();
        let scratch = Scratch::open(dir.clone()).map_err(|e| WorkerError::Scratch {
            path: dir.display().to_string(),
            problem: e.to_string(),
        })?;
        let capabilities = Capabilities::new(
            crate::pipeline::installed_factories(),
            &settings.pipeline.hidden_elements,
            &settings.worker.labels,
            scratch.free_bytes().unwrap_or(0),
        );
        // The presets' and muxers' elements this worker has are loaded
        // ahead; jobs that need the others go to workers that have them.
        let has = |e: &String| capabilities.satisfies(&Requirement([e.clone()].into()));
        let usable: Vec<String> = crate::plan::required_elements(&settings)
            .into_iter()
            .filter(|e| has(e))
            .collect();
        for (name, preset) in &settings.presets {
            let mut lacking: Vec<String> = crate::plan::factories_in(&preset.video)
                .into_iter()
                .chain(
                    preset
                        .audio
                        .iter()
                        .flat_map(|a| crate::plan::factories_in(a)),
                )
                .filter(|e| !has(e))
                .collect();
            lacking.dedup();
            if !lacking.is_empty() {
                tracing::warn!(
                    "preset {name} needs {}, which this worker lacks (or hides): its jobs go to workers that have it",
                    lacking.join(", ")
                );
            }
        }
        let transcoder = if settings.worker.standby_pipeline {
            transcoder.with_standby(usable)
        } else {
            transcoder
        };
        let status = Status::new(&settings);
        status.set_capabilities(capabilities.clone());
        let history = settings
            .history
            .enabled
            .then(|| crate::history::History::new(storage.clone(), &settings.history));
        let settings_concurrency = settings.worker.concurrency;
        Ok(Arc::new(Worker {
            id: settings.worker_id(),
            status,
            settings,
            storage,
            transcoder,
            scratch,
            capabilities,
            history,
            inputs: crate::segment::InputCache::new(usize::from(settings_concurrency)),
            claims_flaw: tokio::sync::OnceCell::new(),
            serves_ranges: tokio::sync::OnceCell::new(),
            waiting: Mutex::new(BTreeSet::new()),
            exit_when_idle,
        }))
    }

    /// The worker's name in progress events.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The worker's live state (for `inspect`, `/metrics`, `/healthz`).
    pub fn status(&self) -> &Status {
        &self.status
    }
}

/// Locks `m`, also after a panic while it was held.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `delay` less up to half of it, at random, so that many workers waiting
/// after the same event do not all come back at once.
fn jitter(delay: Duration) -> Duration {
    let factor = rand::rng().random_range(0.5..=1.0);
    delay.mul_f64(factor)
}

/// Aborts the running attempts of a session, with the reason they get.
#[derive(Debug, Clone, Default)]
pub(super) struct Abort {
    token: CancellationToken,
    reason: Arc<std::sync::OnceLock<JobError>>,
}

impl Abort {
    /// Aborts every attempt watching this, with `reason` (the first reason wins).
    fn fire(&self, reason: JobError) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Resolves with the reason once fired.
    async fn fired(&self) -> JobError {
        self.token.cancelled().await;
        self.reason
            .get()
            .cloned()
            .unwrap_or_else(|| JobError::new(ErrorKind::Shutdown, "the attempt was aborted"))
    }
}
