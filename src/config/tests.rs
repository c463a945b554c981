//! Unit tests of `config`.

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn s3_env() -> HashMap<String, String> {
    env(&[
        ("AWS_ACCESS_KEY_ID", "AKID"),
        ("AWS_SECRET_ACCESS_KEY", "s3cr3t-value"),
        ("S3_BUCKET_NAME", "videos"),
        ("AWS_S3_ENDPOINT_URL", "http://minio:9000"),
    ])
}

#[test]
fn the_original_environment_names_work() {
    let mut e = s3_env();
    e.insert("AMQP_URL".into(), "amqp://u:p@rabbit:5673/vh".into());
    e.insert("AWS_REGION".into(), "eu-west-1".into());
    let s = Settings::from_env(None, &e).unwrap();
    assert_eq!(s.storage.bucket, "videos");
    assert_eq!(s.storage.endpoint, "http://minio:9000");
    assert_eq!(s.storage.access_key, "AKID");
    assert_eq!(s.storage.secret_key.expose_secret(), "s3cr3t-value");
    assert_eq!(s.storage.region, "eu-west-1");
    assert_eq!(s.broker.url.expose_secret(), "amqp://u:p@rabbit:5673/vh");
    assert_eq!(s.broker.jobs_queue, "transcoding_jobs");
    assert_eq!(s.broker.progress_queue, "transcoding_progress");
    assert_eq!(s.worker.concurrency, 1);
    assert!(s.presets.contains_key("h264-mp4"));
}

#[test]
fn prefixed_variables_set_nested_settings() {
    let mut e = s3_env();
    e.insert("TRANSCODE_WORKER__CONCURRENCY".into(), "3".into());
    e.insert("TRANSCODE_BROKER__JOBS_QUEUE".into(), "jobs-x".into());
    e.insert("TRANSCODE_WORKER__DRAIN_TIMEOUT".into(), "90s".into());
    e.insert(
        "TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS".into(),
        "myenc,otherenc".into(),
    );
    let s = Settings::from_env(None, &e).unwrap();
    assert_eq!(s.worker.concurrency, 3);
    assert_eq!(s.broker.jobs_queue, "jobs-x");
    assert_eq!(s.worker.drain_timeout, Duration::from_secs(90));
    assert_eq!(s.pipeline.extra_allowed_elements, ["myenc", "otherenc"]);
}

#[test]
fn a_file_overrides_defaults_and_adds_presets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[worker]\nmax_attempts = 7\n[presets.tiny]\nvideo = \"videoconvert ! x264enc\"\n",
    )
    .unwrap();
    let s = Settings::from_env(Some(&path), &s3_env()).unwrap();
    assert_eq!(s.worker.max_attempts, 7);
    assert!(s.presets.contains_key("tiny"));
    assert!(s.presets.contains_key("h264-mp4"));
}

#[test]
fn bad_settings_name_the_setting() {
    let err = Settings::from_env(None, &env(&[])).unwrap_err().to_string();
    assert!(err.contains("storage.bucket"), "{err}");
    assert!(err.contains("S3_BUCKET_NAME"), "{err}");

    let mut e = s3_env();
    e.insert("TRANSCODE_WORKER__CONCURRENCY".into(), "0".into());
    let err = Settings::from_env(None, &e).unwrap_err().to_string();
    assert!(err.contains("TRANSCODE_WORKER__CONCURRENCY"), "{err}");

    let mut e = s3_env();
    e.insert("AMQP_URL".into(), "http://nope".into());
    let err = Settings::from_env(None, &e).unwrap_err().to_string();
    assert!(err.contains("broker.url"), "{err}");

    let mut e = s3_env();
    e.insert("TRANSCODE_STORAGE__BACKEND".into(), "ftp".into());
    let err = Settings::from_env(None, &e).unwrap_err().to_string();
    assert!(err.contains("backend"), "{err}");
}

