//! Parsing and checking of the untrusted pipeline fragment a job carries in
//! `transcode_options` (and of the fragments in presets).
//!
//! A fragment is the video branch of a pipeline: a single linear chain of
//! elements and caps filters, such as `videoconvert ! videoscale !
//! video/x-raw,height=720 ! x264enc speed-preset=fast`. This module accepts
//! only a strict subset of `gst-launch` syntax (no names, no references to
//! other elements, no bins, no second branch), checks every element against
//! an allowlist and every property against a denylist of names that reach
//! files, devices or the network, refuses the values of otherwise harmless
//! properties that read or write files (multi-pass statistics), bounds the
//! numbers that cost memory or CPU (frame sizes and rates, bitrates,
//! threads, look-ahead, queue sizes), and gives back a canonical text that
//! is what the pipeline process actually parses. It is pure Rust: a job is
//! checked before anything is downloaded, without GStreamer.

use std::collections::BTreeSet;
use std::fmt;

use crate::error::{ErrorKind, JobError};

/// Longest accepted fragment, in bytes.
pub const MAX_FRAGMENT_LEN: usize = 4096;
/// Most elements and caps filters in one fragment.
pub const MAX_SEGMENTS: usize = 32;

/// Elements a job may use unless the operator configures otherwise:
/// converters, scalers, rate and caps filters, encoders, parsers, queues.
pub const DEFAULT_ALLOWED_ELEMENTS: &[&str] = &[
    // conversion, scaling, filtering
    "videoconvert",
    "videoscale",
    "videoconvertscale",
    "videorate",
    "videocrop",
    "videoflip",
    "videobox",
    "videobalance",
    "deinterlace",
    "capsfilter",
    "queue",
    // encoders
    "x264enc",
    "x265enc",
    "vp8enc",
    "vp9enc",
    "av1enc",
    "openh264enc",
    "theoraenc",
    "jpegenc",
    "avenc_mpeg4",
    "avenc_mpeg2video",
    "avenc_h263",
    "avenc_prores",
    "avenc_dnxhd",
    // hardware encoders (a worker without them sends such jobs to one
    // that has them): NVIDIA NVENC, VA-API (old and new plugin), Intel QSV
    "nvh264enc",
    "nvh265enc",
    "vaapih264enc",
    "vaapih265enc",
    "vah264enc",
    "vah265enc",
    "qsvh264enc",
    "qsvh265enc",
    // parsers
    "h264parse",
    "h265parse",
    "vp9parse",
    "av1parse",
    "mpeg4videoparse",
    "mpegvideoparse",
];

/// Parts of property names that are refused on any element, and why: they
/// name files, devices or network peers, rename elements, pass free-form
/// option strings to an encoder library (which can write files), or turn on
/// debug output and dumps. Names are compared in lower case with `_` read as
/// `-`, as GStreamer reads them.
const DENIED_PROPERTY_PARTS: &[(&str, &str)] = &[
    ("location", "it reads or writes a file"),
    ("file", "it reads or writes a file"),
    ("path", "it reads or writes a file"),
    ("dir", "it reads or writes a file"),
    ("uri", "it opens a URI"),
    ("url", "it opens a URI"),
    ("device", "it opens a device"),
    ("host", "it reaches the network"),
    ("port", "it reaches the network"),
    ("socket", "it reaches the network"),
    ("address", "it reaches the network"),
    ("fd", "it writes to a file descriptor"),
    (
        "name",
        "it names elements, and references to other elements are not allowed",
    ),
    (
        "parent",
        "it names elements, and references to other elements are not allowed",
    ),
    (
        "option-string",
        "it passes options straight to the encoder library, which can read and write files",
    ),
    ("dump", "it turns on dumps, logs or debug output"),
    ("log", "it turns on dumps, logs or debug output"),
    ("debug", "it turns on dumps, logs or debug output"),
];

/// Properties of which only some values are accepted, the others reading or
/// writing files: (property, accepted values, why the others are refused).
/// Enum values must be given by their nicks, not numbers.
const RESTRICTED_VALUES: &[(&str, &[&str], &str)] = &[
    (
        "pass",
        &["cbr", "quant", "qual"],
        "multi-pass encoding reads and writes a statistics file",
    ),
    (
        "multipass-mode",
        &["one-pass", "single-pass"],
        "multi-pass encoding reads and writes a statistics file",
    ),
    (
        "enc-pass",
        &["one-pass"],
        "multi-pass encoding keeps statistics between runs",
    ),
];

