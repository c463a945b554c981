//! What one job makes of its one decoded input: its outputs, each a file
//! or an HLS package, and the encodings (renditions) that make them.
//!
//! A job's outputs are planned by [`crate::plan`] into [`Target`]s, handed
//! to the pipeline process inside its spec, and made there from one decode:
//! every [`Encoding`] is one branch of the same pipeline. The rules about
//! frame sizes live here, as pure functions:
//!
//! - **no upscaling**: an encoding with a `max_height` (a preset's
//!   `height`) scales taller sources down to that height, keeping their
//!   shape; a source no taller is left at its own height unless the preset
//!   says `upscale = true` ([`sizing`]);
//! - **ladders**: the variants of an HLS package that come from a ladder
//!   preset are *optional*: those taller than the source are left out
//!   (when none fits, the shortest is made at the source's height), see
//!   [`chosen_variants`].

use serde::{Deserialize, Serialize};

/// Segment length of an HLS package when the preset names none, in seconds.
pub const DEFAULT_SEGMENT_SECONDS: u32 = 6;

/// How one rendition is encoded: its branches, its muxer and its height.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encoding {
    /// The checked video branch.
    pub video: String,
    /// The audio branch; each audio track it carries gets its own instance.
    pub audio: String,
    /// The muxer element (`mp4mux`, `qtmux`, `matroskamux`, `webmmux`), or
    /// `hlssink2` for a variant of an HLS package.
    pub muxer: String,
    /// The height in lines the video is scaled to (keeping its shape); the
    /// source's height when it is not taller, unless `upscale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u32>,
    /// Whether a shorter source is scaled up to `max_height`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upscale: bool,
}

/// The muxer name of HLS variants.
pub const HLS_MUXER: &str = "hlssink2";

/// What one output key receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One file made by one encoding.
    File(Encoding),
    /// An HLS package: a master playlist at the key, each variant's
    /// playlist and segments in a folder of its own beside it.
    Hls(HlsPackage),
}

impl Target {
    /// Every encoding it may run.
    pub fn encodings(&self) -> Vec<&Encoding> {
        match self {
            Target::File(encoding) => vec![encoding],
            Target::Hls(package) => package.variants.iter().map(|v| &v.encoding).collect(),
        }
    }
}

/// An HLS package: variants cut into segments of the same length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HlsPackage {
    /// Target segment length in seconds; every variant has a key frame
    /// at each multiple of it, so their segments start at the same times.
    pub segment_seconds: u32,
    /// The variants, tallest first as the ladder lists them.
    pub variants: Vec<Variant>,
}

/// One variant of an HLS package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Its folder beside the master playlist, e.g. `720p`.
    pub name: String,
    /// How it is encoded (muxer [`HLS_MUXER`]).
    pub encoding: Encoding,
    /// From a ladder: left out when taller than the source.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// The frame size an encoding makes of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizing {
    /// The output's size in pixels, when the encoding scales (`None`:
    /// the frames keep the source's size).
    pub scale_to: Option<(u32, u32)>,
    /// Why the output is shorter than the encoding asks, for the log and
    /// the output's metadata.
    pub note: Option<String>,
}

/// The frame size `encoding` makes of a source of `width`x`height` pixels
/// whose pixels are `par` (width, height) wide: see the module
/// documentation. Sizes are even (4:2:0 encoders need it) and keep the
/// source's display shape with square pixels.
pub fn sizing(encoding: &Encoding, width: u32, height: u32, par: (u32, u32)) -> Sizing {
    let Some(want) = encoding.max_height else {
        return Sizing {
            scale_to: None,
            note: None,
        };
    };
    if height == 0 || width == 0 || want == height || (want > height && !encoding.upscale) {
        let note = (want > height && height > 0).then(|| {
            format!(
                "made at the source's {height} lines: the preset asks for {want}, and does not upscale"
            )
        });
        return Sizing {
            scale_to: None,
            note,
        };
    }
    let (par_n, par_d) = if par.0 == 0 || par.1 == 0 {
        (1, 1)
    } else {
        par
    };
    let display_width = f64::from(width) * f64::from(par_n) / f64::from(par_d) * f64::from(want)
        / f64::from(height);
    Sizing {
        scale_to: Some((even(display_width), even(f64::from(want)))),
        note: None,
    }
}

/// `x` rounded to the nearest even number, at least 2.
fn even(x: f64) -> u32 {
    ((x / 2.0).round() as u32 * 2).max(2)
}

