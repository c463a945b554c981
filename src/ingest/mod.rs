//! Jobs made by uploads: `transcode-worker ingest` turns new objects in
//! the farm's storage into jobs, by the rules of a TOML file.
//!
//! - [`rules`]: the rules file, checked as a whole when it is loaded;
//! - [`events`]: S3 event notifications (MinIO's AMQP target, AWS), read;
//! - [`jobs`]: the jobs one object version makes under one rule, with
//!   deterministic ids;
//! - [`markers`]: the record, in the storage, of the jobs made;
//! - `listen`: event mode, consuming the uploads queue;
//! - `poll`: poll mode, listing the rules' prefixes every so often.
//!
//! Each new object makes its jobs once: a job is published (persistent,
//! confirmed) only when no marker says it was made, and its marker is
//! written once the broker has confirmed it. The same event delivered
//! twice, a poll after a restart or a re-upload of the same content
//! (same ETag; on the directory backend, same size and modification time)
//! makes the same job ids, which have markers; a changed object makes new
//! ids. Should `ingest` stop between a confirm and its marker, the job is
//! published again with the same id, and the worker, finding that job's
//! output already stored, does not transcode it again.
//!
//! Objects the farm writes itself never make jobs: the worker stores every
//! output with the metadata `transcode-job-id`, which `ingest` looks for
//! (in the event's metadata and with a look-up of the object), and the
//! farm's own records are under [`INTERNAL_PREFIX`], which no rule matches.

pub mod events;
pub mod jobs;
mod listen;
pub mod markers;
mod poll;
pub mod rules;

use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::broker::{until_taken, Broker, BrokerError};
use crate::config::{Backend, Settings};
use crate::job::Job;
use crate::storage::{Storage, StorageError};
use jobs::Planned;
use markers::Marker;
use rules::{Rule, Rules};

/// The farm's own prefix: records such as `ingest`'s markers live under
/// it, and no object under it is ever an input.
pub const INTERNAL_PREFIX: &str = "_transcode/";

/// The object metadata naming the job that made an object: the worker
/// stores every output with it (and `queue-files` its uploaded inputs).
pub const META_JOB_ID: &str = "transcode-job-id";

/// Turns objects into jobs by rules.
#[derive(Debug)]
pub struct Ingest {
    settings: Settings,
    storage: Storage,
    rules: Rules,
    /// The bucket's name, or `directory`: part of every job id.
    bucket: String,
    /// `host:pid`, in markers and logs.
    id: String,
}

/// An object that may be new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Its key.
    pub key: String,
    /// Its version as an event or a listing gave it, if any (an ETag, or
    /// size and time on the directory backend).
    pub version: Option<String>,
    /// The job that wrote it, when an event's metadata says so.
    pub made_by_job: Option<String>,
}

/// What became of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// These jobs were published.
    Made(Vec<String>),
    /// No job was published, for this reason.
    Skipped(String),
}

