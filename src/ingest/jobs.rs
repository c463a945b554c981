//! The jobs one version of one object makes under one rule, each with a
//! deterministic id: a hash of the bucket, the key, the version (ETag),
//! and the work the rule asks for (each output key with its preset or
//! fragment, and whether the outputs are one job or one job each). The
//! same object version under the same rule always makes the same ids, so
//! a job made twice (an event delivered again after a crash) is the same
//! job, which the worker recognises as already stored; a changed object
//! makes new ids.

use sha2::{Digest, Sha256};

use super::rules::{Output, Rule};
use crate::job::{Job, OutputSpec};

/// Prefix of the ids of jobs that `ingest` makes.
pub const JOB_ID_PREFIX: &str = "ingest-";

/// One job to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Its id.
    pub job_id: String,
    /// The rule that made it (its number).
    pub rule: usize,
    /// The keys of its outputs.
    pub output_keys: Vec<String>,
    /// The job message, as published.
    pub body: Vec<u8>,
    /// Its priority: the queue it goes to.
    pub priority: crate::job::Priority,
}

/// The jobs `rule` makes of `key` at `version` in `bucket` (the farm's
/// bucket, or `directory` on the directory backend). An output key that
/// comes out invalid (a key too long, one equal to the input's) refuses
/// the object, with the reason.
pub fn plan(rule: &Rule, bucket: &str, key: &str, version: &str) -> Result<Vec<Planned>, String> {
    let groups: Vec<Vec<&Output>> = if rule.fan_out {
        rule.outputs.iter().map(|o| vec![o]).collect()
    } else {
        vec![rule.outputs.iter().collect()]
    };
    groups
        .into_iter()
        .map(|group| planned(rule, bucket, key, version, &group))
        .collect()
}

fn planned(
    rule: &Rule,
    bucket: &str,
    key: &str,
    version: &str,
    group: &[&Output],
) -> Result<Planned, String> {
    let specs: Vec<OutputSpec> = group
        .iter()
        .map(|output| OutputSpec {
            output_key: output.output_key.expand(key),
            transcode_options: output.transcode_options.clone(),
            preset: output.preset.clone(),
        })
        .collect();
    if let Some(same) = specs.iter().find(|s| s.output_key == key) {
        return Err(format!(
            "{}: output key {:?} is the input's own key",
            rule.describe(),
            same.output_key
        ));
    }
    let job_id = job_id(bucket, key, version, rule.fan_out, &specs);
    let job = if rule.fan_out {
        let spec = specs[0].clone();
        Job {
            job_id: job_id.clone(),
            input_key: key.to_string(),
            output_key: spec.output_key,
            transcode_options: spec.transcode_options,
            preset: spec.preset,
            source: None,
            outputs: None,
            segment_seconds: rule.segment_seconds,
            priority: rule.priority,
            requires: Vec::new(),
            webhook: rule.webhook.clone(),
        }
    } else {
        Job {
            job_id: job_id.clone(),
            input_key: key.to_string(),
            output_key: String::new(),
            transcode_options: None,
            preset: None,
            source: None,
            outputs: Some(specs.clone()),
            segment_seconds: rule.segment_seconds,
            priority: rule.priority,
            requires: Vec::new(),
            webhook: rule.webhook.clone(),
        }
    };
    let body = serde_json::to_vec(&job).expect("a job serializes");
    // What a worker reads must be what was meant: a key the job format
    // refuses (too long, a control character) refuses the object.
    Job::parse(&body).map_err(|e| format!("{}: {e}", rule.describe()))?;
    Ok(Planned {
        job_id,
        rule: rule.number,
        output_keys: specs.into_iter().map(|s| s.output_key).collect(),
        body,
        priority: rule.priority.unwrap_or_default(),
    })
}

