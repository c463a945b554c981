//! The plan of a segmented job, pure logic: where the input is cut (on
//! frame boundaries, moved to a source key frame when one is near), which
//! parts there are, the order their tasks are queued in, the share of the
//! job each part is, and whether a video branch can be cut at all.
//!
//! A cut is a stream time half a frame before the first frame of a
//! segment: every frame whose stream time is below it belongs to the
//! segments before, every other frame to the segments after, so neighbours
//! can neither both keep a frame nor both leave it out.

use serde::{Deserialize, Serialize};

use crate::job::Job;
use crate::pipeline::{MediaInfo, Scan};

/// How far (as a share of the segment length) a cut may move to land on
/// a source key frame, where its segment starts without decoding frames
/// it then drops; the encoders of the cut put a key frame there anyway,
/// and a source encoder puts key frames at scene changes.
pub const KEY_FRAME_TOLERANCE: f64 = 0.25;

/// The shortest segment, as a share of the segment length: a shorter tail
/// joins the segment before it.
pub const SHORTEST_TAIL: f64 = 0.5;

/// One video segment: the stream times it starts and ends at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    /// Stream time (ns) from which frames are this segment's; `None` for
    /// the first.
    pub from_ns: Option<u64>,
    /// Stream time (ns) from which frames are the next segment's; `None`
    /// for the last.
    pub until_ns: Option<u64>,
    /// Where its encoder seeks to (a key frame at or before `from_ns`).
    pub seek_ns: Option<u64>,
    /// Whether it starts on a source key frame.
    pub on_key_frame: bool,
}

impl Cut {
    /// Its length in ns, given where the input starts and ends.
    pub fn length_ns(&self, first_ns: u64, end_ns: u64) -> u64 {
        self.until_ns
            .unwrap_or(end_ns)
            .saturating_sub(self.from_ns.unwrap_or(first_ns))
    }
}

/// A part of a segmented job: a video segment, or the audio of the whole
/// input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Video segment N (from 0).
    Video(u32),
    /// Every audio track of the input.
    Audio,
}

impl Part {
    /// Its name in object keys: `v0003`, `audio`.
    pub fn name(self) -> String {
        match self {
            Part::Video(i) => format!("v{i:04}"),
            Part::Audio => "audio".into(),
        }
    }

    /// The part a name stands for.
    pub fn from_name(name: &str) -> Option<Part> {
        if name == "audio" {
            return Some(Part::Audio);
        }
        let digits = name.strip_prefix('v')?;
        (digits.len() == 4 || digits.len() > 4 && !digits.starts_with('0'))
            .then(|| digits.parse().ok().map(Part::Video))
            .flatten()
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Video(i) => write!(f, "segment {i}"),
            Part::Audio => f.write_str("the audio part"),
        }
    }
}

/// What a segmented job is cut into and made with; stored beside its
/// parts, read by every worker that encodes one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentPlan {
    /// Names this plan (a job planned again gets a new one).
    pub plan_id: String,
    /// The job.
    pub job_id: String,
    /// The job's message as it was published: dead-lettered if the job
    /// fails for good.
    pub message: String,
    /// The jobs queue it came from (its priority); its parts are queued there.
    pub queue: String,
    /// The attempt of the job that split it.
    pub attempt: u32,
    /// The job's failed attempts before it was split.
    #[serde(default)]
    pub history: Vec<String>,
    /// What its output depends on (see [`crate::plan::OutputPlan::fingerprint`]).
    pub fingerprint: String,
    /// The checked video branch.
    pub video: String,
    /// The audio branch.
    pub audio: String,
    /// The output's muxer; the parts are in its container too.
    pub muxer: String,
    /// The preset, if any.
    #[serde(default)]
    pub preset: Option<String>,
    /// The input's size in bytes and version, as the split saw them.
    pub input_size: u64,
    /// The input's version (ETag, or size and time), when known.
    #[serde(default)]
    pub input_version: Option<String>,
    /// The input, as probed.
    pub media: MediaInfo,
    /// Video frames the scan read.
    pub frames: u64,
    /// Stream time of the first frame, ns.
    pub first_ns: u64,
    /// Stream time where the video ends, ns.
    pub end_ns: u64,
    /// Nominal frame duration, ns.
    pub frame_ns: u64,
    /// The video segments, in order.
    pub cuts: Vec<Cut>,
    /// The video segment whose task also encodes the audio part, in a
    /// pipeline beside the segment's (as a whole-file job encodes its audio
    /// beside its video, on another core), in plans of older workers;
    /// `None` when the audio goes by claim (`audio_by_claim`) or has a
    /// task of its own (no audio, or a plan of a still older worker).
    #[serde(default)]
    pub audio_beside: Option<u32>,
    /// Whether the audio part is encoded, beside its own segment, by the
    /// task that claims it ([`crate::segment::objects::Objects::claim_audio`]):
    /// the first task taken by a worker that has the input here (the one
    /// that split the job), or a worker's second task of the job, or else
    /// the task that stores the last video segment. So the audio part,
    /// which reads the whole input, runs where the input is when it can.
    #[serde(default)]
    pub audio_by_claim: bool,
    /// The claims (the job's end, its audio part) are settled on the
    /// broker, not by a create-if-absent in the storage, whose
    /// create-if-absent can have more than one winner (see
    /// [`crate::segment::objects::Objects::claims_flaw`]): the splitter
    /// found that out, and every worker of the job follows it.
    #[serde(default)]
    pub claims_on_broker: bool,
    /// Input tracks the output does not carry, one sentence each.
    #[serde(default)]
    pub left_out: Vec<String>,
    /// The worker that split it.
    pub split_by: String,
    /// When it was split (RFC 3339).
    pub created_at: String,
}

