//! The live state of one worker process, shared by the parts that show it:
//! who the worker is (host, pid, version, start time), whether it is
//! connected to the broker, what each running attempt is doing (phase,
//! progress, speed, time since it last moved), and how many jobs it has
//! finished.
//!
//! The worker feeds it through [`Status::attempt`] (one [`AttemptStatus`]
//! per attempt, held by the attempt's [`Reporter`](crate::progress::Reporter)
//! and removed when dropped), and its broker session through
//! [`Status::connected`] and [`Status::disconnected`]; `inspect` answers
//! with a [`Status::snapshot`] (see [`crate::control`]), and `/metrics` and
//! `/healthz` read it (see [`crate::http`]). Every change is also counted
//! in the worker's Prometheus [`Metrics`], which it holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

mod attempt;

use crate::config::Settings;
use crate::job::Phase;
use crate::metrics::Metrics;

use attempt::Running;
pub use attempt::{AttemptStatus, Figures};

/// Extra time beyond a phase's own stall limit before `/healthz` calls a
/// running attempt stalled (the worker aborts it at the limit itself, so
/// only a wedged worker gets there).
pub const STALL_GRACE: Duration = Duration::from_secs(60);

/// One running attempt, as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job's id.
    pub job_id: String,
    /// The attempt number, starting at 1.
    pub attempt: u32,
    /// What it is doing.
    pub phase: Phase,
    /// Overall progress of the attempt, 0 to 100 (as in progress events).
    pub progress: f64,
    /// Seconds since the attempt began.
    pub running_secs: f64,
    /// Seconds since it last made progress (a byte moved, a frame encoded,
    /// or a new phase).
    pub idle_secs: f64,
    /// Estimated seconds left in the transcode, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<f64>,
    /// While transcoding: media seconds per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// While downloading or uploading: bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<f64>,
}

/// A worker as `inspect` shows it: its answer on the control exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker's name in progress events (`host:pid` by default).
    pub worker: String,
    /// The machine's host name.
    pub host: String,
    /// The worker's process id.
    pub pid: u32,
    /// The worker's version.
    pub version: String,
    /// When the process started, RFC 3339 in UTC.
    pub started_at: String,
    /// Seconds since the process started.
    pub uptime_secs: f64,
    /// The jobs queue it takes jobs from.
    pub queue: String,
    /// Jobs it runs at once.
    pub concurrency: u16,
    /// Whether it is connected to the broker.
    pub connected: bool,
    /// Where it serves `/metrics` and `/healthz`, if it does.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Its running attempts.
    pub jobs: Vec<JobInfo>,
    /// Jobs it completed.
    pub jobs_completed: u64,
    /// Jobs that failed for good with it (dead-lettered).
    pub jobs_failed: u64,
    /// Attempts that failed with it and were given back to be tried again.
    pub attempts_retried: u64,
    /// Jobs cancelled (on request) while it ran them, or when it reached them.
    #[serde(default)]
    pub jobs_cancelled: u64,
    /// What it can run.
    #[serde(default)]
    pub capabilities: Option<crate::capability::CapabilityReport>,
    /// Whether it could run a job that needs what the request asked about
    /// (only in answers to such requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capable: Option<bool>,
}

/// What `/healthz` says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Connected to the broker and no attempt stalled.
    pub healthy: bool,
    /// Whether the worker is connected to the broker.
    pub connected: bool,
    /// Attempts running.
    pub jobs: usize,
    /// Ids of the attempts that made no progress for longer than their
    /// phase's stall limit plus [`STALL_GRACE`].
    pub stalled: Vec<String>,
    /// One sentence for people.
    pub reason: String,
}

/// Stall limits per phase, from the worker settings.
#[derive(Debug, Clone, Copy)]
struct Limits {
    starting: Duration,
    downloading: Duration,
    transcoding: Duration,
    uploading: Duration,
    settling: Duration,
}

impl Limits {
    fn of(&self, phase: Phase) -> Duration {
        let limit = match phase {
            Phase::Starting => self.starting,
            Phase::Downloading => self.downloading,
            Phase::Transcoding => self.transcoding,
            Phase::Uploading => self.uploading,
            Phase::Completed | Phase::Failed | Phase::Waiting | Phase::Cancelled => self.settling,
        };
        limit + STALL_GRACE
    }
}

