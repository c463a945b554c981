//! A job you can follow and stop: `submit` (with `--wait`), `status`,
//! `jobs` and `cancel`, run as an operator runs them, against real
//! workers, a real broker and a real S3 server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use transcode_worker::job::Phase;

use crate::common::farm::{Farm, Rabbit};
use crate::common::services::{shared_s3, RabbitNode, RabbitOptions};
use crate::common::{fixtures, wait_for};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// Lets jobs use `identity sleep-time=N` to make an encode last long enough.
const SLOW: (&str, &str) = ("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn status_json(farm: &Farm, job_id: &str) -> Value {
    let out = farm.cli(&["status", job_id, "--json"], JOB_TIMEOUT).await;
    assert!(out.status.success(), "status {job_id}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_status_and_jobs_tell_what_became_of_a_good_and_a_bad_job() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("in/a.mov", &fixtures::mjpeg_mov(1)).await;
    let _worker = farm.spawn_worker(&[]);

    let out = farm
        .cli(
            &[
                "submit", "--input", "in/a.mov", "--output", "o/a.mp4", "--wait",
            ],
            JOB_TIMEOUT,
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let good = text(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(good.starts_with("job-"), "the job id comes first: {out:?}");
    assert!(text(&out.stderr).contains("completed"), "{out:?}");

    let out = farm
        .cli(
            &[
                "submit",
                "--input",
                "in/missing.mov",
                "--output",
                "o/b.mp4",
                "--job-id",
                "bad-1",
                "--wait",
            ],
            JOB_TIMEOUT,
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(text(&out.stdout).lines().next(), Some("bad-1"));
    assert!(text(&out.stderr).contains("input_not_found"), "{out:?}");

    // From a fresh process, long after: what became of each.
    let s = status_json(&farm, &good).await;
    assert_eq!(s["job_id"], good.as_str());
    assert_eq!(s["state"], "completed", "{s:#}");
    assert_eq!(s["output_keys"], serde_json::json!(["o/a.mp4"]));
    assert!(s["output_size_bytes"].as_u64().unwrap_or(0) > 0, "{s:#}");
    assert_eq!(s["attempts"][0]["outcome"], "completed", "{s:#}");
    let s = status_json(&farm, "bad-1").await;
    assert_eq!(s["state"], "dead", "{s:#}");
    assert_eq!(s["error_kind"], "input_not_found", "{s:#}");
    let out = farm.cli(&["status", "bad-1"], JOB_TIMEOUT).await;
    assert!(text(&out.stdout).contains("bad-1: dead"), "{out:?}");

    let out = farm.cli(&["status", "never-submitted"], JOB_TIMEOUT).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let unknown: Value = serde_json::from_slice(
        &farm
            .cli(&["status", "never-submitted", "--json"], JOB_TIMEOUT)
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(unknown["state"], "unknown");

    let out = farm.cli(&["jobs", "--json"], JOB_TIMEOUT).await;
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("jobs --json");
    let ids: Vec<&str> = listed.iter().filter_map(|j| j["job_id"].as_str()).collect();
    assert_eq!(ids, ["bad-1", good.as_str()], "newest first");
    let out = farm.cli(&["jobs", "--state", "dead"], JOB_TIMEOUT).await;
    let table = text(&out.stdout);
    assert!(table.contains("bad-1") && !table.contains(&good), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_it_within_two_seconds_and_leaves_nothing_behind() {
    let farm = Farm::s3(&[SLOW]).await;
    farm.put_input("in/a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[SLOW]);
    let out = farm
        .cli(
            &[
                "submit",
                "--input",
                "in/a.mov",
                "--output",
                "o/long.mp4",
                "--job-id",
                "long",
                "--transcode-options",
                "identity sleep-time=200000 ! videoconvert ! x264enc",
            ],
            JOB_TIMEOUT,
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    watch.until_encoding(Some("long"), JOB_TIMEOUT).await;
    let asked = Instant::now();
    let out = farm.cli(&["cancel", "long"], JOB_TIMEOUT).await;
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("long: cancelled"), "{out:?}");
    let cancelled = watch
        .until(JOB_TIMEOUT, |e| {
            e.job_id == "long" && e.state == Phase::Cancelled
        })
        .await;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}: {cancelled:#?}"
    );
    wait_for(
        Duration::from_secs(10),
        "the pipeline process stopped",
        || async { worker.pipelines().is_empty() },
    )
    .await;
    assert!(!farm.output_exists("o/long.mp4").await, "nothing stored");
    let bucket = farm.bucket.as_ref().expect("S3");
    let unfinished: usize = bucket
        .list_multiparts_uploads(Some("o/"), None)
        .await
        .unwrap()
        .iter()
        .map(|p| p.uploads.len())
        .sum();
    assert_eq!(unfinished, 0);
    let leftovers: Vec<_> = std::fs::read_dir(farm.scratch()).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(farm.dead_letters().await.is_empty(), "not dead-lettered");
    assert!(
        watch.of("long").iter().all(|e| e.state != Phase::Failed),
        "not retried: {:#?}",
        watch.of("long")
    );
    assert_eq!(status_json(&farm, "long").await["state"], "cancelled");
    // The worker goes on with the next job.
    let out = farm
        .cli(
            &[
                "submit",
                "--input",
                "in/a.mov",
                "--output",
                "o/next.mp4",
                "--wait",
            ],
            JOB_TIMEOUT,
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    // Cancelling what has ended, or what the farm never saw, changes nothing.
    let out = farm.cli(&["cancel", "long"], JOB_TIMEOUT).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains("already cancelled"), "{out:?}");
    let out = farm.cli(&["cancel", "nobody-knows"], JOB_TIMEOUT).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    farm.assert_all_acked(vec![worker]).await;
}

/// A cancel of a queued job is kept in the storage: a worker started
/// later, after a broker restart, settles the job as cancelled without
/// downloading its input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_cancelled_is_settled_unstarted_by_a_later_worker_after_a_broker_restart() {
    let node = Arc::new(RabbitNode::start(RabbitOptions::default()));
    let mut farm = Farm::s3_on(Rabbit::Own(node.clone()), shared_s3(), &[]).await;
    farm.put_input("in/a.mov", &fixtures::mjpeg_mov(1)).await;
    let out = farm
        .cli(
            &[
                "submit", "--input", "in/a.mov", "--output", "o/q.mp4", "--job-id", "queued-1",
            ],
            JOB_TIMEOUT,
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let out = farm.cli(&["cancel", "queued-1"], JOB_TIMEOUT).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("will be settled as cancelled"),
        "{out:?}"
    );
    node.restart();
    farm.reconnect().await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    let last = watch.until_final("queued-1", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Cancelled, "{last:#?}");
    assert!(
        watch
            .of("queued-1")
            .iter()
            .all(|e| e.state != Phase::Downloading),
        "no download: {:#?}",
        watch.of("queued-1")
    );
    assert!(!farm.output_exists("o/q.mp4").await);
    assert_eq!(status_json(&farm, "queued-1").await["state"], "cancelled");
    farm.assert_all_acked(vec![worker]).await;
}