impl SegmentPlan {
    /// Every part: the video segments, then the audio part when the input
    /// has audio.
    pub fn parts(&self) -> Vec<Part> {
        let mut parts: Vec<Part> = (0..self.cuts.len() as u32).map(Part::Video).collect();
        if !self.media.audio.is_empty() {
            parts.push(Part::Audio);
        }
        parts
    }

    /// The parts in the order their tasks are queued: the video segments
    /// longest first, so the last to finish is a short one (a task carries
    /// the audio part, see [`SegmentPlan::audio_by_claim`]); the audio
    /// part first when it has a task of its own (plans of old workers).
    pub fn queue_order(&self) -> Vec<Part> {
        let mut video: Vec<(u64, u32)> = self
            .cuts
            .iter()
            .enumerate()
            .map(|(i, c)| (c.length_ns(self.first_ns, self.end_ns), i as u32))
            .collect();
        video.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let own_task =
            !self.media.audio.is_empty() && self.audio_beside.is_none() && !self.audio_by_claim;
        let audio = own_task.then_some(Part::Audio);
        audio
            .into_iter()
            .chain(video.into_iter().map(|(_, i)| Part::Video(i)))
            .collect()
    }

    /// Has the audio part (when there is one) go with the task that
    /// claims it (see [`SegmentPlan::audio_by_claim`]).
    pub fn carry_audio_by_claim(&mut self) {
        self.audio_beside = None;
        self.audio_by_claim = !self.media.audio.is_empty();
    }

    /// The parts the task of `task` makes by the plan: that part, and the
    /// audio part when the plan has the task carry it (a task may also
    /// claim it, see [`SegmentPlan::audio_by_claim`]).
    pub fn made_by(&self, task: Part) -> Vec<Part> {
        let mut parts = vec![task];
        if matches!(task, Part::Video(i) if self.audio_beside == Some(i)) {
            parts.push(Part::Audio);
        }
        parts
    }

    /// The share (0 to 1) of the job's work `part` is: video segments by
    /// their length; the audio part counts as a twentieth of the video.
    pub fn weight(&self, part: Part) -> f64 {
        let video = self.end_ns.saturating_sub(self.first_ns).max(1) as f64;
        let audio = if self.media.audio.is_empty() {
            0.0
        } else {
            video / 20.0
        };
        let own = match part {
            Part::Audio => audio,
            Part::Video(i) => self
                .cuts
                .get(i as usize)
                .map_or(0.0, |c| c.length_ns(self.first_ns, self.end_ns) as f64),
        };
        own / (video + audio)
    }

    /// The cut of video segment `index`.
    pub fn cut(&self, index: u32) -> Option<&Cut> {
        self.cuts.get(index as usize)
    }

    /// The job it is a plan of, as its message says.
    pub fn job(&self) -> Result<Job, crate::error::JobError> {
        Job::parse(self.message.as_bytes())
    }
}