/// Properties refused on one element: (element, property, why).
const DENIED_ELEMENT_PROPERTIES: &[(&str, &str, &str)] = &[(
    "videorate",
    "rate",
    "it changes the output's duration, which must match the input's",
)];

/// Most threads one element may be asked to use.
pub const MAX_THREADS: u64 = 64;
/// Most frames an encoder may be asked to hold for look-ahead.
pub const MAX_LOOKAHEAD_FRAMES: u64 = 60;
/// Longest keyframe interval a job may ask for, in frames.
pub const MAX_KEYFRAME_INTERVAL: u64 = 1000;
/// Highest frame rate caps may ask for, in frames per second.
pub const MAX_FRAME_RATE: u64 = 240;
/// Most a caps' pixel aspect ratio may stretch a frame, either way.
pub const MAX_ASPECT_STRETCH: u64 = 4;
/// Largest `queue` a job may ask for: bytes, buffers and nanoseconds.
pub const MAX_QUEUE: (u64, u64, u64) = (16 << 20, 1000, 10_000_000_000);

/// Numeric properties bounded because larger values cost memory or CPU out
/// of proportion: (names, most, what the number counts).
const BOUNDED_PROPERTIES: &[(&[&str], u64, &str)] = &[
    (
        &["threads", "n-threads", "multi-thread"],
        MAX_THREADS,
        "threads",
    ),
    (
        &["rc-lookahead", "sync-lookahead", "lag-in-frames"],
        MAX_LOOKAHEAD_FRAMES,
        "frames of look-ahead",
    ),
    (
        &[
            "key-int-max",
            "keyframe-max-dist",
            "keyframe-freq",
            "keyframe-force",
            "gop-size",
            "keyint-min",
        ],
        MAX_KEYFRAME_INTERVAL,
        "frames between keyframes",
    ),
    (
        &["max-size-bytes", "min-threshold-bytes"],
        MAX_QUEUE.0,
        "queued bytes",
    ),
    (
        &["max-size-buffers", "min-threshold-buffers"],
        MAX_QUEUE.1,
        "queued buffers",
    ),
    (
        &["max-size-time", "min-threshold-time"],
        MAX_QUEUE.2,
        "queued nanoseconds",
    ),
];

/// Words GStreamer reads as numbers in an integer property (`max` is the
/// largest value of the type).
const NUMBER_WORDS: &[&str] = &["min", "max", "little_endian", "big_endian", "byte_order"];

/// A checked, canonical pipeline fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Element {
        factory: String,
        properties: Vec<(String, String)>,
    },
    Caps(String),
}

/// Which elements a fragment may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    elements: BTreeSet<String>,
}

impl Default for Allowlist {
    fn default() -> Self {
        Allowlist::new(std::iter::empty::<&str>())
    }
}

impl Allowlist {
    /// The default allowlist plus `extra` element names from configuration.
    pub fn new<I, S>(extra: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut elements: BTreeSet<String> = DEFAULT_ALLOWED_ELEMENTS
            .iter()
            .map(|s| s.to_string())
            .collect();
        elements.extend(extra.into_iter().map(|s| s.as_ref().to_string()));
        Allowlist { elements }
    }

    /// Whether `factory` may appear in a fragment.
    pub fn allows(&self, factory: &str) -> bool {
        self.elements.contains(factory)
    }
}

/// Limits on what a fragment may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Widest frame a caps filter may ask for, in pixels.
    pub max_width: u32,
    /// Tallest frame a caps filter may ask for, in pixels.
    pub max_height: u32,
    /// Highest bitrate an encoder property may ask for, in kbit/s.
    pub max_bitrate_kbps: u64,
}

/// Encoders whose `bitrate` properties are in kbit/s (the others use bit/s).
const KBPS_ENCODERS: &[&str] = &[
    "x264enc",
    "x265enc",
    "theoraenc",
    "av1enc",
    "nvh264enc",
    "nvh265enc",
    "vaapih264enc",
    "vaapih265enc",
    "vah264enc",
    "vah265enc",
    "qsvh264enc",
    "qsvh265enc",
];

fn reject(message: String) -> JobError {
    JobError::new(ErrorKind::InvalidPipeline, message)
}

