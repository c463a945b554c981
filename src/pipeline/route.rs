//! Routing the streams `decodebin` exposes, each decoded once and split
//! by a `tee` among the renditions (see [`super::outputs`]) that take it:
//! the first video stream into every rendition's video branch, each audio
//! stream into a new instance of each rendition's audio branch (an HLS
//! variant takes the first audio stream only), each subtitle stream into
//! a new subtitle pad of each muxer that can hold it; a stream no
//! rendition takes goes to a `fakesink`. What a rendition does not take is
//! recorded as left out of its output (see [`super::tracks`] for why it is
//! not refused).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::outputs::{link_branch, Rendition};
use super::subtitles::{is_quicktime, rewrite_text, subtitle_route, SubtitleRoute};
use super::tracks::{TrackKind, Watch, Written, WrittenTrack};
use super::{caps_name, discard, make};
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
    /// Whether the first video stream was taken.
    video_taken: bool,
    /// Per rendition: audio branches linked to its muxer that no stream
    /// has taken yet.
    audio_ready: Vec<VecDeque<gst::Bin>>,
    /// Per rendition: audio tracks it carries so far.
    audio_taken: Vec<usize>,
    /// Per rendition: tracks linked into its muxer, with what reaches it.
    tracks: Vec<Vec<(TrackKind, Arc<Watch>)>>,
    /// Per rendition: the input tracks it does not carry.
    left_out: Vec<Vec<String>>,
    /// Streams of each kind seen (video, audio, subtitle), for numbering.
    seen: [usize; 3],
    error: Option<JobError>,
}

/// Where a rendition's streams go: its muxer, and what it takes.
struct Into {
    mux: gst::Element,
    muxer: String,
    audio: String,
    hls: bool,
    label: String,
    video: gst::Bin,
}

/// Links each stream `decodebin` exposes to where it goes (see the module
/// documentation): into a `tee` with one branch per rendition that takes
/// it. Each rendition's video branch and one audio branch per audio track
/// it carries are linked to its muxer before the pipeline starts, so the
/// muxer waits for all of them even when `decodebin` exposes a stream
/// late; subtitle pads, and audio branches for tracks the probe missed,
/// are requested as their streams appear (`decodebin` exposes the streams
/// of an input together, before data flows).
pub(super) struct Router {
    pipeline: gst::glib::WeakRef<gst::Pipeline>,
    into: Vec<Into>,
    /// Where a subtitle track of an MP4 or MOV output is filled up to.
    end: Option<gst::ClockTime>,
    routed: Mutex<Routed>,
}

/// The name of the application message a routing failure posts.
pub(super) const ROUTING_FAILED: &str = "transcode-worker/routing-failed";