#[derive(Debug)]
struct Identity {
    worker: String,
    host: String,
    pid: u32,
    version: String,
    started_at: String,
    started: Instant,
    queue: String,
    concurrency: u16,
}

/// Tells whether a broker session's connection is up.
struct ConnectionProbe(Box<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for ConnectionProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionProbe")
    }
}

#[derive(Debug, Default)]
struct Live {
    /// While a broker session runs: tells whether its connection is up.
    connection: Option<ConnectionProbe>,
    disconnected_at: Option<Instant>,
    metrics_addr: Option<SocketAddr>,
    jobs: BTreeMap<u64, Running>,
    next_key: u64,
    completed: u64,
    failed: u64,
    retried: u64,
    cancelled: u64,
}

#[derive(Debug)]
struct Inner {
    identity: Identity,
    limits: Limits,
    capabilities: std::sync::OnceLock<crate::capability::Capabilities>,
    metrics: Metrics,
    live: Mutex<Live>,
}

/// The shared live state of a worker; cheap to clone.
#[derive(Debug, Clone)]
pub struct Status {
    inner: Arc<Inner>,
}

impl Status {
    /// The state of a worker that starts now with `settings`.
    pub fn new(settings: &Settings) -> Status {
        let worker = settings.worker_id();
        let version = env!("CARGO_PKG_VERSION").to_string();
        let w = &settings.worker;
        let limits = Limits {
            starting: w.download_stall_timeout + settings.storage.retry_for,
            downloading: w.download_stall_timeout,
            transcoding: w.transcode_stall_timeout,
            uploading: w.upload_stall_timeout,
            settling: w.retry_max_delay,
        };
        let started_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let metrics = Metrics::new(&worker, &version, started_unix);
        Status {
            inner: Arc::new(Inner {
                identity: Identity {
                    host: gethostname::gethostname().to_string_lossy().to_string(),
                    pid: std::process::id(),
                    started_at: crate::job::now_rfc3339(),
                    started: Instant::now(),
                    queue: settings.broker.jobs_queue.clone(),
                    concurrency: w.concurrency,
                    worker,
                    version,
                },
                limits,
                capabilities: std::sync::OnceLock::new(),
                metrics,
                live: Mutex::new(Live {
                    disconnected_at: Some(Instant::now()),
                    ..Default::default()
                }),
            }),
        }
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker's name.
    pub fn worker(&self) -> &str {
        &self.inner.identity.worker
    }

    /// The Prometheus metrics this state is counted in.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Records that a broker session began (until
    /// [`Status::disconnected`]); the worker counts as connected while
    /// `probe` says its connection is up.
    pub fn connected(&self, probe: impl Fn() -> bool + Send + Sync + 'static) {
        let mut live = self.live();
        live.connection = Some(ConnectionProbe(Box::new(probe)));
        live.disconnected_at = None;
    }

    /// Records that the worker's broker session ended.
    pub fn disconnected(&self) {
        let mut live = self.live();
        live.connection = None;
        live.disconnected_at.get_or_insert_with(Instant::now);
    }

    /// Records what the worker can run (once, at start).
    pub fn set_capabilities(&self, capabilities: crate::capability::Capabilities) {
        let _ = self.inner.capabilities.set(capabilities);
    }

    /// Whether the worker could run a job that needs `requirement`.
    pub fn can_run(&self, requirement: &crate::capability::Requirement) -> bool {
        self.inner
            .capabilities
            .get()
            .is_some_and(|c| c.satisfies(requirement))
    }

    /// Records how many jobs wait in each queue (counted by the session's
    /// liveness check), for the metrics.
    pub fn set_queue_depths(&self, depths: &crate::broker::QueueDepths) {
        for (queue, n) in &depths.0 {
            self.inner.metrics.set_queue_messages(queue, *n);
        }
    }

    /// Records where `/metrics` is served.
    pub fn set_metrics_addr(&self, addr: SocketAddr) {
        self.live().metrics_addr = Some(addr);
    }

    /// Registers a starting attempt; it shows as running until the returned
    /// handle is dropped.
    pub fn attempt(&self, job_id: &str, attempt: u32) -> AttemptStatus {
        let now = Instant::now();
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut live = self.live();
        let key = live.next_key;
        live.next_key += 1;
        live.jobs.insert(
            key,
            Running {
                job_id: job_id.to_string(),
                attempt,
                phase: Phase::Starting,
                percent: 0.0,
                started: now,
                phase_started: now,
                moved_at: now,
                eta: None,
                media: None,
                bytes: None,
                bytes_counted: 0,
                cancel: cancel.clone(),
            },
        );
        self.inner.metrics.set_in_flight(live.jobs.len());
        AttemptStatus {
            status: self.clone(),
            key,
            cancel,
        }
    }

    /// Asks the running attempts of `job_id` to stop (a cancel); returns
    /// how many there were.
    pub fn cancel(&self, job_id: &str) -> usize {
        let live = self.live();
        let running: Vec<&attempt::Running> =
            live.jobs.values().filter(|r| r.job_id == job_id).collect();
        for r in &running {
            r.cancel.cancel();
        }
        running.len()
    }

    /// Whether the broker connection is up, and since when it is down.
    fn connection(live: &Live) -> (bool, Option<Instant>) {
        let up = live.connection.as_ref().is_some_and(|probe| (probe.0)());
        (up, live.disconnected_at)
    }

    /// What the worker is doing now, as `inspect` shows it.
    pub fn snapshot(&self) -> WorkerInfo {
        let now = Instant::now();
        let id = &self.inner.identity;
        let live = self.live();
        let (connected, _) = Status::connection(&live);
        let round = |x: f64| (x * 10.0).round() / 10.0;
        WorkerInfo {
            worker: id.worker.clone(),
            host: id.host.clone(),
            pid: id.pid,
            version: id.version.clone(),
            started_at: id.started_at.clone(),
            uptime_secs: round(now.duration_since(id.started).as_secs_f64()),
            queue: id.queue.clone(),
            concurrency: id.concurrency,
            connected,
            metrics: live.metrics_addr.map(|a| a.to_string()),
            jobs: live
                .jobs
                .values()
                .map(|r| JobInfo {
                    job_id: r.job_id.clone(),
                    attempt: r.attempt,
                    phase: r.phase,
                    progress: round(r.percent),
                    running_secs: round(now.duration_since(r.started).as_secs_f64()),
                    idle_secs: round(now.duration_since(r.moved_at).as_secs_f64()),
                    eta_secs: r.eta.map(|d| round(d.as_secs_f64())),
                    speed: r.speed(now).map(|s| (s * 100.0).round() / 100.0),
                    bytes_per_sec: r.bytes_per_sec(now).map(f64::round),
                })
                .collect(),
            jobs_completed: live.completed,
            jobs_failed: live.failed,
            attempts_retried: live.retried,
            jobs_cancelled: live.cancelled,
            capabilities: self.inner.capabilities.get().map(|c| c.report().clone()),
            capable: None,
        }
    }

    /// Whether the worker is healthy: connected to the broker, and no
    /// running attempt stalled past its limit.
    pub fn health(&self) -> Health {
        self.health_at(Instant::now())
    }

    fn health_at(&self, now: Instant) -> Health {
        let live = self.live();
        let (connected, down_since) = Status::connection(&live);
        let limits = self.inner.limits;
        let stalled: Vec<String> = live
            .jobs
            .values()
            .filter(|r| now.duration_since(r.moved_at) > limits.of(r.phase))
            .map(|r| r.job_id.clone())
            .collect();
        let jobs = live.jobs.len();
        let reason = if !connected {
            let since = down_since
                .map(|t| format!(" for {:.0} s", now.duration_since(t).as_secs_f64()))
                .unwrap_or_default();
            format!("not connected to the broker{since}; reconnecting")
        } else if !stalled.is_empty() {
            format!(
                "no progress for longer than the stall limit plus {} s: {}",
                STALL_GRACE.as_secs(),
                stalled.join(", ")
            )
        } else {
            format!("connected to the broker; {jobs} job(s) running")
        };
        Health {
            healthy: connected && stalled.is_empty(),
            connected,
            jobs,
            stalled,
            reason,
        }
    }

    /// Brings the metrics read at scrape time up to date: connection, jobs
    /// in flight, seconds since the last progress.
    pub fn refresh_metrics(&self) {
        let now = Instant::now();
        let live = self.live();
        let (connected, _) = Status::connection(&live);
        let idle = live
            .jobs
            .values()
            .map(|r| now.duration_since(r.moved_at).as_secs_f64())
            .fold(0.0, f64::max);
        let m = &self.inner.metrics;
        m.set_connected(connected);
        m.set_in_flight(live.jobs.len());
        m.set_seconds_since_progress(idle);
    }
}

#[cfg(test)]
mod tests;