impl Fragment {
    /// Parses `text` and checks it against `allow`.
    pub fn parse(text: &str, allow: &Allowlist) -> Result<Fragment, JobError> {
        if text.len() > MAX_FRAGMENT_LEN {
            return Err(reject(format!(
                "the pipeline fragment is longer than {MAX_FRAGMENT_LEN} bytes"
            )));
        }
        if let Some(c) = text.chars().find(|c| c.is_control() && !c.is_whitespace()) {
            return Err(reject(format!(
                "the pipeline fragment contains the control character {c:?}"
            )));
        }
        let parts = split_outside_quotes(text, '!')?;
        if parts.len() > MAX_SEGMENTS {
            return Err(reject(format!(
                "the pipeline fragment has more than {MAX_SEGMENTS} elements"
            )));
        }
        let segments = parts
            .iter()
            .map(|part| parse_segment(part.trim(), allow))
            .collect::<Result<Vec<_>, _>>()?;
        if !segments
            .iter()
            .any(|s| matches!(s, Segment::Element { .. }))
        {
            return Err(reject(
                "the pipeline fragment has no element, only caps".to_string(),
            ));
        }
        Ok(Fragment { segments })
    }

    /// Refuses caps asking for frames larger or faster than `limits` allow,
    /// encoder bitrates above them, and numbers that cost memory or CPU out
    /// of proportion (threads, look-ahead, keyframe intervals, queue sizes,
    /// borders).
    pub fn check_limits(&self, limits: &Limits) -> Result<(), JobError> {
        for segment in &self.segments {
            match segment {
                Segment::Caps(caps) => check_caps(caps, limits)?,
                Segment::Element {
                    factory,
                    properties,
                } => check_element_limits(factory, properties, limits)?,
            }
        }
        Ok(())
    }

    /// The element factory names the fragment uses, in order.
    pub fn factories(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Element { factory, .. } => Some(factory.as_str()),
            Segment::Caps(_) => None,
        })
    }
}

impl fmt::Display for Fragment {
    /// The canonical launch text; every value is quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(" ! ")?;
            }
            match segment {
                Segment::Caps(caps) => f.write_str(caps)?,
                Segment::Element {
                    factory,
                    properties,
                } => {
                    f.write_str(factory)?;
                    for (name, value) in properties {
                        write!(f, " {name}=\"{value}\"")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Splits on `sep` outside double quotes; refuses unbalanced quotes and
/// backslashes (no escapes are needed in a fragment).
fn split_outside_quotes(text: &str, sep: char) -> Result<Vec<String>, JobError> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '\\' => {
                return Err(reject(
                    "backslashes are not allowed in a pipeline fragment".into(),
                ))
            }
            '"' => {
                quoted = !quoted;
                parts.last_mut().expect("never empty").push(c);
            }
            c if c == sep && !quoted => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    if quoted {
        return Err(reject("the pipeline fragment has an unclosed quote".into()));
    }
    Ok(parts)
}

fn parse_segment(part: &str, allow: &Allowlist) -> Result<Segment, JobError> {
    if part.is_empty() {
        return Err(reject(
            "the pipeline fragment has an empty element (two '!' in a row, or one at an end)"
                .into(),
        ));
    }
    let first = part.split_whitespace().next().unwrap_or_default();
    if first.contains('/') {
        return parse_caps(part).map(Segment::Caps);
    }
    let mut words = split_words(part)?.into_iter();
    let factory = words.next().unwrap_or_default();
    if !is_identifier(&factory) {
        return Err(reject(format!(
            "'{factory}' is not an element name (only a linear chain of elements and caps is allowed)"
        )));
    }
    if !allow.allows(&factory) {
        return Err(reject(format!(
            "element '{factory}' is not allowed in a job's pipeline fragment"
        )));
    }
    let mut properties = Vec::new();
    for word in words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(reject(format!(
                "'{word}' after '{factory}' is not a property=value pair (names and references to other elements are not allowed)"
            )));
        };
        if !is_identifier(name) {
            return Err(reject(format!(
                "'{name}' on '{factory}' is not a property name"
            )));
        }
        let canonical = name.to_ascii_lowercase().replace('_', "-");
        if let Some((part, why)) = DENIED_PROPERTY_PARTS
            .iter()
            .find(|(part, _)| canonical.contains(part))
        {
            return Err(reject(format!(
                "property '{name}' on '{factory}' is not allowed: {why} (names containing '{part}' are refused)"
            )));
        }
        if let Some((_, _, why)) = DENIED_ELEMENT_PROPERTIES
            .iter()
            .find(|(f, p, _)| *f == factory && *p == canonical)
        {
            return Err(reject(format!(
                "property '{name}' on '{factory}' is not allowed: {why}"
            )));
        }
        let value = parse_value(value, name)?;
        if let Some((_, accepted, why)) = RESTRICTED_VALUES.iter().find(|(p, ..)| *p == canonical) {
            if !accepted.contains(&value.as_str()) {
                return Err(reject(format!(
                    "{factory} {name}={value} is not allowed: {why} (accepted: {})",
                    accepted.join(", ")
                )));
            }
        }
        let value = if canonical == "caps" {
            parse_caps(&value)?
        } else {
            value
        };
        properties.push((canonical, value));
    }
    Ok(Segment::Element {
        factory,
        properties,
    })
}

