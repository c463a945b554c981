//! Unit tests of `job`.

use super::*;

/// The exact bytes `json.dumps` makes of the original service's example job.
const SEED_JOB: &[u8] = br#"{"job_id": "job1", "input_key": "path/to/input_file", "output_key": "path/to/output_file", "transcode_options": "videoconvert ! x264enc"}"#;

#[test]
fn accepts_the_original_job_message_byte_for_byte() {
    let job = Job::parse(SEED_JOB).unwrap();
    assert_eq!(job.job_id, "job1");
    assert_eq!(job.input_key, "path/to/input_file");
    assert_eq!(job.output_key, "path/to/output_file");
    assert_eq!(
        job.transcode_options.as_deref(),
        Some("videoconvert ! x264enc")
    );
    assert_eq!(job.preset, None);
}

#[test]
fn ignores_unknown_fields_and_takes_optional_ones() {
    let job = Job::parse(
        br#"{"job_id":"a","input_key":"i.wmv","output_key":"o.mp4","preset":"h264-mp4","colour":"blue","source":{"width":640,"future":1}}"#,
    )
    .unwrap();
    assert_eq!(job.preset.as_deref(), Some("h264-mp4"));
    assert_eq!(job.source.unwrap().width, Some(640));
}

#[test]
fn rejects_missing_fields_with_the_field_name() {
    let err = Job::parse(br#"{"job_id":"a","input_key":"i"}"#).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidJob);
    assert!(err.message.contains("output_key"), "{}", err.message);
}

#[test]
fn rejects_non_utf8_and_non_json() {
    assert!(Job::parse(&[0xff, 0xfe, b'{'])
        .unwrap_err()
        .message
        .contains("UTF-8"));
    assert!(Job::parse(b"hello")
        .unwrap_err()
        .message
        .contains("not a valid job"));
}

#[test]
fn rejects_bad_ids_and_keys() {
    let cases: &[&[u8]] = &[
        br#"{"job_id":"","input_key":"i","output_key":"o"}"#,
        br#"{"job_id":"a b","input_key":"i","output_key":"o"}"#,
        br#"{"job_id":"a","input_key":"","output_key":"o"}"#,
        br#"{"job_id":"a","input_key":"i\u0000x","output_key":"o"}"#,
        br#"{"job_id":"a","input_key":"i","output_key":"o\nx"}"#,
        br#"{"job_id":"a","input_key":"i","output_key":"o","preset":"p","transcode_options":"x264enc"}"#,
    ];
    for body in cases {
        let err = Job::parse(body).unwrap_err();
        assert_eq!(
            err.kind,
            ErrorKind::InvalidJob,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

/// The later message of the original service: S3 paths instead of keys.
const SEED_S3_PATH_JOB: &[u8] = br#"{"job_id": "job2", "input_s3_path": "s3://videos/path/to/input_file.mov", "output_s3_path": "s3://videos/path/to/output_file.mp4", "transcode_options": "videoconvert ! x264enc"}"#;

#[test]
fn s3_paths_of_the_own_bucket_become_keys_and_others_are_refused() {
    let mut job = Job::parse(SEED_S3_PATH_JOB).unwrap();
    assert_eq!(job.input_key, "s3://videos/path/to/input_file.mov");
    job.resolve_locations(Some("videos"), &[]).unwrap();
    assert_eq!(job.input_key, "path/to/input_file.mov");
    assert_eq!(job.output_key, "path/to/output_file.mp4");

    let mut other = Job::parse(SEED_S3_PATH_JOB).unwrap();
    let err = other.resolve_locations(Some("media"), &[]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidJob);
    assert!(err.message.contains("\"videos\""), "{}", err.message);
    assert!(err.message.contains("extra_buckets"), "{}", err.message);

    let mut allowed = Job::parse(SEED_S3_PATH_JOB).unwrap();
    allowed
        .resolve_locations(Some("media"), &["videos".to_string()])
        .unwrap();
    assert_eq!(allowed.input_key, "s3://videos/path/to/input_file.mov");

    let mut on_disk = Job::parse(SEED_S3_PATH_JOB).unwrap();
    let err = on_disk.resolve_locations(None, &[]).unwrap_err();
    assert!(err.message.contains("directory"), "{}", err.message);

    let mut plain =
        Job::parse(br#"{"job_id":"a","input_key":"i.mov","output_key":"o.mp4"}"#).unwrap();
    plain.resolve_locations(Some("videos"), &[]).unwrap();
    assert_eq!(plain.input_key, "i.mov");
    let mut bad =
        Job::parse(br#"{"job_id":"a","input_key":"s3://videos","output_key":"o.mp4"}"#).unwrap();
    assert!(bad.resolve_locations(Some("videos"), &[]).is_err());
}

#[test]
fn a_job_may_list_outputs_instead_of_an_output_key() {
    let job = Job::parse(
        br#"{"job_id":"a","input_key":"up/a.mov","outputs":[
            {"output_key":"r/720p/a.mp4","preset":"h264-720p"},
            {"output_key":"r/small/a.mp4","transcode_options":"videoconvert ! x264enc"}]}"#,
    )
    .unwrap();
    assert_eq!(job.output_key, "");
    let outputs = job.outputs.as_deref().unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[0].preset.as_deref(), Some("h264-720p"));
    assert_eq!(
        outputs[1].transcode_options.as_deref(),
        Some("videoconvert ! x264enc")
    );
    // Written back without an empty output_key.
    let text = serde_json::to_string(&job).unwrap();
    assert!(!text.contains("\"output_key\":\"\""), "{text}");
    assert_eq!(Job::parse(text.as_bytes()).unwrap(), job);
}

#[test]
fn outputs_are_checked_like_output_key() {
    let cases: &[(&[u8], &str)] = &[
        (br#"{"job_id":"a","input_key":"i","outputs":[]}"#, "empty list"),
        (br#"{"job_id":"a","input_key":"i"}"#, "missing field `output_key`"),
        (
            br#"{"job_id":"a","input_key":"i","outputs":[{"output_key":""}]}"#,
            "outputs[0].output_key is empty",
        ),
        (
            br#"{"job_id":"a","input_key":"i","outputs":[{"output_key":"o.mp4"},{"output_key":"x\ny"}]}"#,
            "outputs[1].output_key contains a control character",
        ),
        (
            br#"{"job_id":"a","input_key":"i","outputs":[{"output_key":"o.mp4"},{"output_key":"o.mp4"}]}"#,
            "listed twice",
        ),
        (
            br#"{"job_id":"a","input_key":"i","outputs":[{"output_key":"o.mp4","preset":"p","transcode_options":"x264enc"}]}"#,
            "outputs[0]: give either",
        ),
        (br#"{"job_id":"a","input_key":"i","outputs":[{"preset":"p"}]}"#, "output_key"),
    ];
    for (body, expected) in cases {
        let err = Job::parse(body).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidJob);
        assert!(
            err.message.contains(expected),
            "{}: {}",
            String::from_utf8_lossy(body),
            err.message
        );
    }
    let many: Vec<serde_json::Value> = (0..=MAX_OUTPUTS)
        .map(|i| serde_json::json!({"output_key": format!("o{i}.mp4")}))
        .collect();
    let body = serde_json::json!({"job_id": "a", "input_key": "i", "outputs": many});
    let err = Job::parse(body.to_string().as_bytes()).unwrap_err();
    assert!(err.message.contains("limit"), "{}", err.message);
}

#[test]
fn output_key_comes_first_with_the_jobs_own_preset_then_the_outputs() {
    let job = Job::parse(
        br#"{"job_id":"a","input_key":"i.mov","output_key":"o/main.mp4","preset":"h264-mp4",
             "outputs":[{"output_key":"o/720.mp4","preset":"h264-720p"}]}"#,
    )
    .unwrap();
    let all = job.all_outputs();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].output_key, "o/main.mp4");
    assert_eq!(all[0].preset.as_deref(), Some("h264-mp4"));
    assert_eq!(job.output_keys(), ["o/main.mp4", "o/720.mp4"]);
    let err = Job::parse(
        br#"{"job_id":"a","input_key":"i.mov","output_key":"o.mp4","outputs":[{"output_key":"o.mp4"}]}"#,
    )
    .unwrap_err();
    assert!(
        err.message.contains("the job's output_key too"),
        "{}",
        err.message
    );
}

#[test]
fn s3_locations_in_outputs_are_resolved_too() {
    let mut job = Job::parse(
        br#"{"job_id":"a","input_key":"s3://videos/in.mov","outputs":[{"output_key":"s3://videos/r/a.mp4"}]}"#,
    )
    .unwrap();
    job.resolve_locations(Some("videos"), &[]).unwrap();
    assert_eq!(job.input_key, "in.mov");
    assert_eq!(job.outputs.unwrap()[0].output_key, "r/a.mp4");
    let mut other = Job::parse(
        br#"{"job_id":"a","input_key":"in.mov","outputs":[{"output_key":"s3://media/a.mp4"}]}"#,
    )
    .unwrap();
    let err = other.resolve_locations(Some("videos"), &[]).unwrap_err();
    assert!(
        err.message.contains("outputs[0].output_key"),
        "{}",
        err.message
    );
}

#[test]
fn segment_seconds_is_a_number_of_seconds_from_2() {
    let job = Job::parse(
        br#"{"job_id":"a","input_key":"i.mov","output_key":"o.mp4","segment_seconds":30}"#,
    )
    .unwrap();
    assert_eq!(job.segment_seconds, Some(30.0));
    for bad in ["1.5", "0", "-3", "\"30\"", "1e9"] {
        let body = format!(
            r#"{{"job_id":"a","input_key":"i.mov","output_key":"o.mp4","segment_seconds":{bad}}}"#
        );
        let err = Job::parse(body.as_bytes()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidJob, "{bad}");
        if !bad.starts_with('"') {
            assert!(
                err.message.contains("segment_seconds"),
                "{bad}: {}",
                err.message
            );
        }
    }
}

#[test]
fn salvages_a_valid_id_from_an_invalid_job() {
    assert_eq!(
        Job::salvage_id(br#"{"job_id":"x1","input_key":5}"#).as_deref(),
        Some("x1")
    );
    assert_eq!(Job::salvage_id(b"not json"), None);
}

fn with_webhook(webhook: &str) -> Vec<u8> {
    format!(r#"{{"job_id":"a","input_key":"i.wmv","output_key":"o.mp4","webhook":{webhook}}}"#)
        .into_bytes()
}

#[test]
fn takes_the_seed_webhook_and_defaults_its_events() {
    let job = Job::parse(&with_webhook(
        r#"{"url":"https://api.example.com/transcode/callback","events":["completed","failed"],"secret":"webhook_secret"}"#,
    ))
    .unwrap();
    let hook = job.webhook.unwrap();
    assert_eq!(hook.url, "https://api.example.com/transcode/callback");
    assert_eq!(hook.events, [WebhookEvent::Completed, WebhookEvent::Failed]);
    assert_eq!(hook.secret.unwrap().expose(), "webhook_secret");

    let job = Job::parse(&with_webhook(
        r#"{"url":"http://hooks.example.com:8080/x"}"#,
    ))
    .unwrap();
    let hook = job.webhook.unwrap();
    assert_eq!(hook.events, WebhookEvent::all());
    assert!(hook.secret.is_none());
}

#[test]
fn rejects_bad_webhooks_with_a_sentence() {
    let long_url = format!(
        r#"{{"url":"https://e.com/{}"}}"#,
        "a".repeat(MAX_WEBHOOK_URL_LEN)
    );
    let long_secret = format!(
        r#"{{"url":"https://e.com/","secret":"{}"}}"#,
        "s".repeat(MAX_WEBHOOK_SECRET_LEN + 1)
    );
    let cases: &[(&str, &str)] = &[
        (r#"{"url":"ftp://e.com/x"}"#, "http:// or https://"),
        (r#"{"url":"not a url"}"#, "is not a URL"),
        (
            r#"{"url":"https://user:pw@e.com/x"}"#,
            "user name or password",
        ),
        (
            r#"{"url":"https://e.com/","events":[]}"#,
            "webhook.events is empty",
        ),
        (
            r#"{"url":"https://e.com/","events":["finished"]}"#,
            "unknown variant",
        ),
        (r#"{"url":"https://e.com/","secret":""}"#, "webhook.secret"),
        (&long_secret, "webhook.secret"),
        (&long_url, "longer than"),
        (r#"{"events":["failed"]}"#, "url"),
    ];
    for (webhook, says) in cases {
        let err = Job::parse(&with_webhook(webhook)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidJob, "{webhook}");
        assert!(err.message.contains(says), "{webhook}: {}", err.message);
    }
}

#[test]
fn the_webhook_secret_never_shows_in_debug_output() {
    let job = Job::parse(&with_webhook(
        r#"{"url":"https://e.com/","secret":"hunter2-webhook"}"#,
    ))
    .unwrap();
    let debug = format!("{job:?}");
    assert!(!debug.contains("hunter2-webhook"), "{debug}");
    assert!(debug.contains("REDACTED"), "{debug}");
    // The job message itself carries it, so a republished job keeps it.
    let again = serde_json::to_string(&job).unwrap();
    assert!(again.contains("hunter2-webhook"));
    assert_eq!(Job::parse(again.as_bytes()).unwrap(), job);
}

#[test]
fn progress_serializes_the_fields_consumers_read() {
    let p = Progress::new("job1", "host:1", 1, Phase::Transcoding, 42.0);
    let v: serde_json::Value = serde_json::to_value(&p).unwrap();
    assert_eq!(v["job_id"], "job1");
    assert_eq!(v["progress"], 42.0);
    assert_eq!(v["state"], "transcoding");
    assert!(v.get("error").is_none());
}

mod fuzz {
    //! Property tests of the message parser (a long run:
    //! `PROPTEST_CASES=1000000 cargo test --lib job::tests::fuzz`).
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Job::parse(&body);
            let _ = Job::salvage_id(&body);
        }

        #[test]
        fn accepted_jobs_have_checked_fields(
            id in ".{0,40}",
            input in ".{0,40}",
            output in ".{0,40}",
            options in proptest::option::of(".{0,40}"),
        ) {
            let body = serde_json::json!({
                "job_id": id, "input_key": input, "output_key": output,
                "transcode_options": options,
            }).to_string();
            if let Ok(job) = Job::parse(body.as_bytes()) {
                prop_assert!(!job.job_id.is_empty() && job.job_id.len() <= MAX_JOB_ID_LEN);
                prop_assert!(!job.input_key.chars().any(char::is_control));
                prop_assert!(!job.output_key.chars().any(char::is_control));
                prop_assert!(!job.input_key.is_empty() && !job.output_key.is_empty());
            }
        }
    }
}
