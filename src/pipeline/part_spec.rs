//! What the pipeline of a part of a segmented job is asked to encode (a
//! video segment or the audio part, and where it reads the input) and
//! what it reports.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ranged::Ranged;

/// Where a part reads the job's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartInput {
    /// A local file: a copy of the input, or the shared folder's file.
    File(PathBuf),
    /// The input in S3, read by byte ranges (see [`Ranged`]).
    Ranged(Ranged),
}

impl From<PathBuf> for PartInput {
    fn from(path: PathBuf) -> PartInput {
        PartInput::File(path)
    }
}

/// One video segment to encode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoSpec {
    /// The input.
    pub input: PartInput,
    /// The part file to write.
    pub output: PathBuf,
    /// The job's checked video branch.
    pub video: String,
    /// The muxer of the output's container.
    pub muxer: String,
    /// Stream time (ns) from which frames belong to this segment; `None`
    /// for the first.
    pub from_ns: Option<u64>,
    /// Stream time (ns) from which frames belong to the next; `None` for
    /// the last.
    pub until_ns: Option<u64>,
    /// Where to seek before decoding (a key frame at or before `from_ns`).
    pub seek_ns: Option<u64>,
}

/// What a video segment holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedVideo {
    /// Frames encoded.
    pub frames: u64,
    /// Stream time of its first frame, ns (the part file starts there at 0).
    pub first_ns: u64,
    /// Stream time of its last frame plus that frame's duration, ns.
    pub end_ns: u64,
    /// The decoders the part's pipeline created (element factories): the
    /// video stream's only.
    #[serde(default)]
    pub decoders: Vec<String>,
    /// Frames the decoder delivered before the segment's first (from the
    /// key frame the decoding starts at, and before the seek).
    #[serde(default)]
    pub decoded_before: u64,
    /// Frames the decoder delivered after the segment's last: the first
    /// one past its end, and those already decoding when it was told to
    /// stop.
    #[serde(default)]
    pub decoded_after: u64,
    /// Bytes of the input fetched from storage by ranges for this part
    /// (not those another part of the job had fetched here before).
    #[serde(default)]
    pub fetched: u64,
    /// Of `fetched`, the bytes fetched ahead of the part's reads.
    #[serde(default)]
    pub fetched_ahead: u64,
    /// Milliseconds the part's reads by ranges waited for storage.
    #[serde(default)]
    pub read_wait_ms: u64,
}

/// The audio part to encode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioSpec {
    /// The input.
    pub input: PartInput,
    /// The part file to write.
    pub output: PathBuf,
    /// The plan's audio branch; each track gets its own instance.
    pub audio: String,
    /// The muxer of the output's container.
    pub muxer: String,
    /// Audio tracks the probe found.
    pub tracks: usize,
}

/// What the audio part holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedAudio {
    /// Tracks written.
    pub tracks: usize,
    /// Stream time of its earliest sample, ns (the part file starts there at 0).
    pub first_ns: u64,
    /// Stream time where its longest track ends, ns.
    pub end_ns: u64,
    /// The decoders the part's pipeline created (element factories): the
    /// audio tracks' only.
    #[serde(default)]
    pub decoders: Vec<String>,
    /// Bytes of the input fetched from storage by ranges for this part.
    #[serde(default)]
    pub fetched: u64,
    /// Of `fetched`, the bytes fetched ahead of the part's reads.
    #[serde(default)]
    pub fetched_ahead: u64,
    /// Milliseconds the part's reads by ranges waited for storage.
    #[serde(default)]
    pub read_wait_ms: u64,
}