/// Cuts an input (as `scan` read it) into segments of about `seconds`:
/// each cut lands on the frame `seconds` after the one before, or on the
/// nearest source key frame within [`KEY_FRAME_TOLERANCE`] of that; a
/// tail shorter than [`SHORTEST_TAIL`] of a segment joins the one before.
/// One cut-less segment means the input is too short to segment.
pub fn cut(scan: &Scan, seconds: f64) -> Vec<Cut> {
    let frame = scan.frame_ns.max(1);
    let half = frame / 2;
    let length = (seconds * 1e9) as u64;
    let tolerance = (length as f64 * KEY_FRAME_TOLERANCE) as u64;
    let tail = (length as f64 * SHORTEST_TAIL) as u64;
    let mut starts: Vec<(u64, bool)> = Vec::new();
    let mut previous = scan.first_ns;
    loop {
        // The frame `length` after the previous start, on the frame grid.
        let frames = (length + half) / frame;
        let target = previous + frames.max(1) * frame;
        if target + tail > scan.end_ns {
            break;
        }
        let key = scan
            .keyframes
            .iter()
            .copied()
            .filter(|k| k.abs_diff(target) <= tolerance)
            .filter(|k| *k > previous + tail && *k + tail <= scan.end_ns)
            .min_by_key(|k| k.abs_diff(target));
        let start = key.unwrap_or(target);
        starts.push((start, key.is_some()));
        previous = start;
    }
    let mut cuts = Vec::with_capacity(starts.len() + 1);
    let mut from: Option<(u64, bool)> = None;
    for next in starts.iter().copied().map(Some).chain([None]) {
        cuts.push(Cut {
            from_ns: from.map(|(s, _)| s - half),
            until_ns: next.map(|(s, _)| s - half),
            // The source key frame at or before its first frame: decoding
            // starts there, and every frame keeps its own time (a seek
            // between frames would clip the frame before it to the seek
            // position, into this segment).
            seek_ns: from.and_then(|(s, _)| {
                scan.keyframes
                    .iter()
                    .copied()
                    .filter(|k| *k <= s && *k > scan.first_ns)
                    .max()
            }),
            on_key_frame: from.is_none_or(|(_, key)| key),
        });
        from = next;
    }
    cuts
}

