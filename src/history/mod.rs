//! The job history: one [`JobRecord`] per job, kept in the farm's storage
//! (S3 or the shared directory) under `history.prefix`, so that any
//! machine can tell what became of a job, long after it ended, with one
//! read; and the cancel requests, kept beside them.
//!
//! Layout under the prefix:
//! - `jobs/<job_id>.json`: the record;
//! - `index/<inverted time>-<job_id>`: an empty entry made with the
//!   record, named so that a listing returns the newest jobs first;
//! - `cancels/<job_id>`: a cancel request.
//!
//! Why the storage and not a RabbitMQ stream: `status` of one job among
//! tens of thousands must answer at once, and a stream can only be read
//! from an offset or a time onwards (RabbitMQ 3.10 has no stream filters),
//! so finding one job would mean reading the whole history; a record is
//! one GET. The progress events stay on the progress exchange for whoever
//! follows them live.
//!
//! Workers write a record when an attempt starts and when it ends (both
//! best effort: a history that cannot be written never fails a job).

mod record;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{stream, StreamExt};

pub use record::{AttemptRecord, EventRecord, JobRecord, JobState, MAX_ATTEMPTS, MAX_EVENTS};

use crate::config::HistorySettings;
use crate::storage::{Storage, StorageError};

/// Largest record read, in bytes.
const MAX_RECORD_BYTES: usize = 256 * 1024;
/// Records read at once when listing.
const READ_AHEAD: usize = 16;
/// Index entries one listing request asks for.
const PAGE: usize = 1000;

/// Which jobs [`History::search`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs whose id starts with this.
    pub id_prefix: Option<String>,
}

/// The job history in a storage.
#[derive(Debug, Clone)]
pub struct History {
    storage: Storage,
    prefix: String,
}

impl History {
    /// The history of `storage` under `settings.prefix`.
    pub fn new(storage: Storage, settings: &HistorySettings) -> History {
        History {
            storage,
            prefix: settings.prefix.clone(),
        }
    }

    /// The history `settings` name (in their storage), or the sentence why
    /// there is none.
    pub fn from_settings(settings: &crate::config::Settings) -> Result<History, String> {
        if !settings.history.enabled {
            return Err("the job history is off (history.enabled = false)".into());
        }
        let storage = Storage::from_settings(&settings.storage).map_err(|e| e.to_string())?;
        Ok(History::new(storage, &settings.history))
    }

    fn record_key(&self, job_id: &str) -> String {
        format!("{}jobs/{job_id}.json", self.prefix)
    }

    fn index_prefix(&self) -> String {
        format!("{}index/", self.prefix)
    }

    fn cancel_key(&self, job_id: &str) -> String {
        format!("{}cancels/{job_id}", self.prefix)
    }

    /// Whether `key` is one of the history's own objects (which must never
    /// be taken for an input).
    pub fn owns(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
    }

