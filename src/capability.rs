//! What a worker can run and what a job needs, and where a job waits when
//! this worker cannot run it.
//!
//! A worker's [`Capabilities`] are the GStreamer elements installed on its
//! machine (less `pipeline.hidden_elements`), its labels
//! (`worker.labels`), its cores and its free scratch space. A job
//! [`Needs`] the elements of its pipeline (beyond the few every worker
//! has: [`crate::plan::BASE_ELEMENTS`]) and the labels in its `requires`.
//!
//! A worker that lacks something a job needs does not fail it: it moves the
//! job, its attempts untouched, to a queue of its own, named after the
//! [`Requirement`]: `<jobs queue of its priority>.requires.<what>`, e.g.
//! `transcoding_jobs.requires.x265enc` or
//! `transcoding_jobs.high.requires.@gpu+nvh264enc`, and records the
//! requirement in the farm's requirements stream, from which every worker
//! learns which of those queues it can serve. A requirement only grows as
//! a job is moved on (each worker adds what it lacks), so a job never goes
//! round between workers that each lack something else.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::Job;
use crate::plan::{factories_in, Plan, BASE_ELEMENTS, HLS_ELEMENTS, SCALE_ELEMENTS};
use crate::rendition::Target;

/// What a worker reports about itself (`inspect`, `ping`, the dashboard).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapabilityReport {
    /// Encoders it can use (software and hardware), e.g. `x264enc`.
    pub encoders: Vec<String>,
    /// Hardware-accelerated encoders, decoders and converters (capture
    /// and playout cards, hardware sources and sinks, are left out: a job
    /// cannot use them).
    pub hardware: Vec<String>,
    /// Muxers, e.g. `mp4mux`.
    pub muxers: Vec<String>,
    /// How many decoders it has.
    pub decoders: usize,
    /// Elements installed but hidden by `pipeline.hidden_elements`.
    pub hidden: Vec<String>,
    /// Its labels.
    pub labels: Vec<String>,
    /// CPU cores available to it.
    pub cores: usize,
    /// Free space in its scratch folder, in bytes (when it started).
    pub scratch_free_bytes: u64,
}

/// What this worker can run.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    elements: BTreeSet<String>,
    labels: BTreeSet<String>,
    report: CapabilityReport,
}

impl Capabilities {
    /// The capabilities of a worker with the installed element factories
    /// `installed` (name, klass), of which `hidden` are treated as absent,
    /// and `labels`.
    pub fn new(
        installed: Vec<(String, String)>,
        hidden: &[String],
        labels: &[String],
        scratch_free_bytes: u64,
    ) -> Capabilities {
        let mut report = CapabilityReport {
            labels: labels.to_vec(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            scratch_free_bytes,
            ..Default::default()
        };
        let mut elements = BTreeSet::new();
        for (name, klass) in installed {
            if hidden.contains(&name) {
                report.hidden.push(name);
                continue;
            }
            if klass.contains("Encoder") && (klass.contains("Video") || klass.contains("Audio")) {
                report.encoders.push(name.clone());
            }
            if klass.contains("Muxer") {
                report.muxers.push(name.clone());
            }
            if klass.contains("Decoder") {
                report.decoders += 1;
            }
            if klass.contains("Hardware") && !klass.contains("Source") && !klass.contains("Sink") {
                report.hardware.push(name.clone());
            }
            elements.insert(name);
        }
        for list in [
            &mut report.encoders,
            &mut report.muxers,
            &mut report.hardware,
            &mut report.hidden,
        ] {
            list.sort();
        }
        Capabilities {
            elements,
            labels: labels.iter().cloned().collect(),
            report,
        }
    }

    /// What it reports about itself.
    pub fn report(&self) -> &CapabilityReport {
        &self.report
    }

    /// What of `needs` it lacks, as a requirement (empty when it can run it).
    pub fn missing(&self, needs: &Needs) -> Requirement {
        let mut missing = BTreeSet::new();
        for element in &needs.elements {
            if !self.elements.contains(element) {
                missing.insert(element.clone());
            }
        }
        for label in &needs.labels {
            if !self.labels.contains(label) {
                missing.insert(format!("@{label}"));
            }
        }
        Requirement(missing)
    }

    /// What of `requirement` it lacks.
    pub fn missing_of(&self, requirement: &Requirement) -> Requirement {
        Requirement(
            requirement
                .0
                .iter()
                .filter(|item| !self.satisfies(&Requirement([(*item).clone()].into())))
                .cloned()
                .collect(),
        )
    }

    /// Whether it has everything in `requirement`.
    pub fn satisfies(&self, requirement: &Requirement) -> bool {
        requirement
            .0
            .iter()
            .all(|item| match item.strip_prefix('@') {
                Some(label) => self.labels.contains(label),
                None => self.elements.contains(item),
            })
    }
}

/// What a job needs of the worker that runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Elements of its pipeline beyond [`BASE_ELEMENTS`].
    pub elements: BTreeSet<String>,
    /// Labels it asks for.
    pub labels: BTreeSet<String>,
}

