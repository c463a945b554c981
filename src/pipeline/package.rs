//! Finishing the outputs of a run before they are stored: a file is
//! verified from its headers ([`super::verify()`]); an HLS package has each
//! variant checked (its playlist, every segment present and not empty,
//! the first segment's tracks read by `tsdemux`, its length against the
//! input's), the variants' segments checked to start at the same times,
//! each variant's playlist rewritten as a VOD playlist, and the master
//! playlist written with each variant's `BANDWIDTH` (its peak segment),
//! `RESOLUTION` and `CODECS` (from the stream's own parameter sets).

use std::path::Path;

use super::build::Rendered;
use super::tracks::TrackKind;
use super::verify::{check_video, read_headers, verify};
use super::{Made, MediaInfo, Output, VariantMade, VideoStream};
use crate::error::{ErrorKind, JobError};
use crate::hls::{self, Segment, VariantEntry, VARIANT_PLAYLIST};
use crate::rendition::Target;

/// Largest difference between the lengths of the segments of two variants
/// that start at the same time, in seconds (a frame at 25 fps is 0.04 s).
const ALIGNMENT_SECS: f64 = 0.02;

/// Verifies what the run wrote for `output` (`rendered`: its renditions;
/// `left_out`: the variants of a ladder not made) against `input`, within
/// `tolerance_ms`, and makes it ready to store (see the module
/// documentation). Every failure is [`ErrorKind::OutputInvalid`].
pub fn finish(
    output: &Output,
    input: &MediaInfo,
    tolerance_ms: u64,
    rendered: Vec<Rendered>,
    left_out: Vec<String>,
) -> Result<Made, JobError> {
    let Target::File(encoding) = &output.target else {
        return finish_package(output, input, tolerance_ms, rendered, left_out);
    };
    let Some(r) = rendered.into_iter().next() else {
        return Err(JobError::new(
            ErrorKind::Internal,
            format!("nothing was made for {:?}", output.key),
        ));
    };
    let media = verify(
        &output.path,
        &encoding.muxer,
        tolerance_ms,
        input,
        &r.written,
    )?;
    Ok(Made {
        media,
        tracks_left_out: r.written.left_out,
        notes: r.note.into_iter().collect(),
        ..Default::default()
    })
}

/// One checked variant: its figures, segments and first segment's headers.
struct Checked {
    entry: VariantEntry,
    segments: Vec<Segment>,
    headers: MediaInfo,
}

fn finish_package(
    output: &Output,
    input: &MediaInfo,
    tolerance_ms: u64,
    rendered: Vec<Rendered>,
    left_out: Vec<String>,
) -> Result<Made, JobError> {
    let bad = |why: String| {
        JobError::new(
            ErrorKind::OutputInvalid,
            format!("the HLS package {:?} {why}", output.key),
        )
    };
    let mut checked = Vec::new();
    let mut made = Made {
        notes: left_out,
        ..Default::default()
    };
    for r in &rendered {
        let c = check_variant(&output.path, r, input, tolerance_ms)
            .map_err(|why| bad(format!("is not sound: variant {} {why}", r.variant)))?;
        check_video(
            &r.written,
            input,
            tolerance_ms,
            &format!("variant {}", r.variant),
        )
        .map_err(|e| bad(format!("is not sound: {}", e.message)))?;
        if let Some(first) = checked.first() {
            aligned(first, &c).map_err(|why| {
                bad(format!(
                    "has variants whose segments do not start at the same times: {why}"
                ))
            })?;
        }
        for line in &r.written.left_out {
            if !made.tracks_left_out.contains(line) {
                made.tracks_left_out.push(line.clone());
            }
        }
        made.notes
            .extend(r.note.iter().map(|n| format!("variant {}: {n}", r.variant)));
        checked.push(c);
    }
    let Some(first) = checked.first() else {
        return Err(bad("has no variant".into()));
    };
    let master = Path::new(&output.key)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "master.m3u8".into());
    let entries: Vec<VariantEntry> = checked.iter().map(|c| c.entry.clone()).collect();
    let write = |name: &str, text: String| {
        std::fs::write(output.path.join(name), text)
            .map_err(|e| JobError::new(ErrorKind::Internal, format!("cannot write {name}: {e}")))
    };
    for (r, c) in rendered.iter().zip(&checked) {
        write(
            &format!("{}/{VARIANT_PLAYLIST}", r.variant),
            hls::vod_playlist(&c.segments),
        )?;
        made.files.extend(
            c.segments
                .iter()
                .map(|s| format!("{}/{}", r.variant, s.uri)),
        );
        made.files.push(format!("{}/{VARIANT_PLAYLIST}", r.variant));
        made.variants.push(VariantMade {
            name: r.variant.clone(),
            width: c.entry.width,
            height: c.entry.height,
            bandwidth: c.entry.bandwidth,
            codecs: c.entry.codecs.clone(),
            segments: c.segments.len(),
        });
    }
    write(&master, hls::master_playlist(&entries))?;
    made.files.push(master);
    let seconds: f64 = first.segments.iter().map(|s| s.duration).sum();
    made.media = MediaInfo {
        container: Some("application/x-hls".into()),
        duration_ms: Some((seconds * 1000.0).round() as u64),
        video: first.headers.video.clone().map(|v| VideoStream {
            width: first.entry.width,
            height: first.entry.height,
            frame_rate: first.entry.frame_rate.unwrap_or(v.frame_rate),
            ..v
        }),
        audio: first.headers.audio.clone(),
        subtitles: Vec::new(),
    };
    Ok(made)
}