/// `ingest-` and 32 hex digits of the SHA-256 of what the job is.
fn job_id(bucket: &str, key: &str, version: &str, fan_out: bool, specs: &[OutputSpec]) -> String {
    let mut hash = Sha256::new();
    for part in [bucket, key, version, if fan_out { "each" } else { "all" }] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    for spec in specs {
        let how = match (&spec.preset, &spec.transcode_options) {
            (Some(preset), _) => format!("preset {preset}"),
            (None, Some(options)) => format!("options {options}"),
            (None, None) => "default".to_string(),
        };
        for part in [spec.output_key.as_str(), how.as_str()] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{JOB_ID_PREFIX}{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::ingest::rules::Rules;
    use std::collections::HashMap;

    fn rules(text: &str) -> Rules {
        let env: HashMap<String, String> = [
            ("S3_BUCKET_NAME", "videos"),
            ("AWS_S3_ENDPOINT_URL", "http://minio:9000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Rules::parse(text, &Settings::from_env(None, &env).unwrap()).unwrap()
    }

    const LADDER: &str = r#"
[[rule]]
prefix = "uploads/"
outputs = [
  { output_key = "renditions/720p/{stem}.mp4",  preset = "h264-720p" },
  { output_key = "renditions/1080p/{stem}.mp4", preset = "h264-1080p" },
]
"#;

    fn json(planned: &Planned) -> serde_json::Value {
        serde_json::from_slice(&planned.body).unwrap()
    }

    #[test]
    fn fan_out_makes_one_job_per_output_in_the_original_format() {
        let r = rules(LADDER);
        let jobs = plan(&r.all()[0], "videos", "uploads/a b.mov", "etag1").unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            json(&jobs[0]),
            serde_json::json!({"job_id": jobs[0].job_id, "input_key": "uploads/a b.mov",
                "output_key": "renditions/720p/a b.mp4", "preset": "h264-720p"})
        );
        assert_eq!(jobs[1].output_keys, ["renditions/1080p/a b.mp4"]);
        assert_ne!(jobs[0].job_id, jobs[1].job_id);
        assert!(jobs[0].job_id.starts_with("ingest-"));
        assert_eq!(jobs[0].job_id.len(), "ingest-".len() + 32);
        assert_eq!(jobs[0].rule, 1);
    }

    #[test]
    fn ids_are_the_same_for_the_same_version_and_new_for_a_new_one() {
        let r = rules(LADDER);
        let rule = &r.all()[0];
        let ids = |bucket: &str, key: &str, version: &str| -> Vec<String> {
            plan(rule, bucket, key, version)
                .unwrap()
                .into_iter()
                .map(|p| p.job_id)
                .collect()
        };
        let first = ids("videos", "uploads/a.mov", "e1");
        assert_eq!(first, ids("videos", "uploads/a.mov", "e1"));
        for other in [
            ids("videos", "uploads/a.mov", "e2"),
            ids("media", "uploads/a.mov", "e1"),
            ids("videos", "uploads/b.mov", "e1"),
        ] {
            assert!(other.iter().all(|id| !first.contains(id)), "{other:?}");
        }
        // Another preset for the same key is other work.
        let changed = rules(&LADDER.replace("h264-1080p", "h264-mp4"));
        let changed = plan(&changed.all()[0], "videos", "uploads/a.mov", "e1").unwrap();
        assert_eq!(changed[0].job_id, first[0]);
        assert_ne!(changed[1].job_id, first[1]);
    }

    #[test]
    fn without_fan_out_one_job_lists_every_output_and_passes_the_rule_fields_on() {
        let r = rules(
            r#"[[rule]]
prefix = "uploads/"
fan_out = false
priority = "normal"
segment_seconds = 6
webhook = { url = "https://example.org/hook" }
outputs = [
  { output_key = "r/720p/{stem}.mp4", preset = "h264-720p" },
  { output_key = "r/small/{stem}.mp4", transcode_options = "videoconvert ! x264enc" },
]"#,
        );
        let jobs = plan(&r.all()[0], "videos", "uploads/a.mov", "e1").unwrap();
        assert_eq!(jobs.len(), 1);
        let body = json(&jobs[0]);
        assert_eq!(
            body,
            serde_json::json!({"job_id": jobs[0].job_id, "input_key": "uploads/a.mov",
                "outputs": [
                    {"output_key": "r/720p/a.mp4", "preset": "h264-720p"},
                    {"output_key": "r/small/a.mp4", "transcode_options": "videoconvert ! x264enc"}],
                "priority": "normal", "segment_seconds": 6.0,
                "webhook": {"url": "https://example.org/hook", "events": ["completed", "failed", "cancelled"]}})
        );
        assert_eq!(jobs[0].output_keys, ["r/720p/a.mp4", "r/small/a.mp4"]);
        // A worker reads it as a job with outputs.
        let job = Job::parse(&jobs[0].body).unwrap();
        assert_eq!(job.outputs.unwrap().len(), 2);
    }

    #[test]
    fn objects_whose_jobs_would_be_invalid_are_refused_with_the_reason() {
        let r = rules("[[rule]]\nprefix = \"\"\noutputs = [{ output_key = \"{dir}/{name}\" }]\n");
        let err = plan(&r.all()[0], "videos", "a/b.mp4", "e1").unwrap_err();
        assert!(err.contains("the input's own key"), "{err}");
        let long = format!("uploads/{}.mov", "x".repeat(1020));
        let err = plan(&rules(LADDER).all()[0], "videos", &long, "e1").unwrap_err();
        assert!(err.contains("longer than"), "{err}");
        assert!(err.starts_with("rule 1"), "{err}");
    }
}
