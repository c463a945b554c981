//! `transcode-worker dashboard` against a real farm (RabbitMQ, the S3 test
//! server, real workers): the page in headless Chromium (both workers, a
//! running job's progress moving without a reload, a failed job with its
//! reason, hostile text shown as text, cancel refused without the token
//! and done with it), and the JSON API asked directly (status codes,
//! shapes, the token and origin checks, no secret in any answer, a dead
//! letter requeued with its history).
//!
//! With `DASHBOARD_SCREENSHOT=PATH` the browser test saves a screenshot of
//! the page there (the README's docs/dashboard.png is made so).

use std::time::Duration;

use serde_json::{json, Value};
use transcode_worker::broker::REFRESH_AT;
use transcode_worker::job::Phase;

use crate::common::browser::Browser;
use crate::common::farm::{Farm, WorkerProc};
use crate::common::{fixtures, wait_for, wait_for_value, DEFAULT_TIMEOUT};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The dashboard's token in these tests.
const TOKEN: &str = "dashboard-test-token-7Qx2";

/// Lets jobs use `identity sleep-time=N` to make an encode last long enough.
const SLOW: (&str, &str) = ("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity");

/// An input key that is markup and script, in a field the page shows (the
/// key and the error sentence that quotes it). Job ids cannot hold it.
const HOSTILE_KEY: &str = "in/<script>alert(1)</script><img src=x onerror=alert(2)>.mov";

/// A running `transcode-worker dashboard` and an HTTP client for it.
struct Dashboard {
    /// The process (stopped when dropped; its log is printed if the test
    /// fails).
    _process: WorkerProc,
    url: String,
    http: reqwest::Client,
}

/// An answer: status, headers and the body as JSON (`Null` when it is not).
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