/// The video branch this worker uses for a preset: the first of its
/// `alternatives` (each checked against `allow`) whose elements it has all
/// of, else its `video`.
pub fn preferred_video(
    preset: &crate::config::Preset,
    capabilities: &Capabilities,
    allow: &crate::fragment::Allowlist,
) -> Option<String> {
    preset.alternatives.iter().find_map(|text| {
        let fragment = crate::fragment::Fragment::parse(text, allow).ok()?;
        let canonical = fragment.to_string();
        let elements = factories_in(&canonical);
        elements
            .iter()
            .all(|e| capabilities.elements.contains(e))
            .then_some(canonical)
    })
}

/// What `job`, to be run with `plan`, needs: the union of what every
/// output's encodings need (their branches and muxer, the scaler of those
/// that scale, the HLS sink and demuxer of packages).
pub fn needs(plan: &Plan, job: &Job) -> Needs {
    let mut elements = BTreeSet::new();
    for output in &plan.outputs {
        if matches!(output.target, Target::Hls(_)) {
            elements.extend(HLS_ELEMENTS.iter().map(|e| e.to_string()));
        }
        for encoding in output.target.encodings() {
            elements.extend(factories_in(&encoding.video));
            elements.extend(factories_in(&encoding.audio));
            elements.insert(encoding.muxer.clone());
            if encoding.max_height.is_some() {
                elements.extend(SCALE_ELEMENTS.iter().map(|e| e.to_string()));
            }
        }
    }
    elements.retain(|e| !BASE_ELEMENTS.contains(&e.as_str()));
    Needs {
        elements,
        labels: job.requires.iter().cloned().collect(),
    }
}

/// What a part of a segmented job needs: the branches and muxer its plan
/// fixed when the job was split (every part is encoded alike, so a part
/// never picks another alternative of a preset), and the job's labels.
pub fn part_needs(video: &str, audio: &str, muxer: &str, job: &Job) -> Needs {
    let mut elements: BTreeSet<String> = factories_in(video).into_iter().collect();
    elements.extend(factories_in(audio));
    elements.insert(muxer.to_string());
    elements.retain(|e| !BASE_ELEMENTS.contains(&e.as_str()));
    Needs {
        elements,
        labels: job.requires.iter().cloned().collect(),
    }
}

/// A set of elements and labels (`@label`) a job waits for a worker to
/// have; names its queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Requirement(pub BTreeSet<String>);

/// Header of a job moved to a requirement's queue: what it waits for
/// (comma-separated).
pub const REQUIRES_HEADER: &str = "x-transcode-requires";
/// Header of such a job: the jobs queue of its priority.
pub const PRIORITY_QUEUE_HEADER: &str = "x-transcode-priority-queue";