#[test]
fn secrets_do_not_print() {
    let mut e = s3_env();
    e.insert(
        "AMQP_URL".into(),
        "amqp://user:hunter2pw@rabbit:5672/%2f".into(),
    );
    e.insert(
        "TRANSCODE_DASHBOARD__TOKEN".into(),
        "dashboard-t0ken-value".into(),
    );
    let s = Settings::from_env(None, &e).unwrap();
    assert_eq!(s.dashboard.token(), Some("dashboard-t0ken-value"));
    let debug = format!("{s:?}");
    assert!(!debug.contains("s3cr3t-value"), "{debug}");
    assert!(!debug.contains("hunter2pw"), "{debug}");
    assert!(!debug.contains("dashboard-t0ken-value"), "{debug}");
    let redacted = redact_url(&s.broker.url);
    assert_eq!(redacted, "amqp://user@rabbit:5672//");
    assert!(!redacted.contains("hunter2pw"));
}

#[test]
fn several_broker_urls_are_tried_in_order() {
    let mut e = s3_env();
    e.insert(
        "AMQP_URL".into(),
        "amqp://u:pw1@node1:5672/%2f, amqp://u:pw2@node2:5672/%2f".into(),
    );
    let s = Settings::from_env(None, &e).unwrap();
    let urls: Vec<String> = s
        .broker
        .urls()
        .iter()
        .map(|u| u.expose_secret().to_string())
        .collect();
    assert_eq!(
        urls,
        ["amqp://u:pw1@node1:5672/%2f", "amqp://u:pw2@node2:5672/%2f"]
    );
    let redacted = redact_url(&s.broker.url);
    assert_eq!(redacted, "amqp://u@node1:5672//,amqp://u@node2:5672//");
    e.insert("AMQP_URL".into(), "amqp://ok:5672/%2f,http://bad".into());
    assert!(Settings::from_env(None, &e).is_err());
}

#[test]
fn the_control_exchange_follows_the_jobs_queue_unless_set() {
    let mut e = s3_env();
    e.insert("TRANSCODE_BROKER__JOBS_QUEUE".into(), "jobs-x".into());
    let s = Settings::from_env(None, &e).unwrap();
    assert_eq!(s.broker.control_exchange(), "jobs-x.control");
    e.insert("TRANSCODE_BROKER__CONTROL_EXCHANGE".into(), "ctl".into());
    let s = Settings::from_env(None, &e).unwrap();
    assert_eq!(s.broker.control_exchange(), "ctl");
}

#[test]
fn the_metrics_address_is_checked_and_empty_turns_it_off() {
    let s = Settings::from_env(None, &s3_env()).unwrap();
    assert_eq!(s.metrics.listen_addr(), None);
    let mut e = s3_env();
    e.insert("TRANSCODE_METRICS__LISTEN".into(), "0.0.0.0:9464".into());
    let s = Settings::from_env(None, &e).unwrap();
    assert_eq!(
        s.metrics.listen_addr(),
        Some("0.0.0.0:9464".parse().unwrap())
    );
    e.insert("TRANSCODE_METRICS__LISTEN".into(), "localhost".into());
    let err = Settings::from_env(None, &e).unwrap_err().to_string();
    assert!(err.contains("TRANSCODE_METRICS__LISTEN"), "{err}");
}

#[test]
fn the_dashboard_listens_on_loopback_by_default_and_is_read_only_without_a_token() {
    let s = Settings::from_env(None, &s3_env()).unwrap();
    assert_eq!(
        s.dashboard.listen_addr(),
        Some("127.0.0.1:3000".parse().unwrap())
    );
    assert_eq!(s.dashboard.token(), None);
    let mut e = s3_env();
    e.insert("TRANSCODE_DASHBOARD__TOKEN".into(), "  ".into());
    assert_eq!(
        Settings::from_env(None, &e).unwrap().dashboard.token(),
        None
    );
    e.insert("TRANSCODE_DASHBOARD__LISTEN".into(), "port 3000".into());
    let err = Settings::from_env(None, &e).unwrap_err().to_string();
    assert!(err.contains("TRANSCODE_DASHBOARD__LISTEN"), "{err}");
}

