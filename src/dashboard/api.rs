//! The dashboard's JSON views: what `GET /api/...` answers, read from the
//! workers (control exchange), the broker's queues and the job history,
//! each bounded in what it reads.

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{json_reply, path_id, Answer, ApiError, Dashboard};

mod dead_letters;

use crate::capability::CapabilityReport;
use crate::history::{Filter, JobRecord, JobState};
use crate::job::{Phase, Priority};
use crate::status::{JobInfo, WorkerInfo};
pub use dead_letters::{dead_letters, safe_job_fields, DeadLetterView};

/// Jobs listed when the request names no limit.
pub const DEFAULT_JOBS: usize = 50;
/// Most jobs one request lists.
pub const MAX_JOBS: usize = 200;
/// Index entries one listing reads at most (the newest jobs); a search by
/// job id reads [`SEARCH_SCAN`] (it reads only the matching records).
pub const SCAN: usize = 2_000;
/// Index entries a search by job id reads at most.
pub const SEARCH_SCAN: usize = 20_000;
/// Dead letters listed when the request names no limit.
pub const DEFAULT_DEAD_LETTERS: usize = 20;
/// Most dead letters one request lists.
pub const MAX_DEAD_LETTERS: usize = 100;
/// How often the page asks for news, in milliseconds.
pub const REFRESH_MS: u64 = 1000;

/// The query parameters of `query`, refusing unknown ones.
fn params(query: &str, known: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut found = BTreeMap::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if !known.contains(&key.as_ref()) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {key:?} (known: {})",
                known.join(", ")
            )));
        }
        found.insert(key.into_owned(), value.into_owned());
    }
    Ok(found)
}

/// The `limit` parameter: `default` when absent or empty, at most `max`.
fn limit(params: &BTreeMap<String, String>, default: usize, max: usize) -> Result<usize, ApiError> {
    match params
        .get("limit")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(0) | Err(_) => Err(ApiError::bad_request(format!(
                "limit {text:?} is not a whole number from 1 (at most {max} are listed)"
            ))),
            Ok(n) => Ok(n.min(max)),
        },
    }
}

/// `GET /api/about`: what the page needs to know of this dashboard.
pub fn about(d: &Dashboard) -> super::Reply {
    let presets: Vec<serde_json::Value> = d
        .settings()
        .presets
        .iter()
        .map(|(name, p)| serde_json::json!({"name": name, "description": p.description}))
        .collect();
    json_reply(
        StatusCode::OK,
        &serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "actions": d.settings().dashboard.token().is_some(),
            "history": d.history().is_ok(),
            "presets": presets,
            "default_preset": d.settings().pipeline.default_preset,
            "priorities": Priority::ALL,
            "refresh_ms": REFRESH_MS,
        }),
    )
}

/// A worker as the dashboard shows it.
#[derive(Debug, Serialize)]
pub struct WorkerView<'a> {
    /// Its name.
    pub worker: &'a str,
    /// Its machine.
    pub host: &'a str,
    /// Its process id.
    pub pid: u32,
    /// Its version.
    pub version: &'a str,
    /// `busy`, `idle` or `disconnected` (from the broker).
    pub state: &'static str,
    /// When it started, RFC 3339.
    pub started_at: &'a str,
    /// Seconds it has been up.
    pub uptime_secs: f64,
    /// The jobs queue it serves.
    pub queue: &'a str,
    /// Jobs it runs at once.
    pub concurrency: u16,
    /// Its running jobs.
    pub jobs: &'a [JobInfo],
    /// Jobs it completed.
    pub jobs_completed: u64,
    /// Jobs that failed for good with it.
    pub jobs_failed: u64,
    /// Attempts that failed with it and were tried again.
    pub attempts_retried: u64,
    /// What it can run.
    pub capabilities: Option<&'a CapabilityReport>,
}

