//! The inputs a worker keeps for the parts of segmented jobs: a worker
//! keeps a job's input (a whole copy, or the blocks its parts fetched by
//! ranges), in a scratch folder of its own, for the next parts of the
//! same job it takes, which are likely: a job's parts are queued
//! together. It keeps as many inputs as it runs jobs at once
//! (`worker.concurrency`); the least recently used goes first, and a
//! folder in use stays until its part is done. A worker forgets a job's
//! input once it has ended the job, and every input no part uses before a
//! whole-file attempt. On the directory backend the input is read in place
//! and nothing is kept.
//!
//! An input is fetched once however many ask for it at the same time:
//! a part that asks while the input is being fetched (ahead of the parts,
//! as an idle worker does when a job is split) waits for that fetch and
//! uses its copy.
//!
//! A worker that reads a job's input from S3 by ranges keeps, instead of
//! a copy, a folder of the blocks its parts fetched
//! ([`InputCache::blocks`]), under the same rules, or reads the copy it
//! has when it split the job.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{ErrorKind, JobError};
use crate::job::Phase;
use crate::progress::Reporter;
use crate::scratch::Scratch;
use crate::storage::{ObjectInfo, Storage, Transferred};

/// An input kept for the parts of a job.
#[derive(Debug)]
struct Kept {
    key: String,
    version: String,
    path: PathBuf,
    whole: bool,
    folder: Arc<TempDir>,
    used: Instant,
}

/// A local copy of an input, held while a part uses it.
#[derive(Debug, Clone)]
pub struct LocalInput {
    /// Where the pipeline reads it: the input's file, or (unless `whole`)
    /// the folder of the blocks fetched by ranges.
    pub path: PathBuf,
    /// Whether `path` is the whole input.
    pub whole: bool,
    /// The folder holding the copy (none when read in place).
    _folder: Option<Arc<TempDir>>,
}

/// The inputs a worker keeps.
#[derive(Debug, Default)]
pub struct InputCache {
    kept: Mutex<Vec<Kept>>,
    capacity: usize,
    /// One lock per input being asked for: held while it is fetched.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl InputCache {
    /// Keeps at most `capacity` inputs.
    pub fn new(capacity: usize) -> InputCache {
        InputCache {
            kept: Mutex::default(),
            capacity: capacity.max(1),
            fetching: Mutex::default(),
        }
    }

    /// Removes the kept inputs no part is using (before a whole-file
    /// attempt, which does not use them, needs the space); returns how
    /// many.
    pub fn drop_idle(&self) -> usize {
        let mut kept = self.kept();
        let before = kept.len();
        kept.retain(|k| Arc::strong_count(&k.folder) > 1);
        before - kept.len()
    }

    /// Removes the kept copy of the input `key` (its job has ended here),
    /// once no part is using it.
    pub fn forget(&self, key: &str) {
        self.kept().retain(|k| k.key != key);
    }