/// Which of `variants` are made for a source `height` lines tall (their
/// indexes, in order): every variant that is not optional, and each
/// optional one no taller than the source; when no optional one fits, the
/// shortest optional one (made at the source's height). The variants left
/// out come with a sentence each.
pub fn chosen_variants(variants: &[Variant], height: u32) -> (Vec<usize>, Vec<String>) {
    let tall = |v: &Variant| v.encoding.max_height.unwrap_or(0);
    let fits = |v: &Variant| !v.optional || v.encoding.upscale || tall(v) <= height;
    let mut chosen: Vec<usize> = (0..variants.len())
        .filter(|&i| fits(&variants[i]))
        .collect();
    if !chosen.iter().any(|&i| variants[i].optional) {
        if let Some(shortest) = (0..variants.len())
            .filter(|&i| variants[i].optional)
            .min_by_key(|&i| tall(&variants[i]))
        {
            chosen.push(shortest);
            chosen.sort_unstable();
        }
    }
    let left_out = (0..variants.len())
        .filter(|i| !chosen.contains(i))
        .map(|i| {
            format!(
                "variant {} is left out: it is {} lines tall and the source has {height}",
                variants[i].name,
                tall(&variants[i])
            )
        })
        .collect();
    (chosen, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoding(max_height: Option<u32>, upscale: bool) -> Encoding {
        Encoding {
            video: "videoconvert ! x264enc".into(),
            audio: "audioconvert ! avenc_aac".into(),
            muxer: "mp4mux".into(),
            max_height,
            upscale,
        }
    }

    #[test]
    fn taller_sources_are_scaled_down_keeping_their_shape() {
        let s = sizing(&encoding(Some(720), false), 1920, 1080, (1, 1));
        assert_eq!(s.scale_to, Some((1280, 720)));
        assert_eq!(s.note, None);
        // 16:9 at 480 lines is 853.3 pixels wide: even.
        let s = sizing(&encoding(Some(480), false), 1920, 1080, (1, 1));
        assert_eq!(s.scale_to, Some((854, 480)));
        // Anamorphic DV (720x480, pixels 32:27 wide) shown at 360 lines.
        let s = sizing(&encoding(Some(360), false), 720, 480, (32, 27));
        assert_eq!(s.scale_to, Some((640, 360)));
    }

    #[test]
    fn shorter_sources_are_not_upscaled_unless_the_preset_says_so() {
        let s = sizing(&encoding(Some(720), false), 640, 480, (1, 1));
        assert_eq!(s.scale_to, None);
        assert_eq!(
            s.note.as_deref(),
            Some("made at the source's 480 lines: the preset asks for 720, and does not upscale")
        );
        let s = sizing(&encoding(Some(720), true), 640, 480, (1, 1));
        assert_eq!(s.scale_to, Some((960, 720)));
        assert_eq!(s.note, None);
        // The same height, or no height at all: the source's size.
        assert_eq!(
            sizing(&encoding(Some(480), false), 640, 480, (1, 1)).scale_to,
            None
        );
        assert_eq!(
            sizing(&encoding(None, false), 640, 480, (1, 1)).scale_to,
            None
        );
    }

    fn ladder(heights: &[u32]) -> Vec<Variant> {
        heights
            .iter()
            .map(|h| Variant {
                name: format!("{h}p"),
                encoding: encoding(Some(*h), false),
                optional: true,
            })
            .collect()
    }

    #[test]
    fn a_ladder_leaves_out_the_variants_taller_than_the_source() {
        let variants = ladder(&[1080, 720, 480, 360]);
        let (chosen, left_out) = chosen_variants(&variants, 480);
        assert_eq!(chosen, [2, 3]);
        assert_eq!(
            left_out,
            [
                "variant 1080p is left out: it is 1080 lines tall and the source has 480",
                "variant 720p is left out: it is 720 lines tall and the source has 480",
            ]
        );
        assert_eq!(chosen_variants(&variants, 1080).0, [0, 1, 2, 3]);
        assert_eq!(chosen_variants(&variants, 2160).0, [0, 1, 2, 3]);
        // Shorter than every rung: the shortest one, at the source's height.
        let (chosen, left_out) = chosen_variants(&variants, 240);
        assert_eq!(chosen, [3]);
        assert_eq!(left_out.len(), 3);
    }

    #[test]
    fn variants_asked_for_one_by_one_are_always_made() {
        let mut variants = ladder(&[720]);
        variants[0].optional = false;
        assert_eq!(chosen_variants(&variants, 240).0, [0]);
    }

    #[test]
    fn targets_serialize_as_the_spec_carries_them() {
        let target = Target::File(encoding(Some(720), false));
        let text = serde_json::to_string(&target).unwrap();
        assert_eq!(
            text,
            r#"{"file":{"video":"videoconvert ! x264enc","audio":"audioconvert ! avenc_aac","muxer":"mp4mux","max_height":720}}"#
        );
        assert_eq!(serde_json::from_str::<Target>(&text).unwrap(), target);
    }
}