    /// The record of `job_id`, if the farm has one.
    pub async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StorageError> {
        let Some(bytes) = self
            .storage
            .get_small(&self.record_key(job_id), MAX_RECORD_BYTES)
            .await?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StorageError::Local(format!("the record of {job_id:?} is not valid: {e}")))
    }

    /// Changes the record of `job_id` with `change` (making it, and its
    /// index entry, when there is none yet) and writes it back.
    pub async fn update(
        &self,
        job_id: &str,
        change: impl FnOnce(&mut JobRecord),
    ) -> Result<JobRecord, StorageError> {
        let existing = self.get(job_id).await.unwrap_or(None);
        let new = existing.is_none();
        let mut record = existing.unwrap_or_else(|| JobRecord::new(job_id));
        change(&mut record);
        let bytes = serde_json::to_vec(&record).expect("a record serializes");
        self.storage
            .put_small(&self.record_key(job_id), &bytes)
            .await?;
        if new {
            let entry = format!("{}{}-{job_id}", self.index_prefix(), inverted_now());
            self.storage.put_small(&entry, b"").await?;
        }
        Ok(record)
    }

    /// The most recent jobs, newest first: at most `limit`, only those in
    /// `state` when given. Reads at most `scan` index entries (so a request
    /// never reads the whole history).
    pub async fn recent(
        &self,
        limit: usize,
        state: Option<JobState>,
        scan: usize,
    ) -> Result<Vec<JobRecord>, StorageError> {
        let filter = Filter {
            state,
            id_prefix: None,
        };
        self.search(limit, &filter, scan).await
    }

    /// The most recent jobs that pass `filter`, newest first: at most
    /// `limit`. Reads at most `scan` index entries, and the records of only
    /// those whose job id starts with the filter's prefix, so neither a
    /// search nor a rare state makes it read the whole history.
    pub async fn search(
        &self,
        limit: usize,
        filter: &Filter,
        scan: usize,
    ) -> Result<Vec<JobRecord>, StorageError> {
        let prefix = self.index_prefix();
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        let mut scanned = 0;
        // Without a filter every entry read is a record returned.
        let unfiltered = filter.state.is_none() && filter.id_prefix.is_none();
        while found.len() < limit && scanned < scan {
            let mut want = PAGE.min(scan - scanned);
            if unfiltered {
                want = want.min(limit - found.len());
            }
            let keys = self
                .storage
                .list_keys(&prefix, after.as_deref(), want)
                .await?;
            if keys.is_empty() {
                break;
            }
            scanned += keys.len();
            after = keys.last().cloned();
            let ids: Vec<String> = keys
                .iter()
                .filter_map(|k| job_id_of_entry(&prefix, k))
                .filter(|id| {
                    filter
                        .id_prefix
                        .as_deref()
                        .is_none_or(|p| id.starts_with(p))
                })
                .collect();
            let mut records = stream::iter(ids)
                .map(|id| async move { self.get(&id).await })
                .buffered(READ_AHEAD);
            while let Some(record) = records.next().await {
                if let Ok(Some(record)) = record {
                    if filter.state.is_none_or(|s| record.state == s) {
                        found.push(record);
                        if found.len() == limit {
                            break;
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    /// Records a cancel request for `job_id` (kept until the history's
    /// retention removes it).
    pub async fn request_cancel(&self, job_id: &str, by: &str) -> Result<(), StorageError> {
        let body = serde_json::json!({"job_id": job_id, "requested_at": crate::job::now_rfc3339(), "by": by});
        self.storage
            .put_small(&self.cancel_key(job_id), body.to_string().as_bytes())
            .await
    }

    /// Whether a cancel of `job_id` was requested.
    pub async fn cancel_requested(&self, job_id: &str) -> Result<bool, StorageError> {
        Ok(self.storage.head(&self.cancel_key(job_id)).await?.is_some())
    }

    /// [`prune`](Self::prune), unless any worker of the farm did within
    /// `every` (a marker in the storage says when it last ran), so a farm
    /// of many workers prunes about once per `every`. `Ok(None)` when it
    /// was not due.
    pub async fn prune_if_due(
        &self,
        every: Duration,
        max_age: Duration,
        max_jobs: usize,
    ) -> Result<Option<usize>, StorageError> {
        let marker = format!("{}pruned-at", self.prefix);
        let last = self
            .storage
            .get_small(&marker, 64)
            .await?
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.trim().parse::<u64>().ok());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if last.is_some_and(|last| now.saturating_sub(last) < every.as_secs()) {
            return Ok(None);
        }
        self.storage
            .put_small(&marker, now.to_string().as_bytes())
            .await?;
        self.prune(max_age, max_jobs).await.map(Some)
    }

    /// Removes the records (with their index entries and cancel requests)
    /// older than `max_age`, and the oldest beyond `max_jobs`. Returns how
    /// many it removed.
    pub async fn prune(&self, max_age: Duration, max_jobs: usize) -> Result<usize, StorageError> {
        let prefix = self.index_prefix();
        let oldest_kept = inverted(SystemTime::now().checked_sub(max_age).unwrap_or(UNIX_EPOCH));
        let mut after: Option<String> = None;
        let mut seen = 0usize;
        let mut removed = 0usize;
        loop {
            let keys = self
                .storage
                .list_keys(&prefix, after.as_deref(), PAGE)
                .await?;
            if keys.is_empty() {
                return Ok(removed);
            }
            after = keys.last().cloned();
            for key in keys {
                seen += 1;
                let too_old = key
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.split('-').next())
                    .is_some_and(|time| time > oldest_kept.as_str());
                if !(too_old || seen > max_jobs) {
                    continue;
                }
                if let Some(id) = job_id_of_entry(&prefix, &key) {
                    self.storage.delete(&self.record_key(&id)).await?;
                    self.storage.delete(&self.cancel_key(&id)).await?;
                }
                self.storage.delete(&key).await?;
                removed += 1;
            }
        }
    }
}

/// The job id of the index entry `key`.
fn job_id_of_entry(prefix: &str, key: &str) -> Option<String> {
    key.strip_prefix(prefix)?
        .split_once('-')
        .map(|(_, id)| id.to_string())
}

/// Milliseconds before the year 2286, as 13 digits: later times sort first.
fn inverted(at: SystemTime) -> String {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{:013}", 9_999_999_999_999u64.saturating_sub(ms))
}

fn inverted_now() -> String {
    inverted(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::directory::DirStore;

    fn history(dir: &std::path::Path) -> History {
        let storage = Storage::Directory(DirStore::new(dir).unwrap());
        History::new(
            storage,
            &HistorySettings {
                enabled: true,
                prefix: "_transcode/history/".into(),
                max_age: Duration::from_secs(3600),
                max_jobs: 1000,
            },
        )
    }

    #[test]
    fn later_times_sort_first() {
        let early = inverted(UNIX_EPOCH + Duration::from_secs(1_000));
        let late = inverted(UNIX_EPOCH + Duration::from_secs(2_000));
        assert!(late < early);
        assert_eq!(late.len(), 13);
        assert_eq!(
            job_id_of_entry("p/index/", "p/index/9998-job-with-dashes").as_deref(),
            Some("job-with-dashes")
        );
    }

    #[tokio::test]
    async fn records_are_made_updated_listed_newest_first_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let h = history(dir.path());
        assert_eq!(h.get("nope").await.unwrap(), None);
        for id in ["a", "b", "c"] {
            h.update(id, |r| {
                r.mark(JobState::Queued, None, None, "queued".into())
            })
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        h.update("b", |r| {
            r.mark(JobState::Completed, Some(1), Some("w"), "done".into())
        })
        .await
        .unwrap();
        let recent: Vec<String> = h
            .recent(10, None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.job_id)
            .collect();
        assert_eq!(recent, ["c", "b", "a"]);
        let b_only = Filter {
            state: None,
            id_prefix: Some("b".into()),
        };
        let found = h.search(10, &b_only, 100).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].job_id, "b");
        assert!(h.search(10, &b_only, 1).await.unwrap().is_empty(), "c only");
        let done = h.recent(10, Some(JobState::Completed), 100).await.unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(h.recent(1, None, 100).await.unwrap()[0].job_id, "c");
        assert!(!h.cancel_requested("a").await.unwrap());
        h.request_cancel("a", "test").await.unwrap();
        assert!(h.cancel_requested("a").await.unwrap());
        assert_eq!(h.prune(Duration::from_secs(3600), 2).await.unwrap(), 1);
        assert_eq!(
            h.get("a").await.unwrap(),
            None,
            "the oldest beyond max_jobs"
        );
        assert!(!h.cancel_requested("a").await.unwrap());
        assert_eq!(
            h.prune(Duration::ZERO, 1000).await.unwrap(),
            2,
            "all older than 0 s"
        );
        assert!(h.recent(10, None, 100).await.unwrap().is_empty());
        assert!(h.owns("_transcode/history/jobs/x.json") && !h.owns("videos/x.mp4"));
        let hour = Duration::from_secs(3600);
        assert_eq!(h.prune_if_due(hour, hour, 1000).await.unwrap(), Some(0));
        assert_eq!(
            h.prune_if_due(hour, hour, 1000).await.unwrap(),
            None,
            "done a moment ago"
        );
    }
}