impl<'a> WorkerView<'a> {
    fn of(w: &'a WorkerInfo) -> WorkerView<'a> {
        let state = if !w.connected {
            "disconnected"
        } else if w.jobs.is_empty() {
            "idle"
        } else {
            "busy"
        };
        WorkerView {
            worker: &w.worker,
            host: &w.host,
            pid: w.pid,
            version: &w.version,
            state,
            started_at: &w.started_at,
            uptime_secs: w.uptime_secs,
            queue: &w.queue,
            concurrency: w.concurrency,
            jobs: &w.jobs,
            jobs_completed: w.jobs_completed,
            jobs_failed: w.jobs_failed,
            attempts_retried: w.attempts_retried,
            capabilities: w.capabilities.as_ref(),
        }
    }
}

/// `GET /api/workers`: every live worker.
pub async fn workers(d: &Dashboard) -> Answer {
    let infos = d.workers().await?;
    let views: Vec<WorkerView> = infos.iter().map(WorkerView::of).collect();
    Ok(json_reply(
        StatusCode::OK,
        &serde_json::json!({ "workers": views }),
    ))
}

/// One queue and how many messages wait in it.
#[derive(Debug, Serialize)]
pub struct QueueCount {
    /// Its name.
    pub queue: String,
    /// Messages in it.
    pub messages: u32,
}

/// `GET /api/queues`: jobs waiting per priority, running, dead letters,
/// webhooks pending, jobs waiting for a capable worker.
pub async fn queues(d: &Dashboard) -> Answer {
    let broker = d.broker().await?;
    let s = &d.settings().broker;
    let mut wanted = s.jobs_queues();
    let (dead, unplaced) = (s.dead_letter_queue.clone(), s.unplaced_queue());
    let (webhooks, webhooks_dead) = (s.webhooks_queue.clone(), s.webhooks_dead_queue());
    let mut delays = d.settings().webhook.retry_delays.clone();
    delays.sort();
    delays.dedup();
    let webhook_waits: Vec<String> = delays.iter().map(|t| s.webhooks_wait_queue(*t)).collect();
    wanted.extend([
        dead.clone(),
        unplaced.clone(),
        webhooks.clone(),
        webhooks_dead.clone(),
    ]);
    wanted.extend(webhook_waits.iter().cloned());
    let mut counts = BTreeMap::new();
    for (queue, n) in depths(&broker, &wanted).await? {
        counts.insert(queue, n);
    }
    let count = |q: &str| counts.get(q).copied().flatten();
    let jobs: Vec<serde_json::Value> = Priority::ALL
        .iter()
        .map(|p| {
            let queue = s.jobs_queue_for(*p);
            serde_json::json!({"priority": p, "queue": queue, "messages": count(&queue)})
        })
        .collect();
    let stream_channel = broker
        .open_channel()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let waiting = crate::broker::waiting_queues(stream_channel, &s.requirements_stream()).await;
    let waiting_names: Vec<String> = waiting.iter().map(|w| w.queue.clone()).collect();
    let waiting_counts = depths(&broker, &waiting_names).await?;
    let capability: Vec<serde_json::Value> = waiting
        .iter()
        .zip(waiting_counts)
        .filter_map(|(w, (_, n))| {
            // A queue that is gone (deleted by hand) is left out.
            n.map(|n| {
                serde_json::json!({
                    "queue": w.queue,
                    "requires": w.requires.to_string(),
                    "priority_queue": w.priority_queue,
                    "messages": n,
                })
            })
        })
        .collect();
    let pending = count(&webhooks).unwrap_or(0)
        + webhook_waits
            .iter()
            .map(|q| count(q).unwrap_or(0))
            .sum::<u32>();
    let running = match d.workers().await {
        Ok(infos) => Some(infos.iter().map(|w| w.jobs.len()).sum::<usize>()),
        Err(_) => None,
    };
    Ok(json_reply(
        StatusCode::OK,
        &serde_json::json!({
            "jobs": jobs,
            "running": running,
            "dead_letters": {"queue": dead, "messages": count(&dead)},
            "unplaced": {"queue": unplaced, "messages": count(&unplaced)},
            "webhooks": {
                "queue": webhooks,
                "pending": pending,
                "dead": count(&webhooks_dead),
            },
            "waiting_for_capability": capability,
        }),
    ))
}

/// How many messages wait in each of `queues`; `None` for a queue that
/// does not exist (each is asked on a channel of its own only after one
/// is found missing, which closes the channel).
async fn depths(
    broker: &crate::broker::Broker,
    queues: &[String],
) -> Result<Vec<(String, Option<u32>)>, ApiError> {
    let unavailable = |e: crate::broker::BrokerError| ApiError::unavailable(e.to_string());
    let mut found = Vec::new();
    let mut channel = broker.open_channel().await.map_err(unavailable)?;
    for queue in queues {
        match crate::broker::queue_depths(&channel, std::slice::from_ref(queue)).await {
            Ok(depths) => found.push((queue.clone(), depths.0.first().map(|(_, n)| *n))),
            Err(_) => {
                found.push((queue.clone(), None));
                channel = broker.open_channel().await.map_err(unavailable)?;
            }
        }
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(found)
}

/// A job in the list: its record without attempts and events.
#[derive(Debug, Serialize)]
pub struct JobSummary<'a> {
    /// Its id.
    pub job_id: &'a str,
    /// Where it stands.
    pub state: JobState,
    /// The phase of its running attempt (last recorded).
    pub phase: Option<Phase>,
    /// Its priority.
    pub priority: Option<Priority>,
    /// The worker of its last attempt.
    pub worker: Option<&'a str>,
    /// Its last attempt's number.
    pub attempt: u32,
    /// Its input key.
    pub input_key: &'a str,
    /// Its output keys.
    pub output_keys: &'a [String],
    /// When the farm first recorded it.
    pub created_at: &'a str,
    /// When its first attempt started.
    pub started_at: Option<&'a str>,
    /// When it ended.
    pub ended_at: Option<&'a str>,
    /// Seconds from its first attempt's start to its end (or to now).
    pub duration_secs: Option<f64>,
    /// Size of the stored output.
    pub output_size_bytes: Option<u64>,
    /// Why it failed, for programs.
    pub error_kind: Option<String>,
    /// Why it failed, for people.
    pub error: Option<&'a str>,
    /// While waiting: what for.
    pub waiting_for: Option<&'a str>,
}

fn parse_time(at: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(at, &Rfc3339).ok()
}

impl<'a> JobSummary<'a> {
    fn of(r: &'a JobRecord, now: OffsetDateTime) -> JobSummary<'a> {
        let duration_secs = r.started_at.as_deref().and_then(parse_time).map(|start| {
            let end = r.ended_at.as_deref().and_then(parse_time).unwrap_or(now);
            ((end - start).as_seconds_f64().max(0.0) * 10.0).round() / 10.0
        });
        JobSummary {
            job_id: &r.job_id,
            state: r.state,
            phase: r.phase.filter(|_| r.state == JobState::Running),
            priority: r.priority,
            worker: r.worker.as_deref(),
            attempt: r.attempt,
            input_key: &r.input_key,
            output_keys: &r.output_keys,
            created_at: &r.created_at,
            started_at: r.started_at.as_deref(),
            ended_at: r.ended_at.as_deref(),
            duration_secs,
            output_size_bytes: r.output_size_bytes,
            error_kind: r.error_kind.map(|k| k.to_string()),
            error: r.error.as_deref(),
            waiting_for: r.waiting_for.as_deref(),
        }
    }
}

/// `GET /api/jobs?state=&limit=&q=`: the most recent jobs, newest first,
/// only those in `state`, only those whose id starts with `q`.
pub async fn jobs(d: &Dashboard, query: &str) -> Answer {
    let params = params(query, &["state", "limit", "q"])?;
    let limit = limit(&params, DEFAULT_JOBS, MAX_JOBS)?;
    let state = match params
        .get("state")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(text) => Some(text.parse::<JobState>().map_err(ApiError::bad_request)?),
    };
    let id_prefix = match params.get("q").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some(q) => Some(
            path_id(q)
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "q {q:?} is not the start of a job id (letters, digits and . _ : -)"
                    ))
                })?
                .to_string(),
        ),
    };
    let history = d.history()?;
    let scan = if id_prefix.is_some() {
        SEARCH_SCAN
    } else {
        SCAN
    };
    let filter = Filter {
        state,
        id_prefix: id_prefix.clone(),
    };
    let _turn = d.history_turn().await;
    let mut records = Vec::new();
    // A whole id is found at once, however old the job.
    if let Some(id) = &id_prefix {
        let exact = history
            .get(id)
            .await
            .map_err(|e| ApiError::unavailable(format!("reading the job history: {e}")))?;
        records.extend(exact.filter(|r| state.is_none_or(|s| r.state == s)));
    }
    let found = history
        .search(limit, &filter, scan)
        .await
        .map_err(|e| ApiError::unavailable(format!("reading the job history: {e}")))?;
    records.extend(
        found
            .into_iter()
            .filter(|r| id_prefix.as_deref() != Some(r.job_id.as_str())),
    );
    records.truncate(limit);
    let now = OffsetDateTime::now_utc();
    let summaries: Vec<JobSummary> = records.iter().map(|r| JobSummary::of(r, now)).collect();
    Ok(json_reply(
        StatusCode::OK,
        &serde_json::json!({
            "jobs": summaries,
            "limit": limit,
            "state": state,
            "q": id_prefix,
        }),
    ))
}