/// Checks one variant in `folder/<variant>`; the error says what is wrong
/// (after "variant NAME").
fn check_variant(
    folder: &Path,
    r: &Rendered,
    input: &MediaInfo,
    tolerance_ms: u64,
) -> Result<Checked, String> {
    let dir = folder.join(&r.variant);
    let text = std::fs::read_to_string(dir.join(VARIANT_PLAYLIST))
        .map_err(|e| format!("has no playlist: {e}"))?;
    let segments =
        hls::parse_media_playlist(&text).map_err(|e| format!("has a playlist that {e}"))?;
    let mut sizes = Vec::new();
    for s in &segments {
        if s.uri.contains('/') || s.uri.starts_with('.') {
            return Err(format!("names a segment outside its folder: {:?}", s.uri));
        }
        let size = std::fs::metadata(dir.join(&s.uri))
            .map(|m| m.len())
            .unwrap_or(0);
        if size == 0 {
            return Err(format!("has an empty or missing segment {:?}", s.uri));
        }
        sizes.push((s.duration, size));
    }
    let seconds: f64 = segments.iter().map(|s| s.duration).sum();
    if let Some(want) = input.duration_ms {
        let got = (seconds * 1000.0).round() as u64;
        if want.abs_diff(got) > tolerance_ms {
            return Err(format!(
                "lasts {:.2} s but the input lasts {:.2} s",
                seconds,
                want as f64 / 1000.0
            ));
        }
    }
    let first = dir.join(&segments[0].uri);
    let headers = read_headers(&first, "tsdemux")
        .map_err(|e| format!("has a first segment that does not parse: {e}"))?;
    if headers.video.is_none() {
        return Err("has a first segment without video".into());
    }
    let audio = r.written.count(TrackKind::Audio);
    if headers.audio.len() != audio || audio != input.audio.len().min(1) {
        return Err(format!(
            "has {} audio track(s) in its first segment; the input has {}",
            headers.audio.len(),
            input.audio.len()
        ));
    }
    let video = r.written.first(TrackKind::Video).map(|t| &t.format);
    let (width, height) = video.and_then(|f| f.size).unwrap_or((0, 0));
    let codecs: Vec<String> = [TrackKind::Video, TrackKind::Audio]
        .iter()
        .filter_map(|kind| r.written.first(*kind).and_then(|t| t.format.codec.clone()))
        .collect();
    let (bandwidth, average_bandwidth) = hls::bandwidths(&sizes);
    Ok(Checked {
        entry: VariantEntry {
            uri: format!("{}/{VARIANT_PLAYLIST}", r.variant),
            bandwidth,
            average_bandwidth,
            width,
            height,
            codecs,
            frame_rate: video.and_then(|f| f.frame_rate),
        },
        segments,
        headers,
    })
}

/// Whether `b`'s segments start at the same times as `a`'s.
fn aligned(a: &Checked, b: &Checked) -> Result<(), String> {
    if a.segments.len() != b.segments.len() {
        return Err(format!(
            "{} has {} segments, {} has {}",
            a.entry.uri,
            a.segments.len(),
            b.entry.uri,
            b.segments.len()
        ));
    }
    let (mut ta, mut tb) = (0.0f64, 0.0f64);
    for (sa, sb) in a.segments.iter().zip(&b.segments) {
        if (ta - tb).abs() > ALIGNMENT_SECS {
            return Err(format!(
                "{} starts at {ta:.3} s in {} and {} at {tb:.3} s in {}",
                sa.uri, a.entry.uri, sb.uri, b.entry.uri
            ));
        }
        ta += sa.duration;
        tb += sb.duration;
    }
    Ok(())
}