/// Why the video branch `video` cannot be cut into segments, if it
/// cannot: it changes the frame rate or makes frames from neighbouring
/// ones, so a segment's frames would not be the input's.
pub fn unsegmentable(video: &str) -> Option<String> {
    let factories = crate::plan::factories_in(video);
    for (element, why) in [
        ("videorate", "changes the frame rate"),
        ("deinterlace", "makes frames from neighbouring fields"),
    ] {
        if factories.iter().any(|f| f == element) {
            return Some(format!(
                "the video branch uses {element}, which {why}: its segments would not join frame for frame"
            ));
        }
    }
    if video.contains("framerate") {
        return Some(
            "the video branch sets a frame rate: its segments would not join frame for frame"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const FRAME: u64 = 40_000_000;

    fn scan(secs: u64, keyframes: &[f64]) -> Scan {
        Scan {
            frames: secs * 25,
            first_ns: 0,
            end_ns: secs * S,
            frame_ns: FRAME,
            keyframes: keyframes.iter().map(|k| (k * 1e9) as u64).collect(),
            ..Default::default()
        }
    }

    fn starts(cuts: &[Cut]) -> Vec<f64> {
        cuts.iter()
            .filter_map(|c| c.from_ns)
            .map(|f| (f + FRAME / 2) as f64 / 1e9)
            .collect()
    }

    #[test]
    fn cuts_land_on_frames_every_n_seconds_without_key_frames() {
        let cuts = cut(&scan(30, &[0.0]), 10.0);
        assert_eq!(starts(&cuts), [10.0, 20.0]);
        assert_eq!(cuts.len(), 3);
        // Neighbours share their boundary, half a frame before the frame.
        assert_eq!(cuts[0].until_ns, cuts[1].from_ns);
        assert_eq!(cuts[1].from_ns, Some(10 * S - FRAME / 2));
        assert_eq!(cuts[0].from_ns, None);
        assert_eq!(cuts[2].until_ns, None);
        assert!(!cuts[1].on_key_frame);
        // A cut off a key frame seeks to the key frame before it (none
        // after the first here: decoding starts at the beginning).
        assert_eq!(cuts[1].seek_ns, None);
        let cuts = cut(&scan(30, &[0.0, 4.0]), 10.0);
        assert_eq!(cuts[1].seek_ns, Some(4 * S));
    }

    #[test]
    fn cuts_move_to_a_key_frame_within_the_tolerance() {
        let cuts = cut(&scan(30, &[0.0, 8.0, 11.2, 19.0, 26.0]), 10.0);
        // 10 -> 11.2 (within 2.5 s; 8 is further), then 21.2 -> 19.0.
        assert_eq!(starts(&cuts), [11.2, 19.0]);
        assert!(cuts[1].on_key_frame && cuts[2].on_key_frame);
        assert_eq!(cuts[1].seek_ns, Some(11_200_000_000));
        // Too far: 10 s with key frames only at 6 and 14.
        let cuts = cut(&scan(30, &[0.0, 6.0, 14.0]), 10.0);
        assert_eq!(starts(&cuts)[0], 10.0);
    }

    #[test]
    fn a_short_tail_joins_the_segment_before_and_short_inputs_stay_whole() {
        // 24 s in 10 s segments: 10, 20 and a 4 s tail -> the tail joins.
        assert_eq!(starts(&cut(&scan(24, &[]), 10.0)), [10.0]);
        // 26 s: the 6 s tail stays a segment.
        assert_eq!(starts(&cut(&scan(26, &[]), 10.0)), [10.0, 20.0]);
        // Shorter than one and a half segments: one segment, no cut.
        let whole = cut(&scan(14, &[]), 10.0);
        assert_eq!(whole.len(), 1);
        assert_eq!((whole[0].from_ns, whole[0].until_ns), (None, None));
    }

    #[test]
    fn every_frame_belongs_to_exactly_one_segment() {
        let s = scan(61, &[0.0, 4.0, 9.96, 13.0, 31.0, 44.44]);
        let cuts = cut(&s, 7.0);
        for frame in 0..(61 * 25) {
            let t = frame * FRAME;
            let owners = cuts
                .iter()
                .filter(|c| c.from_ns.is_none_or(|f| t >= f) && c.until_ns.is_none_or(|u| t < u))
                .count();
            assert_eq!(owners, 1, "frame {frame}");
        }
        for c in &cuts {
            let len = c.length_ns(0, s.end_ns) as f64 / 1e9;
            assert!((3.5..=10.5 + 0.04).contains(&len), "{len} s in {cuts:?}");
        }
    }

    #[test]
    fn parts_are_named_and_queued_longest_first_with_the_audio_first_by_claim_or_beside_the_first()
    {
        for part in [
            Part::Video(0),
            Part::Video(12),
            Part::Video(12345),
            Part::Audio,
        ] {
            assert_eq!(Part::from_name(&part.name()), Some(part));
        }
        assert_eq!(Part::from_name("v12"), None);
        assert_eq!(Part::from_name("x0001"), None);
        let mut plan = SegmentPlan {
            plan_id: "p".into(),
            job_id: "j".into(),
            message: "{}".into(),
            queue: "q".into(),
            attempt: 1,
            history: vec![],
            fingerprint: "f".into(),
            video: "x264enc".into(),
            audio: "a".into(),
            muxer: "mp4mux".into(),
            preset: None,
            input_size: 1,
            input_version: None,
            media: MediaInfo::default(),
            frames: 26 * 25,
            first_ns: 0,
            end_ns: 26 * S,
            frame_ns: FRAME,
            cuts: cut(&scan(26, &[0.0, 11.0]), 10.0),
            audio_beside: None,
            audio_by_claim: false,
            claims_on_broker: false,
            left_out: vec![],
            split_by: "w".into(),
            created_at: "t".into(),
        };
        // Segments of 11, 10 and 5 s.
        assert_eq!(
            plan.queue_order(),
            [Part::Video(0), Part::Video(1), Part::Video(2)]
        );
        plan.media.audio.push(Default::default());
        assert_eq!(plan.queue_order()[0], Part::Audio);
        assert_eq!(plan.parts().last(), Some(&Part::Audio));
        assert_eq!(plan.made_by(Part::Video(0)), [Part::Video(0)]);
        // The audio part goes by claim: no task of its own, and no task
        // carries it by the plan.
        plan.carry_audio_by_claim();
        assert!(plan.audio_by_claim);
        assert_eq!(
            plan.queue_order(),
            [Part::Video(0), Part::Video(1), Part::Video(2)]
        );
        assert_eq!(plan.made_by(Part::Video(0)), [Part::Video(0)]);
        assert_eq!(plan.parts().last(), Some(&Part::Audio));
        // An older worker's plan: the audio part rides with the first task.
        plan.audio_by_claim = false;
        plan.audio_beside = Some(0);
        assert_eq!(
            plan.queue_order(),
            [Part::Video(0), Part::Video(1), Part::Video(2)]
        );
        assert_eq!(plan.made_by(Part::Video(0)), [Part::Video(0), Part::Audio]);
        assert_eq!(plan.made_by(Part::Video(1)), [Part::Video(1)]);
        assert_eq!(plan.parts().last(), Some(&Part::Audio));
        let total: f64 = plan.parts().iter().map(|p| plan.weight(*p)).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn branches_that_change_the_frame_count_cannot_be_segmented() {
        assert!(unsegmentable("videoconvert ! x264enc").is_none());
        assert!(unsegmentable("videorate ! x264enc")
            .unwrap()
            .contains("videorate"));
        assert!(unsegmentable("videoconvert ! video/x-raw,framerate=30/1 ! x264enc").is_some());
        assert!(unsegmentable("deinterlace ! x264enc").is_some());
    }
}
