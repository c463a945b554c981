//! Subtitle tracks: which ones a muxer takes, and how a text stream is
//! made fit for it (Pango markup as plain UTF-8; for MP4 and MOV, empty
//! samples that make the track span the whole file).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gstreamer as gst;
use gstreamer::prelude::*;

/// How a subtitle stream goes into the muxer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SubtitleRoute {
    /// Into a pad of this template, as it is.
    Direct(&'static str),
    /// Into a `subtitle_%u` pad as UTF-8 text: the stream is Pango markup
    /// (what demuxers and subtitle parsers give for text) and the muxer
    /// takes plain UTF-8 only. `keep_tags`: see [`markup_to_text`].
    Markup { keep_tags: bool },
}

/// Pad templates through which a muxer takes subtitles and captions.
const SUBTITLE_TEMPLATES: [&str; 2] = ["subtitle_%u", "caption_%u"];

/// Whether `muxer` is one of the ISO/QuickTime muxers (MP4, MOV).
pub(super) fn is_quicktime(muxer: &str) -> bool {
    matches!(muxer, "mp4mux" | "qtmux")
}

/// How a stream with `caps` goes into `mux`, or `None` when it cannot.
pub(super) fn subtitle_route(
    mux: &gst::Element,
    muxer: &str,
    caps: &gst::Caps,
) -> Option<SubtitleRoute> {
    let utf8 = gst::Caps::builder("text/x-raw")
        .field("format", "utf8")
        .build();
    let markup = gst::Caps::builder("text/x-raw")
        .field("format", "pango-markup")
        .build();
    for name in SUBTITLE_TEMPLATES {
        let Some(template) = mux.pad_template(name) else {
            continue;
        };
        let accepted = template.caps();
        if accepted.can_intersect(caps) {
            return Some(SubtitleRoute::Direct(name));
        }
        if name == "subtitle_%u" && caps.can_intersect(&markup) && accepted.can_intersect(&utf8) {
            return Some(SubtitleRoute::Markup {
                keep_tags: !is_quicktime(muxer),
            });
        }
    }
    None
}

/// The caps `decodebin` stops at for a job writing with `mux`: its usual
/// raw caps, plus whatever the muxer takes as subtitles, so that SSA/ASS
/// or Kate subtitles reach a Matroska muxer as they are instead of being
/// parsed down to plain text.
pub(super) fn decoder_caps(decode: &gst::Element, mux: &gst::Element) -> gst::Caps {
    let mut caps = decode.property::<gst::Caps>("caps");
    for name in SUBTITLE_TEMPLATES {
        if let Some(template) = mux.pad_template(name) {
            caps.merge(template.caps().copy());
        }
    }
    caps
}

