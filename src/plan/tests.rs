//! Unit tests of `plan`.

use super::*;
use std::collections::HashMap;

fn settings(extra: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [("S3_BUCKET_NAME", "b")]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.insert("AWS_S3_ENDPOINT_URL".into(), "http://x".into());
    Settings::from_env(None, &env).unwrap()
}

fn job(output: &str, options: Option<&str>, preset: Option<&str>) -> Job {
    Job {
        job_id: "j".into(),
        input_key: "in.wmv".into(),
        output_key: output.into(),
        transcode_options: options.map(String::from),
        preset: preset.map(String::from),
        source: None,
        priority: None,
        requires: Vec::new(),
        webhook: None,
        outputs: None,
        segment_seconds: None,
    }
}

/// The encoding of output `i`, a file.
fn file(p: &Plan, i: usize) -> &Encoding {
    match &p.outputs[i].target {
        Target::File(encoding) => encoding,
        other => panic!("not a file: {other:?}"),
    }
}

#[test]
fn a_job_with_outputs_gets_every_output_planned_output_key_first() {
    let job = Job::parse(
        br#"{"job_id":"j","input_key":"in.mov","output_key":"o/main.mkv","transcode_options":"videoconvert ! x264enc",
             "outputs":[{"output_key":"o/720.mp4","preset":"h264-720p"},{"output_key":"o/a.webm"}]}"#,
    )
    .unwrap();
    let p = plan(&job, &settings(&[])).unwrap();
    assert_eq!(p.keys(), ["o/main.mkv", "o/720.mp4", "o/a.webm"]);
    assert_eq!(file(&p, 0).muxer, "matroskamux");
    assert_eq!(file(&p, 0).video, "videoconvert ! x264enc");
    assert_eq!(p.outputs[1].preset.as_deref(), Some("h264-720p"));
    assert_eq!(file(&p, 1).max_height, Some(720));
    assert!(!file(&p, 1).upscale);
    assert_eq!(p.outputs[2].preset.as_deref(), Some("vp9-webm"));
    // Each output has its own fingerprint.
    let prints: Vec<String> = p
        .outputs
        .iter()
        .map(|o| o.fingerprint("in.mov", 10))
        .collect();
    assert_ne!(prints[0], prints[1]);
    assert_ne!(prints[1], p.outputs[1].fingerprint("in.mov", 11));
}

#[test]
fn an_m3u8_key_gets_an_hls_package_and_the_ladder_its_rungs() {
    let s = settings(&[]);
    let p = plan(&job("videos/x/master.m3u8", None, Some("hls-ladder")), &s).unwrap();
    let Target::Hls(package) = &p.outputs[0].target else {
        panic!("{p:?}")
    };
    assert_eq!(package.segment_seconds, 6);
    let names: Vec<&str> = package.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["1080p", "720p", "480p", "360p"]);
    assert!(package.variants.iter().all(|v| v.optional));
    assert!(package
        .variants
        .iter()
        .all(|v| v.encoding.muxer == HLS_MUXER));
    assert_eq!(package.variants[3].encoding.max_height, Some(360));
    // No preset: the default HLS preset, the ladder.
    assert_eq!(
        plan(&job("v/m.m3u8", None, None), &s).unwrap().outputs[0]
            .preset
            .as_deref(),
        Some("hls-ladder")
    );
    // A single preset: one variant, always made.
    let p = plan(&job("v/m.m3u8", None, Some("h264-720p")), &s).unwrap();
    let Target::Hls(package) = &p.outputs[0].target else {
        panic!("{p:?}")
    };
    assert_eq!(package.variants.len(), 1);
    assert_eq!(package.variants[0].name, "720p");
    assert!(!package.variants[0].optional);
    // A ladder makes HLS only.
    let err = plan(&job("v/a.mp4", None, Some("hls-ladder")), &s).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidJob);
    assert!(err.message.contains("ending in .m3u8"), "{}", err.message);
    // Two packages in one folder would overwrite each other.
    let two = Job::parse(
        br#"{"job_id":"j","input_key":"in.mov","outputs":[{"output_key":"v/a.m3u8"},{"output_key":"v/b.m3u8"}]}"#,
    )
    .unwrap();
    assert!(plan(&two, &s).unwrap_err().message.contains("folder \"v\""));
}

