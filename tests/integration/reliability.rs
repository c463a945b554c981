//! Nothing lost, nothing looping, nothing stuck: crashes of the pipeline
//! process, crash loops, graceful stop, broker restarts, storage outages.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use transcode_worker::error::ErrorKind;
use transcode_worker::job::State;

use crate::common::farm::{Farm, Rabbit};
use crate::common::services::{shared_s3, RabbitNode, RabbitOptions, S3Server};
use crate::common::{fixtures, wait_for};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// Lets jobs use `identity sleep-time=N` to make an encode last long enough
/// to interrupt it.
const SLOW: (&str, &str) = ("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity");

fn slow_job(id: &str, input: &str, output: &str, micros_per_frame: u32) -> serde_json::Value {
    json!({"job_id": id, "input_key": input, "output_key": output,
        "transcode_options": format!("identity sleep-time={micros_per_frame} ! videoconvert ! x264enc")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_pipeline_fails_one_attempt_and_the_worker_goes_on() {
    let farm = Farm::s3(&[SLOW]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[SLOW]);
    farm.publish_job(slow_job("seg", "a.mov", "o/a.mp4", 60_000))
        .await;
    loop {
        let e = watch.next(JOB_TIMEOUT).await;
        if e.state == State::Transcoding && e.progress > 5.0 {
            break;
        }
    }
    let children = worker.children();
    assert_eq!(children.len(), 1, "one pipeline process");
    // SAFETY: kill(2) on the worker's own child.
    unsafe { libc::kill(children[0], libc::SIGSEGV) };

    let failed = loop {
        let e = watch.next(JOB_TIMEOUT).await;
        if e.state == State::Failed {
            break e;
        }
    };
    assert_eq!(
        failed.error_kind,
        Some(ErrorKind::PipelineCrashed),
        "{failed:#?}"
    );
    assert!(
        failed.error.as_deref().unwrap().contains("SIGSEGV"),
        "{failed:#?}"
    );
    assert_eq!(failed.will_retry, Some(true));
    let last = watch.until_final("seg", JOB_TIMEOUT).await;
    assert_eq!(last.state, State::Completed, "{last:#?}");
    assert_eq!(last.attempt, 2);
    assert_eq!(last.worker, worker.name, "the same worker process went on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_every_worker_ends_in_the_dead_letter_queue() {
    let max = ("TRANSCODE_WORKER__MAX_ATTEMPTS", "2");
    let farm = Farm::s3(&[max]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    farm.publish_job(json!({"job_id": "poison", "input_key": "a.mov", "output_key": "o/a.mp4"}))
        .await;
    // Two attempts, each killing its worker (a fault point stands in for a
    // decoder that takes the whole machine down).
    for _ in 0..2 {
        let mut w = farm.spawn_worker(&[max, ("TRANSCODE_WORKER__CRASH_AFTER", "transcode")]);
        let status = w.wait_exit(JOB_TIMEOUT).await;
        assert!(!status.success());
    }
    // The next worker does not run it a third time: it dead-letters it.
    let _w = farm.spawn_worker(&[max]);
    let last = watch.until_final("poison", JOB_TIMEOUT).await;
    assert_eq!(last.state, State::Failed, "{last:#?}");
    assert_eq!(last.error_kind, Some(ErrorKind::AttemptsExhausted));
    assert_eq!(last.attempt, 3);
    assert!(
        watch
            .of("poison")
            .iter()
            .all(|e| e.attempt < 3 || e.state != State::Transcoding),
        "the third delivery was not transcoded"
    );
    wait_for(JOB_TIMEOUT, "the dead letter", || async {
        let dead = farm.dead_letters().await;
        dead.len() == 1 && dead[0].1["x-error-kind"] == "attempts_exhausted"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_short_drain_gives_the_job_back_to_another_worker() {
    let drain = ("TRANSCODE_WORKER__DRAIN_TIMEOUT", "1s");
    let farm = Farm::s3(&[SLOW, drain]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let mut first = farm.spawn_worker(&[SLOW, drain]);
    farm.publish_job(slow_job("drain", "a.mov", "o/a.mp4", 100_000))
        .await;
    loop {
        let e = watch.next(JOB_TIMEOUT).await;
        if e.state == State::Transcoding && e.progress > 5.0 {
            break;
        }
    }
    first.signal(libc::SIGTERM);
    let status = first.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit 0 after a drain: {status:?}\n{}",
        first.logs()
    );
    let given_back = loop {
        let e = watch.next(JOB_TIMEOUT).await;
        if e.state == State::Failed || e.state == State::Completed {
            break e;
        }
    };
    assert_eq!(given_back.state, State::Failed, "{given_back:#?}");
    assert_eq!(given_back.error_kind, Some(ErrorKind::Shutdown));
    assert_eq!(given_back.will_retry, Some(true));
    // Its scratch folder is gone, and its pipeline process with it.
    let leftovers: Vec<_> = std::fs::read_dir(farm.scratch()).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let second = farm.spawn_worker(&[SLOW]);
    let last = watch.until_final("drain", JOB_TIMEOUT).await;
    assert_eq!(last.state, State::Completed, "{last:#?}");
    assert_eq!(last.worker, second.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_long_drain_lets_the_job_finish_then_exits() {
    let drain = ("TRANSCODE_WORKER__DRAIN_TIMEOUT", "60s");
    let farm = Farm::s3(&[SLOW, drain]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let mut worker = farm.spawn_worker(&[SLOW, drain]);
    farm.publish_job(slow_job("finish", "a.mov", "o/a.mp4", 40_000))
        .await;
    farm.publish_job(json!({"job_id": "next", "input_key": "a.mov", "output_key": "o/b.mp4"}))
        .await;
    loop {
        let e = watch.next(JOB_TIMEOUT).await;
        if e.job_id == "finish" && e.state == State::Transcoding {
            break;
        }
    }
    worker.signal(libc::SIGTERM);
    let last = watch.until_final("finish", JOB_TIMEOUT).await;
    assert_eq!(last.state, State::Completed, "{last:#?}");
    assert_eq!(last.worker, worker.name);
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert!(farm.output_exists("o/a.mp4").await);
    // The second job was not started by the stopping worker.
    assert!(watch.of("next").is_empty(), "{:#?}", watch.of("next"));
    assert_eq!(farm.ready_jobs().await, 1, "the second job is still queued");
}

/// A farm on a broker node of its own, with short heartbeats and liveness checks.
async fn own_broker_farm() -> (Arc<RabbitNode>, Farm, [(&'static str, &'static str); 2]) {
    let node = Arc::new(RabbitNode::start(RabbitOptions::default()));
    let extra = [("TRANSCODE_BROKER__LIVENESS_INTERVAL", "1s"), SLOW];
    let mut farm = Farm::s3_on(Rabbit::Own(node.clone()), shared_s3(), &extra).await;
    farm.env.insert(
        "AMQP_URL".into(),
        format!("{}?heartbeat=2", node.amqp_url()),
    );
    (node, farm, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_survive_a_broker_restart_and_an_idle_worker_reconnects() {
    let (node, mut farm, extra) = own_broker_farm().await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let worker = farm.spawn_worker(&extra);
    wait_for(JOB_TIMEOUT, "the worker consuming", || async {
        worker.logs().contains("waiting for jobs")
    })
    .await;
    // A job queued while the worker is away from the broker.
    node.stop();
    node.resume();
    farm.reconnect().await;
    farm.publish_job(json!({"job_id": "after", "input_key": "a.mov", "output_key": "o/after.mp4"}))
        .await;
    wait_for(JOB_TIMEOUT, "the output after the restart", || async {
        farm.output_exists("o/after.mp4").await
    })
    .await;
    assert!(worker.logs().contains("reconnecting"), "{}", worker.logs());
    drop(worker);

    // A job queued with no worker running survives a restart too.
    farm.publish_job(json!({"job_id": "kept", "input_key": "a.mov", "output_key": "o/kept.mp4"}))
        .await;
    wait_for(JOB_TIMEOUT, "the job queued", || async {
        farm.ready_jobs().await == 1
    })
    .await;
    node.restart();
    farm.reconnect().await;
    let _worker = farm.spawn_worker(&extra);
    wait_for(JOB_TIMEOUT, "the output of the kept job", || async {
        farm.output_exists("o/kept.mp4").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_during_an_encode_loses_nothing() {
    let (node, mut farm, extra) = own_broker_farm().await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let worker = farm.spawn_worker(&extra);
    farm.publish_job(slow_job("mid", "a.mov", "o/mid.mp4", 80_000))
        .await;
    wait_for(JOB_TIMEOUT, "the encode running", || async {
        !worker.children().is_empty()
    })
    .await;
    node.restart();
    farm.reconnect().await;
    wait_for(JOB_TIMEOUT, "the output", || async {
        farm.output_exists("o/mid.mp4").await
    })
    .await;
    wait_for(JOB_TIMEOUT, "the job acked", || async {
        farm.jobs_queue_counts() == (0, 0)
    })
    .await;
    // The completed event is persistent: it is in transcoding_progress.
    let progress_queue = farm.settings.broker.progress_queue.clone();
    let events: Vec<serde_json::Value> = farm
        .drain_queue(&progress_queue)
        .await
        .iter()
        .map(|(b, _)| serde_json::from_slice(b).unwrap())
        .collect();
    let completed: Vec<_> = events
        .iter()
        .filter(|e| e["state"] == "completed")
        .collect();
    assert_eq!(completed.len(), 1, "{events:#?}");
    assert!(
        completed[0]["attempt"].as_u64().unwrap() >= 2,
        "{events:#?}"
    );
    let logs = worker.logs();
    assert!(logs.contains("reconnecting"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_queue_with_other_settings_stops_the_worker_with_a_clear_message() {
    let farm = Farm::s3(&[]).await;
    let channel = farm.channel().await;
    let name = crate::common::random_name("classic");
    channel
        .queue_declare(
            name.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let mut worker = farm.spawn_worker(&[("TRANSCODE_BROKER__JOBS_QUEUE", &name)]);
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let logs = worker.logs();
    assert!(
        logs.contains(&name) && logs.contains("other settings"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_outage_is_retried_until_storage_is_back() {
    let s3 = S3Server::start();
    let extra = [
        ("TRANSCODE_STORAGE__RETRY_FOR", "1s"),
        ("TRANSCODE_WORKER__MAX_ATTEMPTS", "20"),
    ];
    let farm = Farm::s3_on(
        Rabbit::Shared(crate::common::services::shared_rabbit()),
        &s3,
        &extra,
    )
    .await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    s3.stop();
    let _worker = farm.spawn_worker(&extra);
    farm.publish_job(json!({"job_id": "outage", "input_key": "a.mov", "output_key": "o/a.mp4"}))
        .await;
    let failed = loop {
        let e = watch.next(JOB_TIMEOUT).await;
        if e.state == State::Failed {
            break e;
        }
    };
    assert_eq!(
        failed.error_kind,
        Some(ErrorKind::StorageUnavailable),
        "{failed:#?}"
    );
    assert_eq!(failed.will_retry, Some(true));
    s3.resume();
    let last = watch.until_final("outage", JOB_TIMEOUT).await;
    assert_eq!(last.state, State::Completed, "{last:#?}");
    assert!(farm.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_the_consumer_timeout_is_never_lost_nor_run_twice_at_once() {
    // RabbitMQ 3.10: a global consumer_timeout closes the channel of a
    // delivery left unacked too long, and requeues it.
    let node = Arc::new(RabbitNode::start(
        RabbitOptions::default()
            .conf("consumer_timeout = 5000")
            .advanced_config("[{rabbit, [{channel_tick_interval, 1000}]}]."),
    ));
    let max = ("TRANSCODE_WORKER__MAX_ATTEMPTS", "2");
    let extra = [SLOW, max, ("TRANSCODE_BROKER__LIVENESS_INTERVAL", "1s")];
    let farm = Farm::s3_on(Rabbit::Own(node.clone()), shared_s3(), &extra).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&extra);
    // 50 frames at 400 ms: a 20 s encode.
    farm.publish_job(slow_job("long", "a.mov", "o/long.mp4", 400_000))
        .await;

    let mut most_pipelines = 0;
    let last = loop {
        most_pipelines = most_pipelines.max(worker.children().len());
        let e = watch.next(JOB_TIMEOUT).await;
        if e.job_id == "long"
            && (e.state == State::Completed
                || (e.state == State::Failed && e.will_retry == Some(false)))
        {
            break e;
        }
    };
    assert!(most_pipelines <= 1, "two encodes of the job at once");
    // Every attempt was cut by the broker and said why; the job then ended
    // in the dead-letter queue instead of looping.
    let cut: Vec<_> = watch
        .of("long")
        .into_iter()
        .filter(|e| e.state == State::Failed && e.will_retry == Some(true))
        .collect();
    assert_eq!(cut.len(), 2, "{:#?}", watch.of("long"));
    for e in &cut {
        let error = e.error.as_deref().unwrap();
        assert!(error.contains("consumer_timeout"), "{error}");
        assert_eq!(e.error_kind, Some(ErrorKind::BrokerUnavailable));
    }
    assert_eq!(last.state, State::Failed);
    assert_eq!(last.error_kind, Some(ErrorKind::AttemptsExhausted));
    wait_for(JOB_TIMEOUT, "the dead letter", || async {
        farm.dead_letters().await.len() == 1
    })
    .await;
    assert!(!farm.output_exists("o/long.mp4").await);
}
