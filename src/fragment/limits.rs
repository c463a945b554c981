//! The numbers a pipeline fragment may ask for: frame sizes and rates in
//! caps, bitrates, threads, look-ahead, keyframe intervals and queue
//! sizes, each bounded because larger values cost memory or CPU out of
//! proportion.

use super::reject;
use crate::error::JobError;

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

/// Checks the fields of `caps` that decide a frame's size and rate.
pub(super) fn check_caps(caps: &str, limits: &Limits) -> Result<(), JobError> {
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
pub(super) fn check_element_limits(
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
