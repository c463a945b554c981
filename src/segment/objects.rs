//! The storage objects of segmented jobs, under `segments.prefix`:
//!
//! - `<job>/plan.json`: the [`SegmentPlan`] (the job's message inside);
//! - `<job>/<plan>/<part>.<ext>`: a stored part (metadata
//!   `transcode-job-id`, so `ingest` never takes it for an upload);
//! - `<job>/<plan>/done/<part>.json`: a [`Done`] record, written once the
//!   part is stored: what the join needs to know of it;
//! - `<job>/<plan>/end.json`: the [`End`] claim, created only if absent:
//!   the part whose task ends the job (joins it, or fails or cancels it);
//! - `<job>/<plan>/audio.json`: the [`AudioClaim`], created only if
//!   absent: the task that encodes the audio part beside its segment.
//!
//! Everything of a job goes when it ends, `plan.json` last, so a part
//! task that finds no plan knows its job has ended.
//!
//! The claims need a create-if-absent with one winner; a worker asks the
//! storage once ([`Objects::claims_flaw`]), under `~probe/` (`~` is in no
//! job id; a probe left behind is removed with abandoned jobs' leftovers).
//! Where the storage has more than one winner, the plans that worker
//! makes settle their claims on the broker ([`Arbiter`],
//! [`SegmentPlan::claims_on_broker`]), and the winner writes its claim
//! here.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::plan::{Part, SegmentPlan};
use crate::error::JobError;
use crate::storage::{Storage, StorageError};

pub use claims::Arbiter;

/// Largest plan read, in bytes.
const MAX_PLAN_BYTES: usize = 4 << 20;
/// Largest done or end record read, in bytes.
const MAX_RECORD_BYTES: usize = 64 << 10;
/// Done records listed per request.
const PAGE: usize = 1000;

/// A stored part, as its encode reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// The part's name (`v0003`, `audio`).
    pub part: String,
    /// The worker that stored it.
    pub worker: String,
    /// Frames of a video segment (0 for the audio part).
    pub frames: u64,
    /// Audio tracks of the audio part (0 for a video segment).
    #[serde(default)]
    pub tracks: usize,
    /// Stream time of its first frame or sample, ns.
    pub first_ns: u64,
    /// Stream time where it ends, ns.
    pub end_ns: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Milliseconds its encode took.
    pub encode_ms: u64,
    /// When it was stored (RFC 3339).
    pub at: String,
}

/// How a segmented job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Its parts are joined into the output.
    Join,
    /// It failed for good.
    Fail,
    /// It was cancelled.
    Cancel,
}

/// The claim of the part whose task ends a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// The part that ends it.
    pub by: String,
    /// Told apart from a claim made at the same moment.
    pub token: String,
    /// How it ends.
    pub ending: Ending,
    /// For a failure or a cancel: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The worker that claimed it.
    pub worker: String,
    /// When (RFC 3339).
    pub at: String,
}

impl End {
    /// A claim of `part` ending its job with `ending`.
    pub fn new(part: Part, ending: Ending, error: Option<JobError>, worker: &str) -> End {
        End {
            by: part.name(),
            token: uuid::Uuid::new_v4().simple().to_string(),
            ending,
            error,
            worker: worker.to_string(),
            at: crate::job::now_rfc3339(),
        }
    }
}

/// The claim of the task that encodes the audio part of a job whose plan
/// has it go by claim ([`SegmentPlan::audio_by_claim`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioClaim {
    /// The part whose task encodes it (a redelivered task carries it too).
    pub by: String,
    /// The worker that claimed it.
    pub worker: String,
    /// When (RFC 3339).
    pub at: String,
}

impl AudioClaim {
    /// A claim of the audio part for the task of `part`.
    pub fn new(part: Part, worker: &str) -> AudioClaim {
        AudioClaim {
            by: part.name(),
            worker: worker.to_string(),
            at: crate::job::now_rfc3339(),
        }
    }
}

/// A job whose objects nothing changed for too long.
#[derive(Debug, Clone)]
pub struct Abandoned {
    /// The job.
    pub job_id: String,
    /// Its plan, when it still has one (then it never ended).
    pub plan: Option<SegmentPlan>,
}

