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

/// Every GStreamer element a worker with `settings` may need: its own
/// source, decoder, tees, queues and sinks, the scaler, the subtitle text
/// converter, the demuxers that verify outputs, every muxer and the HLS
/// sink, the default audio branches, and each preset's elements. The
/// worker loads the plugins of those it has ahead of the jobs.
pub fn required_elements(settings: &Settings) -> Vec<String> {
    let mut needed: Vec<String> = [
        "filesrc",
        "decodebin",
        "filesink",
        "queue",
        "tee",
        "fakesink",
        "capssetter",
        "qtdemux",
        "matroskademux",
    ]
    .iter()
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
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut env: HashMap<String, String> = [("S3_BUCKET_NAME", "b")]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.insert("AWS_S3_ENDPOINT_URL".into(), "http://x".into());
        Settings::from_env(None, &env).unwrap()
    }

    fn job(output: &str, options: Option<&str>, preset: Option<&str>) -> Job {
        Job {
            job_id: "j".into(),
            input_key: "in.wmv".into(),
            output_key: output.into(),
            transcode_options: options.map(String::from),
            preset: preset.map(String::from),
            source: None,
            priority: None,
            requires: Vec::new(),
            webhook: None,
            outputs: None,
            segment_seconds: None,
        }
    }

    /// The encoding of output `i`, a file.
    fn file(p: &Plan, i: usize) -> &Encoding {
        match &p.outputs[i].target {
            Target::File(encoding) => encoding,
            other => panic!("not a file: {other:?}"),
        }
    }

    #[test]
    fn a_job_with_outputs_gets_every_output_planned_output_key_first() {
        let job = Job::parse(
            br#"{"job_id":"j","input_key":"in.mov","output_key":"o/main.mkv","transcode_options":"videoconvert ! x264enc",
                 "outputs":[{"output_key":"o/720.mp4","preset":"h264-720p"},{"output_key":"o/a.webm"}]}"#,
        )
        .unwrap();
        let p = plan(&job, &settings(&[])).unwrap();
        assert_eq!(p.keys(), ["o/main.mkv", "o/720.mp4", "o/a.webm"]);
        assert_eq!(file(&p, 0).muxer, "matroskamux");
        assert_eq!(file(&p, 0).video, "videoconvert ! x264enc");
        assert_eq!(p.outputs[1].preset.as_deref(), Some("h264-720p"));
        assert_eq!(file(&p, 1).max_height, Some(720));
        assert!(!file(&p, 1).upscale);
        assert_eq!(p.outputs[2].preset.as_deref(), Some("vp9-webm"));
        // Each output has its own fingerprint.
        let prints: Vec<String> = p
            .outputs
            .iter()
            .map(|o| o.fingerprint("in.mov", 10))
            .collect();
        assert_ne!(prints[0], prints[1]);
        assert_ne!(prints[1], p.outputs[1].fingerprint("in.mov", 11));
    }

    #[test]
    fn an_m3u8_key_gets_an_hls_package_and_the_ladder_its_rungs() {
        let s = settings(&[]);
        let p = plan(&job("videos/x/master.m3u8", None, Some("hls-ladder")), &s).unwrap();
        let Target::Hls(package) = &p.outputs[0].target else {
            panic!("{p:?}")
        };
        assert_eq!(package.segment_seconds, 6);
        let names: Vec<&str> = package.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["1080p", "720p", "480p", "360p"]);
        assert!(package.variants.iter().all(|v| v.optional));
        assert!(package
            .variants
            .iter()
            .all(|v| v.encoding.muxer == HLS_MUXER));
        assert_eq!(package.variants[3].encoding.max_height, Some(360));
        // No preset: the default HLS preset, the ladder.
        assert_eq!(
            plan(&job("v/m.m3u8", None, None), &s).unwrap().outputs[0]
                .preset
                .as_deref(),
            Some("hls-ladder")
        );
        // A single preset: one variant, always made.
        let p = plan(&job("v/m.m3u8", None, Some("h264-720p")), &s).unwrap();
        let Target::Hls(package) = &p.outputs[0].target else {
            panic!("{p:?}")
        };
        assert_eq!(package.variants.len(), 1);
        assert_eq!(package.variants[0].name, "720p");
        assert!(!package.variants[0].optional);
        // A ladder makes HLS only.
        let err = plan(&job("v/a.mp4", None, Some("hls-ladder")), &s).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidJob);
        assert!(err.message.contains("ending in .m3u8"), "{}", err.message);
        // Two packages in one folder would overwrite each other.
        let two = Job::parse(
            br#"{"job_id":"j","input_key":"in.mov","outputs":[{"output_key":"v/a.m3u8"},{"output_key":"v/b.m3u8"}]}"#,
        )
        .unwrap();
        assert!(plan(&two, &s).unwrap_err().message.contains("folder \"v\""));
    }

    #[test]
    fn containers_are_checked_by_extension() {
        assert!(check_container("a/b.mp4").is_ok());
        assert!(check_container("a/b.MKV").is_ok());
        assert!(check_container("a/b").is_ok());
        assert!(check_container("a/b.exe")
            .unwrap_err()
            .message
            .contains(".exe"));
    }

    #[test]
    fn the_original_job_gets_its_fragment_in_mp4_with_aac() {
        let p = plan(
            &job("path/to/output_file", Some("videoconvert ! x264enc"), None),
            &settings(&[]),
        )
        .unwrap();
        assert_eq!(file(&p, 0).video, "videoconvert ! x264enc");
        assert_eq!(file(&p, 0).muxer, "mp4mux");
        assert_eq!(file(&p, 0).audio, DEFAULT_AAC);
        assert_eq!(p.outputs[0].preset, None);
    }

    #[test]
    fn no_fragment_and_no_preset_means_the_default_preset() {
        let s = settings(&[]);
        let p = plan(&job("o.mp4", None, None), &s).unwrap();
        assert_eq!(p.outputs[0].preset.as_deref(), Some("h264-mp4"));
        assert!(file(&p, 0).video.contains("x264enc"));
        let p = plan(&job("o.webm", None, None), &s).unwrap();
        assert_eq!(p.outputs[0].preset.as_deref(), Some("vp9-webm"));
        assert_eq!(file(&p, 0).muxer, "webmmux");
        assert!(file(&p, 0).audio.contains("opusenc"));
        let p = plan(&job("o.MKV", None, Some("hevc-mp4")), &s).unwrap();
        assert_eq!(file(&p, 0).muxer, "matroskamux");
        assert!(file(&p, 0).video.contains("x265enc"));
    }

    #[test]
    fn unknown_presets_and_containers_are_invalid_jobs() {
        let s = settings(&[]);
        let err = plan(&job("o.mp4", None, Some("nope")), &s).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidJob);
        assert!(err.message.contains("h264-mp4"), "{}", err.message);
        let err = plan(&job("o.exe", None, None), &s).unwrap_err();
        assert!(err.message.contains(".exe"), "{}", err.message);
    }

    #[test]
    fn operators_can_refuse_raw_fragments() {
        let s = settings(&[("TRANSCODE_PIPELINE__ALLOW_TRANSCODE_OPTIONS", "false")]);
        let err = plan(&job("o.mp4", Some("videoconvert ! x264enc"), None), &s).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidPipeline);
        assert!(plan(&job("o.mp4", None, Some("h264-720p")), &s).is_ok());
    }

    #[test]
    fn keys_outside_the_allowed_prefixes_are_refused() {
        let s = settings(&[
            ("TRANSCODE_STORAGE__ALLOWED_INPUT_PREFIXES", "in/,uploads/"),
            ("TRANSCODE_STORAGE__ALLOWED_OUTPUT_PREFIXES", "out/"),
        ]);
        let mut j = job("out/o.mp4", None, None);
        j.input_key = "in/a.wmv".into();
        assert!(plan(&j, &s).is_ok());
        j.input_key = "secret/a.wmv".into();
        let err = plan(&j, &s).unwrap_err();
        assert!(err.message.contains("in/, uploads/"), "{}", err.message);
        j.input_key = "uploads/a.wmv".into();
        j.output_key = "elsewhere/o.mp4".into();
        assert!(plan(&j, &s).unwrap_err().message.contains("output_key"));
    }

    #[test]
    fn required_elements_cover_the_worker_the_muxers_and_every_preset() {
        let needed = required_elements(&settings(&[]));
        for element in [
            "filesrc",
            "decodebin",
            "mp4mux",
            "webmmux",
            "avenc_aac",
            "opusenc",
            "x264enc",
            "x265enc",
            "vp9enc",
            "tee",
            "videoscale",
            "hlssink2",
            "mpegtsmux",
        ] {
            assert!(
                needed.iter().any(|n| n == element),
                "{element} missing from {needed:?}"
            );
        }
        assert!(!needed.iter().any(|n| n.contains('/')), "{needed:?}");
    }

    #[test]
    fn hostile_fragments_are_refused_before_anything_runs() {
        let err = plan(
            &job(
                "o.mp4",
                Some("videoconvert ! filesink location=/etc/x"),
                None,
            ),
            &settings(&[]),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidPipeline);
    }
}