/// A failure that may pass: the object is looked at again later (its
/// event is given back; the next poll lists it again).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The storage failed (after its own retries).
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The broker did not take a job.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Ingest {
    /// Turns objects of the storage `settings` name into jobs by `rules`.
    pub fn new(settings: Settings, rules: Rules) -> Result<Ingest, StorageError> {
        let storage = Storage::from_settings(&settings.storage)?;
        let bucket = match settings.storage.backend {
            Backend::S3 => settings.storage.bucket.clone(),
            Backend::Directory => "directory".to_string(),
        };
        let id = format!(
            "{}:{}",
            gethostname::gethostname().to_string_lossy(),
            std::process::id()
        );
        Ok(Ingest {
            settings,
            storage,
            rules,
            bucket,
            id,
        })
    }

    /// The rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Publishes the jobs `upload` makes that were not made yet, and
    /// records each once the broker has confirmed it. Says why when it
    /// makes none: no rule matches, the farm wrote the object, the jobs
    /// were made before, it is gone, or a job would be invalid.
    pub async fn object(&self, broker: &Broker, upload: &Upload) -> Result<Outcome, IngestError> {
        let key = upload.key.as_str();
        if key.starts_with(INTERNAL_PREFIX) {
            tracing::debug!(key, "object skipped: one of the farm's own records");
            return Ok(Outcome::Skipped("one of the farm's own records".into()));
        }
        let rules: Vec<&Rule> = self.rules.matching(key).collect();
        if rules.is_empty() {
            return Ok(skipped(key, "no rule matches its key".into()));
        }
        if let Some(job) = &upload.made_by_job {
            return Ok(skipped(key, format!("the farm wrote it (job {job})")));
        }
        // With the version known, objects whose jobs were all made cost
        // no look-up of the object itself.
        if let Some(version) = &upload.version {
            if let Ok(planned) = self.plan(&rules, key, version) {
                if self.all_made(&planned).await? {
                    return Ok(skipped(key, already(planned.len())));
                }
            }
        }
        let info = match self.storage.head(key).await {
            Ok(Some(info)) => info,
            Ok(None) => return Ok(skipped(key, "it is gone".into())),
            Err(StorageError::InvalidKey { reason, .. }) => {
                return Ok(skipped(key, format!("its key is not allowed: {reason}")))
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(job) = made_by_job(&info.metadata) {
            return Ok(skipped(
                key,
                format!("the farm wrote it (its metadata names job {job})"),
            ));
        }
        let Some(version) = info.version.or_else(|| upload.version.clone()) else {
            return Ok(skipped(
                key,
                "the storage gives no ETag for it, so a change could not be told from a repeat"
                    .into(),
            ));
        };
        let planned = match self.plan(&rules, key, &version) {
            Ok(planned) => planned,
            Err(reason) => {
                tracing::warn!(key, %reason, "object skipped: its jobs would be invalid");
                return Ok(Outcome::Skipped(reason));
            }
        };
        let mut made = Vec::new();
        for job in &planned {
            if markers::is_made(&self.storage, &job.job_id).await? {
                continue;
            }
            self.publish(broker, job).await?;
            tracing::info!(job_id = %job.job_id, key, %version, rule = job.rule, outputs = ?job.output_keys, "job made");
            let marker = Marker {
                job_id: job.job_id.clone(),
                bucket: self.bucket.clone(),
                input_key: key.to_string(),
                version: version.clone(),
                output_keys: job.output_keys.clone(),
                rule: job.rule,
                made_at: crate::job::now_rfc3339(),
                made_by: self.id.clone(),
            };
            markers::write(&self.storage, &marker).await?;
            made.push(job.job_id.clone());
        }
        if made.is_empty() {
            return Ok(skipped(key, already(planned.len())));
        }
        Ok(Outcome::Made(made))
    }

    /// The jobs of `key` at `version` under `rules`, each once, each one
    /// a worker with these settings would take; else why not.
    fn plan(&self, rules: &[&Rule], key: &str, version: &str) -> Result<Vec<Planned>, String> {
        let mut all: Vec<Planned> = Vec::new();
        for rule in rules {
            for planned in jobs::plan(rule, &self.bucket, key, version)? {
                self.check_with_worker(rule, &planned)?;
                if !all.iter().any(|p| p.job_id == planned.job_id) {
                    all.push(planned);
                }
            }
        }
        Ok(all)
    }

    /// Plans each output of `planned` as a worker with these settings
    /// plans a job (keys within the allowed prefixes and the storage, a
    /// container it writes, the preset or fragment).
    fn check_with_worker(&self, rule: &Rule, planned: &Planned) -> Result<(), String> {
        let job = Job::parse(&planned.body).map_err(|e| e.message)?;
        let singles: Vec<Job> = match &job.outputs {
            None => vec![job.clone()],
            Some(outputs) => outputs
                .iter()
                .map(|o| Job {
                    output_key: o.output_key.clone(),
                    transcode_options: o.transcode_options.clone(),
                    preset: o.preset.clone(),
                    outputs: None,
                    segment_seconds: None,
                    ..job.clone()
                })
                .collect(),
        };
        for single in &singles {
            let refused = |e: String| {
                format!(
                    "{}: a worker would refuse the job for {:?}: {e}",
                    rule.describe(),
                    single.output_key
                )
            };
            crate::plan::plan(single, &self.settings).map_err(|e| refused(e.message))?;
            for key in [&single.input_key, &single.output_key] {
                self.storage
                    .check_key(key)
                    .map_err(|e| refused(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Whether every job of `planned` has its marker.
    async fn all_made(&self, planned: &[Planned]) -> Result<bool, StorageError> {
        for job in planned {
            if !markers::is_made(&self.storage, &job.job_id).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Publishes `job` to the jobs queue, persistent, mandatory and
    /// confirmed (asking again while the broker refuses it).
    async fn publish(&self, broker: &Broker, job: &Planned) -> Result<(), BrokerError> {
        let queue = self.settings.broker.jobs_queue_for(job.priority);
        until_taken("the job", || {
            broker.publish_confirmed(&queue, &job.body, FieldTable::default())
        })
        .await
    }

    /// Connects to the broker (declaring the farm's topology), trying
    /// again with capped backoff until it answers; `None` once `shutdown`
    /// is cancelled. A topology that conflicts with ours is an error.
    async fn connect(&self, shutdown: &CancellationToken) -> Result<Option<Broker>, BrokerError> {
        let b = &self.settings.broker;
        let name = format!("transcode-worker ingest {}", self.id);
        let mut delay = b.reconnect_min_delay;
        loop {
            // Each node gets connect_timeout; declaring the topology one more.
            let timeout = b.connect_timeout * (b.urls().len() as u32 + 1);
            let connect = Broker::connect(&self.settings, &name);
            let result = tokio::select! {
                r = tokio::time::timeout(timeout, connect) => r.unwrap_or(Err(BrokerError::Timeout {
                    url: crate::config::redact_url(&b.url),
                    after: timeout,
                })),
                _ = shutdown.cancelled() => return Ok(None),
            };
            match result {
                Ok(broker) => return Ok(Some(broker)),
                Err(e @ BrokerError::TopologyMismatch { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot reach the broker");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(None),
                    }
                    delay = (delay * 2).min(b.reconnect_max_delay);
                }
            }
        }
    }
}

/// Logs that `key` is skipped and why.
fn skipped(key: &str, reason: String) -> Outcome {
    tracing::info!(key, %reason, "object skipped");
    Outcome::Skipped(reason)
}

/// The reason of an object whose jobs were all made before.
fn already(jobs: usize) -> String {
    format!(
        "already ingested: its {jobs} job(s) were made before (markers under {})",
        markers::prefix()
    )
}

/// The job named by `transcode-job-id` (S3 may report it with its
/// `x-amz-meta-` prefix) in `metadata`.
fn made_by_job(metadata: &[(String, String)]) -> Option<&str> {
    metadata
        .iter()
        .find(|(name, _)| name == META_JOB_ID || name.ends_with(&format!("-{META_JOB_ID}")))
        .map(|(_, value)| value.as_str())
}
