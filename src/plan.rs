//! Deciding what to run for a job, before anything is downloaded: for
//! each of its outputs ([`Job::all_outputs`]) the checked video branch
//! (from the output's fragment or preset), the audio branch, the muxer
//! that the key's extension calls for and the height; for a key ending in
//! `.m3u8`, the variants of the HLS package (see [`crate::rendition`]).

use std::path::Path;

use crate::config::{Preset, Settings};
use crate::error::{ErrorKind, JobError};
use crate::fragment::Fragment;
use crate::job::{Job, OutputSpec};
use crate::rendition::{Encoding, HlsPackage, Target, Variant, DEFAULT_SEGMENT_SECONDS, HLS_MUXER};

/// Audio branch for MP4, MOV, Matroska and HLS outputs when the preset has none.
pub const DEFAULT_AAC: &str = "audioconvert ! audioresample ! avenc_aac bitrate=128000";
/// Audio branch for WebM outputs when the preset has none.
pub const DEFAULT_OPUS: &str = "audioconvert ! audioresample ! opusenc bitrate=128000";

/// Every muxer a job can get.
pub const MUXERS: &[&str] = &["mp4mux", "qtmux", "matroskamux", "webmmux"];

/// The elements an HLS package needs besides its encoders: the sink that
/// cuts segments, what it is made of, and what verifies the segments.
pub const HLS_ELEMENTS: &[&str] = &[HLS_MUXER, "splitmuxsink", "mpegtsmux", "tsdemux"];

/// The elements the worker puts before a video branch that scales.
pub const SCALE_ELEMENTS: &[&str] = &["videoconvert", "videoscale"];

/// Name of the variant of an HLS package made with a job's own fragment.
pub const FRAGMENT_VARIANT: &str = "stream";

/// What the pipeline of one job makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Each output, in the job's order ([`Job::all_outputs`]).
    pub outputs: Vec<OutputPlan>,
}

/// What one output key receives, and how it is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPlan {
    /// The key.
    pub key: String,
    /// The preset used, if any.
    pub preset: Option<String>,
    /// A file, or an HLS package.
    pub target: Target,
}

/// A container the worker can write, chosen by the output key's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Container {
    muxer: &'static str,
    webm: bool,
    hls: bool,
}

fn container_for(output_key: &str) -> Result<Container, JobError> {
    let ext = Path::new(output_key)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let (muxer, webm, hls) = match ext.as_deref() {
        None | Some("mp4") | Some("m4v") => ("mp4mux", false, false),
        Some("mov") => ("qtmux", false, false),
        Some("mkv") => ("matroskamux", false, false),
        Some("webm") => ("webmmux", true, false),
        Some("m3u8") => (HLS_MUXER, false, true),
        Some(other) => {
            return Err(JobError::new(
                ErrorKind::InvalidJob,
                format!(
                    "output_key ends in .{other}, which is not a container this worker writes (mp4, m4v, mov, mkv, webm; m3u8 for an HLS package; no extension means mp4)"
                ),
            ))
        }
    };
    Ok(Container { muxer, webm, hls })
}

/// Checks that `output_key`'s extension names a container this worker
/// writes (no extension means MP4; `.m3u8` an HLS package).
pub fn check_container(output_key: &str) -> Result<(), JobError> {
    container_for(output_key).map(|_| ())
}

/// Elements every worker has (it refuses to start without them): they are
/// never a job's requirement.
pub const BASE_ELEMENTS: &[&str] = &[
    "filesrc",
    "decodebin",
    "filesink",
    "queue",
    "tee",
    "fakesink",
];

