//! Parsing and checking of the untrusted pipeline fragment a job carries in
//! `transcode_options` (and of the fragments in presets).
//!
//! A fragment is the video branch of a pipeline: a single linear chain of
//! elements and caps filters, such as `videoconvert ! videoscale !
//! video/x-raw,height=720 ! x264enc speed-preset=fast`. This module accepts
//! only a strict subset of `gst-launch` syntax (no names, no references to
//! other elements, no bins, no second branch), checks every element against
//! an allowlist and every property against a denylist of names that reach
//! files, devices or the network, and gives back a canonical text that is
//! what the pipeline process actually parses. It is pure Rust: a job is
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
    // parsers
    "h264parse",
    "h265parse",
    "vp9parse",
    "av1parse",
    "mpeg4videoparse",
    "mpegvideoparse",
];

/// Property names, or parts of names, that are refused on any element: they
/// name files, devices or network peers, rename elements, or pass free-form
/// option strings to an encoder library (which can write files).
const DENIED_PROPERTY_PARTS: &[&str] = &[
    "location",
    "file",
    "uri",
    "url",
    "path",
    "dir",
    "device",
    "host",
    "port",
    "socket",
    "address",
    "fd",
    "name",
    "parent",
    "option-string",
    "dump",
];

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
const KBPS_ENCODERS: &[&str] = &["x264enc", "x265enc", "theoraenc", "av1enc"];

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

    /// Refuses caps asking for frames larger than `limits` and encoder
    /// bitrates above them.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), JobError> {
        for segment in &self.segments {
            match segment {
                Segment::Caps(caps) => {
                    for field in caps.split(',').skip(1) {
                        let Some((name, value)) = field.split_once('=') else {
                            continue;
                        };
                        let (name, max) = match name.trim() {
                            "width" => ("width", limits.max_width),
                            "height" => ("height", limits.max_height),
                            _ => continue,
                        };
                        let digits = value.trim().trim_start_matches("(int)");
                        if digits.parse::<u64>().is_ok_and(|v| v > u64::from(max)) {
                            return Err(reject(format!(
                                "the caps ask for a {name} of {digits}; the limit is {max}"
                            )));
                        }
                    }
                }
                Segment::Element {
                    factory,
                    properties,
                } => {
                    for (name, value) in properties {
                        if !name.contains("bitrate") {
                            continue;
                        }
                        let Ok(v) = value.parse::<u64>() else {
                            continue;
                        };
                        let kbps = if KBPS_ENCODERS.contains(&factory.as_str()) {
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
                }
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
        let lower = name.to_ascii_lowercase();
        if let Some(part) = DENIED_PROPERTY_PARTS.iter().find(|p| lower.contains(*p)) {
            return Err(reject(format!(
                "property '{name}' on '{factory}' is not allowed (properties that name a {part} are refused)"
            )));
        }
        properties.push((name.to_string(), parse_value(value, name)?));
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
                let _ = Fragment::parse(&text, &Allowlist::default());
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
                            for denied in DENIED_PROPERTY_PARTS {
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
