//! The farm's queues and exchanges exist before any worker runs: declared
//! by `transcode-worker setup`, or loaded by the broker at start from the
//! shipped definitions file, so a job published by a client that does not
//! declare the queue (the original service's own) is kept, not dropped.

use std::sync::Arc;
use std::time::Duration;

use transcode_worker::job::Phase;

use crate::common::farm::{Farm, Rabbit};
use crate::common::services::{shared_rabbit, RabbitNode, RabbitOptions};
use crate::common::{fixtures, wait_for};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The original service's job message.
fn seed_job(job_id: &str) -> String {
    format!(
        r#"{{"job_id": "{job_id}", "input_key": "in/a.wmv", "output_key": "out/{job_id}.mp4", "transcode_options": "videoconvert ! x264enc"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_setup_a_job_published_before_any_worker_started_is_done() {
    let farm = Farm::s3_undeclared(Rabbit::Shared(shared_rabbit()), &[]).await;
    farm.put_input("in/a.wmv", &fixtures::wmv_with_audio(1))
        .await;
    let jobs = farm.jobs_queue().to_string();
    // Without the queue, the broker drops what the seed's client publishes.
    farm.publish_raw(seed_job("dropped").as_bytes()).await;
    assert!(!farm.has_queue(&jobs).await, "nobody declared {jobs}");

    let out = farm.cli(&["setup"], JOB_TIMEOUT).await;
    assert!(out.status.success(), "setup: {out:?}");
    assert!(farm.has_queue(&jobs).await);
    assert!(
        farm.has_queue(&farm.settings.broker.dead_letter_queue)
            .await
    );
    assert!(farm.has_queue(&farm.settings.broker.progress_queue).await);
    let uploads = &farm.settings.broker.uploads_queue;
    assert!(farm.has_queue(uploads).await);
    assert!(
        farm.has_queue(&farm.settings.broker.uploads_dead_letter_queue())
            .await
    );

    farm.publish_raw(seed_job("kept").as_bytes()).await;
    wait_for(JOB_TIMEOUT, "the job waiting in the queue", || async {
        farm.ready_jobs().await == 1
    })
    .await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    let last = watch.until_final("kept", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
    assert!(watch.of("dropped").is_empty());
    // Setup again changes nothing, and the worker's own declarations agree.
    let again = farm.cli(&["setup"], JOB_TIMEOUT).await;
    assert!(again.status.success(), "setup again: {again:?}");
    farm.assert_all_acked(vec![worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_loads_the_shipped_definitions_keeps_jobs_published_before_any_worker() {
    // The folder: the topology, and the users a fresh broker would have
    // (a broker that loads definitions at start makes no default user).
    let definitions = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rabbitmq-definitions");
    let node = Arc::new(RabbitNode::start(
        RabbitOptions::default().conf(format!("load_definitions = {definitions}")),
    ));
    // The default names: the ones the definitions file declares.
    let defaults = [
        ("TRANSCODE_BROKER__JOBS_QUEUE", "transcoding_jobs"),
        (
            "TRANSCODE_BROKER__DEAD_LETTER_QUEUE",
            "transcoding_jobs.dead",
        ),
        ("TRANSCODE_BROKER__PROGRESS_QUEUE", "transcoding_progress"),
        (
            "TRANSCODE_BROKER__PROGRESS_EXCHANGE",
            "transcoding.progress",
        ),
        ("TRANSCODE_BROKER__UPLOADS_QUEUE", "transcoding_uploads"),
        ("TRANSCODE_BROKER__UPLOADS_EXCHANGE", "transcoding.uploads"),
    ];
    let farm = Farm::s3_undeclared(Rabbit::Own(node.clone()), &defaults).await;
    farm.put_input("in/a.wmv", &fixtures::wmv_with_audio(1))
        .await;
    for queue in [
        "transcoding_jobs",
        "transcoding_uploads",
        "transcoding_uploads.dead",
    ] {
        assert!(farm.has_queue(queue).await, "{queue} loaded at start");
    }
    farm.publish_raw(seed_job("early").as_bytes()).await;
    wait_for(JOB_TIMEOUT, "the job waiting in the queue", || async {
        farm.ready_jobs().await == 1
    })
    .await;
    let mut watch = farm.watch_progress().await;
    // The worker declares the same topology: the broker accepts it as is.
    let worker = farm.spawn_worker(&defaults);
    let last = watch.until_final("early", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
    farm.assert_all_acked(vec![worker]).await;
}
