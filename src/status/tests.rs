//! Unit tests of `status`.

use super::*;
use crate::error::ErrorKind;
use std::collections::HashMap;

fn status() -> Status {
    let env: HashMap<String, String> = [
        ("S3_BUCKET_NAME", "videos"),
        ("TRANSCODE_WORKER__ID", "w1"),
        ("TRANSCODE_WORKER__TRANSCODE_STALL_TIMEOUT", "1ms"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Status::new(&Settings::from_env(None, &env).unwrap())
}

#[test]
fn attempts_show_while_held_and_count_when_they_end() {
    let s = status();
    let a = s.attempt("job1", 2);
    a.update(Phase::Downloading, 1.0, None);
    a.transferred(Phase::Downloading, 500, 1000);
    a.transferred(Phase::Downloading, 1000, 1000);
    a.update(Phase::Transcoding, 50.0, Some(Duration::from_secs(3)));
    a.media_position(2000, Some(4000));
    let info = s.snapshot();
    assert_eq!(info.worker, "w1");
    assert_eq!(info.pid, std::process::id());
    assert_eq!(info.jobs.len(), 1);
    let job = &info.jobs[0];
    assert_eq!(
        (job.job_id.as_str(), job.attempt, job.phase),
        ("job1", 2, Phase::Transcoding)
    );
    assert_eq!(job.progress, 50.0);
    assert_eq!(job.eta_secs, Some(3.0));
    assert!(job.speed.is_some_and(|s| s > 0.0), "{job:?}");
    let figures = a.figures();
    assert_eq!(figures.position_secs, Some(2.0));
    assert_eq!(figures.duration_secs, Some(4.0));

    a.completed();
    assert_eq!(s.snapshot().jobs[0].phase, Phase::Completed);
    drop(a);
    let b = s.attempt("job2", 1);
    b.failed(ErrorKind::InputNotFound, false);
    drop(b);
    let c = s.attempt("job3", 1);
    c.failed(ErrorKind::StorageUnavailable, true);
    drop(c);
    let info = s.snapshot();
    assert!(info.jobs.is_empty());
    assert_eq!(
        (info.jobs_completed, info.jobs_failed, info.attempts_retried),
        (1, 1, 1)
    );
    let text = s.metrics().encode();
    assert!(
        text.contains("transcode_bytes_total{direction=\"in\"} 1000"),
        "{text}"
    );
    assert!(
        text.contains("transcode_jobs_total{outcome=\"failed\",error_kind=\"input_not_found\"} 1"),
        "{text}"
    );
}

#[test]
fn unhealthy_without_a_broker_or_with_a_stalled_attempt() {
    let s = status();
    let h = s.health();
    assert!(!h.healthy && !h.connected, "{h:?}");
    assert!(h.reason.contains("not connected"), "{h:?}");
    let a = s.attempt("slow", 1);
    a.update(Phase::Transcoding, 10.0, None);
    let now = Instant::now();
    // The transcode stall limit is 1 ms, plus the grace.
    assert!(s.health_at(now).stalled.is_empty());
    let later = now + STALL_GRACE + Duration::from_secs(1);
    let h = s.health_at(later);
    assert_eq!(h.stalled, ["slow"]);
    a.media_position(1000, None);
    assert!(s.health_at(Instant::now()).stalled.is_empty());
    assert_eq!(h.jobs, 1);
}