/// The objects of segmented jobs in a storage.
#[derive(Clone, Copy)]
pub struct Objects<'a> {
    storage: &'a Storage,
    prefix: &'a str,
    arbiter: Option<Arbiter<'a>>,
}

fn broken(key: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Local(format!("{key:?} is not a valid record: {e}"))
}

impl<'a> Objects<'a> {
    /// The objects under `prefix` of `storage`.
    pub fn new(storage: &'a Storage, prefix: &'a str) -> Objects<'a> {
        Objects {
            storage,
            prefix,
            arbiter: None,
        }
    }

    /// These objects, settling the claims of plans whose claims go to the
    /// broker with `arbiter` (without one, such claims fail).
    pub fn with_arbiter(mut self, arbiter: Arbiter<'a>) -> Objects<'a> {
        self.arbiter = Some(arbiter);
        self
    }

    /// The folder of `job_id`'s objects.
    pub fn job_folder(&self, job_id: &str) -> String {
        format!("{}{job_id}/", self.prefix)
    }

    fn plan_key(&self, job_id: &str) -> String {
        format!("{}plan.json", self.job_folder(job_id))
    }

    fn plan_folder(&self, plan: &SegmentPlan) -> String {
        format!("{}{}/", self.job_folder(&plan.job_id), plan.plan_id)
    }

    /// The key of `part`'s file.
    pub fn part_key(&self, plan: &SegmentPlan, part: Part) -> String {
        format!(
            "{}{}.{}",
            self.plan_folder(plan),
            part.name(),
            extension(&plan.muxer)
        )
    }

    fn done_key(&self, plan: &SegmentPlan, part: Part) -> String {
        format!("{}done/{}.json", self.plan_folder(plan), part.name())
    }

    fn end_key(&self, plan: &SegmentPlan) -> String {
        format!("{}end.json", self.plan_folder(plan))
    }

    fn audio_key(&self, plan: &SegmentPlan) -> String {
        format!("{}audio.json", self.plan_folder(plan))
    }

    /// The small record under `key`, if there is one.
    async fn record<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.storage.get_small(key, MAX_RECORD_BYTES).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| broken(key, e))
    }

    /// Whether `key` is one of these objects.
    pub fn owns(&self, key: &str) -> bool {
        key.starts_with(self.prefix)
    }

    /// `job_id`'s plan, if it has one.
    pub async fn plan(&self, job_id: &str) -> Result<Option<SegmentPlan>, StorageError> {
        let key = self.plan_key(job_id);
        let Some(bytes) = self.storage.get_small(&key, MAX_PLAN_BYTES).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| broken(&key, e))
    }

    /// Writes `plan` as its job's plan.
    pub async fn write_plan(&self, plan: &SegmentPlan) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(plan).expect("a plan serializes");
        self.storage
            .put_small(&self.plan_key(&plan.job_id), &bytes)
            .await
    }

    /// The done record of `part`, if it is stored.
    pub async fn done(&self, plan: &SegmentPlan, part: Part) -> Result<Option<Done>, StorageError> {
        self.record(&self.done_key(plan, part)).await
    }

    /// Records that `part` is stored, as `done` says.
    pub async fn write_done(
        &self,
        plan: &SegmentPlan,
        part: Part,
        done: &Done,
    ) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(done).expect("a record serializes");
        self.storage
            .put_small(&self.done_key(plan, part), &bytes)
            .await
    }

    /// The parts of `plan` stored so far.
    pub async fn stored_parts(&self, plan: &SegmentPlan) -> Result<Vec<Part>, StorageError> {
        let folder = format!("{}done/", self.plan_folder(plan));
        let mut parts = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let keys = self
                .storage
                .list_keys(&folder, after.as_deref(), PAGE)
                .await?;
            let Some(last) = keys.last().cloned() else {
                break;
            };
            parts.extend(keys.iter().filter_map(|k| {
                let name = k.strip_prefix(&folder)?.strip_suffix(".json")?;
                Part::from_name(name)
            }));
            if keys.len() < PAGE {
                break;
            }
            after = Some(last);
        }
        parts.sort_unstable();
        parts.dedup();
        Ok(parts)
    }

    /// The claim of the part that ends `plan`'s job, if one was made.
    pub async fn end(&self, plan: &SegmentPlan) -> Result<Option<End>, StorageError> {
        self.record(&self.end_key(plan)).await
    }

    /// Claims the end of `plan`'s job with `claim`, unless a claim is
    /// there: returns the claim that holds (`claim` itself when it won).
    pub async fn claim_end(&self, plan: &SegmentPlan, claim: &End) -> Result<End, StorageError> {
        self.claim(plan, "end", &self.end_key(plan), claim).await
    }

    /// Claims the end of `plan`'s abandoned job with `claim` where the
    /// end was won on the broker by a worker that died before it wrote
    /// its claim (so [`Objects::claim_end`] can tell no winner): a claim
    /// of its own on the broker, whose winner writes `claim` as the end.
    /// Only for plans whose claims go to the broker.
    pub async fn claim_abandoned_end(
        &self,
        plan: &SegmentPlan,
        claim: &End,
    ) -> Result<End, StorageError> {
        debug_assert!(plan.claims_on_broker);
        self.claim(plan, "abandon", &self.end_key(plan), claim)
            .await
    }

    /// The claim of the task that encodes the audio part of `plan`'s job,
    /// if one was made.
    pub async fn audio_claim(
        &self,
        plan: &SegmentPlan,
    ) -> Result<Option<AudioClaim>, StorageError> {
        self.record(&self.audio_key(plan)).await
    }

    /// Claims the audio part of `plan`'s job with `claim`, unless a claim
    /// is there: returns the claim that holds.
    pub async fn claim_audio(
        &self,
        plan: &SegmentPlan,
        claim: &AudioClaim,
    ) -> Result<AudioClaim, StorageError> {
        self.claim(plan, "audio", &self.audio_key(plan), claim)
            .await
    }

    /// Replaces the claim (by its owner, e.g. a join that failed for good).
    pub async fn rewrite_end(&self, plan: &SegmentPlan, claim: &End) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(claim).expect("a claim serializes");
        self.storage.put_small(&self.end_key(plan), &bytes).await
    }

    /// Removes every object of `job_id`, its plan last.
    pub async fn remove(&self, job_id: &str) -> Result<usize, StorageError> {
        let folder = self.job_folder(job_id);
        let plan = self.plan_key(job_id);
        let mut removed = 0;
        for listed in self.storage.list(&folder).await? {
            if listed.key != plan {
                self.storage.delete(&listed.key).await?;
                removed += 1;
            }
        }
        self.storage.delete(&plan).await?;
        self.storage.remove_empty_folder(&folder).await?;
        Ok(removed + 1)
    }

    /// The jobs none of whose objects changed for `after`: those with a
    /// plan never ended (their tasks were lost); those without are the
    /// leftovers of an ended job.
    pub async fn abandoned(&self, after: Duration) -> Result<Vec<Abandoned>, StorageError> {
        let mut newest: std::collections::BTreeMap<String, Option<SystemTime>> = Default::default();
        for listed in self.storage.list(self.prefix).await? {
            let Some((job, _)) = listed
                .key
                .strip_prefix(self.prefix)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            let at = modified_at(&listed.modified);
            let slot = newest.entry(job.to_string()).or_insert(at);
            *slot = match (*slot, at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        let now = SystemTime::now();
        let mut found = Vec::new();
        for (job_id, at) in newest {
            let old = at.is_some_and(|at| now.duration_since(at).unwrap_or_default() >= after);
            if old {
                let plan = self.plan(&job_id).await.unwrap_or(None);
                found.push(Abandoned { job_id, plan });
            }
        }
        Ok(found)
    }
}

/// When a listing says an object was written: S3 gives RFC 3339, the
/// directory backend nanoseconds since the epoch.
fn modified_at(modified: &str) -> Option<SystemTime> {
    if let Ok(nanos) = modified.parse::<u128>() {
        let nanos = u64::try_from(nanos).ok()?;
        return Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos));
    }
    let at = time::OffsetDateTime::parse(modified, &time::format_description::well_known::Rfc3339)
        .ok()?;
    let secs = u64::try_from(at.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The file extension of a part written by `muxer`.
pub fn extension(muxer: &str) -> &'static str {
    match muxer {
        "qtmux" => "mov",
        "matroskamux" => "mkv",
        "webmmux" => "webm",
        _ => "mp4",
    }
}

mod claims;
#[cfg(test)]
mod tests;
