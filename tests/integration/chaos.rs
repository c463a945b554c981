//! The chaos run: hundreds of short jobs, three workers killed (SIGKILL) or
//! stopped (SIGTERM) at random and restarted every few seconds, and one
//! broker restart. At the end every job has exactly one valid output and a
//! completed status, nothing is dead-lettered, and the scratch folder is
//! empty. It takes minutes, so it is ignored by default:
//!
//! ```sh
//! scripts/chaos                 # 200 jobs, 3 workers
//! CHAOS_JOBS=50 scripts/chaos
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;

use crate::common::farm::{Farm, Rabbit, WorkerProc};
use crate::common::fixtures;
use crate::common::services::{shared_s3, RabbitNode, RabbitOptions};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: run with scripts/chaos"]
async fn chaos_run() {
    let jobs = env_number("CHAOS_JOBS", 200);
    let workers = env_number("CHAOS_WORKERS", 3);
    let limit = Duration::from_secs(env_number("CHAOS_TIMEOUT_SECS", 1800) as u64);
    let started = Instant::now();

    let node = Arc::new(RabbitNode::start(RabbitOptions::default()));
    let extra = [
        ("TRANSCODE_WORKER__DRAIN_TIMEOUT", "2s"),
        ("TRANSCODE_WORKER__MAX_ATTEMPTS", "50"),
        ("TRANSCODE_BROKER__LIVENESS_INTERVAL", "1s"),
        ("TRANSCODE_BROKER__CONNECT_TIMEOUT", "5s"),
        ("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity"),
    ];
    let mut farm = Farm::s3_on(Rabbit::Own(node.clone()), shared_s3(), &extra).await;
    let input = fixtures::mjpeg_mov(1);
    farm.put_input("in/clip.mov", &input).await;
    let ids: Vec<String> = (0..jobs).map(|i| format!("chaos-{i:04}")).collect();
    for id in &ids {
        farm.publish_job(
            json!({"job_id": id, "input_key": "in/clip.mov", "output_key": format!("out/{id}.mp4"),
            // About a second per job (25 frames, 40 ms each), so that
            // the kills land in every phase of jobs, the encode included.
            "transcode_options": "identity sleep-time=40000 ! videoconvert ! x264enc speed-preset=ultrafast"}),
        )
        .await;
    }

    let mut pool: Vec<WorkerProc> = (0..workers).map(|_| farm.spawn_worker(&extra)).collect();
    let mut rng = rand::rng();
    let (mut kills, mut terms, mut restarts) = (0, 0, 0);
    let mut completed: BTreeMap<String, usize> = BTreeMap::new();
    let mut next_chaos = Instant::now() + Duration::from_secs(3);
    let progress_queue = farm.settings.broker.progress_queue.clone();
    while completed.len() < jobs {
        assert!(
            started.elapsed() < limit,
            "only {} of {jobs} jobs completed in {limit:?}",
            completed.len()
        );
        // The completed events are persistent: they survive the broker restart.
        for (body, _) in farm.drain_queue(&progress_queue).await {
            let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if event["state"] == "completed" {
                *completed
                    .entry(event["job_id"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
        if Instant::now() >= next_chaos {
            if restarts == 0 && completed.len() >= jobs / 3 {
                node.restart();
                farm.reconnect().await;
                restarts += 1;
            } else {
                let victim = rng.random_range(0..pool.len());
                if rng.random_bool(0.5) {
                    pool[victim].signal(libc::SIGKILL);
                    kills += 1;
                } else {
                    pool[victim].signal(libc::SIGTERM);
                    terms += 1;
                }
                let mut old = std::mem::replace(&mut pool[victim], farm.spawn_worker(&extra));
                old.wait_exit(Duration::from_secs(30)).await;
            }
            next_chaos = Instant::now() + Duration::from_millis(rng.random_range(2000..5000));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stop the workers politely so they remove their own scratch folders.
    for w in &pool {
        w.signal(libc::SIGTERM);
    }
    for w in &mut pool {
        assert!(w.wait_exit(Duration::from_secs(60)).await.success());
    }

    let expected: BTreeSet<String> = ids.iter().cloned().collect();
    let seen: BTreeSet<String> = completed.keys().cloned().collect();
    assert_eq!(seen, expected, "every job completed");
    let duplicates: usize = completed.values().map(|n| n - 1).sum();
    let dead = farm.dead_letters().await;
    assert!(dead.is_empty(), "{} dead letters", dead.len());
    let mut bad_outputs = 0;
    let want = fixtures::probe(&input).duration.unwrap();
    for id in &ids {
        let out = farm
            .get_output(&format!("out/{id}.mp4"))
            .await
            .unwrap_or_else(|| panic!("no output for {id}"));
        let info = fixtures::probe(&out);
        let ok = info.video.len() == 1
            && info.video[0].media_type == "video/x-h264"
            && info
                .duration
                .is_some_and(|d| d.abs_diff(want) <= Duration::from_millis(500));
        if !ok {
            bad_outputs += 1;
        }
        std::fs::remove_file(out).unwrap();
    }
    assert_eq!(bad_outputs, 0, "invalid outputs");
    let left: Vec<_> = std::fs::read_dir(farm.scratch()).unwrap().collect();
    assert!(left.is_empty(), "scratch not empty: {left:?}");
    println!(
        "chaos: {jobs} jobs, {} completed, {} duplicate completed events, 0 dead-lettered, 0 invalid outputs, \
         {workers} workers, {kills} SIGKILL, {terms} SIGTERM, {restarts} broker restart, scratch empty, {:.0} s",
        seen.len(),
        duplicates,
        started.elapsed().as_secs_f64()
    );
}