    fn fetching(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.fetching.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The input `key` (as `info` describes it): the copy kept from an
    /// earlier part when it is the same version, else fetched now
    /// (reporting as `reporter`'s download, when there is one; stalled
    /// after `stall` without a byte), checking the scratch folder keeps
    /// `reserve_mb` free. While another call fetches the same input, this
    /// one waits for it and uses its copy.
    #[allow(clippy::too_many_arguments)]
    pub async fn get(
        &self,
        storage: &Storage,
        scratch: &Scratch,
        key: &str,
        info: &ObjectInfo,
        reporter: Option<&Reporter>,
        stall: Duration,
        reserve_mb: u64,
    ) -> Result<LocalInput, JobError> {
        if let Storage::Directory(_) = storage {
            let local = storage
                .fetch_known(key, info, scratch.path(), &Transferred::default())
                .await?;
            return Ok(LocalInput {
                path: local.path,
                whole: true,
                _folder: None,
            });
        }
        let lock = self.fetching().entry(key.to_string()).or_default().clone();
        let _fetching = Fetching {
            cache: self,
            key,
            held: Some(lock.lock_owned().await),
        };
        let version = version_of(info);
        if let Some(kept) = self
            .kept()
            .iter_mut()
            .find(|k| k.key == key && k.version == version && k.whole)
        {
            kept.used = Instant::now();
            tracing::debug!(
                key,
                "the input is here already (kept from an earlier part, or fetched ahead)"
            );
            return Ok(kept.held());
        }
        self.make_room();
        scratch.check_free_space(info.size, reserve_mb)?;
        tracing::info!(key, bytes = info.size, "fetching the input");
        let folder = Arc::new(scratch.attempt_folder()?);
        let counter = Transferred::default();
        let local = watch(
            storage.fetch_known(key, info, folder.path(), &counter),
            &counter,
            info.size,
            reporter,
            stall,
        )
        .await?;
        Ok(self.keep(key, version, local.path, true, folder))
    }

    /// The input `key` (as `info` describes it) for a part that reads it
    /// from storage by ranges: the kept copy when there is one (the
    /// worker split the job), else the folder of the blocks this worker
    /// fetched for its earlier parts of the job, made now (checking the
    /// scratch folder has room for the whole input and `reserve_mb`) when
    /// this is its first.
    pub fn blocks(
        &self,
        scratch: &Scratch,
        key: &str,
        info: &ObjectInfo,
        reserve_mb: u64,
    ) -> Result<LocalInput, JobError> {
        let version = version_of(info);
        {
            let mut kept = self.kept();
            let same = |k: &Kept| k.key == key && k.version == version;
            let found = (kept.iter().position(|k| same(k) && k.whole))
                .or_else(|| kept.iter().position(same));
            if let Some(i) = found {
                kept[i].used = Instant::now();
                return Ok(kept[i].held());
            }
        }
        self.make_room();
        scratch.check_free_space(info.size, reserve_mb)?;
        let folder = Arc::new(scratch.attempt_folder()?);
        let path = folder.path().to_path_buf();
        Ok(self.keep(key, version, path, false, folder))
    }

    /// Keeps `path` in `folder` as the input `key` of `version` (`whole`,
    /// or a folder of blocks), held by the part that asked.
    fn keep(
        &self,
        key: &str,
        version: String,
        path: PathBuf,
        whole: bool,
        folder: Arc<TempDir>,
    ) -> LocalInput {
        let kept = Kept {
            key: key.to_string(),
            version,
            path,
            whole,
            folder,
            used: Instant::now(),
        };
        let held = kept.held();
        self.kept().push(kept);
        held
    }

    /// Whether this worker has the input `key` (as `info` describes it)
    /// here: a copy, or blocks an earlier part fetched.
    pub fn holds(&self, key: &str, info: &ObjectInfo) -> bool {
        let version = version_of(info);
        self.kept()
            .iter()
            .any(|k| k.key == key && k.version == version)
    }

    /// Makes room for one more input: the least recently used go.
    fn make_room(&self) {
        let mut kept = self.kept();
        while kept.len() >= self.capacity {
            let oldest = kept
                .iter()
                .enumerate()
                .min_by_key(|(_, k)| k.used)
                .map(|(i, _)| i)
                .expect("not empty");
            kept.remove(oldest);
        }
    }
}

impl Kept {
    /// The input as a part holds it while it runs.
    fn held(&self) -> LocalInput {
        LocalInput {
            path: self.path.clone(),
            whole: self.whole,
            _folder: Some(self.folder.clone()),
        }
    }
}

/// How the kept inputs tell versions of an input apart.
fn version_of(info: &ObjectInfo) -> String {
    format!("{}:{}", info.size, info.version.as_deref().unwrap_or(""))
}

/// The right to fetch one input, held by one ask at a time: the others
/// wait for it. Dropped (also when its ask is cancelled), it removes the
/// input's lock once no other ask waits for it.
struct Fetching<'a> {
    cache: &'a InputCache,
    key: &'a str,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        self.held = None;
        let mut fetching = self.cache.fetching();
        if fetching
            .get(self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            fetching.remove(self.key);
        }
    }
}

