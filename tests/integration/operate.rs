//! Operating the farm: `inspect` and `ping` over the control exchange,
//! `watch` on its own queue of the progress exchange, and each worker's
//! `/metrics` and `/healthz`, all run as real processes against real
//! services. The Grafana dashboard's metric names are checked against a
//! real scrape.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use transcode_worker::error::ErrorKind;
use transcode_worker::job::{Phase, Progress};

use crate::common::farm::{Farm, Rabbit};
use crate::common::services::{free_port, shared_s3, RabbitNode, RabbitOptions};
use crate::common::{fixtures, run_with_timeout, wait_for, wait_for_value, with_timeout};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// Lets jobs use `identity sleep-time=N` (microseconds per frame) to make
/// an encode last long enough to look at it.
const SLOW: (&str, &str) = ("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A plain HTTP/1.1 GET: `(status code, body)`, or `None` when nothing
/// answers.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || http_get(&addr, &path))
        .await
        .expect("join")
}

/// One sample of a scrape: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus / OpenMetrics text format (enough of it for the
/// worker's output: no escaped quotes in label values).
fn parse_metrics(body: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let labels = inner
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label pair");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        samples.push((name, labels, value));
    }
    samples
}

/// The value of the sample `name` whose labels include `labels`.
fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

/// Every `transcode_*` name in the queries of the Grafana dashboard.
fn dashboard_metric_names() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/transcode-worker.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard"))
        .expect("the dashboard is valid JSON");
    assert!(
        dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8),
        "the dashboard has panels"
    );
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    walk(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "{queries:?}");
    let mut names = BTreeSet::new();
    for query in &queries {
        let mut rest = query.as_str();
        while let Some(at) = rest.find("transcode_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_every_worker_and_its_current_job_and_ping_lists_them() {
    let farm = Farm::s3(&[SLOW]).await;

    // Nobody is there yet: ping says so and fails.
    let out = farm.cli(&["ping", "--timeout", "1s"], JOB_TIMEOUT).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("no worker answered"),
        "{}",
        text(&out.stderr)
    );

    farm.put_input("tape.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let workers = [farm.spawn_worker(&[]), farm.spawn_worker(&[])];
    // 50 frames at 1 s each: the job stays in its transcoding phase for
    // the whole test (the workers are killed at the end).
    farm.publish_job(json!({
        "job_id": "tape-7", "input_key": "tape.mov", "output_key": "o/tape.mp4",
        "transcode_options": "identity sleep-time=1000000 ! videoconvert ! x264enc"
    }))
    .await;
    let taker = loop {
        let e = watch.next(JOB_TIMEOUT).await;
        if e.job_id == "tape-7" && e.state == Phase::Transcoding {
            break e.worker;
        }
    };
    let busy = workers.iter().find(|w| w.name == taker).expect("the taker");
    let idle = workers.iter().find(|w| w.name != taker).expect("the other");

    // Both workers answer (the idle one may still be connecting at first).
    let infos: Vec<Value> = wait_for_value(JOB_TIMEOUT, "two workers in inspect", || async {
        let out = farm
            .cli(&["inspect", "--json", "--timeout", "2s"], JOB_TIMEOUT)
            .await;
        let infos: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("inspect --json: {e}: {out:?}");
        });
        (infos.len() == 2 && out.status.success()).then_some(infos)
    })
    .await;
    let host = gethostname::gethostname().to_string_lossy().to_string();
    for info in &infos {
        let name = info["worker"].as_str().unwrap();
        let proc = workers
            .iter()
            .find(|w| w.name == name)
            .expect("a worker of ours");
        assert_eq!(info["pid"], proc.pid(), "{info:#}");
        assert_eq!(info["host"], host.as_str(), "{info:#}");
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{info:#}");
        assert_eq!(info["queue"], farm.jobs_queue(), "{info:#}");
        assert_eq!(info["connected"], true, "{info:#}");
        assert!(info["uptime_secs"].as_f64().unwrap() > 0.0, "{info:#}");
        assert_eq!(info["jobs_completed"], 0, "{info:#}");
        assert_eq!(info["jobs_failed"], 0, "{info:#}");
    }
    let busy_info = infos.iter().find(|i| i["worker"] == busy.name.as_str());
    let busy_info = busy_info.expect("the busy worker answered");
    let jobs = busy_info["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{busy_info:#}");
    assert_eq!(jobs[0]["job_id"], "tape-7", "{busy_info:#}");
    assert_eq!(jobs[0]["phase"], "transcoding", "{busy_info:#}");
    assert_eq!(jobs[0]["attempt"], 1, "{busy_info:#}");
    let progress = jobs[0]["progress"].as_f64().unwrap();
    assert!((5.0..95.0).contains(&progress), "{busy_info:#}");
    let idle_info = infos.iter().find(|i| i["worker"] == idle.name.as_str());
    let idle_info = idle_info.expect("the idle worker answered");
    assert_eq!(idle_info["jobs"], json!([]), "{idle_info:#}");

    // The table says the same.
    let out = farm.cli(&["inspect", "--timeout", "2s"], JOB_TIMEOUT).await;
    assert!(out.status.success(), "{out:?}");
    let table = text(&out.stdout);
    for needle in [
        busy.name.as_str(),
        idle.name.as_str(),
        "tape-7",
        "transcoding",
        "(idle)",
        "PHASE",
    ] {
        assert!(table.contains(needle), "{needle:?} not in\n{table}");
    }

    // ping lists both, with their reply times.
    let out = farm
        .cli(&["ping", "--json", "--timeout", "2s"], JOB_TIMEOUT)
        .await;
    assert!(out.status.success(), "{out:?}");
    let pongs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("ping --json");
    let names: BTreeSet<&str> = pongs
        .iter()
        .map(|p| p["worker"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([busy.name.as_str(), idle.name.as_str()]),
        "{pongs:#?}"
    );
    for pong in &pongs {
        let ms = pong["reply_ms"].as_f64().unwrap();
        assert!((0.0..2000.0).contains(&ms), "{pong:#}");
    }
    let out = farm.cli(&["ping", "--timeout", "2s"], JOB_TIMEOUT).await;
    let table = text(&out.stdout);
    assert!(
        table.contains(&busy.name) && table.contains(&idle.name) && table.contains(" ms"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_completed_and_a_failed_job_and_the_dashboard_uses_real_names() {
    let addr = format!("127.0.0.1:{}", free_port());
    let farm = Farm::s3(&[("TRANSCODE_METRICS__LISTEN", &addr)]).await;
    let input = fixtures::mjpeg_mov(1);
    farm.put_input("in/a.mov", &input).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    wait_for(JOB_TIMEOUT, "/healthz to answer 200", || async {
        get(&addr, "/healthz")
            .await
            .is_some_and(|(code, _)| code == 200)
    })
    .await;

    farm.publish_job(
        json!({"job_id": "good", "input_key": "in/a.mov", "output_key": "out/a.mp4",
        "transcode_options": "videoconvert ! x264enc"}),
    )
    .await;
    farm.publish_job(
        json!({"job_id": "bad", "input_key": "in/missing.mov", "output_key": "out/b.mp4"}),
    )
    .await;
    let good = watch.until_final("good", JOB_TIMEOUT).await;
    assert_eq!(good.state, Phase::Completed, "{good:#?}");
    let bad = watch.until_final("bad", JOB_TIMEOUT).await;
    assert_eq!(bad.error_kind, Some(ErrorKind::InputNotFound), "{bad:#?}");

    // The worker settles (acks) after the final event: wait for the counts.
    let samples = wait_for_value(JOB_TIMEOUT, "both jobs in /metrics", || async {
        let (code, body) = get(&addr, "/metrics").await?;
        assert_eq!(code, 200, "{body}");
        let samples = parse_metrics(&body);
        let done = metric(
            &samples,
            "transcode_jobs_total",
            &[("outcome", "completed")],
        );
        let failed = metric(&samples, "transcode_jobs_total", &[("outcome", "failed")]);
        let in_flight = metric(&samples, "transcode_jobs_in_flight", &[]);
        (done == Some(1.0) && failed == Some(1.0) && in_flight == Some(0.0)).then_some(samples)
    })
    .await;
    let m = |name: &str, labels: &[(&str, &str)]| {
        metric(&samples, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in {samples:#?}"))
    };
    assert_eq!(
        m(
            "transcode_jobs_total",
            &[("outcome", "failed"), ("error_kind", "input_not_found")]
        ),
        1.0
    );
    assert_eq!(
        m("transcode_attempts_total", &[("outcome", "completed")]),
        1.0
    );
    assert_eq!(
        m(
            "transcode_attempts_total",
            &[("outcome", "failed"), ("error_kind", "input_not_found")]
        ),
        1.0
    );
    assert_eq!(m("transcode_job_attempts_count", &[]), 2.0);
    assert_eq!(
        m("transcode_job_attempts_bucket", &[("le", "1.0")]),
        2.0,
        "both ended at their first attempt"
    );
    for phase in ["downloading", "transcoding", "uploading"] {
        assert_eq!(
            m(
                "transcode_phase_duration_seconds_count",
                &[("phase", phase)]
            ),
            1.0,
            "{phase}"
        );
        assert!(m("transcode_phase_duration_seconds_sum", &[("phase", phase)]) > 0.0);
    }
    let output = farm.get_output("out/a.mp4").await.expect("output");
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len() as f64;
    assert_eq!(
        m("transcode_bytes_total", &[("direction", "in")]),
        size(&input)
    );
    assert_eq!(
        m("transcode_bytes_total", &[("direction", "out")]),
        size(&output)
    );
    assert_eq!(m("transcode_broker_connected", &[]), 1.0);
    assert_eq!(m("transcode_seconds_since_last_progress", &[]), 0.0);
    assert_eq!(
        m(
            "transcode_worker_info",
            &[
                ("worker", worker.name.as_str()),
                ("version", env!("CARGO_PKG_VERSION"))
            ]
        ),
        1.0
    );
    assert!(m("transcode_worker_start_time_seconds", &[]) > 1.7e9);

    // Every metric the Grafana dashboard queries is one the worker serves.
    let served: BTreeSet<&str> = samples.iter().map(|(n, _, _)| n.as_str()).collect();
    let used = dashboard_metric_names();
    let unknown: Vec<&String> = used
        .iter()
        .filter(|n| !served.contains(n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses metrics the worker does not serve: {unknown:?}; served: {served:?}"
    );

    let (code, body) = get(&addr, "/healthz").await.expect("healthz");
    assert_eq!(code, 200, "{body}");
    let health: Value = serde_json::from_str(&body).expect("health JSON");
    assert_eq!(health["healthy"], true, "{health:#}");
    assert_eq!(get(&addr, "/nope").await.map(|(c, _)| c), Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_broker_is_away_and_200_once_it_is_back() {
    let node = Arc::new(RabbitNode::start(RabbitOptions::default()));
    let addr = format!("127.0.0.1:{}", free_port());
    let extra = [
        ("TRANSCODE_METRICS__LISTEN", addr.as_str()),
        ("TRANSCODE_BROKER__LIVENESS_INTERVAL", "1s"),
    ];
    let farm = Farm::s3_on(Rabbit::Own(node.clone()), shared_s3(), &extra).await;
    let _worker = farm.spawn_worker(&[]);
    let health = |want: u16| {
        let addr = addr.clone();
        async move {
            let (code, body) = get(&addr, "/healthz").await?;
            (code == want).then(|| serde_json::from_str::<Value>(&body).expect("health JSON"))
        }
    };
    let ok = wait_for_value(JOB_TIMEOUT, "/healthz 200", || health(200)).await;
    assert_eq!(ok["connected"], true, "{ok:#}");

    let stop = node.clone();
    tokio::task::spawn_blocking(move || stop.stop())
        .await
        .expect("stop the broker");
    let down = wait_for_value(JOB_TIMEOUT, "/healthz 503", || health(503)).await;
    assert_eq!(down["healthy"], false, "{down:#}");
    assert_eq!(down["connected"], false, "{down:#}");
    assert!(
        down["reason"]
            .as_str()
            .unwrap()
            .contains("not connected to the broker"),
        "{down:#}"
    );
    let (_, body) = get(&addr, "/metrics").await.expect("metrics while down");
    assert_eq!(
        metric(&parse_metrics(&body), "transcode_broker_connected", &[]),
        Some(0.0)
    );

    let resume = node.clone();
    tokio::task::spawn_blocking(move || resume.resume())
        .await
        .expect("restart the broker");
    wait_for_value(JOB_TIMEOUT, "/healthz 200 again", || health(200)).await;
    // The control consumer came back with the new connection. It binds its
    // queue just after the worker connects, and a ping sent before that
    // reaches nobody: ask until it answers.
    let pongs = wait_for_value(JOB_TIMEOUT, "an answer to ping", || async {
        let out = farm
            .cli(&["ping", "--json", "--timeout", "2s"], JOB_TIMEOUT)
            .await;
        let pongs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("ping --json");
        out.status.success().then_some(pongs)
    })
    .await;
    assert_eq!(pongs.len(), 1, "{pongs:#?}");
}

/// Private queues bound to the farm's progress exchange besides the
/// durable progress queue (each `watch` has one).
fn watch_queues(farm: &Farm) -> usize {
    let out = farm.rabbit.ctl(&[
        "list_bindings",
        "-q",
        "--no-table-headers",
        "source_name",
        "destination_name",
    ]);
    let exchange = &farm.settings.broker.progress_exchange;
    let durable = &farm.settings.broker.progress_queue;
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(source, dest)| source.trim() == exchange && dest.trim() != durable)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_progress_and_the_end_of_each_job_without_taking_events() {
    let farm = Farm::s3(&[SLOW]).await;
    farm.put_input("in/a.mov", &fixtures::mjpeg_mov(2)).await;
    let spawn = |args: &[&str]| {
        let mut cmd = farm.command(args);
        tokio::task::spawn_blocking(move || run_with_timeout(&mut cmd, JOB_TIMEOUT))
    };
    // JSON lines for one job; plain lines (the output is a pipe) for both.
    let json_watch = spawn(&["watch", "--json", "--job", "ok", "--timeout", "100s"]);
    let plain_watch = spawn(&[
        "watch",
        "--job",
        "ok",
        "--job",
        "missing",
        "--timeout",
        "100s",
    ]);
    wait_for(
        JOB_TIMEOUT,
        "both watchers bound to the exchange",
        || async { watch_queues(&farm) == 2 },
    )
    .await;

    let _worker = farm.spawn_worker(&[]);
    // 50 frames at 40 ms: a few seconds of transcoding events.
    farm.publish_job(
        json!({"job_id": "ok", "input_key": "in/a.mov", "output_key": "out/a.mp4",
        "transcode_options": "identity sleep-time=40000 ! videoconvert ! x264enc"}),
    )
    .await;
    farm.publish_job(
        json!({"job_id": "missing", "input_key": "in/none.mov", "output_key": "out/n.mp4"}),
    )
    .await;

    let out = with_timeout(JOB_TIMEOUT, "watch --json", json_watch)
        .await
        .expect("join")
        .expect("watch --json ends once its job ended");
    assert!(out.status.success(), "{out:?}");
    let events: Vec<Progress> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(events.iter().all(|e| e.job_id == "ok"), "{events:#?}");
    let last = events.last().expect("events");
    assert_eq!(last.state, Phase::Completed, "{events:#?}");
    assert_eq!(last.output_key.as_deref(), Some("out/a.mp4"));
    let transcoding: Vec<&Progress> = events
        .iter()
        .filter(|e| e.state == Phase::Transcoding)
        .collect();
    assert!(!transcoding.is_empty(), "{events:#?}");
    assert!(
        transcoding.iter().any(|e| e.speed.is_some_and(|s| s > 0.0)),
        "transcoding events carry the speed: {events:#?}"
    );

    let out = with_timeout(JOB_TIMEOUT, "watch (plain)", plain_watch)
        .await
        .expect("join")
        .expect("watch ends once both jobs ended");
    assert_eq!(out.status.code(), Some(1), "a watched job failed: {out:?}");
    let lines = text(&out.stdout);
    for needle in [
        "ok transcoding",
        "completed ok on ",
        "-> out/a.mp4",
        "failed missing on ",
        "input_not_found",
    ] {
        assert!(lines.contains(needle), "{needle:?} not in:\n{lines}");
    }

    // The durable progress queue still has every event: watch took none.
    let kept: Vec<Progress> = farm
        .drain_queue(&farm.settings.broker.progress_queue.clone())
        .await
        .iter()
        .map(|(body, _)| serde_json::from_slice(body).unwrap())
        .collect();
    let ends: HashMap<&str, Phase> = kept
        .iter()
        .filter(|e| e.state == Phase::Completed || e.state == Phase::Failed)
        .map(|e| (e.job_id.as_str(), e.state))
        .collect();
    assert_eq!(ends.get("ok"), Some(&Phase::Completed), "{kept:#?}");
    assert_eq!(ends.get("missing"), Some(&Phase::Failed), "{kept:#?}");
}
