//! Deciding what to run for a job, before anything is downloaded: the
//! checked video branch (from the job's fragment or a preset), the audio
//! branch and the muxer that the output key's extension calls for.

use std::path::Path;

use crate::config::Settings;
use crate::error::{ErrorKind, JobError};
use crate::fragment::Fragment;
use crate::job::Job;

/// Audio branch for MP4, MOV and Matroska outputs when the preset has none.
pub const DEFAULT_AAC: &str = "audioconvert ! audioresample ! avenc_aac bitrate=128000";
/// Audio branch for WebM outputs when the preset has none.
pub const DEFAULT_OPUS: &str = "audioconvert ! audioresample ! opusenc bitrate=128000";

/// Every muxer a job can get.
pub const MUXERS: &[&str] = &["mp4mux", "qtmux", "matroskamux", "webmmux"];

/// What the pipeline of one job is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The checked, canonical video branch.
    pub video: String,
    /// The audio branch, used when the input has audio.
    pub audio: String,
    /// The GStreamer muxer element for the output container.
    pub muxer: &'static str,
    /// The preset used, if any.
    pub preset: Option<String>,
}

/// A container the worker can write, chosen by the output key's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Container {
    muxer: &'static str,
    webm: bool,
}

fn container_for(output_key: &str) -> Result<Container, JobError> {
    let ext = Path::new(output_key)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let (muxer, webm) = match ext.as_deref() {
        None | Some("mp4") | Some("m4v") => ("mp4mux", false),
        Some("mov") => ("qtmux", false),
        Some("mkv") => ("matroskamux", false),
        Some("webm") => ("webmmux", true),
        Some(other) => {
            return Err(JobError::new(
                ErrorKind::InvalidJob,
                format!(
                    "output_key ends in .{other}, which is not a container this worker writes (mp4, m4v, mov, mkv, webm; no extension means mp4)"
                ),
            ))
        }
    };
    Ok(Container { muxer, webm })
}

/// Checks that `output_key`'s extension names a container this worker
/// writes (no extension means MP4).
pub fn check_container(output_key: &str) -> Result<(), JobError> {
    container_for(output_key).map(|_| ())
}

/// Every GStreamer element a worker with `settings` may need: its own
/// source, decoder, queue and sinks, the subtitle text converter, the
/// demuxers that verify outputs, every muxer, the default audio
/// branches, and each preset's elements. The worker checks at start that
/// all are installed, and loads their plugins ahead of the jobs.
pub fn required_elements(settings: &Settings) -> Vec<String> {
    let mut needed: Vec<String> = [
        "filesrc",
        "decodebin",
        "filesink",
        "queue",
        "fakesink",
        "capssetter",
        "qtdemux",
        "matroskademux",
    ]
    .iter()
    .chain(MUXERS)
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

/// Works out the pipeline for `job` under `settings`.
///
/// A job listing several `outputs` is refused as an invalid job: this
/// worker makes one output per job.
pub fn plan(job: &Job, settings: &Settings) -> Result<Plan, JobError> {
    if job.outputs.is_some() {
        return Err(JobError::new(
            ErrorKind::InvalidJob,
            "outputs (renditions) are not supported by this worker yet",
        ));
    }
    check_prefix(
        "input_key",
        &job.input_key,
        &settings.storage.allowed_input_prefixes,
    )?;
    check_prefix(
        "output_key",
        &job.output_key,
        &settings.storage.allowed_output_prefixes,
    )?;
    let container = container_for(&job.output_key)?;
    let allow = settings.allowlist();
    if let Some(options) = &job.transcode_options {
        if !settings.pipeline.allow_transcode_options {
            return Err(JobError::new(
                ErrorKind::InvalidPipeline,
                "this worker accepts presets only: transcode_options are refused",
            ));
        }
        let fragment = Fragment::parse(options, &allow)?;
        fragment.check_limits(&settings.limits())?;
        return Ok(Plan {
            video: fragment.to_string(),
            audio: default_audio(container).to_string(),
            muxer: container.muxer,
            preset: None,
        });
    }
    let name = match &job.preset {
        Some(name) => name.as_str(),
        None if container.webm => settings.pipeline.default_webm_preset.as_str(),
        None => settings.pipeline.default_preset.as_str(),
    };
    let preset = settings
        .preset(name)
        .map_err(|e| JobError::new(ErrorKind::InvalidJob, e))?;
    let fragment = Fragment::parse(&preset.video, &allow)?;
    Ok(Plan {
        video: fragment.to_string(),
        audio: preset
            .audio
            .clone()
            .unwrap_or_else(|| default_audio(container).to_string()),
        muxer: container.muxer,
        preset: Some(name.to_string()),
    })
}

impl Plan {
    /// A short stable text identifying what an output of `job` made with
    /// this plan depends on: the pipeline, the keys and the input's size. Stored with the
    /// output, it lets a redelivered job recognise its own finished output.
    pub fn fingerprint(&self, job: &Job, input_size: u64) -> String {
        let text = format!(
            "{}\n{}\n{}\n{}\n{}\n{input_size}",
            self.video, self.audio, self.muxer, job.input_key, job.output_key
        );
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

    #[test]
    fn jobs_with_outputs_are_refused_until_renditions_exist() {
        let job = Job::parse(
            br#"{"job_id":"j","input_key":"in.mov","outputs":[{"output_key":"o.mp4","preset":"h264-720p"}]}"#,
        )
        .unwrap();
        let err = plan(&job, &settings(&[])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidJob);
        assert_eq!(
            err.message,
            "outputs (renditions) are not supported by this worker yet"
        );
        // Also when the job gives an output_key beside its outputs.
        let mut both = job.clone();
        both.output_key = "o.mp4".into();
        assert_eq!(
            plan(&both, &settings(&[])).unwrap_err().kind,
            ErrorKind::InvalidJob
        );
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
        assert_eq!(p.video, "videoconvert ! x264enc");
        assert_eq!(p.muxer, "mp4mux");
        assert_eq!(p.audio, DEFAULT_AAC);
        assert_eq!(p.preset, None);
    }

    #[test]
    fn no_fragment_and_no_preset_means_the_default_preset() {
        let s = settings(&[]);
        let p = plan(&job("o.mp4", None, None), &s).unwrap();
        assert_eq!(p.preset.as_deref(), Some("h264-mp4"));
        assert!(p.video.contains("x264enc"));
        let p = plan(&job("o.webm", None, None), &s).unwrap();
        assert_eq!(p.preset.as_deref(), Some("vp9-webm"));
        assert_eq!(p.muxer, "webmmux");
        assert!(p.audio.contains("opusenc"));
        let p = plan(&job("o.MKV", None, Some("hevc-mp4")), &s).unwrap();
        assert_eq!(p.muxer, "matroskamux");
        assert!(p.video.contains("x265enc"));
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
