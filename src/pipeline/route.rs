//! Routing the streams `decodebin` exposes: the first video stream into
//! the job's video branch, each audio stream into a new instance of the
//! audio branch, each subtitle stream the container can hold into a new
//! subtitle pad of the muxer, anything else to a `fakesink`, recorded as
//! left out (see [`super::tracks`] for why it is not refused).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::build::{branch, link_branch};
use super::subtitles::{is_quicktime, rewrite_text, subtitle_route, SubtitleRoute};
use super::tracks::{TrackKind, Watch, Written, WrittenTrack};
use super::{caps_name, make, TranscodeSpec};
use crate::error::{ErrorKind, JobError};

/// The language code a pad's stream tags name, if any.
fn language_of(pad: &gst::Pad) -> Option<String> {
    let mut language = None;
    pad.sticky_events_foreach(|event| {
        if let gst::EventView::Tag(tag) = event.view() {
            if let Some(code) = tag.tag().get::<gst::tags::LanguageCode>() {
                language = Some(code.get().to_string());
            }
        }
        std::ops::ControlFlow::Continue(gst::EventForeachAction::Keep)
    });
    language
}

/// What the router has done so far.
#[derive(Debug, Default)]
struct Routed {
    /// Tracks linked into the muxer, with what reaches it.
    tracks: Vec<(TrackKind, Arc<Watch>)>,
    /// Streams of each kind seen (video, audio, subtitle), for numbering.
    seen: [usize; 3],
    left_out: Vec<String>,
    error: Option<JobError>,
}

/// Links each stream `decodebin` exposes to where it goes (see the module
/// documentation). The video branch and one audio branch per audio track
/// the probe found are linked to the muxer before the pipeline starts, so
/// the muxer waits for all of them even when `decodebin` exposes a stream
/// late; subtitle pads, and audio branches for tracks the probe missed,
/// are requested as their streams appear (`decodebin` exposes the streams
/// of an input together, before data flows).
pub(super) struct Router {
    pipeline: gst::glib::WeakRef<gst::Pipeline>,
    mux: gst::Element,
    muxer: String,
    audio: String,
    /// The video branch until the first video stream takes it.
    video: Mutex<Option<gst::Bin>>,
    /// Audio branches linked to the muxer that no stream has taken yet.
    audio_ready: Mutex<VecDeque<gst::Bin>>,
    /// Where a subtitle track of an MP4 or MOV output is filled up to.
    end: Option<gst::ClockTime>,
    routed: Mutex<Routed>,
}

/// The name of the application message a routing failure posts.
pub(super) const ROUTING_FAILED: &str = "transcode-worker/routing-failed";

impl Router {
    /// A router into `mux` (and its pipeline) for `spec`, whose video goes
    /// into `video` and audio tracks into `audio`, in order (all already
    /// linked to `mux`); `duration` is the input's.
    pub(super) fn new(
        pipeline: &gst::Pipeline,
        mux: &gst::Element,
        spec: &TranscodeSpec,
        video: gst::Bin,
        audio: Vec<gst::Bin>,
        duration: Option<Duration>,
    ) -> Router {
        Router {
            pipeline: pipeline.downgrade(),
            mux: mux.clone(),
            muxer: spec.muxer.clone(),
            audio: spec.audio.clone(),
            video: Mutex::new(Some(video)),
            audio_ready: Mutex::new(audio.into()),
            end: duration.map(|d| gst::ClockTime::from_nseconds(d.as_nanos() as u64)),
            routed: Mutex::new(Routed::default()),
        }
    }

    fn routed(&self) -> std::sync::MutexGuard<'_, Routed> {
        self.routed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Links `pad`, a stream `decodebin` exposed. A failure is kept for
    /// [`Router::error`] and announced on the bus.
    pub(super) fn route(&self, pad: &gst::Pad) {
        if let Err(e) = self.try_route(pad) {
            self.fail(e);
        }
    }