/// Awaits a download while reporting its bytes; fails it as stalled when
/// no byte moves for `stall`.
async fn watch<T>(
    transfer: impl std::future::Future<Output = Result<T, crate::storage::StorageError>>,
    counter: &Transferred,
    total: u64,
    reporter: Option<&Reporter>,
    stall: Duration,
) -> Result<T, JobError> {
    tokio::pin!(transfer);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last = counter.get();
    let mut moved_at = Instant::now();
    loop {
        tokio::select! {
            result = &mut transfer => {
                if let Some(reporter) = reporter {
                    reporter.transferred(Phase::Downloading, counter.get(), total);
                }
                return result.map_err(JobError::from);
            }
            _ = tick.tick() => {
                let now = counter.get();
                if now != last {
                    last = now;
                    moved_at = Instant::now();
                } else if moved_at.elapsed() >= stall {
                    return Err(JobError::new(ErrorKind::Stalled, format!(
                        "the download made no progress for {}", humantime::format_duration(stall))));
                }
                if let Some(reporter) = reporter {
                    let fraction = if total > 0 { now as f64 / total as f64 } else { 0.0 };
                    reporter.transferred(Phase::Downloading, now, total);
                    reporter.update(Phase::Downloading, fraction, None).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(key: &str, folder: Arc<TempDir>) -> Kept {
        Kept {
            key: key.into(),
            version: "1:".into(),
            path: folder.path().join("input"),
            whole: true,
            folder,
            used: Instant::now(),
        }
    }

    #[test]
    fn parts_reading_by_ranges_share_one_block_folder_or_use_the_kept_copy() {
        let root = tempfile::tempdir().unwrap();
        let scratch = Scratch::open(root.path().join("scratch")).unwrap();
        let cache = InputCache::new(2);
        let info = |version: &str| ObjectInfo {
            size: 10,
            version: Some(version.into()),
            metadata: Default::default(),
        };
        let first = cache.blocks(&scratch, "in.mp4", &info("a"), 0).unwrap();
        assert!(!first.whole && first.path.is_dir(), "{first:?}");
        let second = cache.blocks(&scratch, "in.mp4", &info("a"), 0).unwrap();
        assert_eq!(second.path, first.path, "one folder for the job's parts");
        let changed = cache.blocks(&scratch, "in.mp4", &info("b"), 0).unwrap();
        assert_ne!(changed.path, first.path, "another version, other blocks");
        // A worker that split the job keeps the whole input: its parts
        // read that.
        let copy = Arc::new(tempfile::tempdir().unwrap());
        let mut whole = kept("in.mp4", copy);
        whole.version = "10:a".into();
        let path = whole.path.clone();
        cache.kept().push(whole);
        let held = cache.blocks(&scratch, "in.mp4", &info("a"), 0).unwrap();
        assert!(held.whole);
        assert_eq!(held.path, path);
        assert!(cache.holds("in.mp4", &info("a")));
        assert!(!cache.holds("in.mp4", &info("c")));
        assert!(!cache.holds("other.mp4", &info("a")));
    }

    #[test]
    fn idle_inputs_are_dropped_and_those_in_use_stay_until_released() {
        let cache = InputCache::new(2);
        let in_use = Arc::new(tempfile::tempdir().unwrap());
        let idle = Arc::new(tempfile::tempdir().unwrap());
        let idle_path = idle.path().to_path_buf();
        cache.kept().push(kept("a", in_use.clone()));
        cache.kept().push(kept("b", idle));
        assert_eq!(cache.drop_idle(), 1);
        assert!(!idle_path.exists(), "the idle copy is removed");
        assert_eq!(cache.kept().len(), 1);
        let in_use_path = in_use.path().to_path_buf();
        cache.forget("a");
        assert!(cache.kept().is_empty());
        assert!(in_use_path.exists(), "a copy in use stays while it is used");
        drop(in_use);
        assert!(!in_use_path.exists());
    }
}
