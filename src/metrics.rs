//! The worker's Prometheus metrics: the registry and every metric in it.
//! [`crate::status`] counts into them; [`crate::http`] serves them at
//! `/metrics`.
//!
//! Metrics (OpenMetrics text; counters end in `_total`):
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `transcode_jobs_total` | counter | `outcome` (`completed`, `failed`, `cancelled`), `error_kind` | jobs that ended: completed, failed for good (dead-lettered), or cancelled |
//! | `transcode_attempts_total` | counter | `outcome` (`completed`, `retried`, `failed`, `cancelled`), `error_kind` | every attempt that ended |
//! | `transcode_job_attempts` | histogram | | the attempt number jobs ended with |
//! | `transcode_phase_duration_seconds` | histogram | `phase` (`downloading`, `transcoding`, `uploading`) | how long each phase took, when it ended well |
//! | `transcode_attempt_duration_seconds` | histogram | `outcome` | how long attempts took |
//! | `transcode_bytes_total` | counter | `direction` (`in`: downloaded, `out`: uploaded) | bytes moved to and from storage |
//! | `transcode_jobs_in_flight` | gauge | | attempts running |
//! | `transcode_seconds_since_last_progress` | gauge | | the longest time a running attempt has gone without progress (0 when idle) |
//! | `transcode_broker_connected` | gauge | | 1 while connected to the broker |
//! | `transcode_queue_messages` | gauge | `queue` | jobs waiting in each jobs queue (high, normal, low) and the dead-letter queue, as the worker last counted them |
//! | `transcode_worker_info` | info | `worker`, `version` | 1 |
//! | `transcode_worker_start_time_seconds` | gauge | | when the process started (Unix time) |

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::error::ErrorKind;
use crate::job::Phase;

/// Upper bounds (seconds) of the duration histograms' buckets: 100 ms to 4 h.
const DURATION_BUCKETS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    14400.0,
];

/// Upper bounds of the attempt-number histogram's buckets.
const ATTEMPT_BUCKETS: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 10.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeKind {
    outcome: String,
    error_kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The worker's Prometheus registry and the metrics in it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: Family<OutcomeKind, Counter>,
    attempts: Family<OutcomeKind, Counter>,
    job_attempts: Histogram,
    phase_duration: HistogramFamily<PhaseLabel>,
    attempt_duration: HistogramFamily<OutcomeLabel>,
    bytes: Family<DirectionLabel, Counter>,
    in_flight: Gauge,
    since_progress: Gauge<f64, AtomicU64>,
    connected: Gauge,
    queue_messages: Family<QueueLabel, Gauge>,
}

