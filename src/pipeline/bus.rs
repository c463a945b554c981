//! A pipeline's bus: the application messages parts post (segment.rs,
//! scan.rs, join.rs), waiting for one, polling for the next message while
//! a pipeline runs (parts and whole transcodes, build.rs), the error a
//! failed start left, what kind of failure a GStreamer error is, and
//! running a part pipeline to its end while reporting its position.

use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

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

/// The next end of stream, error or application message on `bus`, or
/// `None` after a quarter of a second (when a running pipeline's caller
/// reports its position).
pub(super) fn poll(bus: &gst::Bus) -> Option<gst::Message> {
    bus.timed_pop_filtered(
        gst::ClockTime::from_mseconds(250),
        &[
            gst::MessageType::Eos,
            gst::MessageType::Error,
            gst::MessageType::Application,
        ],
    )
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
        if let Some(msg) = poll(bus) {
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

/// Turns a GStreamer error message into a job error of the right kind.
pub(super) fn classify(err: &gst::message::Error) -> JobError {
    let source = err
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_else(|| "pipeline".into());
    let e = err.error();
    if err.src().is_some_and(super::ranged::is_range_source) {
        // Its message says what failed, without the presigned URL.
        let kind = match e.kind::<gst::ResourceError>() {
            Some(gst::ResourceError::NotFound) => ErrorKind::InputNotFound,
            _ => ErrorKind::StorageUnavailable,
        };
        return JobError::new(kind, e.to_string());
    }
    let mut message = format!("GStreamer error in {source}: {e}");
    if let Some(debug) = err.debug() {
        let debug: String = debug.chars().take(400).collect();
        message.push_str(&format!(" ({debug})"));
    }
    let kind = match e.kind::<gst::StreamError>() {
        Some(
            gst::StreamError::Decode
            | gst::StreamError::Demux
            | gst::StreamError::TypeNotFound
            | gst::StreamError::WrongType
            | gst::StreamError::CodecNotFound
            | gst::StreamError::Format,
        ) => ErrorKind::UndecodableInput,
        _ if e.kind::<gst::CoreError>() == Some(gst::CoreError::Negotiation)
            || message.contains("not-negotiated") =>
        {
            ErrorKind::InvalidPipeline
        }
        _ => ErrorKind::TranscodeFailed,
    };
    JobError::new(kind, message)
}
