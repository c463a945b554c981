//! Presets: named, operator-defined ways to transcode (`[presets.NAME]`),
//! and the checks they pass when the settings are loaded.
//!
//! A preset is either one encoding (a video branch, an audio branch, and
//! optionally the `height` its video is scaled down to) or a **ladder**:
//! `renditions = ["h264-1080p", "h264-720p", ...]` names other presets,
//! each one variant of an HLS package (a ladder makes `.m3u8` outputs
//! only). A rendition's `height` is its rung: on a shorter source the
//! rungs above it are left out (see [`crate::rendition`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::fragment::{Allowlist, Fragment};

/// Longest HLS segment a preset may ask for, in seconds.
pub const MAX_SEGMENT_SECONDS: u32 = 60;
/// Shortest frame height a preset may ask for, in lines.
pub const MIN_HEIGHT: u32 = 16;

/// A named, operator-defined way to transcode.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Preset {
    /// What it makes, for people.
    #[serde(default)]
    pub description: String,
    /// The video branch, e.g. `videoconvert ! x264enc`; empty for a ladder.
    #[serde(default)]
    pub video: String,
    /// Video branches preferred to `video`, best first, each used by a
    /// worker that has all its elements (hardware encoders, say); `video`
    /// is used by the others.
    #[serde(default)]
    pub alternatives: Vec<String>,
    /// The audio branch; the container's default when absent.
    #[serde(default)]
    pub audio: Option<String>,
    /// The height in lines the worker scales the video down to, keeping
    /// its shape (the frames are left as they are when absent). A source
    /// no taller keeps its own height unless `upscale`.
    #[serde(default)]
    pub height: Option<u32>,
    /// Whether a shorter source is scaled up to `height`.
    #[serde(default)]
    pub upscale: bool,
    /// A ladder: the presets of its renditions, tallest first.
    #[serde(default)]
    pub renditions: Vec<String>,
    /// Segment length of the HLS packages it makes, in seconds
    /// ([`crate::rendition::DEFAULT_SEGMENT_SECONDS`] when absent).
    #[serde(default)]
    pub hls_segment_seconds: Option<u32>,
}

impl Preset {
    /// Whether it is a ladder (it names renditions).
    pub fn is_ladder(&self) -> bool {
        !self.renditions.is_empty()
    }

    /// The folder of its variant in an HLS package: `720p` for a preset
    /// with `height = 720`, else the preset's `name`.
    pub fn folder(&self, name: &str) -> String {
        match self.height {
            Some(height) => format!("{height}p"),
            None => name.to_string(),
        }
    }
}

/// Checks every preset: a single one has a video branch and alternatives
/// that pass the fragment checks, an even `height` of at least [`MIN_HEIGHT`]; a ladder
/// has no branches of its own and names existing single presets with
/// different folders; segment lengths are 1 to [`MAX_SEGMENT_SECONDS`].
/// Errors name the setting (`presets.NAME.FIELD`) and the problem.
pub fn check(
    presets: &BTreeMap<String, Preset>,
    allow: &Allowlist,
) -> Result<(), (String, String)> {
    for (name, preset) in presets {
        let setting = |field: &str| format!("presets.{name}.{field}");
        if let Some(secs) = preset.hls_segment_seconds {
            if secs == 0 || secs > MAX_SEGMENT_SECONDS {
                return Err((
                    setting("hls_segment_seconds"),
                    format!("must be 1 to {MAX_SEGMENT_SECONDS} seconds"),
                ));
            }
        }
        if preset.is_ladder() {
            if !preset.video.is_empty()
                || !preset.alternatives.is_empty()
                || preset.audio.is_some()
                || preset.height.is_some()
            {
                return Err((
                    setting("renditions"),
                    "a ladder has no video, alternatives, audio or height of its own: its renditions have them"
                        .into(),
                ));
            }
            let mut folders = BTreeSet::new();
            for rendition in &preset.renditions {
                let Some(rung) = presets.get(rendition) else {
                    return Err((
                        setting("renditions"),
                        format!("there is no preset named {rendition:?}"),
                    ));
                };
                if rung.is_ladder() {
                    return Err((
                        setting("renditions"),
                        format!("{rendition:?} is a ladder itself"),
                    ));
                }
                if !folders.insert(rung.folder(rendition)) {
                    return Err((
                        setting("renditions"),
                        format!(
                            "two renditions would share the folder {:?} (give them different heights)",
                            rung.folder(rendition)
                        ),
                    ));
                }
            }
            continue;
        }
        Fragment::parse(&preset.video, allow).map_err(|e| (setting("video"), e.message))?;
        for (i, alternative) in preset.alternatives.iter().enumerate() {
            Fragment::parse(alternative, allow)
                .map_err(|e| (setting(&format!("alternatives[{i}]")), e.message))?;
        }
        if let Some(height) = preset.height {
            if height < MIN_HEIGHT || height % 2 != 0 {
                return Err((
                    setting("height"),
                    format!("must be an even number of lines, at least {MIN_HEIGHT}"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presets(toml_text: &str) -> BTreeMap<String, Preset> {
        toml::from_str(toml_text).unwrap()
    }

    const RUNGS: &str = r#"
        [h720]
        video = "videoconvert ! x264enc"
        height = 720
        [h360]
        video = "videoconvert ! x264enc"
        height = 360
    "#;

    #[test]
    fn ladders_name_single_presets_with_their_own_folders() {
        let ok = presets(&format!(
            "{RUNGS}\n[ladder]\nrenditions = [\"h720\", \"h360\"]\nhls_segment_seconds = 4\n"
        ));
        check(&ok, &Allowlist::default()).unwrap();
        assert!(ok["ladder"].is_ladder());
        assert_eq!(ok["h720"].folder("h720"), "720p");

        let cases = [
            (
                "[l]\nrenditions = [\"nope\"]",
                "presets.l.renditions",
                "no preset named \"nope\"",
            ),
            (
                "[l]\nrenditions = [\"h720\", \"h720\"]",
                "presets.l.renditions",
                "share the folder \"720p\"",
            ),
            (
                "[l]\nrenditions = [\"h720\"]\n[m]\nrenditions = [\"l\"]",
                "presets.m.renditions",
                "is a ladder itself",
            ),
            (
                "[l]\nrenditions = [\"h720\"]\nvideo = \"x264enc\"",
                "presets.l.renditions",
                "no video",
            ),
            (
                "[l]\nrenditions = [\"h720\"]\nhls_segment_seconds = 0",
                "presets.l.hls_segment_seconds",
                "1 to 60",
            ),
            (
                "[odd]\nvideo = \"x264enc\"\nheight = 721",
                "presets.odd.height",
                "even",
            ),
            (
                "[bad]\nvideo = \"filesink\"",
                "presets.bad.video",
                "not allowed",
            ),
        ];
        for (extra, setting, problem) in cases {
            let all = presets(&format!("{RUNGS}\n{extra}\n"));
            let (got_setting, got_problem) = check(&all, &Allowlist::default()).unwrap_err();
            assert_eq!(got_setting, setting, "{extra}");
            assert!(got_problem.contains(problem), "{extra}: {got_problem}");
        }
    }
}