impl Metrics {
    /// A registry with every metric, for worker `worker` of version
    /// `version` started at `started_unix` (seconds since 1970).
    pub fn new(worker: &str, version: &str, started_unix: f64) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            jobs: Family::default(),
            attempts: Family::default(),
            job_attempts: Histogram::new(ATTEMPT_BUCKETS),
            phase_duration: Family::new_with_constructor(duration_histogram),
            attempt_duration: Family::new_with_constructor(duration_histogram),
            bytes: Family::default(),
            in_flight: Gauge::default(),
            since_progress: Gauge::default(),
            connected: Gauge::default(),
            queue_messages: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "transcode_jobs",
            "Jobs that ended: completed, or failed for good (dead-lettered), by error kind",
            m.jobs.clone(),
        );
        registry.register(
            "transcode_attempts",
            "Attempts that ended: completed, retried (failed, given back) or failed (for good), by error kind",
            m.attempts.clone(),
        );
        registry.register(
            "transcode_job_attempts",
            "The attempt number jobs ended with",
            m.job_attempts.clone(),
        );
        registry.register(
            "transcode_phase_duration_seconds",
            "How long each phase of an attempt took, when it ended well",
            m.phase_duration.clone(),
        );
        registry.register(
            "transcode_attempt_duration_seconds",
            "How long attempts took, by outcome",
            m.attempt_duration.clone(),
        );
        registry.register(
            "transcode_bytes",
            "Bytes downloaded (in) from and uploaded (out) to storage",
            m.bytes.clone(),
        );
        registry.register(
            "transcode_jobs_in_flight",
            "Attempts running",
            m.in_flight.clone(),
        );
        registry.register(
            "transcode_seconds_since_last_progress",
            "Longest time a running attempt has gone without progress (0 when idle)",
            m.since_progress.clone(),
        );
        registry.register(
            "transcode_broker_connected",
            "1 while connected to the broker",
            m.connected.clone(),
        );
        registry.register(
            "transcode_queue_messages",
            "Jobs waiting in each jobs queue and the dead-letter queue, as last counted",
            m.queue_messages.clone(),
        );
        registry.register(
            "transcode_worker",
            "The worker's name and version",
            Info::new(vec![
                ("worker".to_string(), worker.to_string()),
                ("version".to_string(), version.to_string()),
            ]),
        );
        let start: Gauge<f64, AtomicU64> = Gauge::default();
        start.set(started_unix);
        registry.register(
            "transcode_worker_start_time_seconds",
            "When the worker started, in seconds since 1970",
            start,
        );
        // Series that exist from the start, so dashboards and rates see 0.
        for phase in ["downloading", "transcoding", "uploading"] {
            let _ = m.phase_duration.get_or_create(&PhaseLabel {
                phase: phase.into(),
            });
        }
        for outcome in ["completed", "retried", "failed"] {
            let _ = m.attempt_duration.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        let completed = OutcomeKind {
            outcome: "completed".into(),
            error_kind: String::new(),
        };
        let _ = m.jobs.get_or_create(&completed);
        let _ = m.attempts.get_or_create(&completed);
        for direction in ["in", "out"] {
            let _ = m.bytes.get_or_create(&DirectionLabel {
                direction: direction.into(),
            });
        }
        Metrics { registry, ..m }
    }

    /// A phase ended after `took`; only the three working phases are timed.
    pub fn phase_ended(&self, phase: Phase, took: Duration) {
        if matches!(
            phase,
            Phase::Downloading | Phase::Transcoding | Phase::Uploading
        ) {
            self.phase_duration
                .get_or_create(&PhaseLabel {
                    phase: phase.to_string(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// Attempt number `attempt` ended after `took`: completed (`kind` is
    /// `None`), or failed with `kind`, to be tried again when `will_retry`.
    pub fn attempt_ended(
        &self,
        kind: Option<ErrorKind>,
        will_retry: bool,
        attempt: u32,
        took: Duration,
    ) {
        let outcome = match (kind, will_retry) {
            (None, _) => "completed",
            (Some(ErrorKind::Cancelled), _) => "cancelled",
            (Some(_), true) => "retried",
            (Some(_), false) => "failed",
        };
        let labels = OutcomeKind {
            outcome: outcome.into(),
            error_kind: kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
        };
        self.attempts.get_or_create(&labels).inc();
        self.attempt_duration
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .observe(took.as_secs_f64());
        if outcome != "retried" {
            self.jobs.get_or_create(&labels).inc();
            self.job_attempts.observe(f64::from(attempt));
        }
    }

    /// `n` more bytes downloaded (`incoming`) or uploaded.
    pub fn add_bytes(&self, incoming: bool, n: u64) {
        let direction = if incoming { "in" } else { "out" };
        self.bytes
            .get_or_create(&DirectionLabel {
                direction: direction.into(),
            })
            .inc_by(n);
    }

    /// Sets the number of running attempts.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets whether the worker is connected to the broker.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// Sets how many messages wait in `queue`.
    pub fn set_queue_messages(&self, queue: &str, n: u32) {
        self.queue_messages
            .get_or_create(&QueueLabel {
                queue: queue.to_string(),
            })
            .set(i64::from(n));
    }

    /// Sets the longest time a running attempt has gone without progress.
    pub fn set_seconds_since_progress(&self, secs: f64) {
        self.since_progress.set(secs);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        text
    }
}