/// Pango markup as the plain UTF-8 text muxers take: entities resolved
/// (`&amp;` is `&` again). `keep_tags`: Matroska players show the SRT-style
/// tags of `S_TEXT/UTF8` (`<i>`, `<b>`), which is what demuxers turned into
/// markup, so they stay; MP4's `tx3g` samples would show them as they are,
/// so they go.
pub(super) fn markup_to_text(markup: &str, keep_tags: bool) -> String {
    let text: Cow<'_, str> = if keep_tags {
        Cow::Borrowed(markup)
    } else {
        let mut out = String::with_capacity(markup.len());
        let mut in_tag = false;
        for c in markup.chars() {
            match c {
                '<' => in_tag = true,
                '>' if in_tag => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        Cow::Owned(out)
    };
    match quick_xml::escape::unescape(&text) {
        Ok(plain) => plain.into_owned(),
        Err(_) => text.into_owned(),
    }
}

/// Rewrites the text stream leaving `src` (a queue's): Pango markup as
/// UTF-8 text (when `keep_tags` is given, see [`markup_to_text`]; a
/// `capssetter` after the queue says so in the caps), and for MP4 and MOV,
/// empty samples before the first cue and after the last one up to
/// `fill_to` (the input's duration). GStreamer's own MP4 reader skips a
/// track shorter than a fifth of the file as a "preview", so without them
/// a file whose subtitles are few would lose them when read back with
/// GStreamer; other readers show an empty sample as no subtitle (ffmpeg's
/// MP4 muxer writes them too). The empty samples go straight into the
/// next pad: `src` itself is already at its end when its EOS passes here.
pub(super) fn rewrite_text(
    src: &gst::Pad,
    keep_tags: Option<bool>,
    fill_to: Option<gst::ClockTime>,
) {
    let started = AtomicBool::new(false);
    let last_end = AtomicU64::new(0);
    let insert_empty = |pad: &gst::Pad, from: gst::ClockTime, to: gst::ClockTime| {
        if to <= from {
            return;
        }
        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().expect("a new buffer is writable");
        b.set_pts(from);
        b.set_duration(to - from);
        if let Some(peer) = pad.peer() {
            if let Err(e) = peer.chain(buffer) {
                tracing::debug!(error = ?e, "an empty subtitle sample was not taken");
            }
        }
    };
    let segment_start = |pad: &gst::Pad| {
        pad.sticky_event::<gst::event::Segment>(0)
            .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned())
            .and_then(|s| s.start())
            .unwrap_or(gst::ClockTime::ZERO)
    };
    src.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |pad, info| {
            match &mut info.data {
                Some(gst::PadProbeData::Event(event)) => {
                    if let (gst::EventView::Eos(_), Some(fill_to)) = (event.view(), fill_to) {
                        let start = segment_start(pad);
                        let from = gst::ClockTime::from_nseconds(last_end.load(Ordering::Relaxed));
                        insert_empty(pad, start + from, start + fill_to);
                    }
                }
                Some(gst::PadProbeData::Buffer(buffer)) => {
                    if let Some(keep_tags) = keep_tags {
                        let text = buffer
                            .map_readable()
                            .map(|m| markup_to_text(&String::from_utf8_lossy(&m), keep_tags))
                            .unwrap_or_default();
                        let mut plain = gst::Buffer::from_mut_slice(text.into_bytes());
                        {
                            let b = plain.get_mut().expect("a new buffer is writable");
                            b.set_pts(buffer.pts());
                            b.set_dts(buffer.dts());
                            b.set_duration(buffer.duration());
                        }
                        *buffer = plain;
                    }
                    if let (Some(pts), Some(_)) = (buffer.pts(), fill_to) {
                        let start = segment_start(pad);
                        if !started.swap(true, Ordering::Relaxed) {
                            insert_empty(pad, start, pts);
                        }
                        let end = pts + buffer.duration().unwrap_or(gst::ClockTime::ZERO);
                        last_end.fetch_max(end.saturating_sub(start).nseconds(), Ordering::Relaxed);
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_becomes_text_with_or_without_its_tags() {
        let markup = "<i>Second</i> line &amp; more &lt;3 &#233;";
        assert_eq!(
            markup_to_text(markup, true),
            "<i>Second</i> line & more <3 é"
        );
        assert_eq!(markup_to_text(markup, false), "Second line & more <3 é");
        assert_eq!(
            markup_to_text("<span foreground=\"red\">a</span>\nb", false),
            "a\nb"
        );
        // Not markup after all: kept as it is.
        assert_eq!(markup_to_text("a &nbsp b", false), "a &nbsp b");
    }

    #[test]
    fn each_container_takes_the_subtitles_its_muxer_takes() {
        gst::init().unwrap();
        let caps = |s: &str| s.parse::<gst::Caps>().unwrap();
        let route = |muxer: &str, c: &str| {
            let mux = gst::ElementFactory::make(muxer).build().unwrap();
            subtitle_route(&mux, muxer, &caps(c))
        };
        let markup = "text/x-raw, format=pango-markup";
        let utf8 = "text/x-raw, format=utf8";
        assert_eq!(
            route("mp4mux", markup),
            Some(SubtitleRoute::Markup { keep_tags: false })
        );
        assert_eq!(
            route("mp4mux", utf8),
            Some(SubtitleRoute::Direct("subtitle_%u"))
        );
        assert_eq!(route("mp4mux", "subpicture/x-dvd"), None);
        assert_eq!(route("mp4mux", "subpicture/x-pgs"), None);
        assert_eq!(
            route("qtmux", "closedcaption/x-cea-608, format=s334-1a"),
            Some(SubtitleRoute::Direct("caption_%u"))
        );
        assert_eq!(
            route("matroskamux", markup),
            Some(SubtitleRoute::Markup { keep_tags: true })
        );
        assert_eq!(
            route("matroskamux", "application/x-ass"),
            Some(SubtitleRoute::Direct("subtitle_%u"))
        );
        assert_eq!(
            route("matroskamux", "subpicture/x-dvd"),
            Some(SubtitleRoute::Direct("subtitle_%u"))
        );
        assert_eq!(route("matroskamux", "subpicture/x-pgs"), None);
    }
}
