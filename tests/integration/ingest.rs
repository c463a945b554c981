//! `transcode-worker ingest`: new objects become jobs by the rules of a
//! TOML file, from S3 event notifications on the uploads queue or by
//! listing the rules' prefixes, each exactly once: not again for the same
//! event delivered twice, after a restart, or for identical content
//! uploaded again; again for changed content. The farm's own outputs never
//! make jobs, and a malformed event is dead-lettered without stopping the
//! rest.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde_json::{json, Value};
use transcode_worker::job::{Phase, Progress};

use crate::common::farm::{Farm, ProgressWatch, Rabbit, WorkerProc};
use crate::common::services::{shared_rabbit, shared_s3, RabbitNode, RabbitOptions, S3Server};
use crate::common::{fixtures, wait_for, wait_for_value, DEFAULT_TIMEOUT};

/// Long enough for a 720p and a 1080p transcode of a short clip on a
/// loaded 2-core machine.
const JOB_TIMEOUT: Duration = Duration::from_secs(240);

/// Two renditions of each `.mov` upload, one job each; and a rule whose
/// prefix covers the renditions' folder, which must never fire.
const LADDER_RULES: &str = r#"
[[rule]]
prefix = "uploads/"
suffix = ".MOV"
fan_out = true
outputs = [
  { output_key = "renditions/720p/{stem}.mp4",  preset = "h264-720p" },
  { output_key = "renditions/1080p/{stem}.mp4", preset = "h264-1080p" },
]

[[rule]]
prefix = "renditions/"
outputs = [{ output_key = "again/{stem}.mp4", preset = "h264-720p" }]
"#;