    /// Once `decodebin` has exposed every stream: ends the audio branches
    /// no stream took (so the muxer does not wait for them; the output then
    /// fails verification for its missing audio), and fails when no stream
    /// was video.
    pub(super) fn all_exposed(&self) {
        let unused: Vec<gst::Bin> = self
            .audio_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for bin in unused {
            if let Some(sink) = bin.static_pad("sink") {
                sink.send_event(gst::event::Eos::new());
            }
        }
        if self
            .video
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            self.fail(JobError::new(
                ErrorKind::UndecodableInput,
                "the input's video stream could not be decoded",
            ));
        }
    }

    fn fail(&self, error: JobError) {
        self.routed().error.get_or_insert(error);
        if let Some(pipeline) = self.pipeline.upgrade() {
            let _ = pipeline.post_message(gst::message::Application::new(
                gst::Structure::new_empty(ROUTING_FAILED),
            ));
        }
    }

    /// The first routing failure, if any.
    pub(super) fn error(&self) -> Option<JobError> {
        self.routed().error.clone()
    }

    /// What was written, once the pipeline has finished.
    pub(super) fn written(&self) -> Written {
        let routed = self.routed();
        Written {
            tracks: routed
                .tracks
                .iter()
                .map(|(kind, watch)| WrittenTrack {
                    kind: *kind,
                    span: watch.span(),
                })
                .collect(),
            left_out: routed.left_out.clone(),
            timings: super::Timings::default(),
        }
    }

    fn try_route(&self, pad: &gst::Pad) -> Result<(), JobError> {
        let Some(pipeline) = self.pipeline.upgrade() else {
            return Ok(());
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let name = caps_name(Some(&caps));
        let kind = if name.starts_with("video/") {
            TrackKind::Video
        } else if name.starts_with("audio/") {
            TrackKind::Audio
        } else {
            TrackKind::Subtitle
        };
        let number = {
            let mut routed = self.routed();
            routed.seen[kind as usize] += 1;
            routed.seen[kind as usize]
        };
        let leave_out = |why: String| -> Result<(), JobError> {
            let language = language_of(pad)
                .map(|l| format!(", language {l}"))
                .unwrap_or_default();
            let sentence = format!(
                "{} track {number} ({name}{language}) is left out: {why}",
                kind.as_str()
            );
            self.routed().left_out.push(sentence);
            discard(&pipeline, pad);
            Ok(())
        };
        let watch = match kind {
            TrackKind::Video => {
                let Some(bin) = self.video.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                    return leave_out("the output carries one video track".into());
                };
                link_pad(pad, &bin.static_pad("sink").expect("a branch has a sink"))?;
                Watch::on(&bin.static_pad("src").expect("a branch has a src"))
            }
            TrackKind::Audio => {
                let ready = self
                    .audio_ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front();
                let bin = match ready {
                    Some(bin) => bin,
                    None => {
                        let bin = branch(&self.audio, "audio")?;
                        pipeline.add(&bin).map_err(super::internal)?;
                        link_branch(&bin, &self.mux, &self.muxer, "audio")?;
                        bin.sync_state_with_parent().map_err(super::internal)?;
                        bin
                    }
                };
                let watch = Watch::on(&bin.static_pad("src").expect("a branch has a src"));
                link_pad(pad, &bin.static_pad("sink").expect("a branch has a sink"))?;
                watch
            }
            TrackKind::Subtitle => {
                let Some(route) = subtitle_route(&self.mux, &self.muxer, &caps) else {
                    return leave_out(format!("{} cannot hold it", self.container()));
                };
                match self.link_subtitle(&pipeline, pad, route)? {
                    Some(watch) => watch,
                    None => {
                        return leave_out(format!(
                            "{} takes no more subtitle tracks",
                            self.container()
                        ))
                    }
                }
            }
        };
        self.routed().tracks.push((kind, watch));
        Ok(())
    }

    /// The output container, for people.
    fn container(&self) -> &'static str {
        match self.muxer.as_str() {
            "mp4mux" => "MP4",
            "qtmux" => "MOV",
            "webmmux" => "WebM",
            "matroskamux" => "Matroska",
            _ => "the output container",
        }
    }

    /// Links a subtitle stream into a new pad of the muxer through a queue;
    /// `None` when the muxer refuses another pad.
    fn link_subtitle(
        &self,
        pipeline: &gst::Pipeline,
        pad: &gst::Pad,
        route: SubtitleRoute,
    ) -> Result<Option<Arc<Watch>>, JobError> {
        let template = match route {
            SubtitleRoute::Direct(name) => name,
            SubtitleRoute::Markup { .. } => "subtitle_%u",
        };
        let Some(sink) = self.mux.request_pad_simple(template) else {
            return Ok(None);
        };
        let queue = make("queue")?;
        pipeline.add(&queue).map_err(super::internal)?;
        let keep_tags = match route {
            SubtitleRoute::Markup { keep_tags } => Some(keep_tags),
            SubtitleRoute::Direct(_) => None,
        };
        // The caps say UTF-8 text; the probe below rewrites the text.
        let last = if keep_tags.is_some() {
            let setter = make("capssetter")?;
            setter.set_property(
                "caps",
                gst::Caps::builder("text/x-raw")
                    .field("format", "utf8")
                    .build(),
            );
            pipeline.add(&setter).map_err(super::internal)?;
            queue.link(&setter).map_err(super::internal)?;
            setter.sync_state_with_parent().map_err(super::internal)?;
            setter
        } else {
            queue.clone()
        };
        let src = last.static_pad("src").expect("an element with a src");
        link_pad(&src, &sink)?;
        let fill = (template == "subtitle_%u" && is_quicktime(&self.muxer)).then_some(self.end);
        if keep_tags.is_some() || fill.is_some() {
            let queue_src = queue.static_pad("src").expect("a queue has a src");
            rewrite_text(&queue_src, keep_tags, fill.flatten());
        }
        let watch = Watch::on(&src);
        queue.sync_state_with_parent().map_err(super::internal)?;
        link_pad(pad, &queue.static_pad("sink").expect("a queue has a sink"))?;
        Ok(Some(watch))
    }
}

fn link_pad(src: &gst::Pad, sink: &gst::Pad) -> Result<(), JobError> {
    src.link(sink).map(|_| ()).map_err(|e| {
        super::internal(format!(
            "cannot link {} to {}: {e:?}",
            src.name(),
            sink.name()
        ))
    })
}

/// Sends a stream nowhere, so it cannot stall the pipeline.
fn discard(pipeline: &gst::Pipeline, pad: &gst::Pad) {
    let Ok(fake) = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("async", false)
        .build()
    else {
        return;
    };
    if pipeline.add(&fake).is_ok() {
        let _ = fake.sync_state_with_parent();
        if let Some(sink) = fake.static_pad("sink") {
            let _ = pad.link(&sink);
        }
    }
}