impl Requirement {
    /// Whether it asks for nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This requirement and `other` together.
    pub fn union(&self, other: &Requirement) -> Requirement {
        Requirement(self.0.union(&other.0).cloned().collect())
    }

    /// The queue of jobs of the priority queue `priority_queue` that wait
    /// for it.
    pub fn queue_of(&self, priority_queue: &str) -> String {
        format!(
            "{priority_queue}.requires.{}",
            self.0.iter().cloned().collect::<Vec<_>>().join("+")
        )
    }

    /// As the value of [`REQUIRES_HEADER`].
    pub fn header(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join(",")
    }

    /// From the value of [`REQUIRES_HEADER`].
    pub fn from_header(value: &str) -> Requirement {
        Requirement(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = self
            .0
            .iter()
            .map(|item| match item.strip_prefix('@') {
                Some(label) => format!("the label {label:?}"),
                None => item.clone(),
            })
            .collect();
        f.write_str(&words.join(" and "))
    }
}

/// An entry of the farm's requirements stream: a queue of jobs that wait
/// for workers with `requires`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WaitingQueue {
    /// The queue.
    pub queue: String,
    /// The jobs queue of the priority it belongs to.
    pub priority_queue: String,
    /// What its jobs need.
    pub requires: Requirement,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::OutputPlan;
    use crate::rendition::{Encoding, HlsPackage, Variant};

    fn caps(installed: &[(&str, &str)], hidden: &[&str], labels: &[&str]) -> Capabilities {
        Capabilities::new(
            installed
                .iter()
                .map(|(n, k)| (n.to_string(), k.to_string()))
                .collect(),
            &hidden.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &labels.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            1 << 30,
        )
    }

    const INSTALLED: &[(&str, &str)] = &[
        ("x264enc", "Codec/Encoder/Video"),
        ("x265enc", "Codec/Encoder/Video"),
        ("nvh264enc", "Codec/Encoder/Video/Hardware"),
        ("mp4mux", "Codec/Muxer"),
        ("avdec_h264", "Codec/Decoder/Video"),
        ("videoconvert", "Filter/Converter/Video"),
        ("decklinkvideosink", "Video/Sink/Hardware"),
    ];