fn write_rules(farm: &Farm, text: &str) -> PathBuf {
    let path = farm.dir.path().join("rules.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `ingest` with `rules`, listing every `poll` seconds when given.
fn spawn_ingest(farm: &Farm, rules: &std::path::Path, poll: Option<&str>) -> WorkerProc {
    let mut args = vec!["ingest", "--rules", rules.to_str().unwrap()];
    if let Some(every) = poll {
        args.extend(["--poll", every]);
    }
    farm.spawn_command(&args, &[])
}

/// The JSON log lines of `process` with the message `message`.
fn log_lines(process: &WorkerProc, message: &str) -> Vec<Value> {
    process
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == message)
        .collect()
}

/// The jobs `process` logged as made: (job id, outputs).
fn jobs_made(process: &WorkerProc) -> Vec<(String, String)> {
    log_lines(process, "job made")
        .into_iter()
        .map(|line| {
            (
                line["job_id"].as_str().unwrap().to_string(),
                line["outputs"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The reasons `process` logged for skipping `key`.
fn skips_of(process: &WorkerProc, key: &str) -> Vec<String> {
    log_lines(process, "object skipped")
        .into_iter()
        .filter(|line| line["key"] == key)
        .map(|line| line["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until `process` has skipped `key` `count` times in all, the last
/// time for a reason containing `reason`.
async fn until_skipped(process: &WorkerProc, key: &str, count: usize, reason: &str) {
    let what = format!("{key:?} skipped {count} time(s) ({reason})");
    let skips = wait_for_value(DEFAULT_TIMEOUT, &what, || async {
        let skips = skips_of(process, key);
        (skips.len() >= count).then_some(skips)
    })
    .await;
    assert_eq!(skips.len(), count, "{skips:#?}");
    assert!(skips[count - 1].contains(reason), "{skips:#?}");
}

/// Waits for the final event of `job_id`, also when an earlier wait
/// already took it from the watch.
async fn final_event(watch: &mut ProgressWatch, job_id: &str) -> Progress {
    if let Some(done) = watch.of(job_id).into_iter().find(|e| e.ending().is_some()) {
        return done;
    }
    watch.until_final(job_id, JOB_TIMEOUT).await
}

/// The keys of `ingest`'s markers in the farm's storage.
async fn markers(farm: &Farm) -> Vec<String> {
    let prefix = "_transcode/ingest/";
    if let Some(bucket) = &farm.bucket {
        let pages = bucket.list(prefix.to_string(), None).await.unwrap();
        pages
            .into_iter()
            .flat_map(|p| p.contents)
            .map(|o| o.key)
            .collect()
    } else {
        let dir = farm.store_dir.as_ref().unwrap().path().join(prefix);
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                    .filter(|name| !name.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Stops `process` with SIGTERM and checks it exits 0.
async fn stop(process: &mut WorkerProc) {
    process.signal(libc::SIGTERM);
    let status = process.wait_exit(DEFAULT_TIMEOUT).await;
    assert!(status.success(), "{status}; log:\n{}", process.logs());
}

/// The jobs now in the jobs queue, taken from it: (job id, the job).
async fn take_jobs(farm: &Farm) -> HashMap<String, Value> {
    farm.drain_queue(&farm.settings.broker.jobs_queue.clone())
        .await
        .into_iter()
        .map(|(body, _)| {
            let job: Value = serde_json::from_slice(&body).unwrap();
            (job["job_id"].as_str().unwrap().to_string(), job)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_makes_each_rendition_once_across_restarts_and_again_for_new_content() {
    let farm = Farm::s3(&[]).await;
    let rules = write_rules(&farm, LADDER_RULES);
    let key = "uploads/a b.mov";
    let clip = fixtures::mjpeg_mov(1);
    farm.put_input(key, &clip).await;
    let mut watch = farm.watch_progress().await;
    let mut ingest = spawn_ingest(&farm, &rules, Some("0.2"));
    let worker = farm.spawn_worker(&[]);

    // Both renditions are made, one job each, and stored.
    let made = wait_for_value(DEFAULT_TIMEOUT, "two jobs made", || async {
        let made = jobs_made(&ingest);
        (made.len() >= 2).then_some(made)
    })
    .await;
    let first_ids: BTreeSet<String> = made.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(first_ids.len(), 2, "{made:?}");
    for id in &first_ids {
        let done = final_event(&mut watch, id).await;
        assert_eq!(done.state, Phase::Completed, "{done:#?}");
    }
    for output in ["renditions/720p/a b.mp4", "renditions/1080p/a b.mp4"] {
        let got = farm.get_output(output).await.expect(output);
        let info = fixtures::probe(&got);
        // The clip has 240 lines: the presets do not upscale it.
        assert_eq!(info.video[0].height, 240, "{output}: {info:#?}");
        // The renditions are under the second rule's prefix, but the farm
        // wrote them: they make no job.
        until_skipped(&ingest, output, 1, "the farm wrote it").await;
    }
    assert_eq!(jobs_made(&ingest).len(), 2, "{}", ingest.logs());
    assert_eq!(markers(&farm).await.len(), 2);
    farm.assert_all_acked(vec![worker]).await;

    // A restarted ingest looks at everything again and makes nothing.
    stop(&mut ingest).await;
    let mut ingest = spawn_ingest(&farm, &rules, Some("0.2"));
    until_skipped(&ingest, key, 1, "already ingested").await;
    for output in ["renditions/720p/a b.mp4", "renditions/1080p/a b.mp4"] {
        until_skipped(&ingest, output, 1, "the farm wrote it").await;
    }

    // The same content uploaded again: looked at, nothing made.
    farm.put_input(key, &clip).await;
    until_skipped(&ingest, key, 2, "already ingested").await;
    assert!(jobs_made(&ingest).is_empty(), "{}", ingest.logs());
    assert_eq!(farm.ready_jobs().await, 0);
    assert_eq!(markers(&farm).await.len(), 2);

    // New content under the same key: two new jobs, for the same outputs.
    farm.put_input(key, &fixtures::mjpeg_mov(2)).await;
    let made = wait_for_value(DEFAULT_TIMEOUT, "two jobs for the new content", || async {
        let made = jobs_made(&ingest);
        (made.len() >= 2).then_some(made)
    })
    .await;
    let new_ids: BTreeSet<String> = made.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(new_ids.len(), 2, "{made:?}");
    assert!(new_ids.is_disjoint(&first_ids), "{new_ids:?} {first_ids:?}");
    wait_for(DEFAULT_TIMEOUT, "the two new jobs queued", || async {
        farm.ready_jobs().await == 2
    })
    .await;
    stop(&mut ingest).await;
    let queued = take_jobs(&farm).await;
    assert_eq!(queued.keys().cloned().collect::<BTreeSet<_>>(), new_ids);
    let outputs: BTreeSet<&str> = queued
        .values()
        .map(|job| {
            assert_eq!(job["input_key"], key, "{job}");
            job["output_key"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        outputs,
        BTreeSet::from(["renditions/720p/a b.mp4", "renditions/1080p/a b.mp4"])
    );
    assert_eq!(markers(&farm).await.len(), 4);
}

/// A record as MinIO's AMQP target sends it, with the key URL-encoded as
/// MinIO encodes it (`+` for a space, `%2F` for a slash).
fn minio_record(event_name: &str, bucket: &str, key: &str, etag: &str, size: u64) -> Value {
    json!({
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": transcode_worker::job::now_rfc3339(),
        "eventName": event_name,
        "userIdentity": {"principalId": "transcode"},
        "requestParameters": {"principalId": "transcode", "region": "", "sourceIPAddress": "172.18.0.1"},
        "responseElements": {
            "x-amz-id-2": "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
            "x-amz-request-id": "183B9E4D5A6C0F12",
            "x-minio-deployment-id": "0170a4cc-dca6-4e72-86f1-c0cc760dff7f",
            "x-minio-origin-endpoint": "http://172.18.0.3:9000"
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "transcode"}, "arn": format!("arn:aws:s3:::{bucket}")},
            "object": {
                "key": query_escape(key),
                "size": size,
                "eTag": etag,
                "contentType": "video/quicktime",
                "userMetadata": {"content-type": "video/quicktime"},
                "sequencer": "183B9E4D5B2D8C41"
            }
        },
        "source": {"host": "172.18.0.1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.90 mc/RELEASE.2025-04-16T18-13-26Z"}
    })
}

/// A message of MinIO's AMQP target (its `event.Log`) holding `records`.
fn minio_message(bucket: &str, key: &str, records: Vec<Value>) -> Vec<u8> {
    json!({"EventName": "s3:ObjectCreated:Put", "Key": format!("{bucket}/{key}"), "Records": records})
        .to_string()
        .into_bytes()
}

/// Go's `url.QueryEscape`, which MinIO applies to keys in its events.
fn query_escape(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The ETag (without quotes) and size of `key` in the farm's bucket.
async fn etag_and_size(farm: &Farm, key: &str) -> (String, u64) {
    let (head, status) = farm
        .bucket
        .as_ref()
        .unwrap()
        .head_object(key)
        .await
        .unwrap();
    assert_eq!(status, 200, "{key}");
    (
        head.e_tag.unwrap().trim_matches('"').to_string(),
        head.content_length.unwrap() as u64,
    )
}

/// Publishes `body` as MinIO does (persistent, JSON, with its headers) to
/// `exchange` with `routing_key`, and waits for the broker's confirm. A
/// named exchange is first declared as MinIO's AMQP target declares it
/// (fanout, durable: the settings of the farm's README and compose file),
/// which the broker accepts only if it matches the farm's own.
async fn publish_event(farm: &Farm, exchange: &str, routing_key: &str, body: &[u8]) {
    let channel = farm.channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    if !exchange.is_empty() {
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the uploads exchange declared as MinIO declares it");
    }
    let mut headers = FieldTable::default();
    headers.insert(
        "minio-event".into(),
        AMQPValue::LongString(LongString::from("s3:ObjectCreated:Put")),
    );
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        confirm.is_ack() && confirm.take_message().is_none(),
        "event not routed to a queue"
    );
    let _ = channel.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_mode_makes_jobs_once_dead_letters_malformed_events_and_skips_the_farms_outputs() {
    // The outputs go to a folder under the rule's own prefix.
    let rules_text = r#"
[[rule]]
prefix = "uploads/"
outputs = [
  { output_key = "uploads/renditions/{stem}-720p.mp4",  preset = "h264-720p" },
  { output_key = "uploads/renditions/{stem}-1080p.mp4", preset = "h264-1080p" },
]
"#;
    let farm = Farm::s3(&[]).await;
    let b = farm.settings.broker.clone();
    let bucket = farm.settings.storage.bucket.clone();
    let rules = write_rules(&farm, rules_text);
    let key = "uploads/a b.mov";
    farm.put_input(key, &fixtures::mjpeg_mov(1)).await;
    let (etag, size) = etag_and_size(&farm, key).await;
    let mut ingest = spawn_ingest(&farm, &rules, None);

    // Two malformed events first: not JSON, and one with a record of
    // another bucket and a record without a key.
    publish_event(&farm, "", &b.uploads_queue, b"this is not an event").await;
    let elsewhere = minio_record("s3:ObjectCreated:Put", "other-bucket", key, &etag, size);
    let no_key = json!({"Records": [elsewhere, {"eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"size": 3}}}]});
    publish_event(&farm, "", &b.uploads_queue, no_key.to_string().as_bytes()).await;
    // Then the upload's event twice: once through the uploads exchange, as
    // MinIO publishes, once straight to the queue. The message also holds
    // a removal, which is ignored.
    let event = minio_message(
        &bucket,
        key,
        vec![
            minio_record("s3:ObjectCreated:Put", &bucket, key, &etag, size),
            minio_record("s3:ObjectRemoved:Delete", &bucket, "uploads/old.mov", "", 0),
        ],
    );
    let raw = String::from_utf8_lossy(&event).to_string();
    assert!(raw.contains(r#""key":"uploads%2Fa+b.mov""#), "{raw}");
    publish_event(&farm, &b.uploads_exchange, "", &event).await;
    publish_event(&farm, "", &b.uploads_queue, &event).await;

    // The malformed ones are dead-lettered with their reasons.
    let dead_queue = b.uploads_dead_letter_queue();
    let taken = std::sync::Mutex::new(Vec::new());
    wait_for(DEFAULT_TIMEOUT, "two dead-lettered events", || async {
        let more = farm.drain_queue(&dead_queue).await;
        let mut taken = taken.lock().unwrap();
        taken.extend(more);
        taken.len() >= 2
    })
    .await;
    let dead = taken.into_inner().unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].0, b"this is not an event");
    assert!(dead[0].1["x-error"].contains("not JSON"), "{:?}", dead[0].1);
    let reason = &dead[1].1["x-error"];
    assert!(
        reason.contains(&format!(
            "record 1: s3:ObjectCreated:Put of {key:?} in bucket \"other-bucket\", which is not this farm's bucket {bucket:?}"
        )),
        "{reason}"
    );
    assert!(
        reason.contains("record 2: s3:ObjectCreated:Put without s3.object.key"),
        "{reason}"
    );
    for (_, headers) in &dead {
        assert_eq!(headers["x-error-kind"], "invalid_event");
        assert_eq!(headers["x-original-queue"], b.uploads_queue);
        assert!(headers.contains_key("x-failed-at") && headers.contains_key("x-ingest"));
    }

    // Ingestion went on: the upload made its two jobs once.
    until_skipped(&ingest, key, 1, "already ingested").await;
    let made = jobs_made(&ingest);
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(made
        .iter()
        .any(|(_, outputs)| outputs.contains("uploads/renditions/a b-720p.mp4")));
    assert!(made
        .iter()
        .any(|(_, outputs)| outputs.contains("uploads/renditions/a b-1080p.mp4")));
    assert_eq!(farm.ready_jobs().await, 2);
    // The removal after it, in both deliveries.
    let ignored = wait_for_value(DEFAULT_TIMEOUT, "the removals ignored", || async {
        let ignored = log_lines(&ingest, "not an object creation; ignored");
        (ignored.len() >= 2).then_some(ignored)
    })
    .await;
    assert_eq!(ignored.len(), 2, "{ignored:?}");
    assert_eq!(ignored[0]["key"], "uploads/old.mov");

    // A worker makes them.
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    for (id, _) in &made {
        let done = final_event(&mut watch, id).await;
        assert_eq!(done.state, Phase::Completed, "{done:#?}");
    }
    farm.assert_all_acked(vec![worker]).await;

    // The outputs' own events, as MinIO sends them for the worker's
    // uploads (here without their metadata in the record): the rule's
    // prefix matches them, yet they make no job.
    for output in [
        "uploads/renditions/a b-720p.mp4",
        "uploads/renditions/a b-1080p.mp4",
    ] {
        let (etag, size) = etag_and_size(&farm, output).await;
        let event = minio_message(
            &bucket,
            output,
            vec![minio_record(
                "s3:ObjectCreated:CompleteMultipartUpload",
                &bucket,
                output,
                &etag,
                size,
            )],
        );
        publish_event(&farm, &b.uploads_exchange, "", &event).await;
        until_skipped(&ingest, output, 1, "the farm wrote it").await;
    }
    assert_eq!(jobs_made(&ingest).len(), 2, "{}", ingest.logs());
    assert_eq!(farm.ready_jobs().await, 0);
    assert_eq!(markers(&farm).await.len(), 2);
    stop(&mut ingest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_given_back_while_the_storage_is_down_and_dead_lettered_by_the_delivery_limit()
{
    let s3 = S3Server::start();
    let farm = Farm::s3_on(
        Rabbit::Shared(shared_rabbit()),
        &s3,
        &[
            ("TRANSCODE_STORAGE__RETRY_FOR", "500ms"),
            ("TRANSCODE_WORKER__MAX_ATTEMPTS", "3"),
        ],
    )
    .await;
    let b = farm.settings.broker.clone();
    let bucket = farm.settings.storage.bucket.clone();
    let rules = write_rules(
        &farm,
        "[[rule]]\nprefix = \"uploads/\"\noutputs = [{ output_key = \"renditions/{stem}.mp4\", preset = \"h264-720p\" }]\n",
    );
    let key = "uploads/a.mov";
    farm.put_input(key, &fixtures::mjpeg_mov(1)).await;
    let (etag, size) = etag_and_size(&farm, key).await;
    let event = minio_message(
        &bucket,
        key,
        vec![minio_record(
            "s3:ObjectCreated:Put",
            &bucket,
            key,
            &etag,
            size,
        )],
    );
    let ingest = spawn_ingest(&farm, &rules, None);
    let given_back = || log_lines(&ingest, "cannot ingest this event now; giving it back").len();
    s3.stop();

    // Storage down for good: the event is given back each time, and the
    // uploads queue's delivery limit (max_attempts) dead-letters it.
    publish_event(&farm, &b.uploads_exchange, "", &event).await;
    let dead_queue = b.uploads_dead_letter_queue();
    let dead = wait_for_value(
        JOB_TIMEOUT,
        "the event dead-lettered by the broker",
        || async {
            let dead = farm.drain_queue(&dead_queue).await;
            (!dead.is_empty()).then_some(dead)
        },
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, event);
    assert_eq!(
        dead[0].1["x-first-death-reason"], "delivery_limit",
        "{:?}",
        dead[0].1
    );
    assert!(given_back() >= 3, "{}", ingest.logs());

    // Storage down for a while: given back, then made once it is back.
    let before = given_back();
    publish_event(&farm, &b.uploads_exchange, "", &event).await;
    wait_for(DEFAULT_TIMEOUT, "the event given back", || async {
        given_back() > before
    })
    .await;
    assert!(jobs_made(&ingest).is_empty());
    s3.resume();
    wait_for(DEFAULT_TIMEOUT, "its job made", || async {
        jobs_made(&ingest).len() == 1
    })
    .await;
    assert_eq!(farm.ready_jobs().await, 1);
    assert!(farm.drain_queue(&dead_queue).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_connects_again_after_a_broker_restart_and_goes_on() {
    let node = Arc::new(RabbitNode::start(RabbitOptions::default()));
    let mut farm = Farm::s3_on(
        Rabbit::Own(node.clone()),
        shared_s3(),
        &[("TRANSCODE_BROKER__LIVENESS_INTERVAL", "1s")],
    )
    .await;
    farm.env.insert(
        "AMQP_URL".into(),
        format!("{}?heartbeat=2", node.amqp_url()),
    );
    let b = farm.settings.broker.clone();
    let bucket = farm.settings.storage.bucket.clone();
    let rules = write_rules(
        &farm,
        "[[rule]]\nprefix = \"uploads/\"\noutputs = [{ output_key = \"renditions/{stem}.mp4\", preset = \"h264-720p\" }]\n",
    );
    let mut events = Vec::new();
    for key in ["uploads/a.mov", "uploads/b.mov"] {
        farm.put_input(key, &fixtures::mjpeg_mov(1)).await;
        let (etag, size) = etag_and_size(&farm, key).await;
        events.push(minio_message(
            &bucket,
            key,
            vec![minio_record(
                "s3:ObjectCreated:Put",
                &bucket,
                key,
                &etag,
                size,
            )],
        ));
    }
    let ingest = spawn_ingest(&farm, &rules, None);
    let sessions = || log_lines(&ingest, "connected; waiting for upload events").len();
    wait_for(DEFAULT_TIMEOUT, "ingest consuming", || async {
        sessions() == 1
    })
    .await;
    publish_event(&farm, &b.uploads_exchange, "", &events[0]).await;
    wait_for(DEFAULT_TIMEOUT, "the first job", || async {
        jobs_made(&ingest).len() == 1
    })
    .await;

    node.restart();
    farm.reconnect().await;
    wait_for(JOB_TIMEOUT, "ingest consuming again", || async {
        sessions() == 2
    })
    .await;
    assert_eq!(log_lines(&ingest, "lost the broker; reconnecting").len(), 1);
    publish_event(&farm, &b.uploads_exchange, "", &events[1]).await;
    wait_for(DEFAULT_TIMEOUT, "the second job", || async {
        jobs_made(&ingest).len() == 2
    })
    .await;
    // Both jobs are in the queue: the first one survived the restart.
    assert_eq!(farm.ready_jobs().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_on_a_directory_goes_by_size_and_modification_time() {
    let farm = Farm::directory(&[]).await;
    let rules = write_rules(
        &farm,
        r#"
[[rule]]
prefix = "uploads/"
outputs = [{ output_key = "renditions/{stem}.mp4", preset = "h264-720p" }]
"#,
    );
    let store = farm.store_dir.as_ref().unwrap().path().to_path_buf();
    let key = "uploads/a b.mov";
    farm.put_input(key, &fixtures::mjpeg_mov(1)).await;
    // An output the farm wrote (its metadata sidecar names its job), in
    // the rule's folder: never an input.
    std::fs::write(store.join("uploads/made.mp4"), b"not read").unwrap();
    std::fs::write(
        store.join("uploads/.made.mp4.meta.json"),
        r#"{"transcode-job-id": "earlier-job"}"#,
    )
    .unwrap();
    let mut ingest = spawn_ingest(&farm, &rules, Some("0.2"));
    let made = wait_for_value(DEFAULT_TIMEOUT, "one job made", || async {
        let made = jobs_made(&ingest);
        (!made.is_empty()).then_some(made)
    })
    .await;
    until_skipped(&ingest, "uploads/made.mp4", 1, "job earlier-job").await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(farm.ready_jobs().await, 1);
    // Hidden files (the backend's own) are not listed at all.
    assert!(skips_of(&ingest, "uploads/.made.mp4.meta.json").is_empty());

    // The same file written again with the same modification time: nothing.
    let path = store.join(key);
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    stop(&mut ingest).await;
    std::fs::copy(fixtures::mjpeg_mov(1), &path).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let mut ingest = spawn_ingest(&farm, &rules, Some("0.2"));
    until_skipped(&ingest, key, 1, "already ingested").await;
    assert!(jobs_made(&ingest).is_empty());

    // Changed content: a new job.
    std::fs::copy(fixtures::mjpeg_mov(2), &path).unwrap();
    wait_for(DEFAULT_TIMEOUT, "a job for the new content", || async {
        jobs_made(&ingest).len() == 1
    })
    .await;
    stop(&mut ingest).await;
    let queued = take_jobs(&farm).await;
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert!(queued
        .values()
        .all(|job| job["output_key"] == "renditions/a b.mp4"));
    assert_eq!(markers(&farm).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fan_out_one_job_lists_every_output_and_a_worker_makes_them_all() {
    let farm = Farm::s3(&[]).await;
    let rules = write_rules(
        &farm,
        r#"
[[rule]]
prefix = "uploads/"
fan_out = false
priority = "normal"
segment_seconds = 6
outputs = [
  { output_key = "renditions/720p/{stem}.mp4",  preset = "h264-720p" },
  { output_key = "renditions/1080p/{stem}.mp4", preset = "h264-1080p" },
]
"#,
    );
    let key = "uploads/a.mov";
    farm.put_input(key, &fixtures::mjpeg_mov(1)).await;
    let mut ingest = spawn_ingest(&farm, &rules, Some("0.2"));
    let made = wait_for_value(DEFAULT_TIMEOUT, "one job made", || async {
        let made = jobs_made(&ingest);
        (!made.is_empty()).then_some(made)
    })
    .await;
    stop(&mut ingest).await;
    assert_eq!(made.len(), 1, "{made:?}");
    let job_id = &made[0].0;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    let done = watch.until_final(job_id, JOB_TIMEOUT).await;
    assert_eq!(done.state, Phase::Completed, "{done:#?}");
    let keys = ["renditions/720p/a.mp4", "renditions/1080p/a.mp4"];
    assert_eq!(done.output_keys, keys);
    for output in keys {
        let file = farm.get_output(output).await.expect(output);
        // A 240-line source: neither preset upscales it.
        assert_eq!(fixtures::probe(&file).video[0].height, 240, "{output}");
    }
    farm.assert_all_acked(vec![worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rules_file_stops_ingest_at_start_with_exit_2_and_the_reason() {
    let farm = Farm::s3(&[]).await;
    let rules = write_rules(
        &farm,
        "[[rule]]\nprefix = \"uploads/\"\noutputs = [{ output_key = \"r/{file}.mp4\" }]\n",
    );
    let out = farm
        .cli(
            &["ingest", "--rules", rules.to_str().unwrap()],
            DEFAULT_TIMEOUT,
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "rule 1 (prefix \"uploads/\"): output 1, output_key: unknown placeholder {file}"
        ),
        "{stderr}"
    );
    // Event mode needs S3 notifications: refused on a directory.
    let dir_farm = Farm::directory(&[]).await;
    let rules = write_rules(
        &dir_farm,
        "[[rule]]\nprefix = \"uploads/\"\noutputs = [{ output_key = \"r/{stem}.mp4\" }]\n",
    );
    let out = dir_farm
        .cli(
            &["ingest", "--rules", rules.to_str().unwrap()],
            DEFAULT_TIMEOUT,
        )
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--poll"));
}
