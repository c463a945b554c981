//! Webhooks: a job's notice reaches a real HTTP receiver (a small hyper
//! server in the test), signed with the job's secret; a receiver that is
//! down or failing holds back only its own notice, never the job; what
//! cannot be delivered ends in the webhooks' dead-letter queue; a host the
//! configuration does not allow is never contacted; the secret never shows.
//!
//! The receivers listen on 127.0.0.1, which the default policy refuses, so
//! the farms allow it with `TRANSCODE_WEBHOOK__ALLOWED_HOSTS`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::Sha256;
use transcode_worker::job::Phase;

use crate::common::farm::{Farm, WorkerProc};
use crate::common::{fixtures, random_name, wait_for, wait_for_value, DEFAULT_TIMEOUT};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// Lets the receivers on 127.0.0.1 through the host policy.
const ALLOW_LOCAL: (&str, &str) = ("TRANSCODE_WEBHOOK__ALLOWED_HOSTS", "127.0.0.1");

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    /// Header names in lower case.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:#?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A webhook receiver: a hyper HTTP/1 server on 127.0.0.1 that records
/// every request and answers each with one status.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on 127.0.0.1:`port` (0: any free port) and answers `status`.
    async fn start(port: u16, status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("receiver listens");
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                                })
                                .collect();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            record.lock().unwrap().push(Received {
                                method,
                                path,
                                headers,
                                body: body.to_vec(),
                            });
                            let mut response = Response::new(Full::new(Bytes::from_static(
                                b"receiver says no: internal trouble",
                            )));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, got, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until it has got at least `n` requests; returns them all.
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        wait_for_value(timeout, &format!("{n} webhook request(s)"), || async {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port on 127.0.0.1 that nothing listens on (for now).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn job(id: &str, input: &str, webhook: Value) -> Value {
    json!({"job_id": id, "input_key": input, "output_key": format!("out/{id}.mp4"),
           "preset": "h264-mp4", "webhook": webhook})
}

/// The HMAC-SHA256 a receiver computes, as `sha256=<hex>`.
fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Waits for `n` webhooks in the webhooks' dead-letter queue and takes them.
async fn webhook_dead_letters(
    farm: &Farm,
    n: usize,
    timeout: Duration,
) -> Vec<(Vec<u8>, HashMap<String, String>)> {
    let queue = farm.settings.broker.webhooks_dead_queue();
    wait_for(timeout, &format!("{n} message(s) in {queue}"), || async {
        farm.ready_in(&queue).await as usize >= n
    })
    .await;
    farm.drain_queue(&queue).await
}

/// Waits until `worker`'s log holds `text` at least `n` times.
async fn wait_for_log(worker: &WorkerProc, text: &str, n: usize, timeout: Duration) {
    wait_for(
        timeout,
        &format!("{n}x {text:?} in the worker's log"),
        || async { worker.logs().matches(text).count() >= n },
    )
    .await;
}

/// Asserts that `secret` shows nowhere outside the job message: not in the
/// worker's log, a progress event, a dead letter's headers, or a webhook
/// dead letter.
fn assert_secret_hidden(
    secret: &str,
    worker: &WorkerProc,
    events: &[transcode_worker::job::Progress],
    dead_letters: &[(Vec<u8>, HashMap<String, String>)],
    webhook_dead_letters: &[(Vec<u8>, HashMap<String, String>)],
) {
    let logs = worker.logs();
    assert!(!logs.is_empty());
    assert!(!logs.contains(secret), "the secret is in the log:\n{logs}");
    for event in events {
        let text = serde_json::to_string(event).unwrap();
        assert!(!text.contains(secret), "the secret is in an event: {text}");
    }
    for (_, headers) in dead_letters {
        let text = format!("{headers:?}");
        assert!(
            !text.contains(secret),
            "the secret is in a dead letter's headers: {text}"
        );
    }
    for (body, headers) in webhook_dead_letters {
        let text = format!("{} {headers:?}", String::from_utf8_lossy(body));
        assert!(
            !text.contains(secret),
            "the secret is in a webhook dead letter: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_verifies_the_signature_of_a_completed_notice() {
    let farm = Farm::s3(&[ALLOW_LOCAL]).await;
    farm.put_input("in/a.wmv", &fixtures::wmv_with_audio(2))
        .await;
    let receiver = Receiver::start(0, 200).await;
    let secret = random_name("hook-secret");
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    farm.publish_job(job(
        "signed",
        "in/a.wmv",
        json!({"url": receiver.url(), "secret": secret}),
    ))
    .await;
    let last = watch.until_final("signed", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());

    let got = receiver.wait_for(1, DEFAULT_TIMEOUT).await;
    let request = &got[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/hook")
    );
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("x-transcode-event"), "completed");
    uuid::Uuid::parse_str(request.header("x-transcode-delivery")).expect("a UUID delivery id");
    assert_eq!(
        request.header("x-transcode-signature"),
        expected_signature(&secret, &request.body),
        "the signature is the HMAC-SHA256 of the exact body"
    );
    assert_ne!(
        request.header("x-transcode-signature"),
        expected_signature("another secret", &request.body)
    );

    let body = request.json();
    assert_eq!(body["event"], "completed");
    assert_eq!(body["job_id"], "signed");
    time::OffsetDateTime::parse(
        body["timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("an RFC 3339 timestamp");
    let result = &body["result"];
    assert_eq!(result["output_key"], "out/signed.mp4");
    let (head, _) = farm
        .bucket
        .as_ref()
        .unwrap()
        .head_object("out/signed.mp4")
        .await
        .unwrap();
    assert_eq!(
        result["output_size_bytes"].as_u64(),
        head.content_length.map(|n| n as u64),
        "{body}"
    );
    let seconds = result["duration_seconds"].as_f64().unwrap();
    assert!((seconds - 2.0).abs() < 0.2, "{body}");
    let frames = result["frames_encoded"].as_u64().unwrap();
    assert!(frames.abs_diff(2 * u64::from(fixtures::FPS)) <= 2, "{body}");
    assert!(body.get("error").is_none());

    wait_for_log(&worker, "webhook delivered", 1, DEFAULT_TIMEOUT).await;
    assert_eq!(receiver.received().len(), 1, "delivered once");
    let dead = farm.dead_letters().await;
    assert!(dead.is_empty());
    assert_secret_hidden(&secret, &worker, &watch.seen, &dead, &[]);
    farm.assert_all_acked(vec![worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_gets_the_notice_once_it_is_up_and_the_job_is_not_held_back() {
    let farm = Farm::s3(&[ALLOW_LOCAL, ("TRANSCODE_WEBHOOK__RETRY_DELAYS", "300ms")]).await;
    farm.put_input("in/a.wmv", &fixtures::wmv_with_audio(1))
        .await;
    let port = closed_port();
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    farm.publish_job(job(
        "patient",
        "in/a.wmv",
        json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["completed"]}),
    ))
    .await;
    // The job completes and is acked while nobody listens.
    let last = watch.until_final("patient", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
    wait_for(DEFAULT_TIMEOUT, "the job acked", || async {
        farm.queue_state().await == (0, 1)
    })
    .await;
    // The notice is being retried meanwhile.
    wait_for_log(
        &worker,
        "webhook not delivered; retrying later",
        3,
        DEFAULT_TIMEOUT,
    )
    .await;
    assert!(
        worker.logs().contains("cannot connect"),
        "{}",
        worker.logs()
    );

    let receiver = Receiver::start(port, 200).await;
    let got = receiver.wait_for(1, DEFAULT_TIMEOUT).await;
    assert_eq!(got[0].json()["event"], "completed");
    assert_eq!(got[0].json()["job_id"], "patient");
    assert!(
        !got[0].headers.contains_key("x-transcode-signature"),
        "no secret, no signature"
    );
    wait_for_log(&worker, "webhook delivered", 1, DEFAULT_TIMEOUT).await;
    assert_eq!(receiver.received().len(), 1, "delivered once");
    assert!(farm.dead_letters().await.is_empty());
    assert_eq!(
        farm.ready_in(&farm.settings.broker.webhooks_dead_queue())
            .await,
        0
    );
    farm.assert_all_acked(vec![worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_forever_ends_in_the_webhooks_dead_letter_queue() {
    let farm = Farm::s3(&[
        ALLOW_LOCAL,
        ("TRANSCODE_WEBHOOK__RETRY_DELAYS", "200ms,400ms"),
        ("TRANSCODE_WEBHOOK__RETRY_FOR", "3s"),
    ])
    .await;
    farm.put_input("in/a.wmv", &fixtures::wmv_with_audio(1))
        .await;
    let receiver = Receiver::start(0, 500).await;
    let secret = random_name("hook-secret");
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    farm.publish_job(job(
        "failing-receiver",
        "in/a.wmv",
        json!({"url": receiver.url(), "secret": secret}),
    ))
    .await;
    let last = watch.until_final("failing-receiver", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());

    let dead = webhook_dead_letters(&farm, 1, Duration::from_secs(60)).await;
    assert_eq!(dead.len(), 1);
    let (body, headers) = &dead[0];
    let got = receiver.received();
    // 200 ms, then 400 ms repeated, within 3 s of the first attempt.
    assert!(got.len() >= 4, "{} attempts", got.len());
    assert_eq!(
        headers["x-webhook-attempts"],
        got.len().to_string(),
        "{headers:#?}"
    );
    assert_eq!(headers["x-webhook-last-status"], "500", "{headers:#?}");
    let error = &headers["x-error"];
    assert!(
        error.contains(&format!("gave up after {} attempts", got.len())),
        "{error}"
    );
    assert!(
        error.contains("500") && error.contains("receiver says no"),
        "{error}"
    );
    assert_eq!(headers["x-webhook-url"], receiver.url());
    assert_eq!(headers["x-webhook-event"], "completed");
    assert_eq!(headers["x-job-id"], "failing-receiver");
    let parse = |name: &str| {
        time::OffsetDateTime::parse(
            &headers[name],
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    // Retried until the next attempt would start more than 3 s after the
    // first: the last one starts after 2.6 s (3 s less a 400 ms wait), and
    // late only by the broker's and the worker's own latency.
    let span = parse("x-webhook-last-attempt-at") - parse("x-webhook-first-attempt-at");
    assert!(
        span >= time::Duration::milliseconds(2600) && span <= time::Duration::seconds(5),
        "{span}"
    );
    // Every attempt was the same delivery, signed the same, of this body.
    for request in &got {
        assert_eq!(
            request.header("x-transcode-delivery"),
            headers["x-webhook-delivery"]
        );
        assert_eq!(request.body, *body);
        assert_eq!(
            request.header("x-transcode-signature"),
            expected_signature(&secret, body)
        );
    }
    // The job itself was not touched.
    let job_dead = farm.dead_letters().await;
    assert!(job_dead.is_empty());
    assert_eq!(
        watch
            .of("failing-receiver")
            .iter()
            .filter(|e| e.state == Phase::Completed)
            .count(),
        1
    );
    assert_secret_hidden(&secret, &worker, &watch.seen, &job_dead, &dead);
    farm.assert_all_acked(vec![worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_url_is_refused_by_default_and_allowed_when_configured() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("in/a.wmv", &fixtures::wmv_with_audio(1))
        .await;
    let receiver = Receiver::start(0, 200).await;
    let port = receiver.addr.port();
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    for (id, url) in [
        ("by-name", format!("http://localhost:{port}/hook")),
        ("by-address", format!("http://127.0.0.1:{port}/hook")),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/hook")),
    ] {
        farm.publish_job(job(id, "in/a.wmv", json!({"url": url})))
            .await;
    }
    for id in ["by-name", "by-address", "mapped"] {
        let last = watch.until_final(id, JOB_TIMEOUT).await;
        assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
    }
    let dead = webhook_dead_letters(&farm, 3, DEFAULT_TIMEOUT).await;
    assert_eq!(dead.len(), 3);
    for (_, headers) in &dead {
        let error = &headers["x-error"];
        assert!(error.contains("is not allowed"), "{error}");
        assert!(error.contains("127.0.0.1 is a loopback address"), "{error}");
        assert_eq!(headers["x-webhook-attempts"], "0", "never sent");
    }
    wait_for_log(&worker, "webhook refused", 3, DEFAULT_TIMEOUT).await;
    assert!(receiver.received().is_empty(), "{:#?}", receiver.received());
    farm.assert_all_acked(vec![worker]).await;

    // A worker that allows the loopback range delivers to it.
    let allowing = farm.spawn_worker(&[("TRANSCODE_WEBHOOK__ALLOWED_HOSTS", "127.0.0.0/8")]);
    farm.publish_job(job(
        "allowed",
        "in/a.wmv",
        json!({"url": format!("http://127.0.0.1:{port}/hook")}),
    ))
    .await;
    let last = watch.until_final("allowed", JOB_TIMEOUT).await;
    assert_eq!(
        last.state,
        Phase::Completed,
        "{last:#?}\n{}",
        allowing.logs()
    );
    let got = receiver.wait_for(1, DEFAULT_TIMEOUT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["job_id"], "allowed");
    farm.assert_all_acked(vec![allowing]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_no_senders_leaves_its_notices_queued_for_others() {
    let farm = Farm::s3(&[ALLOW_LOCAL]).await;
    farm.put_input("in/a.wmv", &fixtures::wmv_with_audio(1))
        .await;
    let receiver = Receiver::start(0, 200).await;
    let mut watch = farm.watch_progress().await;
    let quiet = farm.spawn_worker(&[("TRANSCODE_WEBHOOK__SENDERS", "0")]);
    farm.publish_job(job("queued", "in/a.wmv", json!({"url": receiver.url()})))
        .await;
    let last = watch.until_final("queued", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", quiet.logs());
    let queue = farm.settings.broker.webhooks_queue.clone();
    wait_for(
        DEFAULT_TIMEOUT,
        "the notice in the webhooks queue",
        || async { farm.ready_in(&queue).await == 1 },
    )
    .await;
    assert!(receiver.received().is_empty());
    farm.assert_all_acked(vec![quiet]).await;
    assert_eq!(farm.ready_in(&queue).await, 1, "kept while no worker sends");

    let sender = farm.spawn_worker(&[]);
    let got = receiver.wait_for(1, DEFAULT_TIMEOUT).await;
    assert_eq!(got[0].json()["job_id"], "queued");
    wait_for_log(&sender, "webhook delivered", 1, DEFAULT_TIMEOUT).await;
    assert_eq!(farm.ready_in(&queue).await, 0);
    farm.assert_all_acked(vec![sender]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fails_for_good_sends_failed_with_its_error() {
    let farm = Farm::s3(&[ALLOW_LOCAL]).await;
    let receiver = Receiver::start(0, 204).await;
    let secret = random_name("hook-secret");
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    // The first asks for `completed` only: its failure sends nothing.
    farm.publish_job(job(
        "quiet",
        "in/missing.wmv",
        json!({"url": receiver.url(), "events": ["completed"], "secret": secret}),
    ))
    .await;
    farm.publish_job(job(
        "missing",
        "in/missing.wmv",
        json!({"url": receiver.url(), "secret": secret}),
    ))
    .await;
    for id in ["quiet", "missing"] {
        let last = watch.until_final(id, JOB_TIMEOUT).await;
        assert_eq!(last.state, Phase::Failed, "{last:#?}");
    }
    let got = receiver.wait_for(1, DEFAULT_TIMEOUT).await;
    wait_for_log(&worker, "webhook delivered", 1, DEFAULT_TIMEOUT).await;
    // One sender takes notices in order: one for "quiet" would be first.
    assert_eq!(got.len(), 1, "{got:#?}");
    let request = &got[0];
    assert_eq!(request.header("x-transcode-event"), "failed");
    assert_eq!(
        request.header("x-transcode-signature"),
        expected_signature(&secret, &request.body)
    );
    let body = request.json();
    assert_eq!(body["event"], "failed");
    assert_eq!(body["job_id"], "missing");
    assert_eq!(body["error_kind"], "input_not_found");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("there is no input \"in/missing.wmv\""),
        "{body}"
    );
    assert!(body.get("result").is_none(), "{body}");
    // Both jobs are in the dead-letter queue, unchanged by the webhook.
    let dead = farm.dead_letters().await;
    assert_eq!(dead.len(), 2);
    assert_secret_hidden(&secret, &worker, &watch.seen, &dead, &[]);
    farm.assert_all_acked(vec![worker]).await;
}