    fn needs_of(elements: &[&str], labels: &[&str]) -> Needs {
        Needs {
            elements: elements.iter().map(|s| s.to_string()).collect(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn hidden_elements_and_missing_labels_are_missing() {
        let c = caps(INSTALLED, &["x265enc"], &["site-a"]);
        assert!(c
            .missing(&needs_of(&["videoconvert", "x264enc", "mp4mux"], &[]))
            .is_empty());
        let m = c.missing(&needs_of(
            &["videoconvert", "x265enc", "mp4mux"],
            &["gpu", "site-a"],
        ));
        assert_eq!(m.header(), "@gpu,x265enc");
        assert_eq!(m.to_string(), "the label \"gpu\" and x265enc");
        assert_eq!(
            m.queue_of("transcoding_jobs"),
            "transcoding_jobs.requires.@gpu+x265enc"
        );
        assert_eq!(Requirement::from_header(&m.header()), m);
        assert!(!c.satisfies(&m));
        let r = c.report();
        assert_eq!(r.encoders, ["nvh264enc", "x264enc"]);
        assert_eq!(r.hardware, ["nvh264enc"]);
        assert_eq!(r.muxers, ["mp4mux"]);
        assert_eq!(r.hidden, ["x265enc"]);
        assert_eq!(r.decoders, 1);
    }

    #[test]
    fn a_requirement_grows_and_is_satisfied_only_by_a_worker_with_all_of_it() {
        let full = caps(INSTALLED, &[], &["gpu"]);
        let a = Requirement::from_header("x265enc");
        let b = Requirement::from_header("@gpu");
        let both = a.union(&b);
        assert_eq!(both.header(), "@gpu,x265enc");
        assert!(full.satisfies(&both));
        assert!(!caps(INSTALLED, &[], &[]).satisfies(&both));
        assert!(!caps(INSTALLED, &["x265enc"], &["gpu"]).satisfies(&both));
    }

    #[test]
    fn a_preset_with_alternatives_uses_the_first_the_worker_has_else_its_video() {
        let preset: crate::config::Preset = toml::from_str(
            r#"
video = "videoconvert ! x264enc speed-preset=veryfast"
alternatives = ["videoconvert ! nvh264enc ! h264parse", "videoconvert ! vaapih264enc ! h264parse"]
"#,
        )
        .unwrap();
        let allow = crate::fragment::Allowlist::new(Vec::<String>::new());
        let with = |names: &[&str]| {
            let installed: Vec<(&str, &str)> =
                names.iter().map(|n| (*n, "Codec/Encoder/Video")).collect();
            caps(&installed, &[], &[])
        };
        let nvidia = with(&[
            "videoconvert",
            "h264parse",
            "nvh264enc",
            "vaapih264enc",
            "x264enc",
        ]);
        assert_eq!(
            preferred_video(&preset, &nvidia, &allow).as_deref(),
            Some("videoconvert ! nvh264enc ! h264parse")
        );
        let intel = with(&["videoconvert", "h264parse", "vaapih264enc", "x264enc"]);
        assert_eq!(
            preferred_video(&preset, &intel, &allow).as_deref(),
            Some("videoconvert ! vaapih264enc ! h264parse")
        );
        let plain = with(&["videoconvert", "h264parse", "x264enc"]);
        assert_eq!(
            preferred_video(&preset, &plain, &allow),
            None,
            "its video then"
        );
        let hidden = caps(
            &[
                ("videoconvert", ""),
                ("h264parse", ""),
                ("nvh264enc", "Codec/Encoder/Video/Hardware"),
            ],
            &["nvh264enc"],
            &[],
        );
        assert_eq!(preferred_video(&preset, &hidden, &allow), None);
    }

    #[test]
    fn a_job_needs_its_pipeline_beyond_the_base_and_its_labels() {
        let job: Job = serde_json::from_str(
            r#"{"job_id":"a","input_key":"i","output_key":"o.mp4","requires":["gpu"]}"#,
        )
        .unwrap();
        let encoding = |video: &str, muxer: &str, max_height: Option<u32>| Encoding {
            video: video.into(),
            audio: "audioconvert ! avenc_aac".into(),
            muxer: muxer.into(),
            max_height,
            upscale: false,
        };
        let output = |key: &str, target: Target| OutputPlan {
            key: key.into(),
            preset: None,
            target,
        };
        let mut plan = Plan {
            outputs: vec![output(
                "o.mp4",
                Target::File(encoding(
                    "videoconvert ! x265enc ! h265parse",
                    "mp4mux",
                    None,
                )),
            )],
        };
        let n = needs(&plan, &job);
        let names: Vec<&str> = n.elements.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "audioconvert",
                "avenc_aac",
                "h265parse",
                "mp4mux",
                "videoconvert",
                "x265enc"
            ]
        );
        assert_eq!(n.labels.iter().collect::<Vec<_>>(), ["gpu"]);
        // Renditions: the union of every output's needs.
        plan.outputs.push(output(
            "v/m.m3u8",
            Target::Hls(HlsPackage {
                segment_seconds: 6,
                variants: vec![Variant {
                    name: "720p".into(),
                    encoding: encoding("videoconvert ! x264enc", "hlssink2", Some(720)),
                    optional: true,
                }],
            }),
        ));
        let n = needs(&plan, &job);
        for element in [
            "x265enc",
            "x264enc",
            "mp4mux",
            "hlssink2",
            "mpegtsmux",
            "tsdemux",
            "videoscale",
        ] {
            assert!(n.elements.contains(element), "{element}: {n:?}");
        }
    }
}
