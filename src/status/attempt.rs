//! The live state of one running attempt: its phase, progress, speed and
//! transfer figures, shown by `inspect` and counted into the metrics while
//! its [`AttemptStatus`] is held.

use std::time::{Duration, Instant};

use super::Status;
use crate::error::ErrorKind;
use crate::job::Phase;
use crate::metrics::Metrics;

#[derive(Debug)]
pub(super) struct Running {
    pub(super) job_id: String,
    pub(super) attempt: u32,
    pub(super) phase: Phase,
    pub(super) percent: f64,
    pub(super) started: Instant,
    pub(super) phase_started: Instant,
    pub(super) moved_at: Instant,
    pub(super) eta: Option<Duration>,
    /// Media position and duration, in milliseconds, while transcoding.
    pub(super) media: Option<(u64, Option<u64>)>,
    /// Bytes moved and to move, while downloading or uploading.
    pub(super) bytes: Option<(u64, u64)>,
    /// Bytes of this phase already added to the byte counter.
    pub(super) bytes_counted: u64,
    /// Fired when someone asks the job to be cancelled.
    pub(super) cancel: tokio_util::sync::CancellationToken,
}

impl Running {
    pub(super) fn speed(&self, now: Instant) -> Option<f64> {
        let elapsed = now.duration_since(self.phase_started).as_secs_f64();
        let (position, _) = self.media?;
        (self.phase == Phase::Transcoding && elapsed > 0.0 && position > 0)
            .then(|| position as f64 / 1000.0 / elapsed)
    }

    pub(super) fn bytes_per_sec(&self, now: Instant) -> Option<f64> {
        let elapsed = now.duration_since(self.phase_started).as_secs_f64();
        let (done, _) = self.bytes?;
        (elapsed > 0.0).then(|| done as f64 / elapsed)
    }
}

/// The live state of one attempt; removed from the worker's state when
/// dropped.
#[derive(Debug)]
pub struct AttemptStatus {
    pub(super) status: Status,
    pub(super) key: u64,
    pub(super) cancel: tokio_util::sync::CancellationToken,
}

impl AttemptStatus {
    fn with<T>(&self, f: impl FnOnce(&mut Running, &Metrics) -> T) -> Option<T> {
        let mut live = self.status.live();
        let metrics = &self.status.inner.metrics;
        live.jobs.get_mut(&self.key).map(|r| f(r, metrics))
    }

    /// The attempt is in `state`, `percent` (0-100) done overall, with an
    /// optional ETA. A new phase ends the previous one (its duration is
    /// observed); a higher percentage counts as progress.
    pub fn update(&self, state: Phase, percent: f64, eta: Option<Duration>) {
        let now = Instant::now();
        self.with(|r, metrics| {
            let phase = state;
            if phase != r.phase {
                metrics.phase_ended(r.phase, now.duration_since(r.phase_started));
                r.phase = phase;
                r.phase_started = now;
                r.moved_at = now;
                r.media = None;
                r.bytes = None;
                r.bytes_counted = 0;
                r.eta = None;
            }
            if percent > r.percent {
                r.percent = percent;
                r.moved_at = now;
            }
            if eta.is_some() {
                r.eta = eta;
            }
        });
    }

    /// While transcoding: the pipeline reached `position_ms` of
    /// `duration_ms`. A later position counts as progress.
    pub fn media_position(&self, position_ms: u64, duration_ms: Option<u64>) {
        let now = Instant::now();
        self.with(|r, _| {
            if r.media.is_none_or(|(p, _)| position_ms > p) {
                r.moved_at = now;
            }
            let best = r.media.map_or(position_ms, |(p, _)| p.max(position_ms));
            r.media = Some((best, duration_ms));
        });
    }

    /// While downloading (`state` downloading: bytes in) or uploading (bytes
    /// out): `done` of `total` bytes moved so far. Moved bytes count as
    /// progress and go into the byte counters; a transfer that started over
    /// (a retry) counts its bytes again.
    pub fn transferred(&self, state: Phase, done: u64, total: u64) {
        let now = Instant::now();
        self.with(|r, metrics| {
            let before = r.bytes.map_or(0, |(d, _)| d);
            if done != before {
                r.moved_at = now;
            }
            let fresh = if done >= r.bytes_counted {
                done - r.bytes_counted
            } else {
                done
            };
            r.bytes_counted = done;
            r.bytes = Some((done, total));
            metrics.add_bytes(state == Phase::Downloading, fresh);
        });
    }

    /// The attempt completed (its `completed` event is confirmed).
    pub fn completed(&self) {
        let now = Instant::now();
        let done = self.with(|r, metrics| {
            metrics.phase_ended(r.phase, now.duration_since(r.phase_started));
            metrics.attempt_ended(None, false, r.attempt, now.duration_since(r.started));
            r.phase = Phase::Completed;
            r.phase_started = now;
            r.moved_at = now;
            r.percent = 100.0;
        });
        if done.is_some() {
            self.status.live().completed += 1;
        }
    }

    /// The attempt failed with `kind`; `will_retry` when the job goes back
    /// to the queue.
    pub fn failed(&self, kind: ErrorKind, will_retry: bool) {
        let now = Instant::now();
        let done = self.with(|r, metrics| {
            metrics.attempt_ended(
                Some(kind),
                will_retry,
                r.attempt,
                now.duration_since(r.started),
            );
            r.phase = if kind == ErrorKind::Cancelled {
                Phase::Cancelled
            } else {
                Phase::Failed
            };
            r.phase_started = now;
            r.moved_at = now;
        });
        if done.is_some() {
            let mut live = self.status.live();
            if kind == ErrorKind::Cancelled {
                live.cancelled += 1;
            } else if will_retry {
                live.retried += 1;
            } else {
                live.failed += 1;
            }
        }
    }

    /// Resolves when someone asks the attempt's job to be cancelled.
    pub async fn cancel_requested(&self) {
        self.cancel.cancelled().await
    }

    /// Speed and transfer figures for the attempt's next progress event.
    pub fn figures(&self) -> Figures {
        let now = Instant::now();
        self.with(|r, _| Figures {
            speed: r.speed(now).map(|s| (s * 100.0).round() / 100.0),
            position_secs: r.media.map(|(p, _)| p as f64 / 1000.0),
            duration_secs: r.media.and_then(|(_, d)| d).map(|d| d as f64 / 1000.0),
            bytes: r.bytes.map(|(d, _)| d),
            bytes_total: r.bytes.map(|(_, t)| t),
            bytes_per_sec: r.bytes_per_sec(now).map(f64::round),
        })
        .unwrap_or_default()
    }
}

/// Speed and transfer figures of an attempt, for its progress events.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Media seconds per second, while transcoding.
    pub speed: Option<f64>,
    /// Media position in seconds, while transcoding.
    pub position_secs: Option<f64>,
    /// Media duration in seconds, while transcoding, when known.
    pub duration_secs: Option<f64>,
    /// Bytes moved, while downloading or uploading.
    pub bytes: Option<u64>,
    /// Bytes to move, while downloading or uploading.
    pub bytes_total: Option<u64>,
    /// Bytes per second, while downloading or uploading.
    pub bytes_per_sec: Option<f64>,
}

impl Drop for AttemptStatus {
    fn drop(&mut self) {
        let mut live = self.status.live();
        live.jobs.remove(&self.key);
        self.status.inner.metrics.set_in_flight(live.jobs.len());
    }
}