impl Dashboard {
    /// Starts a dashboard of `farm` with `extra` settings and waits until
    /// it listens.
    async fn start(farm: &Farm, extra: &[(&str, &str)]) -> Dashboard {
        let process = farm.spawn_command(&["dashboard", "--listen", "127.0.0.1:0"], extra);
        let addr = wait_for_value(DEFAULT_TIMEOUT, "the dashboard to listen", || {
            let found = process
                .logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find_map(|l| l["addr"].as_str().map(str::to_string));
            async move { found }
        })
        .await;
        Dashboard {
            _process: process,
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Got {
        let response = request
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the dashboard answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Got {
            status,
            headers,
            text,
            json,
        }
    }

    async fn get(&self, path: &str) -> Got {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    /// A POST as the page sends it: JSON, the token, same origin.
    async fn post(&self, path: &str, body: &Value) -> Got {
        self.post_with(path, body, &[("authorization", &format!("Bearer {TOKEN}"))])
            .await
    }

    /// A POST with `headers`, and unless they say otherwise a JSON
    /// content type and the page's `Origin`.
    async fn post_with(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Got {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        for (name, value) in [("content-type", "application/json"), ("origin", &self.url)] {
            if !all.iter().any(|(n, _)| *n == name) {
                all.push((name, value));
            }
        }
        let mut request = self
            .http
            .post(format!("{}{path}", self.url))
            .body(body.to_string());
        for (name, value) in all {
            request = request.header(name, value);
        }
        self.send(request).await
    }
}

/// The deliveries counted so far of each message in `queue`
/// (`x-delivery-count`), read without taking them (which counts one more).
async fn looks(farm: &Farm, queue: &str) -> Vec<u32> {
    let channel = farm.channel().await;
    let mut counts = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        let count = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        counts.push(match count {
            None => 0,
            Some(lapin::types::AMQPValue::LongLongInt(n)) => n as u32,
            Some(lapin::types::AMQPValue::LongInt(n)) => n as u32,
            Some(other) => panic!("x-delivery-count {other:?}"),
        });
    }
    let _ = channel.close(200, "looked".into()).await;
    counts
}

/// Waits until the record of `job_id` is in `state`, and returns it.
async fn until_state(d: &Dashboard, job_id: &str, state: &str) -> Value {
    wait_for_value(JOB_TIMEOUT, &format!("{job_id} to be {state}"), || async {
        let got = d.get(&format!("/api/jobs/{job_id}")).await;
        (got.json["state"] == state).then_some(got.json)
    })
    .await
}

/// A job that transcodes slowly (about 100 ms a frame).
fn slow_job(job_id: &str, input: &str) -> Value {
    json!({
        "job_id": job_id,
        "input_key": input,
        "output_key": format!("out/{job_id}.mp4"),
        "transcode_options": "identity sleep-time=100000 ! videoconvert ! x264enc speed-preset=ultrafast",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_farm_live_and_cancels_a_running_job_only_with_the_token() {
    let farm = Farm::s3(&[SLOW]).await;
    farm.put_input("in/long.mov", &fixtures::mjpeg_mov(8)).await;
    farm.put_input("in/tape-7.mov", &fixtures::mjpeg_mov(1))
        .await;
    let mut watch = farm.watch_progress().await;
    let workers = vec![farm.spawn_worker(&[SLOW]), farm.spawn_worker(&[SLOW])];
    let names: Vec<String> = workers.iter().map(|w| w.name.clone()).collect();
    let d = Dashboard::start(&farm, &[("TRANSCODE_DASHBOARD__TOKEN", TOKEN)]).await;

    let got = d
        .post("/api/jobs", &slow_job("long-1", "in/long.mov"))
        .await;
    assert_eq!(got.status, 201, "{}", got.text);
    let hostile =
        json!({"job_id": "hostile-1", "input_key": HOSTILE_KEY, "output_key": "out/h.mp4"});
    let got = d.post("/api/jobs", &hostile).await;
    assert_eq!(got.status, 201, "{}", got.text);
    until_state(&d, "hostile-1", "dead").await;
    let good =
        json!({"job_id": "tape-7", "input_key": "in/tape-7.mov", "output_key": "out/tape-7.mp4"});
    let got = d.post("/api/jobs", &good).await;
    assert_eq!(got.status, 201, "{}", got.text);
    until_state(&d, "tape-7", "completed").await;
    watch.until_encoding(Some("long-1"), JOB_TIMEOUT).await;

    let browser = Browser::open(1440, 1200).await;
    browser.client.goto(&d.url).await.expect("open the page");
    browser.js("window.loadedOnce = 'yes'; return true;").await;

    // Both workers, and the running job's id with its progress.
    let shown = browser
        .wait_js(
            DEFAULT_TIMEOUT,
            "both workers on the page",
            &format!(
                "const shown = [...document.querySelectorAll('#workers [data-worker]')].map(e => e.dataset.worker);
                 return {names:?}.every(n => shown.includes(n)) ? shown : null;"
            ),
        )
        .await;
    assert_eq!(shown.as_array().map(Vec::len), Some(2), "{shown}");
    let progress = "const p = document.querySelector('#workers [data-job=\"long-1\"] .pct');
                    return p ? Number(p.dataset.progress) : null;";
    let first = browser
        .wait_js(DEFAULT_TIMEOUT, "long-1 running in a worker card", progress)
        .await
        .as_f64()
        .expect("a number");
    let bar = browser
        .js("return !!document.querySelector('#workers [data-job=\"long-1\"] [role=progressbar] .bar-fill');")
        .await;
    assert_eq!(bar, true, "a progress bar");
    let moved = browser
        .wait_js(
            DEFAULT_TIMEOUT,
            "the progress of long-1 to move",
            &format!("const p = (() => {{ {progress} }})(); return p !== null && p > {first} ? p : null;"),
        )
        .await;
    assert_eq!(
        browser.js("return window.loadedOnce;").await,
        "yes",
        "the progress moved from {first} to {moved} without a reload"
    );

    // A completed job with what it stored.
    let done = browser
        .wait_js(
            DEFAULT_TIMEOUT,
            "tape-7 completed in the jobs table",
            "const r = document.querySelector('#jobs tr[data-job=\"tape-7\"][data-state=\"completed\"]');
             return r ? r.innerText : null;",
        )
        .await;
    assert!(done.as_str().unwrap().contains("stored"), "{done}");

    // The failed job, with its reason, the hostile key shown as text.
    let row = browser
        .wait_js(
            DEFAULT_TIMEOUT,
            "hostile-1 dead in the jobs table",
            "const r = document.querySelector('#jobs tr[data-job=\"hostile-1\"][data-state=\"dead\"]');
             return r ? r.innerText : null;",
        )
        .await;
    let row = row.as_str().expect("text");
    assert!(row.contains("input_not_found"), "{row}");
    assert!(row.contains(HOSTILE_KEY), "the key as text: {row}");
    let dead = browser
        .wait_js(
            DEFAULT_TIMEOUT,
            "hostile-1 in the dead letters",
            "const r = document.querySelector('#dead-letters tr[data-dead=\"hostile-1\"]');
             return r ? r.innerText : null;",
        )
        .await;
    let dead = dead.as_str().expect("text");
    assert!(
        dead.contains("input_not_found") && dead.contains(HOSTILE_KEY),
        "{dead}"
    );
    assert!(!browser.alert_open().await, "no script of the job ran");
    let injected = browser
        .js("return document.querySelectorAll('main img, main script').length + ':' + document.scripts.length;")
        .await;
    assert_eq!(injected, "0:1", "no element made from the job's fields");

    if let Ok(path) = std::env::var("DASHBOARD_SCREENSHOT") {
        // Let the bars' transition settle.
        tokio::time::sleep(Duration::from_millis(800)).await;
        std::fs::write(&path, browser.screenshot().await).expect("write the screenshot");
        eprintln!("screenshot saved to {path}");
    }

    // Without the token the cancel is refused, and the job runs on.
    browser
        .click(
            DEFAULT_TIMEOUT,
            "the cancel button of long-1",
            "#workers button[data-cancel=\"long-1\"]",
        )
        .await;
    let message = browser
        .wait_js(
            DEFAULT_TIMEOUT,
            "the refusal",
            "const m = document.getElementById('message');
             return !m.hidden && m.innerText.includes('Refused') ? m.innerText : null;",
        )
        .await;
    assert!(message.as_str().unwrap().contains("401"), "{message}");
    let job = d.get("/api/jobs/long-1").await.json;
    assert_eq!(job["state"], "running", "{job:#}");
    assert_eq!(job["cancel_requested"], false, "{job:#}");

    // With the token it stops the job.
    browser.type_into("#token", TOKEN).await;
    browser.click(DEFAULT_TIMEOUT, "Use", "#token-save").await;
    browser
        .click(
            DEFAULT_TIMEOUT,
            "the cancel button of long-1",
            "#workers button[data-cancel=\"long-1\"]",
        )
        .await;
    let last = watch.until_final("long-1", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Cancelled, "{last:#?}");
    browser
        .wait_js(
            DEFAULT_TIMEOUT,
            "long-1 cancelled in the jobs table",
            "return !!document.querySelector('#jobs tr[data-job=\"long-1\"][data-state=\"cancelled\"]');",
        )
        .await;
    assert!(!farm.output_exists("out/long-1.mp4").await);

    // A job's page: its attempts and events, opened from its link.
    browser
        .click(
            DEFAULT_TIMEOUT,
            "the link of hostile-1",
            "#jobs a[data-job-link=\"hostile-1\"]",
        )
        .await;
    let page = browser
        .wait_js(
            DEFAULT_TIMEOUT,
            "the page of hostile-1",
            "const s = document.getElementById('job-section');
             const rows = document.querySelectorAll('#job table.attempts tbody tr').length;
             return !s.hidden && rows > 0 ? s.innerText : null;",
        )
        .await;
    let page = page.as_str().unwrap();
    assert!(
        page.contains("hostile-1") && page.contains("input_not_found"),
        "{page}"
    );
    assert!(page.contains("failed for good"), "its events: {page}");
    assert!(page.contains(HOSTILE_KEY), "{page}");
    assert_eq!(browser.js("return window.loadedOnce;").await, "yes");
    assert!(!browser.alert_open().await);
    browser.close().await;
    farm.assert_all_acked(workers).await;
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_answers_with_fitting_codes_and_never_shows_a_secret() {
    const HOOK_SECRET: &str = "webhook-secret-Zq9v4L";
    let farm = Farm::s3(&[]).await;
    let mut worker = farm.spawn_worker(&[]);
    let d = Dashboard::start(&farm, &[("TRANSCODE_DASHBOARD__TOKEN", TOKEN)]).await;
    let read_only = Dashboard::start(&farm, &[]).await;
    let mut answers: Vec<String> = Vec::new();

    // About, workers, queues.
    let about = d.get("/api/about").await;
    assert_eq!((about.status, &about.json["actions"]), (200, &json!(true)));
    assert_eq!(read_only.get("/api/about").await.json["actions"], false);
    let workers = wait_for_value(DEFAULT_TIMEOUT, "the worker in /api/workers", || async {
        let got = d.get("/api/workers").await;
        let listed = got.json["workers"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["worker"] == worker.name.as_str()));
        listed.then_some(got)
    })
    .await;
    let w = &workers.json["workers"][0];
    assert_eq!(w["state"], "idle", "{w:#}");
    assert!(
        w["host"].is_string() && w["uptime_secs"].is_number(),
        "{w:#}"
    );
    assert!(w["capabilities"]["encoders"].is_array(), "{w:#}");
    answers.push(workers.text);
    let queues = d.get("/api/queues").await;
    assert_eq!(queues.status, 200, "{}", queues.text);
    let priorities: Vec<&str> = queues.json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["priority"].as_str().unwrap())
        .collect();
    assert_eq!(priorities, ["high", "normal", "low"]);
    assert_eq!(queues.json["dead_letters"]["messages"], 0);
    assert_eq!(queues.json["running"], 0);
    assert!(queues.json["webhooks"]["pending"].is_number());
    assert!(queues.json["waiting_for_capability"].is_array());

    // Actions: refused without the token, from another origin, as a form,
    // on a read-only dashboard; a job the workers would refuse is a 400.
    let job = json!({
        "job_id": "secret-1",
        "input_key": "in/missing.mov",
        "output_key": "out/s.mp4",
        "webhook": {"url": "http://127.0.0.1:9/hook", "secret": HOOK_SECRET, "events": ["failed"]},
    });
    let bearer = format!("Bearer {TOKEN}");
    let refused = [
        (d.post_with("/api/jobs", &job, &[]).await, 401),
        (
            d.post_with("/api/jobs", &job, &[("authorization", "Bearer nope")])
                .await,
            401,
        ),
        (
            d.post_with(
                "/api/jobs",
                &job,
                &[
                    ("authorization", &bearer),
                    ("origin", "http://evil.example"),
                ],
            )
            .await,
            403,
        ),
        (
            d.post_with(
                "/api/jobs",
                &job,
                &[("authorization", &bearer), ("sec-fetch-site", "cross-site")],
            )
            .await,
            403,
        ),
        (
            d.post_with(
                "/api/jobs",
                &job,
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
            )
            .await,
            415,
        ),
        (read_only.post("/api/jobs", &job).await, 403),
        (
            d.post(
                "/api/jobs",
                &json!({"input_key": "a.mov", "output_key": "b.mp4", "preset": "nope"}),
            )
            .await,
            400,
        ),
        (
            d.post(
                "/api/jobs",
                &json!({"job_id": "<script>", "input_key": "a", "output_key": "b.mp4"}),
            )
            .await,
            400,
        ),
        (
            d.post(
                "/api/jobs",
                &json!({"input_key": "a", "output_key": "b.mp4", "colour": "red"}),
            )
            .await,
            400,
        ),
    ];
    for (got, status) in &refused {
        assert_eq!(got.status, *status, "{}", got.text);
        assert!(
            got.json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}",
            got.text
        );
    }
    assert!(
        refused[6].0.text.contains("preset"),
        "{}",
        refused[6].0.text
    );
    assert_eq!(farm.ready_jobs().await, 0, "nothing refused was queued");

    // Submitted: the job with a webhook secret, and two to search for.
    let got = d.post("/api/jobs", &job).await;
    assert_eq!(got.status, 201, "{}", got.text);
    assert_eq!(got.json["job_id"], "secret-1");
    assert_eq!(got.json["queue"], farm.jobs_queue());
    answers.push(got.text);
    for (id, priority) in [("alpha-1", "normal"), ("alpha-2", "high")] {
        let got = d
            .post(
                "/api/jobs",
                &json!({"job_id": id, "input_key": "in/none.mov", "output_key": "o.mp4", "priority": priority}),
            )
            .await;
        assert_eq!(got.status, 201, "{}", got.text);
        assert_eq!(
            got.json["queue"],
            farm.settings
                .broker
                .jobs_queue_for(priority.parse().unwrap())
        );
    }
    let record = until_state(&d, "secret-1", "dead").await;
    assert_eq!(record["job_id"], "secret-1");
    assert_eq!(record["error_kind"], "input_not_found", "{record:#}");
    assert_eq!(record["attempts"][0]["worker"], worker.name.as_str());
    assert!(
        record["events"].as_array().unwrap().len() >= 2,
        "{record:#}"
    );
    until_state(&d, "alpha-1", "dead").await;
    until_state(&d, "alpha-2", "dead").await;

    // Jobs: newest first, by state, by id prefix; bad parameters are 400s.
    let jobs = d.get("/api/jobs").await;
    let ids: Vec<&str> = jobs.json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha-2", "alpha-1", "secret-1"], "newest first");
    assert_eq!(jobs.json["jobs"][2]["error_kind"], "input_not_found");
    answers.push(jobs.text);
    let alpha = d.get("/api/jobs?q=alpha&state=dead&limit=5").await;
    let ids: Vec<&str> = alpha.json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha-2", "alpha-1"], "{}", alpha.text);
    assert_eq!(
        d.get("/api/jobs?limit=1").await.json["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(d.get("/api/jobs?limit=999999").await.json["limit"], 200);
    assert_eq!(
        d.get("/api/jobs?state=completed").await.json["jobs"],
        json!([])
    );
    for bad in [
        "state=sleeping",
        "limit=0",
        "limit=x",
        "q=%3Cscript%3E",
        "colour=red",
    ] {
        let got = d.get(&format!("/api/jobs?{bad}")).await;
        assert_eq!(got.status, 400, "{bad}: {}", got.text);
    }
    let one = d.get("/api/jobs/secret-1").await;
    assert_eq!((one.status, &one.json["state"]), (200, &json!("dead")));
    answers.push(one.text);
    let unknown = d.get("/api/jobs/never-seen").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.json,
        json!({"job_id": "never-seen", "state": "unknown", "error": unknown.json["error"]})
    );
    assert_eq!(d.get("/api/jobs/bad%20id").await.status, 400);

    // Dead letters, with their reasons, left in the queue.
    let dead_queue = farm.settings.broker.dead_letter_queue.clone();
    wait_for(DEFAULT_TIMEOUT, "three dead letters", || async {
        farm.ready_in(&dead_queue).await == 3
    })
    .await;
    let letters = d.get("/api/dead-letters").await;
    assert_eq!(letters.json["total"], 3, "{}", letters.text);
    let secret_letter = letters.json["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == "secret-1")
        .cloned()
        .unwrap_or_else(|| panic!("secret-1 listed: {}", letters.text));
    assert_eq!(secret_letter["error_kind"], "input_not_found");
    assert!(secret_letter["error"]
        .as_str()
        .unwrap()
        .contains("in/missing.mov"));
    assert_eq!(secret_letter["job"]["webhook"]["signed"], true);
    assert_eq!(
        secret_letter["attempt_history"].as_array().unwrap().len(),
        1
    );
    answers.push(letters.text);
    let all_back = || async { farm.ready_in(&dead_queue).await == 3 };
    wait_for(DEFAULT_TIMEOUT, "listing to take none", all_back).await;
    // Each look is a delivery the quorum queue counts; a dead letter looked
    // at REFRESH_AT times is renewed, so no delivery limit ever drops it.
    for _ in 0..(REFRESH_AT - 2) {
        assert_eq!(d.get("/api/dead-letters").await.json["total"], 3);
    }
    assert_eq!(looks(&farm, &dead_queue).await, [REFRESH_AT - 1; 3]);
    assert_eq!(d.get("/api/dead-letters").await.json["total"], 3);
    assert_eq!(looks(&farm, &dead_queue).await, [0; 3], "renewed");
    wait_for(DEFAULT_TIMEOUT, "the three dead letters back", all_back).await;
    let first = d.get("/api/dead-letters?limit=1").await;
    assert_eq!(first.json["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(first.json["total"], 3);

    // Cancel: unknown is 404, ended is 409.
    let got = d.post("/api/jobs/never-seen/cancel", &json!({})).await;
    assert_eq!((got.status, &got.json["state"]), (404, &json!("unknown")));
    let got = d.post("/api/jobs/secret-1/cancel", &json!({})).await;
    assert_eq!(
        (got.status, &got.json["state"]),
        (409, &json!("dead")),
        "{}",
        got.text
    );

    // Requeue with the worker stopped, so the job stays in its queue.
    worker.signal(libc::SIGTERM);
    worker.wait_exit(DEFAULT_TIMEOUT).await;
    farm.wait_connections_gone(&[format!("transcode-worker {}", worker.name)])
        .await;
    let got = d
        .post("/api/dead-letters/nothing-like-it/requeue", &json!({}))
        .await;
    assert_eq!(got.status, 404, "{}", got.text);
    let got = read_only
        .post("/api/dead-letters/secret-1/requeue", &json!({}))
        .await;
    assert_eq!(got.status, 403, "{}", got.text);
    let got = d
        .post("/api/dead-letters/secret-1/requeue", &json!({}))
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json["queue"], farm.jobs_queue());
    wait_for(
        DEFAULT_TIMEOUT,
        "the other two dead letters back",
        || async { farm.ready_in(&dead_queue).await == 2 },
    )
    .await;
    let requeued = farm.drain_queue(farm.jobs_queue()).await;
    assert_eq!(requeued.len(), 1);
    let (body, headers) = &requeued[0];
    assert_eq!(
        serde_json::from_slice::<Value>(body).unwrap()["job_id"],
        "secret-1"
    );
    assert_eq!(
        headers["x-transcode-attempts"], "0",
        "a fresh set of attempts"
    );
    let history: Vec<&str> = headers["x-transcode-history"].lines().collect();
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(
        history[0].starts_with(&format!("attempt 1 on {}", worker.name))
            && history[0].contains("input_not_found"),
        "{history:?}"
    );
    assert!(
        history[1].starts_with("requeued from the dead-letter queue"),
        "{history:?}"
    );
    assert!(!headers.contains_key("x-error"), "{headers:?}");
    let record = d.get("/api/jobs/secret-1").await.json;
    assert_eq!(record["state"], "queued", "{record:#}");
    assert!(
        record["events"].as_array().unwrap().last().unwrap()["text"]
            .as_str()
            .unwrap()
            .contains("requeued from the dead-letter queue"),
        "{record:#}"
    );

    // The page and its headers: a strict policy, no inline script.
    let page = d.get("/").await;
    assert_eq!(page.status, 200);
    let policy = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("default-src 'self'") && policy.contains("script-src 'self'"),
        "{policy}"
    );
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let script = d.get("/app.js").await;
    assert!(script.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    answers.extend([page.text, script.text, d.get("/api/queues").await.text]);
    let missing = d.get("/api/nothing").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json["error"].is_string());
    let wrong = d.send(d.http.delete(format!("{}/api/jobs", d.url))).await;
    assert_eq!(wrong.status, 405, "{}", wrong.text);
    answers.extend(refused.into_iter().map(|(got, _)| got.text));

    // No secret anywhere: the webhook's, the dashboard's token, the S3
    // secret key, the broker URL with its password.
    let s3_secret = farm.env["AWS_SECRET_ACCESS_KEY"].clone();
    let amqp_url = farm.env["AMQP_URL"].clone();
    for answer in &answers {
        for secret in [HOOK_SECRET, TOKEN, &s3_secret, &amqp_url] {
            assert!(
                !answer.contains(secret),
                "{secret:?} in an answer: {answer}"
            );
        }
    }
    // The dead letters left are the two not requeued.
    let mut left: Vec<String> = farm
        .dead_letters()
        .await
        .iter()
        .map(|(body, _)| serde_json::from_slice::<Value>(body).unwrap()["job_id"].to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["\"alpha-1\"", "\"alpha-2\""]);
    drop((d, read_only));
}