/// Splits an element segment into words on whitespace outside quotes.
fn split_words(part: &str) -> Result<Vec<String>, JobError> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in part.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    Ok(words)
}

fn parse_value(raw: &str, name: &str) -> Result<String, JobError> {
    let value = match raw.strip_prefix('"') {
        Some(inner) => inner
            .strip_suffix('"')
            .ok_or_else(|| reject(format!("the value of '{name}' has a stray quote")))?,
        None => raw,
    };
    if value.is_empty() {
        return Err(reject(format!("property '{name}' has an empty value")));
    }
    if let Some(c) = value.chars().find(|c| !is_value_char(*c)) {
        return Err(reject(format!(
            "the value of '{name}' contains the character {c:?}, which is not allowed"
        )));
    }
    Ok(value.to_string())
}

fn parse_caps(text: &str) -> Result<String, JobError> {
    if let Some(c) = text.chars().find(|c| !(is_value_char(*c) || *c == ' ')) {
        return Err(reject(format!(
            "the caps '{text}' contain the character {c:?}, which is not allowed"
        )));
    }
    let media = text.split(',').next().unwrap_or_default().trim();
    if !media.starts_with("video/") {
        return Err(reject(format!(
            "the caps '{text}' are not video caps (the fragment is the video branch)"
        )));
    }
    Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Checks the fields of `caps` that decide a frame's size and rate.
fn check_caps(caps: &str, limits: &Limits) -> Result<(), JobError> {
    for field in caps.split(',').skip(1) {
        let Some((name, raw)) = field.split_once('=') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        let raw = raw.trim();
        let value = without_type(raw);
        match name.as_str() {
            "width" | "height" => {
                let max = if name == "width" {
                    limits.max_width
                } else {
                    limits.max_height
                };
                let Some(pixels) = decimal(value) else {
                    return Err(reject(format!(
                        "the caps field {name}={raw} is not a whole number of pixels"
                    )));
                };
                if pixels > u64::from(max) {
                    return Err(reject(format!(
                        "the caps ask for a {name} of {pixels}; the limit is {max}"
                    )));
                }
            }
            "framerate" | "max-framerate" => {
                let Some((n, d)) = fraction(value).filter(|(_, d)| *d > 0) else {
                    return Err(reject(format!(
                        "the caps field {name}={raw} is not a frame rate such as 25/1"
                    )));
                };
                if u128::from(n) > u128::from(MAX_FRAME_RATE) * u128::from(d) {
                    return Err(reject(format!(
                        "the caps ask for a {name} of {n}/{d}; the limit is {MAX_FRAME_RATE} frames per second"
                    )));
                }
            }
            "pixel-aspect-ratio" => {
                let Some((n, d)) = fraction(value).filter(|(n, d)| *n > 0 && *d > 0) else {
                    return Err(reject(format!(
                        "the caps field {name}={raw} is not a ratio such as 1/1"
                    )));
                };
                let stretch = u128::from(MAX_ASPECT_STRETCH);
                if u128::from(n) > stretch * u128::from(d)
                    || u128::from(d) > stretch * u128::from(n)
                {
                    return Err(reject(format!(
                        "the caps ask for a pixel-aspect-ratio of {n}/{d}, which stretches frames more than {MAX_ASPECT_STRETCH} times"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks the numbers an element's properties ask for.
fn check_element_limits(
    factory: &str,
    properties: &[(String, String)],
    limits: &Limits,
) -> Result<(), JobError> {
    let number = |name: &str, value: &str| {
        let not_a_number = || {
            reject(format!(
                "{factory} {name}={value} is not a plain decimal number"
            ))
        };
        if NUMBER_WORDS.contains(&value) {
            return Err(not_a_number());
        }
        if value.starts_with(|c: char| c.is_ascii_alphabetic()) {
            // An enum nick, such as `threads=auto`: no number to bound.
            return Ok(None);
        }
        value.parse::<i64>().map(Some).map_err(|_| not_a_number())
    };
    let mut borders = (0u64, 0u64);
    for (name, value) in properties {
        if name == "caps" {
            check_caps(value, limits)?;
            continue;
        }
        if name.contains("bitrate") {
            let Some(v) = number(name, value)? else {
                continue;
            };
            let v = v.max(0).unsigned_abs();
            let kbps = if KBPS_ENCODERS.contains(&factory) {
                v
            } else {
                v / 1000
            };
            if kbps > limits.max_bitrate_kbps {
                return Err(reject(format!(
                    "{factory} {name}={value} is {kbps} kbit/s; the limit is {} kbit/s",
                    limits.max_bitrate_kbps
                )));
            }
        }
        if let Some((_, max, what)) = BOUNDED_PROPERTIES
            .iter()
            .find(|(names, ..)| names.contains(&name.as_str()))
        {
            let Some(v) = number(name, value)? else {
                continue;
            };
            if v > 0 && v.unsigned_abs() > *max {
                return Err(reject(format!(
                    "{factory} {name}={value} asks for {v} {what}; the limit is {max}"
                )));
            }
        }
        if factory == "queue" && name == "max-size-bytes" && number(name, value)? == Some(0) {
            return Err(reject(format!(
                "queue max-size-bytes=0 lets the queue grow without bound; the limit is {} bytes",
                MAX_QUEUE.0
            )));
        }
        if factory == "videobox" && ["left", "right", "top", "bottom"].contains(&name.as_str()) {
            // Negative values add a border of that many pixels.
            let border = number(name, value)?.filter(|v| *v < 0).unwrap_or(0);
            let axis = if name == "left" || name == "right" {
                &mut borders.0
            } else {
                &mut borders.1
            };
            *axis = axis.saturating_add(border.unsigned_abs());
        }
    }
    if borders.0 > u64::from(limits.max_width) || borders.1 > u64::from(limits.max_height) {
        return Err(reject(format!(
            "videobox adds borders of {} by {} pixels; the limit is {}x{}",
            borders.0, borders.1, limits.max_width, limits.max_height
        )));
    }
    Ok(())
}

/// `value` without a leading type such as `(int)`.
fn without_type(value: &str) -> &str {
    match value.strip_prefix('(').and_then(|v| v.split_once(')')) {
        Some((_, rest)) => rest.trim(),
        None => value,
    }
}

/// A whole number written in decimal digits only (GStreamer also reads
/// hexadecimal and words such as `max`).
fn decimal(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// A fraction `N/D` written in decimal digits.
fn fraction(value: &str) -> Option<(u64, u64)> {
    let (n, d) = value.split_once('/')?;
    Some((decimal(n.trim())?, decimal(d.trim())?))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '-' | '_' | '.' | ':' | '+' | '/' | ',' | '=' | '(' | ')')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Fragment, JobError> {
        Fragment::parse(text, &Allowlist::default())
    }

    #[test]
    fn accepts_the_original_example() {
        let f = parse("videoconvert ! x264enc").unwrap();
        assert_eq!(f.to_string(), "videoconvert ! x264enc");
        assert_eq!(
            f.factories().collect::<Vec<_>>(),
            ["videoconvert", "x264enc"]
        );
    }

    #[test]
    fn canonicalizes_properties_and_caps() {
        let f = parse(
            "videoconvert ! videoscale ! video/x-raw, height=720 ! x264enc speed-preset=fast  bitrate=\"2000\"",
        )
        .unwrap();
        assert_eq!(
            f.to_string(),
            "videoconvert ! videoscale ! video/x-raw, height=720 ! x264enc speed-preset=\"fast\" bitrate=\"2000\""
        );
    }

    #[test]
    fn refuses_sources_sinks_and_unknown_elements() {
        for text in [
            "filesink location=/etc/cron.d/x",
            "videoconvert ! filesrc location=/root/.aws/credentials",
            "videoconvert ! tcpclientsink host=1.2.3.4",
            "multifilesink",
            "appsink",
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidPipeline);
            assert!(
                err.message.contains("not allowed"),
                "{text}: {}",
                err.message
            );
        }
    }

    #[test]
    fn refuses_file_properties_on_allowed_elements() {
        for text in [
            "x264enc stats-file=/tmp/x",
            "x264enc multipass-cache-file=/tmp/x",
            "x264enc option-string=dump-yuv=/tmp/y",
            "x264enc name=mux",
            "vp9enc location=/tmp/x",
            "x264enc LOCATION=/tmp/x",
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                err.message.contains("is not allowed"),
                "{text}: {}",
                err.message
            );
        }
    }

    #[test]
    fn refuses_branches_references_and_bins() {
        for text in [
            "videoconvert ! x264enc mux.",
            "videoconvert ! tw_mux.",
            "x264enc ! mux. videotestsrc",
            "( videoconvert ! x264enc )",
            "videoconvert ! ! x264enc",
            "videoconvert !",
            "",
            "video/x-raw",
            "audio/x-raw ! x264enc",
            "x264enc bitrate=\"2000",
            "x264enc bitrate=2000\\",
            "x264enc bitrate=$(id)",
            "x264enc bitrate=`id`",
            "x264enc bitrate=a;b",
            "x264enc bitrate=\"1 ! filesink location=x\"",
            "videoconvert\u{0}! x264enc",
        ] {
            assert!(parse(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn refuses_overlong_fragments() {
        let long = vec!["queue"; MAX_SEGMENTS + 1].join(" ! ");
        assert!(parse(&long).unwrap_err().message.contains("more than"));
        let huge = format!("x264enc bitrate={}", "1".repeat(MAX_FRAGMENT_LEN));
        assert!(parse(&huge).unwrap_err().message.contains("longer than"));
    }

    #[test]
    fn limits_cap_frame_size_and_bitrate() {
        let limits = Limits {
            max_width: 1920,
            max_height: 1080,
            max_bitrate_kbps: 50_000,
        };
        let ok =
            parse("videoscale ! video/x-raw,width=1920,height=(int)1080 ! x264enc bitrate=8000")
                .unwrap();
        assert!(ok.check_limits(&limits).is_ok());
        for text in [
            "videoscale ! video/x-raw,width=100000 ! x264enc",
            "videoscale ! video/x-raw, height=(int)4320 ! x264enc",
            "x264enc bitrate=900000",
            "vp9enc target-bitrate=90000000",
        ] {
            let err = parse(text).unwrap().check_limits(&limits).unwrap_err();
            assert!(err.message.contains("limit"), "{text}: {}", err.message);
        }
    }

    fn limits() -> Limits {
        Limits {
            max_width: 7680,
            max_height: 4320,
            max_bitrate_kbps: 200_000,
        }
    }

    /// The reason `text` is refused, by the parser or by the limits.
    fn refusal(text: &str) -> String {
        match parse(text).and_then(|f| f.check_limits(&limits())) {
            Ok(()) => panic!("accepted {text:?}"),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::InvalidPipeline);
                e.message
            }
        }
    }

    fn accepted(text: &str) -> Fragment {
        let f = parse(text).unwrap_or_else(|e| panic!("{text}: {}", e.message));
        f.check_limits(&limits())
            .unwrap_or_else(|e| panic!("{text}: {}", e.message));
        f
    }

    #[test]
    fn multi_pass_modes_are_refused_single_pass_ones_accepted() {
        for (text, reason) in [
            (
                "x264enc pass=pass1",
                "x264enc pass=pass1 is not allowed: multi-pass",
            ),
            ("x264enc pass=17", "x264enc pass=17 is not allowed"),
            ("avenc_mpeg4 pass=pass2", "accepted: cbr, quant, qual"),
            ("vp8enc multipass-mode=first-pass", "statistics file"),
            (
                "theoraenc multipass_mode=second-pass",
                "multipass_mode=second-pass",
            ),
            ("av1enc enc-pass=third-pass", "keeps statistics"),
        ] {
            let message = refusal(text);
            assert!(message.contains(reason), "{text}: {message}");
        }
        accepted("x264enc pass=qual quantizer=23");
        accepted("avenc_mpeg4 pass=cbr");
        accepted("vp9enc multipass-mode=one-pass");
        accepted("theoraenc multipass-mode=single-pass");
    }

    #[test]
    fn property_names_are_read_as_gstreamer_reads_them() {
        assert!(refusal("x264enc stats_file=/tmp/x").contains("'file'"));
        assert!(refusal("x264enc RC_LOOKAHEAD=250").contains("look-ahead"));
        assert!(refusal("x265enc log_level=full").contains("'log'"));
        assert_eq!(
            accepted("x264enc rc_lookahead=20").to_string(),
            "x264enc rc-lookahead=\"20\""
        );
    }

    #[test]
    fn caps_tricks_do_not_get_past_the_frame_limits() {
        for (text, reason) in [
            (
                "video/x-raw,width=(uint)100000 ! x264enc",
                "width of 100000",
            ),
            ("video/x-raw,height=(i)5000 ! x264enc", "height of 5000"),
            (
                "video/x-raw,width=max ! x264enc",
                "width=max is not a whole number",
            ),
            ("video/x-raw,width=0x10000 ! x264enc", "not a whole number"),
            ("video/x-raw,height=-1 ! x264enc", "not a whole number"),
            ("video/x-raw,framerate=241/1 ! x264enc", "the limit is 240"),
            (
                "video/x-raw,framerate=(fraction)30/0 ! x264enc",
                "not a frame rate",
            ),
            ("video/x-raw,framerate=max ! x264enc", "not a frame rate"),
            (
                "video/x-raw,max-framerate=1000/1 ! x264enc",
                "max-framerate of 1000/1",
            ),
            (
                "video/x-raw,pixel-aspect-ratio=5/1 ! x264enc",
                "more than 4 times",
            ),
            (
                "video/x-raw,pixel-aspect-ratio=0/1 ! x264enc",
                "not a ratio",
            ),
            (
                "capsfilter caps=video/x-raw,width=9000 ! x264enc",
                "width of 9000",
            ),
            ("capsfilter caps=audio/x-raw ! x264enc", "not video caps"),
            (
                "video/x-raw,pixel-aspect-ratio=18446744073709551615/1 ! x264enc",
                "stretches frames",
            ),
        ] {
            let message = refusal(text);
            assert!(message.contains(reason), "{text}: {message}");
        }
        accepted(
            "videoscale ! video/x-raw,width=(int)7680,height=4320,framerate=(fraction)30000/1001,pixel-aspect-ratio=4/3 ! x264enc",
        );
        accepted("videorate ! video/x-raw,framerate=240/1 ! x264enc");
        accepted("video/x-raw,framerate=18446744073709551615/18446744073709551615 ! x264enc");
        accepted("videoscale ! capsfilter caps=video/x-raw,width=1280 ! x264enc");
    }

    #[test]
    fn numbers_that_cost_memory_or_cpu_are_bounded() {
        for (text, reason) in [
            ("x264enc threads=65", "65 threads; the limit is 64"),
            ("openh264enc multi-thread=1000", "1000 threads"),
            (
                "x264enc sync-lookahead=61",
                "61 frames of look-ahead; the limit is 60",
            ),
            (
                "vp8enc keyframe-max-dist=1001",
                "frames between keyframes; the limit is 1000",
            ),
            ("avenc_mpeg4 gop-size=100000", "frames between keyframes"),
            ("queue max-size-bytes=0", "without bound"),
            ("queue max-size-bytes=16777217", "queued bytes"),
            ("queue max-size-buffers=1001", "queued buffers"),
            ("queue max-size-time=10000000001", "queued nanoseconds"),
            ("queue min-threshold-bytes=100000000", "queued bytes"),
            ("x264enc threads=max", "not a plain decimal number"),
            ("x264enc key-int-max=1e9", "not a plain decimal number"),
            (
                "vp9enc target-bitrate=0x7fffffff",
                "not a plain decimal number",
            ),
            ("openh264enc max-bitrate=300000000", "300000 kbit/s"),
            (
                "videobox left=-4000 right=-4000 ! x264enc",
                "borders of 8000 by 0",
            ),
            ("videobox top=min ! x264enc", "not a plain decimal number"),
            (
                "videobox left=-9223372036854775808 right=-9223372036854775808 ! x264enc",
                "borders of 18446744073709551615 by 0",
            ),
            (
                "videorate rate=2 ! x264enc",
                "changes the output's duration",
            ),
        ] {
            let message = refusal(text);
            assert!(message.contains(reason), "{text}: {message}");
        }
        accepted("x264enc threads=64 rc-lookahead=60 sync-lookahead=-1 key-int-max=250");
        accepted("avenc_mpeg4 threads=auto gop-size=12");
        accepted("queue max-size-bytes=10485760 max-size-buffers=0 max-size-time=0 ! x264enc");
        accepted("videobox left=-20 right=-20 top=16 bottom=-16 ! x264enc");
        accepted("videorate max-rate=30 ! x264enc");
    }

    #[test]
    fn operators_can_extend_the_allowlist() {
        let allow = Allowlist::new(["myenc"]);
        assert!(Fragment::parse("videoconvert ! myenc", &allow).is_ok());
        assert!(parse("videoconvert ! myenc").is_err());
    }

    mod fuzz {
        //! Property tests of the validator (run briefly by `cargo test`;
        //! `PROPTEST_CASES=1000000 cargo test --lib fragment::tests::fuzz`
        //! for a long run).
        use super::*;
        use proptest::prelude::*;

        /// Pieces of launch syntax, hostile and benign, to assemble.
        fn token() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("!".to_string()),
                Just(" ".to_string()),
                Just("\"".to_string()),
                Just("(".to_string()),
                Just(")".to_string()),
                Just(".".to_string()),
                Just("=".to_string()),
                Just("\\".to_string()),
                Just("videoconvert".to_string()),
                Just("x264enc".to_string()),
                Just("filesink".to_string()),
                Just("filesrc".to_string()),
                Just("location=/tmp/x".to_string()),
                Just("name=tw_mux".to_string()),
                Just("tw_mux.".to_string()),
                Just("video/x-raw,width=640".to_string()),
                Just("speed-preset=fast".to_string()),
                Just("option-string=a".to_string()),
                "[a-z0-9_/=,.:-]{0,12}",
                any::<char>().prop_map(String::from),
            ]
        }

        proptest! {
            #[test]
            fn never_panics_on_any_text(text in ".{0,300}") {
                if let Ok(fragment) = Fragment::parse(&text, &Allowlist::default()) {
                    let _ = fragment.check_limits(&limits());
                }
            }

            #[test]
            fn limits_never_panic_on_any_number(
                field in "(width|height|framerate|pixel-aspect-ratio)",
                property in "(threads|bitrate|rc-lookahead|max-size-bytes|left|top)",
                a in "-?[0-9]{1,25}",
                b in "[0-9]{1,25}",
            ) {
                let text = format!(
                    "videobox {property}={a} ! video/x-raw,{field}={a}/{b} ! queue {property}={b}"
                );
                if let Ok(fragment) = Fragment::parse(&text, &Allowlist::default()) {
                    let _ = fragment.check_limits(&limits());
                }
            }

            #[test]
            fn accepted_fragments_are_safe_and_canonical(tokens in prop::collection::vec(token(), 0..24)) {
                let text = tokens.concat();
                let allow = Allowlist::default();
                if let Ok(fragment) = Fragment::parse(&text, &allow) {
                    for factory in fragment.factories() {
                        prop_assert!(allow.allows(factory), "{factory} from {text:?}");
                    }
                    let canonical = fragment.to_string();
                    prop_assert!(!canonical.contains('(') || canonical.contains('/'), "{canonical:?}");
                    prop_assert!(!canonical.contains('\\'), "{canonical:?}");
                    for segment in canonical.split(" ! ") {
                        let mut words = segment.split(' ');
                        let first = words.next().unwrap_or_default();
                        if first.contains('/') {
                            // Caps: plain field=value text, no quotes or links.
                            prop_assert!(!segment.contains('"') && !segment.contains('!'), "{segment:?}");
                            continue;
                        }
                        prop_assert!(allow.allows(first), "{first} in {canonical:?}");
                        for word in words {
                            let (name, value) = word.split_once('=').expect("property=value");
                            let name = name.to_ascii_lowercase();
                            for (denied, _) in DENIED_PROPERTY_PARTS {
                                prop_assert!(!name.contains(denied), "{name} in {canonical:?}");
                            }
                            prop_assert!(value.starts_with('"') && value.ends_with('"') && value.len() >= 3);
                            prop_assert!(!value[1..value.len() - 1].contains('"'));
                        }
                    }
                    let again = Fragment::parse(&canonical, &allow).expect("canonical text parses");
                    prop_assert_eq!(again.to_string(), canonical);
                }
            }
        }
    }
}
