//! Nothing lost, nothing looping, nothing stuck: crashes of the pipeline
//! process, crash loops, graceful stop, broker restarts, storage outages.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use transcode_worker::error::ErrorKind;
use transcode_worker::job::Phase;

use crate::common::farm::{Farm, Rabbit};
use crate::common::services::{shared_s3, RabbitNode, RabbitOptions, S3Server};
use crate::common::{fixtures, wait_for, wait_for_value};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// Lets jobs use `identity sleep-time=N` to make an encode last long enough
/// to interrupt it.
const SLOW: (&str, &str) = ("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity");

fn slow_job(id: &str, input: &str, output: &str, micros_per_frame: u32) -> serde_json::Value {
    json!({"job_id": id, "input_key": input, "output_key": output,
        "transcode_options": format!("identity sleep-time={micros_per_frame} ! videoconvert ! x264enc")})
}

/// The worker keeps a pipeline process started ahead (`tw-standby`); the
/// job runs in it, and once the job completed the same process waits for
/// the next one. A standby that dies while it waits costs the next job
/// nothing: it runs in a new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_in_the_standby_pipeline_process_and_a_dead_standby_is_replaced() {
    let farm = Farm::s3(&[SLOW]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[SLOW]);
    let standby = wait_for_value(JOB_TIMEOUT, "a standby process", || async {
        worker.standbys().first().copied()
    })
    .await;
    farm.publish_job(slow_job("first", "a.mov", "o/1.mp4", 40_000))
        .await;
    watch.until_encoding(Some("first"), JOB_TIMEOUT).await;
    assert_eq!(
        worker.pipelines(),
        vec![standby],
        "the job runs in the standby"
    );
    let first = watch.until_final("first", JOB_TIMEOUT).await;
    assert_eq!(first.state, Phase::Completed, "{first:#?}");
    wait_for(JOB_TIMEOUT, "the same process waiting again", || async {
        worker.standbys() == vec![standby] && worker.pipelines().is_empty()
    })
    .await;

    // SAFETY: kill(2) on the worker's own child.
    unsafe { libc::kill(standby, libc::SIGKILL) };
    farm.publish_job(slow_job("second", "a.mov", "o/2.mp4", 40_000))
        .await;
    watch.until_encoding(Some("second"), JOB_TIMEOUT).await;
    let running = worker.pipelines();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_ne!(running[0], standby);
    let second = watch.until_final("second", JOB_TIMEOUT).await;
    assert_eq!(second.state, Phase::Completed, "{second:#?}");
    assert_eq!(second.attempt, 1, "no attempt was lost to the dead standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_pipeline_fails_one_attempt_and_the_worker_goes_on() {
    let farm = Farm::s3(&[SLOW]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[SLOW]);
    farm.publish_job(slow_job("seg", "a.mov", "o/a.mp4", 60_000))
        .await;
    watch.until_encoding(None, JOB_TIMEOUT).await;
    let children = worker.pipelines();
    assert_eq!(children.len(), 1, "one pipeline process");
    // SAFETY: kill(2) on the worker's own child.
    unsafe { libc::kill(children[0], libc::SIGSEGV) };

    let failed = watch.until(JOB_TIMEOUT, |e| e.state == Phase::Failed).await;
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
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert_eq!(last.attempt, 2);
    assert_eq!(last.worker, worker.name, "the same worker process went on");
}

#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test turns it on)"
)]
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
    assert_eq!(last.state, Phase::Failed, "{last:#?}");
    assert_eq!(last.error_kind, Some(ErrorKind::AttemptsExhausted));
    assert_eq!(last.attempt, 3);
    assert!(
        watch
            .of("poison")
            .iter()
            .all(|e| e.attempt < 3 || e.state != Phase::Transcoding),
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
    watch.until_encoding(None, JOB_TIMEOUT).await;
    first.signal(libc::SIGTERM);
    let status = first.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit 0 after a drain: {status:?}\n{}",
        first.logs()
    );
    let given_back = watch
        .until(JOB_TIMEOUT, |e| {
            e.state == Phase::Failed || e.state == Phase::Completed
        })
        .await;
    assert_eq!(given_back.state, Phase::Failed, "{given_back:#?}");
    assert_eq!(given_back.error_kind, Some(ErrorKind::Shutdown));
    assert_eq!(given_back.will_retry, Some(true));
    // Its scratch folder is gone, and its pipeline process with it.
    let leftovers: Vec<_> = std::fs::read_dir(farm.scratch()).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let second = farm.spawn_worker(&[SLOW]);
    let last = watch.until_final("drain", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert_eq!(last.worker, second.name);
}