/// Every GStreamer element a worker with `settings` may need: its own
/// source, decoder, tees, queues and sinks, the scaler, the subtitle text
/// converter, the demuxers that verify outputs, every muxer and the HLS
/// sink, the default audio branches, and each preset's elements. The
/// worker loads the plugins of those it has ahead of the jobs.
pub fn required_elements(settings: &Settings) -> Vec<String> {
    let mut needed: Vec<String> = BASE_ELEMENTS
        .iter()
        .chain(&["capssetter", "qtdemux", "matroskademux"])
        .chain(MUXERS)
        .chain(HLS_ELEMENTS)
        .chain(SCALE_ELEMENTS)
        .map(|s| s.to_string())
        .collect();
    for text in [DEFAULT_AAC, DEFAULT_OPUS] {
        needed.extend(factories_in(text));
    }
    for preset in settings.presets.values() {
        needed.extend(factories_in(&preset.video));
        needed.extend(preset.audio.iter().flat_map(|a| factories_in(a)));
    }
    needed.sort_unstable();
    needed.dedup();
    needed
}

/// The element factories a launch text names (caps filters left out).
pub fn factories_in(text: &str) -> Vec<String> {
    text.split('!')
        .filter_map(|part| part.split_whitespace().next())
        .filter(|first| !first.contains('/'))
        .map(str::to_string)
        .collect()
}

/// Works out the pipeline for `job` under `settings`: every output's
/// keys, container, preset or fragment checked; presets use their `video`
/// (what every worker able to run them has: see [`plan_on`]).
pub fn plan(job: &Job, settings: &Settings) -> Result<Plan, JobError> {
    plan_on(job, settings, &|_| None)
}

/// [`plan`] on one worker: `preferred` gives the video branch a preset
/// gets there instead of its `video` (the first of its `alternatives` the
/// worker has the elements of, see
/// [`crate::capability::preferred_video`]), or `None`.
pub fn plan_on(
    job: &Job,
    settings: &Settings,
    preferred: &dyn Fn(&Preset) -> Option<String>,
) -> Result<Plan, JobError> {
    check_prefix(
        "input_key",
        &job.input_key,
        &settings.storage.allowed_input_prefixes,
    )?;
    let outputs = job
        .all_outputs()
        .iter()
        .map(|output| plan_output(output, settings, preferred))
        .collect::<Result<Vec<_>, _>>()?;
    let mut folders: Vec<&str> = Vec::new();
    for output in outputs
        .iter()
        .filter(|o| matches!(o.target, Target::Hls(_)))
    {
        let folder = output.key.rsplit_once('/').map_or("", |(dir, _)| dir);
        if folders.contains(&folder) {
            return Err(JobError::new(
                ErrorKind::InvalidJob,
                format!("two HLS outputs of the job are in the folder {folder:?}: their variants would overwrite each other"),
            ));
        }
        folders.push(folder);
    }
    Ok(Plan { outputs })
}

/// The plan of one output.
fn plan_output(
    output: &OutputSpec,
    settings: &Settings,
    preferred: &dyn Fn(&Preset) -> Option<String>,
) -> Result<OutputPlan, JobError> {
    let key = &output.output_key;
    check_prefix("output_key", key, &settings.storage.allowed_output_prefixes)?;
    let container = container_for(key)?;
    let allow = settings.allowlist();
    let invalid = |message: String| JobError::new(ErrorKind::InvalidJob, message);
    if let Some(options) = &output.transcode_options {
        if !settings.pipeline.allow_transcode_options {
            return Err(JobError::new(
                ErrorKind::InvalidPipeline,
                "this worker accepts presets only: transcode_options are refused",
            ));
        }
        let fragment = Fragment::parse(options, &allow)?;
        fragment.check_limits(&settings.limits())?;
        let encoding = Encoding {
            video: fragment.to_string(),
            audio: default_audio(container).to_string(),
            muxer: container.muxer.to_string(),
            max_height: None,
            upscale: false,
        };
        let target = if container.hls {
            hls(
                DEFAULT_SEGMENT_SECONDS,
                vec![(FRAGMENT_VARIANT.into(), encoding, false)],
            )
        } else {
            Target::File(encoding)
        };
        return Ok(OutputPlan {
            key: key.clone(),
            preset: None,
            target,
        });
    }
    let name = match &output.preset {
        Some(name) => name.as_str(),
        None if container.hls => settings.pipeline.default_hls_preset.as_str(),
        None if container.webm => settings.pipeline.default_webm_preset.as_str(),
        None => settings.pipeline.default_preset.as_str(),
    };
    let preset = settings.preset(name).map_err(invalid)?;
    let segment_seconds = preset
        .hls_segment_seconds
        .unwrap_or(DEFAULT_SEGMENT_SECONDS);
    let target = match (preset.is_ladder(), container.hls) {
        (true, false) => {
            return Err(invalid(format!(
                "preset {name:?} makes an HLS package of {} renditions: give it an output key ending in .m3u8",
                preset.renditions.len()
            )))
        }
        (true, true) => {
            let mut variants = Vec::new();
            for rung in &preset.renditions {
                let rung_preset = settings.preset(rung).map_err(invalid)?;
                let encoding = encoding_of(rung_preset, container, settings, preferred)?;
                variants.push((rung_preset.folder(rung), encoding, true));
            }
            hls(segment_seconds, variants)
        }
        (false, true) => hls(
            segment_seconds,
            vec![(preset.folder(name), encoding_of(preset, container, settings, preferred)?, false)],
        ),
        (false, false) => Target::File(encoding_of(preset, container, settings, preferred)?),
    };
    Ok(OutputPlan {
        key: key.clone(),
        preset: Some(name.to_string()),
        target,
    })
}