/// What `GET /api/jobs/{id}` answers: the record, what its worker says now
/// (while it runs), and whether a cancel was asked for.
#[derive(Debug, Serialize)]
struct JobView<'a> {
    #[serde(flatten)]
    record: &'a JobRecord,
    duration_secs: Option<f64>,
    live: Option<JobInfo>,
    cancel_requested: bool,
}

/// `GET /api/jobs/{id}`: what the farm knows of one job; 404 with state
/// `unknown` when nothing.
pub async fn job(d: &Dashboard, id: &str) -> Answer {
    let id = path_id(id)?;
    let history = d.history()?;
    let record = {
        let _turn = d.history_turn().await;
        history
            .get(id)
            .await
            .map_err(|e| ApiError::unavailable(format!("reading the record of {id}: {e}")))?
    };
    let Some(record) = record else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the farm has no record of job {id}"),
        )
        .with("job_id", id)
        .with("state", "unknown"));
    };
    let live = if record.state == JobState::Running {
        d.workers().await.ok().and_then(|infos| {
            infos
                .iter()
                .flat_map(|w| w.jobs.iter())
                .find(|j| j.job_id == id)
                .cloned()
        })
    } else {
        None
    };
    let cancel_requested =
        !record.state.is_final() && history.cancel_requested(id).await.unwrap_or(false);
    let duration_secs = JobSummary::of(&record, OffsetDateTime::now_utc()).duration_secs;
    let view = JobView {
        record: &record,
        duration_secs,
        live,
        cancel_requested,
    };
    Ok(json_reply(StatusCode::OK, &view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_clamped_and_bad_ones_refused() {
        let p = |q: &str| params(q, &["limit", "state", "q"]).unwrap();
        assert_eq!(limit(&p(""), 50, 200), Ok(50));
        assert_eq!(limit(&p("limit="), 50, 200), Ok(50));
        assert_eq!(limit(&p("limit=7"), 50, 200), Ok(7));
        assert_eq!(limit(&p("limit=1000000"), 50, 200), Ok(200));
        for bad in ["limit=0", "limit=-1", "limit=ten"] {
            assert_eq!(
                limit(&p(bad), 50, 200).unwrap_err().status,
                StatusCode::BAD_REQUEST
            );
        }
        let e = params("colour=red", &["limit"]).unwrap_err();
        assert!(e.message.contains("colour"), "{}", e.message);
    }

    #[test]
    fn a_summary_gives_the_duration_and_no_phase_once_ended() {
        let mut r = JobRecord::new("j");
        r.attempt_started(1, "w");
        r.started_at = Some("2026-01-01T00:00:00Z".into());
        let now = parse_time("2026-01-01T00:00:12.5Z").unwrap();
        let s = JobSummary::of(&r, now);
        assert_eq!(s.duration_secs, Some(12.5));
        assert_eq!(s.phase, Some(Phase::Starting));
        r.mark(JobState::Completed, Some(1), Some("w"), "done".into());
        r.ended_at = Some("2026-01-01T00:00:03Z".into());
        let s = JobSummary::of(&r, now);
        assert_eq!((s.duration_secs, s.phase), (Some(3.0), None));
    }
}