/// A give-back because the worker is stopping (SIGTERM, `supervisorctl
/// stop`, a scale-down) is no failed attempt: a job stopped mid-encode six
/// times, with five attempts allowed, still completes, as attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_with_sigterm_more_often_than_its_attempts_still_completes() {
    const STOPS: usize = 6;
    let max = ("TRANSCODE_WORKER__MAX_ATTEMPTS", "5");
    let drain = ("TRANSCODE_WORKER__DRAIN_TIMEOUT", "1s");
    let farm = Farm::s3(&[SLOW, max, drain]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    farm.publish_job(slow_job("stopped", "a.mov", "o/a.mp4", 100_000))
        .await;
    for round in 1..=STOPS {
        let mut worker = farm.spawn_worker(&[SLOW, max, drain]);
        watch
            .until(JOB_TIMEOUT, |e| {
                e.worker == worker.name && e.state == Phase::Transcoding && e.progress > 5.0
            })
            .await;
        worker.signal(libc::SIGTERM);
        let status = worker.wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "round {round}: {status:?}\n{}",
            worker.logs()
        );
        let given_back = watch
            .until(JOB_TIMEOUT, |e| {
                e.worker == worker.name && matches!(e.state, Phase::Failed | Phase::Completed)
            })
            .await;
        assert_eq!(
            given_back.state,
            Phase::Failed,
            "round {round}: {given_back:#?}"
        );
        assert_eq!(given_back.error_kind, Some(ErrorKind::Shutdown));
        assert_eq!(given_back.will_retry, Some(true));
        assert_eq!(
            given_back.attempt, 1,
            "round {round}: a give-back is no attempt"
        );
    }
    let gave_back = watch
        .of("stopped")
        .iter()
        .filter(|e| e.error_kind == Some(ErrorKind::Shutdown))
        .count();
    assert_eq!(gave_back, STOPS);
    let last_worker = farm.spawn_worker(&[SLOW, max]);
    let last = watch.until_final("stopped", JOB_TIMEOUT).await;
    assert_eq!(
        last.state,
        Phase::Completed,
        "{last:#?}\n{}",
        last_worker.logs()
    );
    assert_eq!(last.attempt, 1, "{last:#?}");
    assert!(farm.dead_letters().await.is_empty());
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
    watch
        .until(JOB_TIMEOUT, |e| {
            e.job_id == "finish" && e.state == Phase::Transcoding
        })
        .await;
    worker.signal(libc::SIGTERM);
    let last = watch.until_final("finish", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
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
    // Stopped gracefully: the output is stored a moment before the job is
    // acked, and a killed worker could leave it queued again.
    let name = format!("transcode-worker {}", worker.name);
    let mut worker = worker;
    worker.signal(libc::SIGTERM);
    let status = worker.wait_exit(JOB_TIMEOUT).await;
    assert!(
        status.success(),
        "{status:?}
{}",
        worker.logs()
    );
    drop(worker);
    farm.wait_connections_gone(&[name]).await;

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

/// The broker restarts while the job's encode runs: the worker abandons
/// that attempt because its delivery can no longer be acked (and says so),
/// reconnects, and the job is delivered again and completed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_during_an_encode_loses_nothing() {
    let (node, mut farm, extra) = own_broker_farm().await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let worker = farm.spawn_worker(&extra);
    farm.publish_job(slow_job("mid", "a.mov", "o/mid.mp4", 80_000))
        .await;
    let encoding = wait_for_value(JOB_TIMEOUT, "the encode running", || async {
        worker.pipelines().first().copied()
    })
    .await;
    // The encode is held where it is, so the restart lands in the middle
    // of it however long the broker takes to stop.
    crate::common::signal(encoding, libc::SIGSTOP);
    let restarted_at = std::time::SystemTime::now();
    node.restart();
    farm.reconnect().await;
    wait_for(JOB_TIMEOUT, "the output", || async {
        farm.output_exists("o/mid.mp4").await
    })
    .await;
    // The completed event is persistent: it is in transcoding_progress.
    let progress_queue = farm.settings.broker.progress_queue.clone();
    let events = std::sync::Mutex::new(Vec::<serde_json::Value>::new());
    wait_for(JOB_TIMEOUT, "the completed event", || async {
        let got = farm.drain_queue(&progress_queue).await;
        let mut events = events.lock().unwrap();
        events.extend(got.iter().map(|(b, _)| serde_json::from_slice(b).unwrap()));
        events.iter().any(|e| e["state"] == "completed")
    })
    .await;
    let events = events.into_inner().unwrap();
    let completed: Vec<_> = events
        .iter()
        .filter(|e| e["state"] == "completed")
        .collect();
    assert_eq!(completed.len(), 1, "{events:#?}");
    let made = humantime::parse_rfc3339(completed[0]["timestamp"].as_str().unwrap()).unwrap();
    assert!(
        made > restarted_at,
        "completed after the restart: {events:#?}"
    );
    // The attempt that ran at the restart was abandoned for that reason,
    // and its pipeline process ended with it.
    let logs = worker.logs();
    let abandoned = logs.lines().find(|l| {
        l.contains("job_id=mid")
            && l.contains("job attempt failed kind=broker_unavailable error=the broker connection was lost during the job")
    });
    assert!(abandoned.is_some(), "{logs}");
    assert!(logs.contains("lost the broker; reconnecting"), "{logs}");
    assert_eq!(
        logs.lines()
            .filter(|l| l.contains("job_id=mid") && l.contains("job started"))
            .count(),
        2,
        "delivered again after the restart: {logs}"
    );
    wait_for(Duration::from_secs(10), "the held encode ended", || async {
        crate::common::process_ended(encoding)
    })
    .await;
    // The lost delivery counts at most once. Whether the broker counts a
    // delivery that its own restart cut off at all (in x-delivery-count) is
    // the broker's doing, not the worker's, so the test does not ask for 2.
    let attempt = completed[0]["attempt"].as_u64().unwrap();
    assert!(attempt == 1 || attempt == 2, "{events:#?}");
    farm.assert_all_acked(vec![worker]).await;
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
    let failed = watch.until(JOB_TIMEOUT, |e| e.state == Phase::Failed).await;
    assert_eq!(
        failed.error_kind,
        Some(ErrorKind::StorageUnavailable),
        "{failed:#?}"
    );
    assert_eq!(failed.will_retry, Some(true));
    s3.resume();
    let last = watch.until_final("outage", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
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
        most_pipelines = most_pipelines.max(worker.pipelines().len());
        let e = watch.next(JOB_TIMEOUT).await;
        if e.job_id == "long"
            && (e.state == Phase::Completed
                || (e.state == Phase::Failed && e.will_retry == Some(false)))
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
        .filter(|e| e.state == Phase::Failed && e.will_retry == Some(true))
        .collect();
    assert_eq!(cut.len(), 2, "{:#?}", watch.of("long"));
    for e in &cut {
        let error = e.error.as_deref().unwrap();
        assert!(error.contains("consumer_timeout"), "{error}");
        assert_eq!(e.error_kind, Some(ErrorKind::BrokerUnavailable));
    }
    assert_eq!(last.state, Phase::Failed);
    assert_eq!(last.error_kind, Some(ErrorKind::AttemptsExhausted));
    wait_for(JOB_TIMEOUT, "the dead letter", || async {
        farm.dead_letters().await.len() == 1
    })
    .await;
    assert!(!farm.output_exists("o/long.mp4").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_broker_connection_is_noticed_and_the_job_still_completes() {
    use crate::common::relay::Relay;
    use crate::common::services::shared_rabbit;

    let relay = Relay::start(shared_rabbit().port()).await;
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=2",
        relay.port()
    );
    let extra = [
        SLOW,
        ("TRANSCODE_BROKER__LIVENESS_INTERVAL", "1s"),
        ("TRANSCODE_BROKER__CONNECT_TIMEOUT", "3s"),
    ];
    let farm = Farm::s3(&extra).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let mut env = extra.to_vec();
    env.push(("AMQP_URL", &url));
    let worker = farm.spawn_worker(&env);
    farm.publish_job(slow_job("hole", "a.mov", "o/a.mp4", 100_000))
        .await;
    watch
        .until(JOB_TIMEOUT, |e| e.state == Phase::Transcoding)
        .await;
    // The network path to the broker goes silent without closing.
    relay.pause();
    wait_for(Duration::from_secs(20), "the worker to notice", || async {
        worker.logs().contains("lost the broker")
    })
    .await;
    // Its attempt was abandoned: the pipeline process is gone.
    wait_for(Duration::from_secs(10), "the pipeline stopped", || async {
        worker.pipelines().is_empty()
    })
    .await;
    relay.resume();
    let last = watch.until_final("hole", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert!(last.attempt >= 2, "{last:#?}");
    let completed = watch
        .of("hole")
        .iter()
        .filter(|e| e.state == Phase::Completed)
        .count();
    assert_eq!(completed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_connections_cut_mid_transfer_are_retried_and_nothing_partial_is_used() {
    use crate::common::relay::Relay;

    let s3 = shared_s3();
    let s3_port = s3.port();
    let relay = Relay::start(s3_port).await;
    relay.throttle(1_000_000);
    let farm = Farm::s3(&[]).await;
    let input = fixtures::mjpeg_mov(20);
    farm.put_input("big.mov", &input).await;
    let size = std::fs::metadata(&input).unwrap().len();
    assert!(size > 4_000_000, "the input is big enough to cut: {size}");
    let mut watch = farm.watch_progress().await;
    let endpoint = format!("http://127.0.0.1:{}", relay.port());
    let _worker = farm.spawn_worker(&[("AWS_S3_ENDPOINT_URL", &endpoint)]);
    farm.publish_job(json!({"job_id": "cut", "input_key": "big.mov", "output_key": "o/big.mp4"}))
        .await;

    // Cut the download a third of the way through.
    wait_for(JOB_TIMEOUT, "the download under way", || async {
        relay.relayed() > size / 3
    })
    .await;
    relay.cut();
    // Cut the upload once it has started.
    loop {
        let e = watch.next(JOB_TIMEOUT).await;
        if e.state == Phase::Uploading {
            break;
        }
        assert_ne!(e.state, Phase::Failed, "{e:#?}");
    }
    let before = relay.relayed();
    wait_for(JOB_TIMEOUT, "the upload under way", || async {
        relay.relayed() > before + 100_000
    })
    .await;
    relay.cut();
    assert!(
        !farm.output_exists("o/big.mp4").await,
        "no partial output is visible"
    );
    let last = watch.until_final("cut", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    // Both transfers were retried within the attempt.
    assert_eq!(last.attempt, 1, "{:#?}", watch.of("cut"));
    let out = fixtures::probe(&farm.get_output("o/big.mp4").await.unwrap());
    let diff = out.duration.unwrap().abs_diff(Duration::from_secs(20));
    assert!(diff <= Duration::from_millis(500), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_transcode_is_aborted() {
    let extra = [
        SLOW,
        ("TRANSCODE_WORKER__TRANSCODE_STALL_TIMEOUT", "1s"),
        ("TRANSCODE_WORKER__MAX_ATTEMPTS", "1"),
    ];
    let farm = Farm::s3(&extra).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&extra);
    // Ten seconds per frame: the position stops moving.
    farm.publish_job(slow_job("stuck", "a.mov", "o/a.mp4", 10_000_000))
        .await;
    let last = watch.until_final("stuck", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Failed, "{last:#?}");
    assert_eq!(last.error_kind, Some(ErrorKind::Stalled), "{last:#?}");
    assert!(last.error.as_deref().unwrap().contains("no progress"));
    wait_for(
        Duration::from_secs(10),
        "the stuck pipeline killed",
        || async { worker.pipelines().is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_folders_are_empty_after_mixed_successful_failed_and_killed_attempts() {
    let farm = Farm::s3(&[SLOW]).await;
    farm.put_input("good.mov", &fixtures::mjpeg_mov(1)).await;
    farm.put_input("bad.avi", &fixtures::corrupt()).await;
    let mut watch = farm.watch_progress().await;
    let mut ids = Vec::new();
    for i in 0..14 {
        let id = format!("mix{i}");
        let job = match i % 3 {
            0 => slow_job(&id, "good.mov", &format!("o/{id}.mp4"), 40_000),
            1 => json!({"job_id": id, "input_key": "bad.avi", "output_key": format!("o/{id}.mp4")}),
            _ => {
                json!({"job_id": id, "input_key": "good.mov", "output_key": format!("o/{id}.mp4")})
            }
        };
        farm.publish_job(job).await;
        ids.push(id);
    }
    // Two workers killed in the middle of an encode leave their folders...
    for _ in 0..2 {
        let w = farm.spawn_worker(&[SLOW]);
        watch
            .until(JOB_TIMEOUT, |e| {
                e.state == Phase::Transcoding && e.worker == w.name && e.progress > 5.0
            })
            .await;
        w.signal(libc::SIGKILL);
        drop(w);
        let left: Vec<_> = std::fs::read_dir(farm.scratch()).unwrap().collect();
        assert!(
            !left.is_empty(),
            "a killed worker leaves its scratch folder"
        );
    }
    // ...which the next worker removes at start; it settles every job.
    let _w = farm.spawn_worker(&[SLOW]);
    for id in &ids {
        watch.until_final(id, JOB_TIMEOUT).await;
    }
    wait_for(JOB_TIMEOUT, "the jobs queue empty", || async {
        farm.ready_jobs().await == 0
    })
    .await;
    let left: Vec<_> = std::fs::read_dir(farm.scratch()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_queue_leader_of_a_three_node_cluster_loses_no_job() {
    let cookie = crate::common::random_name("cookie").to_uppercase();
    let nodes: Vec<Arc<RabbitNode>> = (0..3)
        .map(|_| {
            Arc::new(RabbitNode::start(
                RabbitOptions::default().cookie(cookie.clone()),
            ))
        })
        .collect();
    for node in &nodes[1..] {
        node.ctl(&["stop_app"]);
        node.ctl(&["join_cluster", nodes[0].node_name()]);
        node.ctl(&["start_app"]);
    }
    let members = nodes[0].ctl(&["cluster_status", "--formatter", "json"]);
    for node in &nodes {
        assert!(members.contains(node.node_name()), "{members}");
    }
    let extra = [
        SLOW,
        ("TRANSCODE_BROKER__LIVENESS_INTERVAL", "1s"),
        ("TRANSCODE_BROKER__CONNECT_TIMEOUT", "5s"),
    ];
    let mut farm = Farm::s3_on(Rabbit::Own(nodes[0].clone()), shared_s3(), &extra).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    // Which node leads the jobs queue.
    let listing = nodes[0].ctl(&["list_queues", "-q", "--no-table-headers", "name", "leader"]);
    let leader = listing
        .lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(farm.jobs_queue())).then(|| cols.next().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| panic!("no leader for the jobs queue in {listing}"));
    let leader_index = nodes
        .iter()
        .position(|n| n.node_name() == leader)
        .unwrap_or_else(|| panic!("leader {leader} is not one of ours"));
    // The test watches through a node that stays up.
    let watcher = (leader_index + 1) % 3;
    farm.rabbit = Rabbit::Own(nodes[watcher].clone());
    farm.reconnect().await;
    // The worker knows every node, the leader first.
    let mut urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}?heartbeat=2", n.amqp_url()))
        .collect();
    urls.swap(0, leader_index);
    let amqp_url = urls.join(",");
    let mut env = extra.to_vec();
    env.push(("AMQP_URL", &amqp_url));
    let worker = farm.spawn_worker(&env);

    let mut watch = farm.watch_progress().await;
    let ids: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    for id in &ids {
        farm.publish_job(slow_job(id, "a.mov", &format!("o/{id}.mp4"), 100_000))
            .await;
    }
    // Stop the leader while the worker, connected to it, is mid-encode.
    let running = watch.until_encoding(None, JOB_TIMEOUT).await;
    assert!(!worker.pipelines().is_empty(), "{running:#?}");
    nodes[leader_index].stop();
    for id in &ids {
        let last = watch.until_final(id, JOB_TIMEOUT).await;
        assert_eq!(last.state, Phase::Completed, "{last:#?}");
        assert!(farm.output_exists(&format!("o/{id}.mp4")).await, "{id}");
    }
    wait_for(JOB_TIMEOUT, "the jobs queue empty", || async {
        farm.ready_jobs().await == 0
    })
    .await;
    let dead = farm.dead_letters().await;
    assert!(
        dead.is_empty(),
        "{:#?}",
        dead.iter().map(|(_, h)| h).collect::<Vec<_>>()
    );
    let logs = worker.logs();
    assert!(logs.contains("reconnecting"), "{logs}");
}

/// An operator deletes the jobs queue while a worker runs a job from it.
/// The worker's liveness check (a passive declare of its queues) finds the
/// queue gone: the worker abandons the running attempt at once and says
/// why (the job went with its queue), connects again, declares its queues
/// again and goes on taking jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_queue_deleted_under_a_running_job_is_declared_again_and_the_worker_goes_on() {
    let liveness = ("TRANSCODE_BROKER__LIVENESS_INTERVAL", "1s");
    let farm = Farm::s3(&[SLOW, liveness]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[SLOW, liveness]);
    farm.publish_job(slow_job("doomed", "a.mov", "o/doomed.mp4", 200_000))
        .await;
    watch.until_encoding(Some("doomed"), JOB_TIMEOUT).await;
    let channel = farm.conn.create_channel().await.expect("channel");
    channel
        .queue_delete(
            farm.jobs_queue().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("queue.delete");
    let failed = watch
        .until(JOB_TIMEOUT, |e| {
            e.job_id == "doomed" && e.state == Phase::Failed
        })
        .await;
    assert_eq!(
        failed.error_kind,
        Some(ErrorKind::BrokerUnavailable),
        "{failed:#?}"
    );
    assert!(
        failed.error.as_deref().unwrap_or("").contains("NOT_FOUND"),
        "{failed:#?}"
    );
    wait_for(Duration::from_secs(10), "the encode stopped", || async {
        worker.pipelines().is_empty()
    })
    .await;
    // The worker declares the queue again and takes jobs from it.
    wait_for(JOB_TIMEOUT, "the jobs queue declared again", || async {
        let Ok(channel) = farm.conn.create_channel().await else {
            return false;
        };
        channel
            .queue_declare(
                farm.jobs_queue().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .is_ok()
    })
    .await;
    farm.publish_job(json!({"job_id": "after", "input_key": "a.mov", "output_key": "o/after.mp4"}))
        .await;
    let last = watch.until_final("after", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert!(worker.logs().contains("reconnecting"), "{}", worker.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_its_broker_waits_for_it() {
    let (node, mut farm, extra) = own_broker_farm().await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    node.stop();
    let worker = farm.spawn_worker(&extra);
    wait_for(JOB_TIMEOUT, "retries logged", || async {
        worker.logs().matches("cannot reach the broker").count() >= 3
    })
    .await;
    let mut child = worker;
    assert!(child.child.try_wait().unwrap().is_none(), "still running");
    node.resume();
    farm.reconnect().await;
    farm.publish_job(json!({"job_id": "late", "input_key": "a.mov", "output_key": "o/a.mp4"}))
        .await;
    wait_for(JOB_TIMEOUT, "the output", || async {
        farm.output_exists("o/a.mp4").await
    })
    .await;
    farm.assert_all_acked(vec![child]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_scratch_space_fails_the_attempt_before_the_download() {
    let extra = [
        ("TRANSCODE_WORKER__MIN_FREE_SPACE_MB", "1000000000"),
        ("TRANSCODE_WORKER__MAX_ATTEMPTS", "2"),
    ];
    let farm = Farm::s3(&extra).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    let _worker = farm.spawn_worker(&extra);
    farm.publish_job(json!({"job_id": "full", "input_key": "a.mov", "output_key": "o/a.mp4"}))
        .await;
    let last = watch.until_final("full", JOB_TIMEOUT).await;
    assert_eq!(last.error_kind, Some(ErrorKind::NoSpace), "{last:#?}");
    assert!(
        last.error.as_deref().unwrap().contains("MiB free"),
        "{last:#?}"
    );
    assert_eq!(last.attempt, 2, "retried, then given up");
    assert!(!watch
        .of("full")
        .iter()
        .any(|e| e.state == Phase::Transcoding));
    // The dead letter carries the history of both attempts.
    let dead = crate::common::wait_for_value(JOB_TIMEOUT, "the dead letter", || async {
        farm.dead_letters().await.pop()
    })
    .await;
    let history = &dead.1["x-attempt-history"];
    assert_eq!(history.lines().count(), 2, "{history}");
    assert!(history.lines().all(|l| l.contains("no_space")), "{history}");
    assert!(
        history.starts_with("attempt 1 on ") && history.contains("\nattempt 2 on "),
        "{history}"
    );
}

/// Memory limit of the pipeline processes in the test below, with room of
/// about two times either way: a job at 320x240 completes under 160 MiB
/// (not under 128), and x264 at 5760x4320 cannot start under 768 MiB (it
/// can under 1 GiB).
const PIPELINE_MEMORY_LIMIT_MB: &str = "384";

/// A pipeline process runs under `pipeline_memory_limit_mb`: a job whose
/// encoder needs more memory fails as `pipeline_crashed`, out of memory,
/// and the same worker then completes a job of ordinary size under the same
/// limit (the starved process left GStreamer's plugin registry intact). An
/// attempt longer than `job_timeout` is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_run_under_memory_and_time_limits() {
    let extra = [
        SLOW,
        ("TRANSCODE_WORKER__MAX_ATTEMPTS", "1"),
        ("TRANSCODE_WORKER__JOB_TIMEOUT", "3s"),
    ];
    let farm = Farm::s3(&extra).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    let limited = farm.spawn_worker(&[
        extra[0],
        extra[1],
        (
            "TRANSCODE_WORKER__PIPELINE_MEMORY_LIMIT_MB",
            PIPELINE_MEMORY_LIMIT_MB,
        ),
    ]);
    // Without the limit this job completes in a few seconds; with it, x264
    // cannot allocate its frames when it starts.
    farm.publish_job(json!({"job_id": "fat", "input_key": "a.mov", "output_key": "o/fat.mp4",
        "transcode_options": "videoscale ! video/x-raw,width=5760,height=4320 ! x264enc threads=2 speed-preset=ultrafast"}))
    .await;
    let last = watch.until_final("fat", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Failed, "{last:#?}");
    assert_eq!(
        last.error_kind,
        Some(ErrorKind::PipelineCrashed),
        "{last:#?}"
    );
    let why = last.error.as_deref().unwrap();
    assert!(
        why.starts_with(&format!(
            "the pipeline process ran out of memory (its limit is {PIPELINE_MEMORY_LIMIT_MB} MiB, pipeline_memory_limit_mb): "
        )) && why.contains("x264 [error]: malloc of size"),
        "{last:#?}"
    );
    assert!(!farm.output_exists("o/fat.mp4").await);
    farm.publish_job(
        json!({"job_id": "lean", "input_key": "a.mov", "output_key": "o/lean.mp4",
        "transcode_options": "videoconvert ! x264enc threads=2"}),
    )
    .await;
    let last = watch.until_final("lean", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert_eq!(last.worker, limited.name, "{last:#?}");
    drop(limited);

    // A job longer than job_timeout is stopped.
    let _worker = farm.spawn_worker(&extra);
    farm.publish_job(slow_job("long", "a.mov", "o/long.mp4", 200_000))
        .await;
    let last = watch.until_final("long", JOB_TIMEOUT).await;
    assert_eq!(last.error_kind, Some(ErrorKind::Stalled), "{last:#?}");
    assert!(
        last.error
            .as_deref()
            .unwrap()
            .contains("longer than the limit of 3s"),
        "{last:#?}"
    );
    assert!(!farm.output_exists("o/long.mp4").await);
}