impl Router {
    /// A router into the muxers of `renditions` (in `pipeline`), whose
    /// branches are already linked; `duration` is the input's.
    pub(super) fn new(
        pipeline: &gst::Pipeline,
        renditions: Vec<Rendition>,
        duration: Option<Duration>,
    ) -> Router {
        let mut routed = Routed::default();
        let mut into = Vec::new();
        for r in renditions {
            routed
                .audio_ready
                .push(r.audio_ready.iter().cloned().collect());
            routed.audio_taken.push(0);
            routed.tracks.push(Vec::new());
            routed.left_out.push(Vec::new());
            into.push(Into {
                label: r.label(),
                hls: r.hls(),
                mux: r.mux,
                muxer: r.muxer,
                audio: r.audio,
                video: r.video,
            });
        }
        Router {
            pipeline: pipeline.downgrade(),
            into,
            end: duration.map(|d| gst::ClockTime::from_nseconds(d.as_nanos() as u64)),
            routed: Mutex::new(routed),
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
    /// no stream took (so the muxers do not wait for them; the outputs then
    /// fail verification for their missing audio), and fails when no
    /// stream was video.
    pub(super) fn all_exposed(&self) {
        let (unused, video_taken) = {
            let mut routed = self.routed();
            let unused: Vec<gst::Bin> = routed
                .audio_ready
                .iter_mut()
                .flat_map(|q| q.drain(..))
                .collect();
            (unused, routed.video_taken)
        };
        for bin in unused {
            if let Some(sink) = bin.static_pad("sink") {
                sink.send_event(gst::event::Eos::new());
            }
        }
        if !video_taken {
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

    /// The element-name prefix of each rendition (`out0`, `out1-720p`).
    pub(super) fn labels(&self) -> Vec<String> {
        self.into.iter().map(|i| i.label.clone()).collect()
    }

    /// What was written into each rendition's muxer, once the pipeline
    /// has finished (before it is stopped: the formats come from the
    /// caps).
    pub(super) fn written(&self) -> Vec<Written> {
        let routed = self.routed();
        routed
            .tracks
            .iter()
            .zip(&routed.left_out)
            .map(|(tracks, left_out)| Written {
                tracks: tracks
                    .iter()
                    .map(|(kind, watch)| WrittenTrack {
                        kind: *kind,
                        span: watch.span(),
                        format: watch.format(),
                    })
                    .collect(),
                left_out: left_out.clone(),
            })
            .collect()
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
        let sentence = |why: &str| {
            let language = language_of(pad)
                .map(|l| format!(", language {l}"))
                .unwrap_or_default();
            format!(
                "{} track {number} ({name}{language}) is left out: {why}",
                kind.as_str()
            )
        };
        // Where the stream goes: (rendition, the sink pad of its branch).
        let mut targets: Vec<(usize, gst::Pad, TrackKind)> = Vec::new();
        let mut subtitles: Vec<(usize, SubtitleRoute)> = Vec::new();
        match kind {
            TrackKind::Video => {
                let first = !std::mem::replace(&mut self.routed().video_taken, true);
                for (i, into) in self.into.iter().enumerate() {
                    if first {
                        targets.push((
                            i,
                            into.video.static_pad("sink").expect("a branch has a sink"),
                            kind,
                        ));
                    } else {
                        self.leave_out(i, sentence("the output carries one video track"));
                    }
                }
            }
            TrackKind::Audio => {
                for (i, into) in self.into.iter().enumerate() {
                    let ready = {
                        let mut routed = self.routed();
                        if into.hls && routed.audio_taken[i] >= 1 {
                            None
                        } else {
                            routed.audio_taken[i] += 1;
                            Some(routed.audio_ready[i].pop_front())
                        }
                    };
                    let bin = match ready {
                        None => {
                            self.leave_out(i, sentence("an HLS variant carries one audio track"));
                            continue;
                        }
                        Some(Some(bin)) => bin,
                        Some(None) => {
                            let bin = super::outputs::audio_branch(&into.audio)?;
                            pipeline.add(&bin).map_err(super::internal)?;
                            link_branch(&bin, &into.mux, &into.muxer, "audio")?;
                            bin.sync_state_with_parent().map_err(super::internal)?;
                            bin
                        }
                    };
                    targets.push((
                        i,
                        bin.static_pad("sink").expect("a branch has a sink"),
                        kind,
                    ));
                }
            }
            TrackKind::Subtitle => {
                for (i, into) in self.into.iter().enumerate() {
                    if into.hls {
                        self.leave_out(i, sentence("an HLS variant carries no subtitles"));
                    } else if let Some(route) = subtitle_route(&into.mux, &into.muxer, &caps) {
                        subtitles.push((i, route));
                    } else {
                        self.leave_out(
                            i,
                            sentence(&format!("{} cannot hold it", container(&into.muxer))),
                        );
                    }
                }
            }
        }
        if targets.is_empty() && subtitles.is_empty() {
            discard(&pipeline, pad);
            return Ok(());
        }
        let tee = make("tee")?;
        // A subtitle tee whose every muxer refused its pad drops the stream.
        tee.set_property("allow-not-linked", true);
        pipeline.add(&tee).map_err(super::internal)?;
        for (i, sink, kind) in targets {
            let src = tee
                .request_pad_simple("src_%u")
                .expect("a tee gives src pads");
            link_pad(&src, &sink)?;
            let parent = sink.parent_element().expect("a branch pad has a parent");
            let bin_src = parent.static_pad("src").expect("a branch has a src");
            self.routed().tracks[i].push((kind, Watch::on(&bin_src)));
        }
        for (i, route) in subtitles {
            let src = tee
                .request_pad_simple("src_%u")
                .expect("a tee gives src pads");
            let into = &self.into[i];
            match link_subtitle(&pipeline, into, &src, route, self.end)? {
                Some(watch) => self.routed().tracks[i].push((TrackKind::Subtitle, watch)),
                None => {
                    tee.release_request_pad(&src);
                    self.leave_out(
                        i,
                        sentence(&format!(
                            "{} takes no more subtitle tracks",
                            container(&into.muxer)
                        )),
                    );
                }
            }
        }
        tee.sync_state_with_parent().map_err(super::internal)?;
        link_pad(pad, &tee.static_pad("sink").expect("a tee has a sink"))
    }

    fn leave_out(&self, rendition: usize, sentence: String) {
        self.routed().left_out[rendition].push(sentence);
    }
}

/// The output container of `muxer`, for people.
fn container(muxer: &str) -> &'static str {
    match muxer {
        "mp4mux" => "MP4",
        "qtmux" => "MOV",
        "webmmux" => "WebM",
        "matroskamux" => "Matroska",
        _ => "the output container",
    }
}

/// Links a subtitle stream (`pad`, a tee's) into a new pad of `into`'s
/// muxer through a queue; `None` when the muxer refuses another pad.
fn link_subtitle(
    pipeline: &gst::Pipeline,
    into: &Into,
    pad: &gst::Pad,
    route: SubtitleRoute,
    end: Option<gst::ClockTime>,
) -> Result<Option<Arc<Watch>>, JobError> {
    let template = match route {
        SubtitleRoute::Direct(name) => name,
        SubtitleRoute::Markup { .. } => "subtitle_%u",
    };
    let Some(sink) = into.mux.request_pad_simple(template) else {
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
    let fill = (template == "subtitle_%u" && is_quicktime(&into.muxer)).then_some(end);
    if keep_tags.is_some() || fill.is_some() {
        let queue_src = queue.static_pad("src").expect("a queue has a src");
        rewrite_text(&queue_src, keep_tags, fill.flatten());
    }
    let watch = Watch::on(&src);
    queue.sync_state_with_parent().map_err(super::internal)?;
    link_pad(pad, &queue.static_pad("sink").expect("a queue has a sink"))?;
    Ok(Some(watch))
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