#[test]
fn observers_need_only_the_broker_settings() {
    let e = env(&[("AMQP_URL", "amqp://u:p@rabbit:5672/%2f")]);
    assert!(Settings::from_env(None, &e).is_err(), "no bucket");
    let s = Settings::for_broker_from_env(None, &e).unwrap();
    assert_eq!(s.broker.progress_exchange, "transcoding.progress");
    let bad = env(&[("AMQP_URL", "http://nope")]);
    assert!(Settings::for_broker_from_env(None, &bad).is_err());
}

#[test]
fn webhook_settings_come_from_the_environment_and_are_checked() {
    let s = Settings::from_env(None, &s3_env()).unwrap();
    assert_eq!(s.webhook.senders, 1);
    assert_eq!(s.webhook.allowed_hosts().unwrap(), [AllowedHost::Public]);
    assert_eq!(s.webhook.retry_for, Duration::from_secs(86400));
    assert_eq!(s.webhook.retry_delays.len(), 5);
    assert_eq!(s.broker.webhooks_queue, "transcoding_webhooks");
    assert_eq!(s.broker.webhooks_dead_queue(), "transcoding_webhooks.dead");

    let mut e = s3_env();
    e.insert(
        "TRANSCODE_WEBHOOK__ALLOWED_HOSTS".into(),
        "127.0.0.1, 10.0.0.0/8,hooks.internal".into(),
    );
    e.insert("TRANSCODE_WEBHOOK__RETRY_DELAYS".into(), "200ms,1s".into());
    e.insert("TRANSCODE_WEBHOOK__SENDERS".into(), "0".into());
    let s = Settings::from_env(None, &e).unwrap();
    assert_eq!(
        s.webhook.allowed_hosts().unwrap(),
        [
            AllowedHost::Net("127.0.0.1/32".parse().unwrap()),
            AllowedHost::Net("10.0.0.0/8".parse().unwrap()),
            AllowedHost::Name("hooks.internal".into()),
        ]
    );
    assert_eq!(
        s.webhook.retry_delays,
        [Duration::from_millis(200), Duration::from_secs(1)]
    );
    assert_eq!(s.webhook.senders, 0);

    for (key, value) in [
        ("TRANSCODE_WEBHOOK__ALLOWED_HOSTS", "10.0.0.0/33"),
        ("TRANSCODE_WEBHOOK__RETRY_DELAYS", "1ms"),
        ("TRANSCODE_WEBHOOK__TIMEOUT", "0s"),
        ("TRANSCODE_WEBHOOK__RETRY_FOR", "0s"),
    ] {
        let mut e = s3_env();
        e.insert(key.into(), value.into());
        let err = Settings::from_env(None, &e).unwrap_err().to_string();
        assert!(err.contains(key), "{key}={value}: {err}");
    }
    let mut e = s3_env();
    e.insert("TRANSCODE_WEBHOOK__RETRY_DELAYS".into(), "soon".into());
    let err = Settings::from_env(None, &e).unwrap_err().to_string();
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
}

#[test]
fn the_directory_backend_needs_an_existing_directory() {
    let e = env(&[
        ("TRANSCODE_STORAGE__BACKEND", "directory"),
        ("TRANSCODE_STORAGE__DIRECTORY", "/no/such/dir"),
    ]);
    let err = Settings::from_env(None, &e).unwrap_err().to_string();
    assert!(err.contains("storage.directory"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let e = env(&[
        ("TRANSCODE_STORAGE__BACKEND", "directory"),
        ("TRANSCODE_STORAGE__DIRECTORY", dir.path().to_str().unwrap()),
    ]);
    assert!(Settings::from_env(None, &e).is_ok());
}

#[test]
fn env_example_names_only_real_settings_and_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example");
    let pairs: HashMap<String, String> = dotenvy::from_path_iter(path)
        .unwrap()
        .map(|kv| kv.unwrap())
        .collect();
    let defaults = config::Config::builder()
        .add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ))
        .build()
        .unwrap();
    for key in pairs.keys() {
        if let Some(rest) = key.strip_prefix("TRANSCODE_") {
            let setting = rest.to_ascii_lowercase().replace("__", ".");
            assert!(
                defaults.get::<config::Value>(&setting).is_ok(),
                "{key} is not a setting"
            );
        } else {
            let known = SEED_ENV_NAMES.iter().any(|(name, _)| name == key)
                || ["LOG_FORMAT", "RUST_LOG"].contains(&key.as_str());
            assert!(known, "{key} is not read by anything");
        }
    }
    for (name, _) in SEED_ENV_NAMES {
        assert!(
            pairs.contains_key(*name),
            "{name} missing from .env.example"
        );
    }
    let s = Settings::from_env(None, &pairs).unwrap();
    assert_eq!(s.storage.bucket, "videos");
    assert!(s.pipeline.allow_transcode_options);
}