/// An HLS package of `variants` (folder, encoding, optional).
fn hls(segment_seconds: u32, variants: Vec<(String, Encoding, bool)>) -> Target {
    Target::Hls(HlsPackage {
        segment_seconds,
        variants: variants
            .into_iter()
            .map(|(name, encoding, optional)| Variant {
                name,
                encoding,
                optional,
            })
            .collect(),
    })
}

/// The encoding of a single `preset` into `container`, with the video
/// branch `preferred` gives, else the preset's own.
fn encoding_of(
    preset: &Preset,
    container: Container,
    settings: &Settings,
    preferred: &dyn Fn(&Preset) -> Option<String>,
) -> Result<Encoding, JobError> {
    let video = match preferred(preset) {
        Some(video) => video,
        None => Fragment::parse(&preset.video, &settings.allowlist())?.to_string(),
    };
    Ok(Encoding {
        video,
        audio: preset
            .audio
            .clone()
            .unwrap_or_else(|| default_audio(container).to_string()),
        muxer: container.muxer.to_string(),
        max_height: preset.height,
        upscale: preset.upscale,
    })
}

impl Plan {
    /// The keys of its outputs, in order.
    pub fn keys(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.key.clone()).collect()
    }
}

impl OutputPlan {
    /// A short stable text identifying what this output of a job with
    /// input `input_key` depends on: how it is made, the keys and the
    /// input's size. Stored with the output, it lets a redelivered job
    /// recognise its own finished output.
    pub fn fingerprint(&self, input_key: &str, input_size: u64) -> String {
        let target = serde_json::to_string(&self.target).expect("a target serializes");
        let text = format!("{target}\n{input_key}\n{}\n{input_size}", self.key);
        // FNV-1a: stable across Rust versions, unlike the std hasher.
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

/// Refuses `key` unless it starts with one of `prefixes` (any key when empty).
fn check_prefix(field: &str, key: &str, prefixes: &[String]) -> Result<(), JobError> {
    let prefixes: Vec<&String> = prefixes.iter().filter(|p| !p.is_empty()).collect();
    if prefixes.is_empty() || prefixes.iter().any(|p| key.starts_with(p.as_str())) {
        return Ok(());
    }
    Err(JobError::new(
        ErrorKind::InvalidJob,
        format!(
            "{field} {key:?} is outside the allowed prefixes ({})",
            prefixes
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

fn default_audio(container: Container) -> &'static str {
    if container.webm {
        DEFAULT_OPUS
    } else {
        DEFAULT_AAC
    }
}

#[cfg(test)]
mod tests;