#[test]
fn containers_are_checked_by_extension() {
    assert!(check_container("a/b.mp4").is_ok());
    assert!(check_container("a/b.MKV").is_ok());
    assert!(check_container("a/b").is_ok());
    assert!(check_container("a/b.exe")
        .unwrap_err()
        .message
        .contains(".exe"));
}

#[test]
fn the_original_job_gets_its_fragment_in_mp4_with_aac() {
    let p = plan(
        &job("path/to/output_file", Some("videoconvert ! x264enc"), None),
        &settings(&[]),
    )
    .unwrap();
    assert_eq!(file(&p, 0).video, "videoconvert ! x264enc");
    assert_eq!(file(&p, 0).muxer, "mp4mux");
    assert_eq!(file(&p, 0).audio, DEFAULT_AAC);
    assert_eq!(p.outputs[0].preset, None);
}

#[test]
fn no_fragment_and_no_preset_means_the_default_preset() {
    let s = settings(&[]);
    let p = plan(&job("o.mp4", None, None), &s).unwrap();
    assert_eq!(p.outputs[0].preset.as_deref(), Some("h264-mp4"));
    assert!(file(&p, 0).video.contains("x264enc"));
    let p = plan(&job("o.webm", None, None), &s).unwrap();
    assert_eq!(p.outputs[0].preset.as_deref(), Some("vp9-webm"));
    assert_eq!(file(&p, 0).muxer, "webmmux");
    assert!(file(&p, 0).audio.contains("opusenc"));
    let p = plan(&job("o.MKV", None, Some("hevc-mp4")), &s).unwrap();
    assert_eq!(file(&p, 0).muxer, "matroskamux");
    assert!(file(&p, 0).video.contains("x265enc"));
}

#[test]
fn unknown_presets_and_containers_are_invalid_jobs() {
    let s = settings(&[]);
    let err = plan(&job("o.mp4", None, Some("nope")), &s).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidJob);
    assert!(err.message.contains("h264-mp4"), "{}", err.message);
    let err = plan(&job("o.exe", None, None), &s).unwrap_err();
    assert!(err.message.contains(".exe"), "{}", err.message);
}

#[test]
fn operators_can_refuse_raw_fragments() {
    let s = settings(&[("TRANSCODE_PIPELINE__ALLOW_TRANSCODE_OPTIONS", "false")]);
    let err = plan(&job("o.mp4", Some("videoconvert ! x264enc"), None), &s).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidPipeline);
    assert!(plan(&job("o.mp4", None, Some("h264-720p")), &s).is_ok());
}

#[test]
fn keys_outside_the_allowed_prefixes_are_refused() {
    let s = settings(&[
        ("TRANSCODE_STORAGE__ALLOWED_INPUT_PREFIXES", "in/,uploads/"),
        ("TRANSCODE_STORAGE__ALLOWED_OUTPUT_PREFIXES", "out/"),
    ]);
    let mut j = job("out/o.mp4", None, None);
    j.input_key = "in/a.wmv".into();
    assert!(plan(&j, &s).is_ok());
    j.input_key = "secret/a.wmv".into();
    let err = plan(&j, &s).unwrap_err();
    assert!(err.message.contains("in/, uploads/"), "{}", err.message);
    j.input_key = "uploads/a.wmv".into();
    j.output_key = "elsewhere/o.mp4".into();
    assert!(plan(&j, &s).unwrap_err().message.contains("output_key"));
}

#[test]
fn required_elements_cover_the_worker_the_muxers_and_every_preset() {
    let needed = required_elements(&settings(&[]));
    for element in [
        "filesrc",
        "decodebin",
        "mp4mux",
        "webmmux",
        "avenc_aac",
        "opusenc",
        "x264enc",
        "x265enc",
        "vp9enc",
        "tee",
        "videoscale",
        "hlssink2",
        "mpegtsmux",
    ] {
        assert!(
            needed.iter().any(|n| n == element),
            "{element} missing from {needed:?}"
        );
    }
    assert!(!needed.iter().any(|n| n.contains('/')), "{needed:?}");
}

#[test]
fn hostile_fragments_are_refused_before_anything_runs() {
    let err = plan(
        &job(
            "o.mp4",
            Some("videoconvert ! filesink location=/etc/x"),
            None,
        ),
        &settings(&[]),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidPipeline);
}
