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

mod limits;

use limits::{check_caps, check_element_limits};
pub use limits::{
    Limits, MAX_ASPECT_STRETCH, MAX_FRAME_RATE, MAX_KEYFRAME_INTERVAL, MAX_LOOKAHEAD_FRAMES,
    MAX_QUEUE, MAX_THREADS,
};

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
mod tests;
