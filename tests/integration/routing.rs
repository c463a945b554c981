//! Urgent first, and only to workers that can: the three priority queues,
//! and jobs that need an element or a label some workers lack.

use std::time::Duration;

use serde_json::{json, Value};
use transcode_worker::error::ErrorKind;
use transcode_worker::job::{Phase, Priority, Progress};

use crate::common::farm::{Farm, ProgressWatch};
use crate::common::{fixtures, wait_for, wait_for_value};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// Lets jobs use `identity sleep-time=N` to make an encode last long enough.
const SLOW: (&str, &str) = ("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity");

fn slow_job(id: &str, output: &str, micros_per_frame: u32) -> Value {
    json!({"job_id": id, "input_key": "a.mov", "output_key": output,
        "transcode_options": format!("identity sleep-time={micros_per_frame} ! videoconvert ! x264enc")})
}

fn quick_job(id: &str) -> Value {
    json!({"job_id": id, "input_key": "a.mov", "output_key": format!("o/{id}.mp4"),
        "transcode_options": "videoconvert ! x264enc speed-preset=ultrafast"})
}

/// The jobs in the order their first attempt started (their first
/// `downloading` event).
fn start_order(watch: &ProgressWatch) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for e in &watch.seen {
        if e.state == Phase::Downloading && !order.contains(&e.job_id) {
            order.push(e.job_id.clone());
        }
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_job_is_the_next_started_even_with_twenty_normal_jobs_waiting() {
    let farm = Farm::s3(&[SLOW]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    let _w1 = farm.spawn_worker(&[SLOW]);
    let _w2 = farm.spawn_worker(&[SLOW]);
    // busy-2 lasts three times as long as busy-1, so one worker is free
    // first: two workers free at once would take urgent and normal-1
    // together, and their `downloading` events could come in either order.
    farm.publish_job(slow_job("busy-1", "o/busy-1.mp4", 150_000))
        .await;
    farm.publish_job(slow_job("busy-2", "o/busy-2.mp4", 450_000))
        .await;
    watch.until_encoding(Some("busy-1"), JOB_TIMEOUT).await;
    watch.until_encoding(Some("busy-2"), JOB_TIMEOUT).await;
    for n in 1..=20 {
        farm.publish_job(quick_job(&format!("normal-{n}"))).await;
    }
    let high = farm.settings.broker.jobs_queue_for(Priority::High);
    farm.publish_job_to(&high, quick_job("urgent")).await;
    assert_eq!(
        farm.ready_in(farm.jobs_queue()).await,
        20,
        "both workers are busy"
    );
    let next = watch
        .until(JOB_TIMEOUT, |e| {
            e.state == Phase::Downloading && !e.job_id.starts_with("busy-")
        })
        .await;
    assert_eq!(next.job_id, "urgent", "{:#?}", start_order(&watch));
    let last = watch.until_final("urgent", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_low_job_starts_while_a_normal_one_waits() {
    let farm = Farm::s3(&[SLOW]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    let _worker = farm.spawn_worker(&[SLOW]);
    farm.publish_job(slow_job("busy", "o/busy.mp4", 100_000))
        .await;
    watch.until_encoding(Some("busy"), JOB_TIMEOUT).await;
    let low = farm.settings.broker.jobs_queue_for(Priority::Low);
    for n in 1..=2 {
        farm.publish_job_to(&low, quick_job(&format!("low-{n}")))
            .await;
    }
    // Normal jobs keep arriving: each is published while the one before it runs.
    farm.publish_job(slow_job("normal-1", "o/normal-1.mp4", 20_000))
        .await;
    for n in 2..=4 {
        let before = format!("normal-{}", n - 1);
        watch
            .until(JOB_TIMEOUT, |e| {
                e.job_id == before && e.state == Phase::Downloading
            })
            .await;
        farm.publish_job(slow_job(
            &format!("normal-{n}"),
            &format!("o/normal-{n}.mp4"),
            20_000,
        ))
        .await;
    }
    for id in ["normal-4", "low-1", "low-2"] {
        let last = watch.until_final(id, JOB_TIMEOUT).await;
        assert_eq!(last.state, Phase::Completed, "{last:#?}");
    }
    let order = start_order(&watch);
    assert_eq!(
        order,
        ["busy", "normal-1", "normal-2", "normal-3", "normal-4", "low-1", "low-2"],
        "low jobs start only once no normal job waits"
    );
}

/// A HEVC job (preset hevc-mp4: x265enc) published while only a worker
/// without x265enc runs: it is not failed, and uses no attempt; it waits
/// for a capable worker, which does it on attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_needing_an_element_a_worker_lacks_is_done_by_one_that_has_it_on_attempt_one() {
    let lacking = ("TRANSCODE_PIPELINE__HIDDEN_ELEMENTS", "x265enc");
    let farm = Farm::s3(&[]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    let without = farm.spawn_worker(&[lacking]);
    for round in 1..=2 {
        let id = format!("hevc-{round}");
        farm.publish_job(json!({"job_id": id, "input_key": "a.mov",
            "output_key": format!("o/{id}.mp4"), "preset": "hevc-mp4"}))
            .await;
        let waiting = watch
            .until(JOB_TIMEOUT, |e| e.job_id == id && e.state == Phase::Waiting)
            .await;
        assert_eq!(waiting.worker, without.name);
        assert_eq!(waiting.error_kind, Some(ErrorKind::MissingCapability));
        assert!(
            waiting.error.as_deref().unwrap_or("").contains("x265enc"),
            "{waiting:#?}"
        );
    }
    // The inspect table shows where they wait, and why (the job is moved
    // to its queue a moment after its waiting event).
    let waiting_queue = format!("{}.requires.x265enc", farm.jobs_queue());
    let shown = |table: &str| {
        table
            .lines()
            .any(|l| l.contains(&waiting_queue) && l.contains(" 2 ") && l.contains("needs x265enc"))
    };
    let table = wait_for_value(JOB_TIMEOUT, "inspect showing both jobs waiting", || async {
        let out = farm.cli(&["inspect", "--timeout", "2s"], JOB_TIMEOUT).await;
        let table = String::from_utf8_lossy(&out.stdout).to_string();
        shown(&table).then_some(table)
    })
    .await;
    assert!(table.contains("x265enc"), "{table}");

    let with = farm.spawn_worker(&[]);
    for round in 1..=2 {
        let id = format!("hevc-{round}");
        let last = watch.until_final(&id, JOB_TIMEOUT).await;
        assert_eq!(last.state, Phase::Completed, "{last:#?}");
        assert_eq!(last.worker, with.name);
        assert_eq!(last.attempt, 1, "waiting used no attempt: {last:#?}");
    }
    // Later HEVC jobs: whichever worker is free first, the capable one does them.
    farm.publish_job(json!({"job_id": "hevc-3", "input_key": "a.mov",
        "output_key": "o/hevc-3.mp4", "preset": "hevc-mp4"}))
        .await;
    let last = watch.until_final("hevc-3", JOB_TIMEOUT).await;
    assert_eq!(
        (last.state, last.attempt),
        (Phase::Completed, 1),
        "{last:#?}"
    );
    assert_eq!(last.worker, with.name);
    let failures: Vec<&Progress> = watch
        .seen
        .iter()
        .filter(|e| e.state == Phase::Failed)
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(farm.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_live_worker_can_run_waits_then_is_dead_lettered_as_no_capable_worker() {
    let lacking = ("TRANSCODE_PIPELINE__HIDDEN_ELEMENTS", "x265enc");
    let timeout = ("TRANSCODE_WORKER__NO_CAPABLE_WORKER_TIMEOUT", "4s");
    let farm = Farm::s3(&[timeout]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[lacking, timeout]);
    farm.publish_job(json!({"job_id": "nobody", "input_key": "a.mov",
        "output_key": "o/nobody.mp4", "preset": "hevc-mp4"}))
        .await;
    watch
        .until(JOB_TIMEOUT, |e| {
            e.job_id == "nobody" && e.state == Phase::Waiting
        })
        .await;
    let last = watch.until_final("nobody", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Failed, "{last:#?}\n{}", worker.logs());
    assert_eq!(last.error_kind, Some(ErrorKind::NoCapableWorker));
    let error = last.error.clone().unwrap_or_default();
    assert!(
        error.contains("x265enc") && error.contains("no live worker"),
        "{error}"
    );
    let dead = farm.wait_dead_letters(JOB_TIMEOUT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].1.get("x-error-kind").map(String::as_str),
        Some("no_capable_worker")
    );
    assert!(!farm.output_exists("o/nobody.mp4").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_asking_for_a_label_is_done_by_a_worker_with_that_label() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    let plain = farm.spawn_worker(&[("TRANSCODE_WORKER__LABELS", "site-a")]);
    farm.publish_job(json!({"job_id": "gpu-job", "input_key": "a.mov",
        "output_key": "o/gpu.mp4", "requires": ["gpu"]}))
        .await;
    let waiting = watch
        .until(JOB_TIMEOUT, |e| {
            e.job_id == "gpu-job" && e.state == Phase::Waiting
        })
        .await;
    assert_eq!(waiting.worker, plain.name);
    assert!(
        waiting.error.as_deref().unwrap_or("").contains("\"gpu\""),
        "{waiting:#?}"
    );
    let gpu = farm.spawn_worker(&[("TRANSCODE_WORKER__LABELS", "gpu,site-b")]);
    let last = watch.until_final("gpu-job", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert_eq!(last.worker, gpu.name);
    assert_eq!(last.attempt, 1);
    // inspect and ping show each worker's labels and what it can encode with.
    let out = farm
        .cli(&["inspect", "--json", "--timeout", "2s"], JOB_TIMEOUT)
        .await;
    let infos: Vec<Value> = serde_json::from_slice(&out.stdout).expect("inspect --json");
    let of = |name: &str| {
        infos
            .iter()
            .find(|i| i["worker"] == name)
            .unwrap_or_else(|| panic!("{name} in {infos:#?}"))["capabilities"]
            .clone()
    };
    assert_eq!(of(&gpu.name)["labels"], json!(["gpu", "site-b"]));
    assert_eq!(of(&plain.name)["labels"], json!(["site-a"]));
    let encoders = of(&gpu.name)["encoders"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(encoders.contains(&json!("x264enc")), "{encoders:?}");
    assert!(of(&gpu.name)["cores"].as_u64().unwrap_or(0) >= 1);
    wait_for(JOB_TIMEOUT, "the queues empty", || async {
        farm.ready_in(farm.jobs_queue()).await == 0
    })
    .await;
}
