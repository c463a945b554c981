//! Segmented jobs: one long input encoded in segments by every free
//! worker, then joined into the job's one output.
//!
//! This module holds what the steps share (the plan, the part tasks, the
//! storage objects, the inputs a worker keeps); the worker runs the steps
//! (`worker/segments.rs`). Nothing waits unacknowledged for the length of
//! the whole file:
//!
//! 1. **Split**: the worker that takes the job fetches and
//!    scans the input (its video packets, without decoding), cuts it on
//!    frame boundaries every `segment_seconds` (moved to a source key frame
//!    when one is near; a short tail joins the segment before it), writes
//!    the [`SegmentPlan`] (with the job's message as it was published) to
//!    the storage, starts the job's progress mark on the broker (see
//!    [`crate::broker::Broker::publish_in_order`]: the parts' events never
//!    take the job's percentage back), publishes a [`PartTask`] per video
//!    segment to the jobs queue the job came from (confirmed), and acks
//!    the job.
//! 2. **Parts**: every worker takes part tasks like jobs, one
//!    at a time: a video segment (the frames of its stream times, the first
//!    one a key frame, in a part file of the output's container), or the
//!    audio part (every audio track of the whole input, encoded once, so no
//!    encoder priming falls between segments; the task that claims it
//!    encodes it beside its segment, [`SegmentPlan::audio_by_claim`]). On
//!    S3 a worker that did not split the job reads the input by byte
//!    ranges, the blocks its parts read ([`crate::pipeline::Ranged`]), or
//!    downloads it whole (`segments.fetch_input`). A part already stored
//!    is not encoded again; a worker killed mid-part costs that part only
//!    (the broker gives its task to another worker).
//! 3. **Join**: the task that stores the last part claims the
//!    job's end (an object created only if absent: one claim wins) and
//!    joins the parts with demuxers and the muxer (nothing is encoded
//!    again), verifies the output like any output, stores it (an output
//!    already stored with the job's fingerprint is not made again),
//!    publishes `completed`, writes the job's record, queues its webhook
//!    and removes the job's objects and its progress mark.
//!
//! A part that fails for good fails the job: its task claims the end, a
//! `failed` event goes out for the job, the job's message (from the plan)
//! goes to the dead-letter queue with the reason, and the objects are
//! removed. The objects of a job whose tasks were lost are found when a
//! worker starts and by the hourly history pruning pass
//! ([`objects::Objects::abandoned`]): the job fails as stalled.
//!
//! Storage layout under `segments.prefix` (see [`objects`]): `<job>/plan.json`,
//! and per plan `<job>/<plan>/<part>.<ext>`, `<job>/<plan>/done/<part>.json`,
//! `<job>/<plan>/end.json`.

pub mod input;
pub mod objects;
pub mod plan;

use serde::{Deserialize, Serialize};

pub use input::InputCache;
pub use objects::{AudioClaim, Done, End, Ending, Objects};
pub use plan::{Cut, Part, SegmentPlan};

use crate::error::{ErrorKind, JobError};

/// The message of one part of a segmented job, queued beside jobs:
/// `{"segment_of": "<job id>", "plan": "<plan id>", "part": "v0003"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartTask {
    /// The job it is a part of.
    pub segment_of: String,
    /// The plan it belongs to (a job planned again has a new one).
    pub plan: String,
    /// The part: `v0003` (video segment 3) or `audio`.
    pub part: String,
}

impl PartTask {
    /// The task of `part` of `plan`.
    pub fn new(plan: &SegmentPlan, part: Part) -> PartTask {
        PartTask {
            segment_of: plan.job_id.clone(),
            plan: plan.plan_id.clone(),
            part: part.name(),
        }
    }

    /// `None` when `body` is not a part task (a job); otherwise the task,
    /// or why it is not a valid one.
    pub fn recognise(body: &[u8]) -> Option<Result<(PartTask, Part), JobError>> {
        #[derive(Deserialize)]
        struct Marker {
            #[serde(rename = "segment_of")]
            _segment_of: serde::de::IgnoredAny,
        }
        // Only an object can be a task (serde would also read a struct
        // from an array, such as a hostile `[[[...]]]` job message).
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        serde_json::from_slice::<Marker>(body).ok()?;
        let invalid = |why: String| JobError::new(ErrorKind::InvalidJob, why);
        let parsed = serde_json::from_slice::<PartTask>(body)
            .map_err(|e| invalid(format!("the message is not a valid part task: {e}")))
            .and_then(|task| {
                let part = Part::from_name(&task.part)
                    .ok_or_else(|| invalid(format!("{:?} is not a part", task.part)))?;
                let job_ok = crate::job::check_job_id(&task.segment_of).is_ok();
                let plan_ok = !task.plan.is_empty()
                    && task.plan.len() <= 64
                    && task.plan.bytes().all(|b| b.is_ascii_alphanumeric());
                if !job_ok || !plan_ok {
                    return Err(invalid("the part task names no valid job or plan".into()));
                }
                Ok((task, part))
            });
        Some(parsed)
    }

    /// The message body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a part task serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_never_part_tasks() {
        for body in [
            &b"[1]"[..],
            b"[[[[[[1]]]]]]",
            b" [\"x\"]",
            b"[{\"segment_of\": \"j\"}]",
        ] {
            assert!(PartTask::recognise(body).is_none(), "{body:?}");
        }
    }

    #[test]
    fn part_tasks_are_told_apart_from_jobs() {
        assert!(
            PartTask::recognise(br#"{"job_id":"a","input_key":"i","output_key":"o"}"#).is_none()
        );
        assert!(PartTask::recognise(b"not json").is_none());
        let (task, part) =
            PartTask::recognise(br#"{"segment_of":"job-1","plan":"ab12","part":"v0003"}"#)
                .unwrap()
                .unwrap();
        assert_eq!((task.segment_of.as_str(), part), ("job-1", Part::Video(3)));
        for bad in [
            r#"{"segment_of":"job-1","plan":"ab12","part":"v3"}"#,
            r#"{"segment_of":"job 1","plan":"ab12","part":"audio"}"#,
            r#"{"segment_of":"job-1","plan":"../x","part":"audio"}"#,
            r#"{"segment_of":5}"#,
        ] {
            let err = PartTask::recognise(bad.as_bytes()).unwrap().unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidJob, "{bad}");
        }
    }
}
