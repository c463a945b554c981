//! The bus of a part pipeline (segment.rs, scan.rs, join.rs): the
//! application messages parts post, waiting for one, the error a failed
//! start left, and running a pipeline to its end while reporting its
//! position.

use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::build::classify;
use super::internal;
use crate::error::{ErrorKind, JobError};

/// The application message a part's `filesink` posts when it has
/// written everything (its end of stream).
pub(super) const WRITTEN: &str = "transcode-worker/part-written";
/// The application message a probe posts when it fails the part.
pub(super) const FAILED: &str = "transcode-worker/part-failed";
/// The application message posted once the video stream reaches the encoder.
pub(super) const LINKED: &str = "transcode-worker/video-linked";

/// An application message named `name`.
pub(super) fn app(name: &str) -> gst::Message {
    gst::message::Application::new(gst::Structure::new_empty(name))
}

/// Waits up to `timeout` for the application message `name`; an error
/// message on the way fails.
pub(super) fn wait_for(bus: &gst::Bus, name: &str, timeout: Duration) -> Result<(), JobError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(left.as_nanos() as u64),
            &[gst::MessageType::Application, gst::MessageType::Error],
        ) else {
            return Err(JobError::new(
                ErrorKind::UndecodableInput,
                format!("the input's video stream did not start within {timeout:?}"),
            ));
        };
        match msg.view() {
            gst::MessageView::Error(err) => return Err(classify(err)),
            gst::MessageView::Application(a) if a.structure().is_some_and(|s| s.name() == name) => {
                return Ok(())
            }
            _ => {}
        }
    }
}

/// The error the bus holds after a failed state change.
pub(super) fn start_error(bus: &gst::Bus) -> JobError {
    bus.timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])
        .and_then(|msg| match msg.view() {
            gst::MessageView::Error(err) => Some(classify(err)),
            _ => None,
        })
        .unwrap_or_else(|| internal("cannot start the pipeline"))
}

/// Runs `pipeline` until its end of stream (or its part file is written),
/// calling `on_position(position(), duration)` about every 250 ms. A
/// GStreamer error, or the failure `failed()` reports, ends it.
pub(super) fn run_to_end(
    pipeline: &gst::Pipeline,
    bus: &gst::Bus,
    duration: Option<Duration>,
    mut on_position: impl FnMut(Duration, Option<Duration>),
    position: impl Fn() -> Option<Duration>,
    failed: impl Fn() -> Option<JobError>,
) -> Result<(), JobError> {
    loop {
        if let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(250),
            &[
                gst::MessageType::Eos,
                gst::MessageType::Error,
                gst::MessageType::Application,
            ],
        ) {
            match msg.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(err) => return Err(failed().unwrap_or(classify(err))),
                gst::MessageView::Application(a) => match a.structure().map(|s| s.name()) {
                    Some(n) if n == WRITTEN => return Ok(()),
                    Some(n) if n == FAILED => {
                        return Err(failed().unwrap_or_else(|| internal("the part failed")))
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        if let Some(at) = position() {
            let duration = duration.or_else(|| {
                pipeline
                    .query_duration::<gst::ClockTime>()
                    .map(|d| Duration::from_nanos(d.nseconds()))
            });
            on_position(at, duration);
        }
    }
}