#[test]
fn segmented_inputs_are_read_by_ranges_unless_set_to_whole() {
    let s = Settings::from_env(None, &s3_env()).unwrap();
    assert_eq!(s.segments.fetch_input, FetchInput::Ranges);
    assert_eq!(s.segments.range_block_kib, 4096);
    assert_eq!(s.segments.range_read_ahead, 0);
    let mut e = s3_env();
    e.insert("TRANSCODE_SEGMENTS__FETCH_INPUT".into(), "whole".into());
    e.insert("TRANSCODE_SEGMENTS__RANGE_BLOCK_KIB".into(), "64".into());
    let s = Settings::from_env(None, &e).unwrap();
    assert_eq!(s.segments.fetch_input, FetchInput::Whole);
    assert_eq!(s.segments.range_block_kib, 64);
    for bad in ["63", "65537"] {
        e.insert("TRANSCODE_SEGMENTS__RANGE_BLOCK_KIB".into(), bad.into());
        let err = Settings::from_env(None, &e).unwrap_err().to_string();
        assert!(err.contains("segments.range_block_kib"), "{err}");
    }
    e.insert("TRANSCODE_SEGMENTS__RANGE_BLOCK_KIB".into(), "64".into());
    e.insert("TRANSCODE_SEGMENTS__RANGE_READ_AHEAD".into(), "2".into());
    let s = Settings::from_env(None, &e).unwrap();
    assert_eq!(s.segments.range_read_ahead, 2);
    e.insert("TRANSCODE_SEGMENTS__RANGE_READ_AHEAD".into(), "17".into());
    let err = Settings::from_env(None, &e).unwrap_err().to_string();
    assert!(err.contains("segments.range_read_ahead"), "{err}");
    e.insert("TRANSCODE_SEGMENTS__RANGE_READ_AHEAD".into(), "16".into());
    e.insert("TRANSCODE_SEGMENTS__RANGE_BLOCK_KIB".into(), "16384".into());
    assert!(Settings::from_env(None, &e).is_ok(), "16 blocks of 16 MiB");
    e.insert("TRANSCODE_SEGMENTS__RANGE_BLOCK_KIB".into(), "16385".into());
    let err = Settings::from_env(None, &e).unwrap_err().to_string();
    assert!(err.contains("more than 256 MiB in memory"), "{err}");
    e.insert("TRANSCODE_SEGMENTS__RANGE_BLOCK_KIB".into(), "64".into());
    e.insert("TRANSCODE_SEGMENTS__RANGE_READ_AHEAD".into(), "2".into());
    e.insert("TRANSCODE_SEGMENTS__FETCH_INPUT".into(), "sometimes".into());
    let err = Settings::from_env(None, &e).unwrap_err().to_string();
    assert!(err.contains("fetch_input"), "{err}");
}

#[test]
fn downloads_go_in_four_parts_at_a_time_unless_set() {
    let s = Settings::from_env(None, &s3_env()).unwrap();
    assert_eq!(s.storage.download_concurrency, 4);
    let mut e = s3_env();
    e.insert("TRANSCODE_STORAGE__DOWNLOAD_CONCURRENCY".into(), "1".into());
    assert_eq!(
        Settings::from_env(None, &e)
            .unwrap()
            .storage
            .download_concurrency,
        1
    );
    for bad in ["0", "33"] {
        e.insert("TRANSCODE_STORAGE__DOWNLOAD_CONCURRENCY".into(), bad.into());
        let err = Settings::from_env(None, &e).unwrap_err().to_string();
        assert!(err.contains("storage.download_concurrency"), "{err}");
    }
}
