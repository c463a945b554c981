//! The `queue-files` CLI as a real process against the shared RabbitMQ node
//! and S3 server, with fixture videos made by GStreamer.
//!
//! The binary belongs to another package of the workspace, so Cargo does not
//! build it for these tests nor give its path (`CARGO_BIN_EXE_*` covers only
//! this package's binaries, and a binary cannot be a dev-dependency).
//! [`queue_files_bin`] therefore runs `cargo build -p queue-files` once per
//! test process (with the `cargo` that runs the tests, same profile and
//! target directory; quick when it is up to date) and uses
//! `<target>/<profile>/queue-files`.
//!
//! Every test has its own queue names (random) and bucket or storage
//! folder, so the tests run in parallel; each invocation runs in an empty
//! working directory (no `.env`) with a cleared environment.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use lapin::{Connection, ConnectionProperties};
use tempfile::TempDir;
use transcode_worker::job::Job;

use crate::common::services::{free_port, shared_rabbit, shared_s3};
use crate::common::{fixtures, random_name, run_with_timeout, with_timeout};

/// Longest one queue-files run may take in these tests.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Path of the queue-files binary, built once per test process.
fn queue_files_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // <target>/<profile>/deps/integration-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile folder")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--quiet",
                "-p",
                "queue-files",
                "--bin",
                "queue-files",
            ])
            .env(
                "CARGO_TARGET_DIR",
                profile_dir.parent().expect("target folder"),
            );
        if release {
            cmd.arg("--release");
        }
        let out = run_with_timeout(&mut cmd, Duration::from_secs(900))
            .unwrap_or_else(|e| panic!("building queue-files: {e}"));
        assert!(
            out.status.success(),
            "cargo build -p queue-files failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join("queue-files");
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
}

/// One test's world: settings as environment variables, a bucket or a
/// storage folder, and a broker connection to read the jobs queue.
struct World {
    env: BTreeMap<String, String>,
    bucket: Option<Box<s3::Bucket>>,
    conn: Connection,
    /// Working directory of the runs (empty: no `.env`).
    cwd: TempDir,
}

fn base_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("AMQP_URL".into(), shared_rabbit().amqp_url());
    for (key, prefix) in [
        ("TRANSCODE_BROKER__JOBS_QUEUE", "qf-jobs"),
        ("TRANSCODE_BROKER__PROGRESS_EXCHANGE", "qf-progress-x"),
        ("TRANSCODE_BROKER__PROGRESS_QUEUE", "qf-progress"),
        ("TRANSCODE_BROKER__DEAD_LETTER_QUEUE", "qf-dead"),
    ] {
        env.insert(key.into(), random_name(prefix));
    }
    env
}

impl World {
    async fn s3() -> World {
        let s3 = shared_s3();
        let bucket = s3.random_bucket().await;
        let mut env = base_env();
        env.insert("AWS_ACCESS_KEY_ID".into(), s3.access_key().into());
        env.insert("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key().into());
        env.insert("AWS_S3_ENDPOINT_URL".into(), s3.endpoint().into());
        env.insert("AWS_REGION".into(), s3.region().into());
        env.insert("S3_BUCKET_NAME".into(), bucket.name());
        World::finish(env, Some(bucket)).await
    }

    async fn directory(store: &Path) -> World {
        let mut env = base_env();
        env.insert("TRANSCODE_STORAGE__BACKEND".into(), "directory".into());
        env.insert(
            "TRANSCODE_STORAGE__DIRECTORY".into(),
            store.display().to_string(),
        );
        World::finish(env, None).await
    }

    async fn finish(env: BTreeMap<String, String>, bucket: Option<Box<s3::Bucket>>) -> World {
        let conn = with_timeout(
            Duration::from_secs(30),
            "test AMQP connection",
            Connection::connect(&shared_rabbit().amqp_url(), ConnectionProperties::default()),
        )
        .await
        .expect("test connection");
        World {
            env,
            bucket,
            conn,
            cwd: tempfile::tempdir().expect("cwd"),
        }
    }

    fn jobs_queue(&self) -> String {
        self.env["TRANSCODE_BROKER__JOBS_QUEUE"].clone()
    }

    fn command(&self, args: &[OsString]) -> Command {
        let mut cmd = Command::new(queue_files_bin());
        cmd.args(args)
            .current_dir(self.cwd.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.env);
        if let Some(home) = std::env::var_os("HOME") {
            // GStreamer keeps its plugin registry cache there.
            cmd.env("HOME", home);
        }
        cmd
    }

    /// Runs queue-files to completion with `args`.
    fn run(&self, args: &[OsString]) -> Run {
        let out = run_with_timeout(&mut self.command(args), RUN_TIMEOUT)
            .unwrap_or_else(|e| panic!("queue-files {args:?}: {e}"));
        Run(out)
    }

    /// Takes every job waiting in the jobs queue (they are all there once a
    /// run has exited: publishes are confirmed).
    async fn take_jobs(&self) -> Vec<Job> {
        let channel = self.conn.create_channel().await.expect("channel");
        let mut jobs = Vec::new();
        loop {
            let got = match channel
                .basic_get(
                    self.jobs_queue().as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
            {
                Ok(got) => got,
                // Never declared: nothing was ever queued.
                Err(e) if jobs.is_empty() && e.to_string().contains("NOT_FOUND") => break,
                Err(e) => panic!("basic.get on the jobs queue: {e}"),
            };
            let Some(message) = got else { break };
            let job = Job::parse(&message.delivery.data).unwrap_or_else(|e| {
                panic!(
                    "not a valid job: {e}: {}",
                    String::from_utf8_lossy(&message.delivery.data)
                )
            });
            jobs.push(job);
        }
        let _ = channel.close(200, "done".into()).await;
        jobs.sort_by(|a, b| a.input_key.cmp(&b.input_key));
        jobs
    }

    fn bucket(&self) -> &s3::Bucket {
        self.bucket.as_deref().expect("an S3 world")
    }

    /// Keys of every object in the bucket.
    async fn object_keys(&self) -> Vec<String> {
        let pages = self
            .bucket()
            .list(String::new(), None)
            .await
            .expect("list bucket");
        let mut keys: Vec<String> = pages
            .into_iter()
            .flat_map(|p| p.contents.into_iter().map(|o| o.key))
            .collect();
        keys.sort();
        keys
    }

    /// User metadata of an object (`None` if missing).
    async fn metadata(&self, key: &str) -> Option<HashMap<String, String>> {
        match self.bucket().head_object(key).await {
            Ok((head, 200)) => Some(head.metadata.unwrap_or_default()),
            _ => None,
        }
    }
}

/// The output of one run.
struct Run(Output);

impl Run {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    fn code(&self) -> Option<i32> {
        self.0.status.code()
    }

    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "exit status {:?}\nstdout:\n{}\nstderr:\n{}",
            self.0.status,
            self.stdout(),
            self.stderr()
        );
        self
    }

    /// The closing summary line.
    fn summary(&self) -> String {
        self.stderr()
            .lines()
            .rev()
            .find(|l| l.contains(" skipped") && l.contains(" failed"))
            .unwrap_or_else(|| panic!("no summary in:\n{}", self.stderr()))
            .to_string()
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn with_path(args: &[&str], path: &Path) -> Vec<OsString> {
    let mut v = os(args);
    v.push(path.as_os_str().to_owned());
    v
}

fn copy(fixture: &Path, dest: &Path) {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(fixture, dest)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", fixture.display(), dest.display()));
}

/// A library with one file of each kind, names with spaces, quotes, `$()`,
/// unicode and a leading dash. Returns (relative path, expected container,
/// expected video codec, expected audio codec) of the files to be queued.
fn make_library(
    lib: &Path,
) -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
)> {
    copy(
        &fixtures::wmv_with_audio(2),
        &lib.join("drone/flight 1.wmv"),
    );
    copy(
        &fixtures::video_only(2),
        &lib.join("drone/old \"quoted\" $(touch pwned).avi"),
    );
    copy(
        &fixtures::mpeg2_ps_with_mp2(2),
        &lib.join("vhs/tape'01.mpg"),
    );
    copy(&fixtures::mjpeg_mov(2), &lib.join("vhs/-dash été.mov"));
    copy(&fixtures::h264_mp4(2), &lib.join("done/already.mp4"));
    copy(&fixtures::corrupt(), &lib.join("broken.avi"));
    std::fs::write(lib.join("notes.txt"), "not a video\n").unwrap();
    vec![
        (
            "drone/flight 1.wmv",
            "video/x-ms-asf",
            "video/x-wmv",
            Some("audio/x-wma"),
        ),
        (
            "drone/old \"quoted\" $(touch pwned).avi",
            "video/x-msvideo",
            "video/x-divx",
            None,
        ),
        (
            "vhs/-dash été.mov",
            "video/quicktime",
            "image/jpeg",
            Some("audio/x-raw"),
        ),
        (
            "vhs/tape'01.mpg",
            "video/mpeg",
            "video/mpeg",
            Some("audio/mpeg"),
        ),
    ]
}

fn mp4_key(prefix: &str, rel: &str) -> String {
    let stem = &rel[..rel.rfind('.').unwrap()];
    format!("{prefix}{stem}.mp4")
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_a_library_once_and_a_changed_file_again() {
    let world = World::s3().await;
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("library");
    let expected = make_library(&lib);

    // First run: exactly the four videos that need transcoding.
    let run = world.run(&with_path(&[], &lib));
    eprintln!("first run:\n{}", run.stderr());
    run.assert_code(0);
    assert_eq!(
        run.summary(),
        "4 queued, 3 skipped (1 already in the target format, 2 not a video GStreamer can read), 0 failed",
        "{}",
        run.stderr()
    );
    let jobs = world.take_jobs().await;
    assert_eq!(jobs.len(), 4, "{jobs:#?}");
    for (job, (rel, container, video, audio)) in jobs.iter().zip(&expected) {
        assert_eq!(job.input_key, format!("input/{rel}"));
        assert_eq!(job.output_key, mp4_key("output/", rel));
        assert!(job.job_id.starts_with("qf-"), "{}", job.job_id);
        assert_eq!(job.preset, None);
        assert_eq!(job.transcode_options, None);
        let source = job.source.as_ref().expect("probe data");
        assert_eq!(source.container.as_deref(), Some(*container), "{rel}");
        assert_eq!(source.video_codec.as_deref(), Some(*video), "{rel}");
        assert_eq!(source.audio_codec.as_deref(), *audio, "{rel}");
        let size = std::fs::metadata(lib.join(rel)).unwrap().len();
        assert_eq!(source.size_bytes, Some(size), "{rel}");
        assert!(source.bitrate.unwrap_or(0) > 0, "{rel}: {source:?}");
        let duration = source.duration_secs.expect("duration");
        // MPEG-PS durations are estimated short (see the fixture smoke test).
        assert!((1.0..=2.5).contains(&duration), "{rel}: {duration}");
        if *video != "video/mpeg" {
            assert_eq!(source.width, Some(320), "{rel}");
            assert_eq!(source.height, Some(240), "{rel}");
        }
        if let Some(fps) = source.frame_rate {
            assert!((fps - 25.0).abs() < 0.01, "{rel}: {fps}");
        }
        // The input is uploaded whole, with its identity in its metadata.
        let meta = world
            .metadata(&job.input_key)
            .await
            .expect("input uploaded");
        assert_eq!(meta.get("transcode-job-id"), Some(&job.job_id), "{meta:?}");
        assert_eq!(
            meta.get("transcode-content-sha256").map(String::len),
            Some(64),
            "{meta:?}"
        );
        let (head, _) = world.bucket().head_object(&job.input_key).await.unwrap();
        assert_eq!(head.content_length, Some(size as i64));
        // And the job is recorded beside its output.
        assert!(
            world
                .metadata(&format!("{}.queued.json", job.output_key))
                .await
                .is_some(),
            "no marker for {}",
            job.output_key
        );
    }
    let wmv = jobs[0].source.as_ref().unwrap();
    assert_eq!(wmv.frame_rate, Some(25.0));
    assert!(!lib.join("drone/pwned").exists() && !world.cwd.path().join("pwned").exists());
    let ids: std::collections::HashSet<_> = jobs.iter().map(|j| &j.job_id).collect();
    assert_eq!(ids.len(), 4);
    let mut keys = world.object_keys().await;
    keys.retain(|k| k.starts_with("input/"));
    assert_eq!(keys.len(), 4, "{keys:?}");

    // Second run: nothing new.
    let run = world.run(&with_path(&[], &lib));
    run.assert_code(0);
    assert!(
        run.summary().starts_with("0 queued, 7 skipped")
            && run.summary().contains("4 already queued"),
        "{}",
        run.stderr()
    );
    assert!(world.take_jobs().await.is_empty());

    // A worker finished one of them: its output carries the job id.
    let done = &jobs[1];
    let put = world
        .bucket()
        .put_object_builder(&done.output_key, b"pretend video")
        .with_metadata("transcode-job-id", &done.job_id)
        .unwrap()
        .execute()
        .await
        .expect("put output");
    assert_eq!(put.status_code(), 200);

    // The WMV changes: queued again, with a new id; nothing else is.
    copy(
        &fixtures::wmv_with_audio(3),
        &lib.join("drone/flight 1.wmv"),
    );
    let run = world.run(&with_path(&[], &lib));
    run.assert_code(0);
    let summary = run.summary();
    assert!(
        summary.starts_with("1 queued, 6 skipped"),
        "{}",
        run.stderr()
    );
    assert!(summary.contains("2 already queued"), "{summary}");
    assert!(summary.contains("1 already transcoded"), "{summary}");
    let again = world.take_jobs().await;
    assert_eq!(again.len(), 1, "{again:#?}");
    assert_eq!(again[0].input_key, jobs[0].input_key);
    assert_eq!(again[0].output_key, jobs[0].output_key);
    assert_ne!(again[0].job_id, jobs[0].job_id);
    let duration = again[0].source.as_ref().unwrap().duration_secs.unwrap();
    assert!((duration - 3.0).abs() < 0.3, "{duration}");
    let meta = world.metadata(&again[0].input_key).await.unwrap();
    assert_eq!(meta.get("transcode-job-id"), Some(&again[0].job_id));

    // --force queues everything that needs transcoding again.
    let run = world.run(&with_path(&["--force", "--quiet"], &lib));
    run.assert_code(0);
    assert!(run.summary().starts_with("4 queued"), "{}", run.stderr());
    assert_eq!(world.take_jobs().await.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_jobs_and_touches_nothing() {
    let world = World::s3().await;
    let dir = tempfile::tempdir().unwrap();
    // A folder whose name starts with a dash, given as a relative path.
    let lib = world.cwd.path().join("-odd dir");
    copy(&fixtures::wmv_with_audio(2), &lib.join("a.wmv"));
    copy(&fixtures::video_only(2), &lib.join("sub/b.avi"));
    copy(&fixtures::h264_mp4(2), &lib.join("c.mp4"));
    let archive = dir.path().join("archive");

    let mut args = os(&[
        "--dry-run",
        "--preset",
        "h264-720p",
        "--input-prefix",
        "in",
        "--output-prefix",
        "/out/",
        "--archive",
    ]);
    args.push(archive.clone().into_os_string());
    args.extend(os(&["--", "-odd dir"]));
    let run = world.run(&args);
    run.assert_code(0);
    assert_eq!(
        run.summary(),
        "2 to queue, 1 skipped (1 already in the target format), 0 failed"
    );
    let printed: Vec<Job> = run
        .stdout()
        .lines()
        .map(|l| Job::parse(l.as_bytes()).expect("a job per line"))
        .collect();
    assert_eq!(printed.len(), 2, "{}", run.stdout());
    assert_eq!(printed[0].input_key, "in/a.wmv");
    assert_eq!(printed[0].output_key, "out/a.mp4");
    assert_eq!(printed[1].input_key, "in/sub/b.avi");
    assert_eq!(printed[1].output_key, "out/sub/b.mp4");
    assert_eq!(printed[0].preset.as_deref(), Some("h264-720p"));

    assert!(
        world.object_keys().await.is_empty(),
        "the bucket was written"
    );
    let queues = shared_rabbit().ctl(&["list_queues", "name"]);
    assert!(
        !queues.contains(&world.jobs_queue()),
        "a dry run declared the jobs queue:\n{queues}"
    );
    assert!(lib.join("a.wmv").is_file() && lib.join("sub/b.avi").is_file());
    assert!(!archive.exists(), "a dry run made the archive folder");
}

/// `--segment-seconds N` puts `segment_seconds` in every job; a value the
/// workers refuse (under 2) fails each file with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn segment_seconds_is_passed_on_in_every_job() {
    let world = World::s3().await;
    let lib = world.cwd.path().join("seg");
    copy(&fixtures::wmv_with_audio(2), &lib.join("a.wmv"));
    let run = world.run(&with_path(&["--dry-run", "--segment-seconds", "30"], &lib));
    run.assert_code(0);
    let printed: Vec<Job> = run
        .stdout()
        .lines()
        .map(|l| Job::parse(l.as_bytes()).expect("a job per line"))
        .collect();
    assert_eq!(printed.len(), 1, "{}", run.stdout());
    assert_eq!(printed[0].segment_seconds, Some(30.0));
    let run = world.run(&with_path(&["--dry-run", "--segment-seconds", "1"], &lib));
    assert_ne!(run.code(), Some(0));
    assert!(run.stderr().contains("segment_seconds"), "{}", run.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_broker_or_storage_is_a_one_line_error() {
    let world = World::s3().await;
    let dir = tempfile::tempdir().unwrap();
    copy(&fixtures::video_only(2), &dir.path().join("a.avi"));
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());

    let mut cmd = world.command(&with_path(&[], dir.path()));
    cmd.env("AMQP_URL", &dead);
    let run = Run(run_with_timeout(&mut cmd, RUN_TIMEOUT).unwrap());
    run.assert_code(1);
    let stderr = run.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("queue-files: error: cannot use the broker"),
        "{stderr}"
    );
    assert!(lines[0].contains("127.0.0.1"), "{stderr}");
    assert!(
        world.object_keys().await.is_empty(),
        "uploaded without a broker"
    );

    let mut cmd = world.command(&with_path(&[], dir.path()));
    cmd.env(
        "AWS_S3_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", free_port()),
    );
    let run = Run(run_with_timeout(&mut cmd, RUN_TIMEOUT).unwrap());
    run.assert_code(1);
    assert!(
        run.stderr()
            .starts_with("queue-files: error: cannot reach the storage"),
        "{}",
        run.stderr()
    );
    assert_eq!(run.stderr().lines().count(), 1, "{}", run.stderr());

    let run = world.run(&with_path(&["--bucket", "no-such-bucket-here"], dir.path()));
    run.assert_code(1);
    assert!(run.stderr().contains("does not exist"), "{}", run.stderr());

    let run = world.run(&with_path(&["--preset", "nope"], dir.path()));
    run.assert_code(2);
    assert!(
        run.stderr().contains("no preset named \"nope\""),
        "{}",
        run.stderr()
    );
    assert!(world.take_jobs().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_backend_queues_in_place_once() {
    let store = tempfile::tempdir().unwrap();
    let world = World::directory(store.path()).await;
    let lib = store.path().join("lib");
    copy(&fixtures::wmv_with_audio(2), &lib.join("sub dir/a.wmv"));
    copy(&fixtures::mjpeg_mov(2), &lib.join("b.mov"));
    copy(&fixtures::video_only(2), &lib.join("skip-me.avi"));
    copy(&fixtures::h264_mp4(2), &lib.join("c.mp4"));

    let run = world.run(&with_path(&["--exclude", "skip-*"], &lib));
    run.assert_code(0);
    assert_eq!(
        run.summary(),
        "2 queued, 2 skipped (1 already in the target format, 1 excluded by --include/--exclude), 0 failed"
    );
    let jobs = world.take_jobs().await;
    let keys: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| (j.input_key.as_str(), j.output_key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("lib/b.mov", "output/lib/b.mp4"),
            ("lib/sub dir/a.wmv", "output/lib/sub dir/a.mp4")
        ]
    );
    let marker: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.path().join("output/lib/sub dir/a.mp4.queued.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(marker["job_id"], jobs[1].job_id.as_str());
    assert_eq!(marker["input_key"], "lib/sub dir/a.wmv");
    assert!(
        lib.join("sub dir/a.wmv").is_file(),
        "the input stays in place"
    );

    // Scanning the whole store leaves the outputs folder alone and queues nothing new.
    let run = world.run(&with_path(&["--exclude", "skip-*"], store.path()));
    run.assert_code(0);
    assert!(run.summary().starts_with("0 queued"), "{}", run.stderr());
    assert!(
        run.summary().contains("2 already queued"),
        "{}",
        run.stderr()
    );
    assert!(world.take_jobs().await.is_empty());

    // An output that appeared with the marker: transcoded.
    std::fs::write(store.path().join("output/lib/b.mp4"), b"pretend").unwrap();
    let run = world.run(&with_path(&["--exclude", "skip-*"], &lib));
    assert!(
        run.summary().contains("1 already transcoded"),
        "{}",
        run.stderr()
    );

    // Outputs beside their inputs: markers there are not scanned as files,
    // and an input whose output would overwrite it fails.
    let beside = store.path().join("beside");
    copy(&fixtures::video_only(2), &beside.join("x.avi"));
    let run = world.run(&with_path(&["--output-prefix", ""], &beside));
    run.assert_code(0);
    let jobs = world.take_jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].output_key, "beside/x.mp4");
    assert!(beside.join("x.mp4.queued.json").is_file());
    let run = world.run(&with_path(
        &["--output-prefix", "", "--target-ext", "avi"],
        &beside,
    ));
    run.assert_code(2);
    assert!(run.stderr().contains("--target-ext"), "{}", run.stderr());
    let run = world.run(&with_path(
        &["--output-prefix", "", "--target-ext", "mkv"],
        &beside,
    ));
    run.assert_code(0);
    assert_eq!(world.take_jobs().await.len(), 1, "{}", run.stderr());
    copy(&fixtures::video_only(2), &beside.join("y.mkv"));
    let run = world.run(&with_path(
        &["--output-prefix", "", "--target-ext", "mkv"],
        &beside,
    ));
    run.assert_code(1);
    assert!(
        run.stderr()
            .contains("failed  y.mkv: its output key would be its own input key"),
        "{}",
        run.stderr()
    );
    assert_eq!(
        run.summary(),
        "0 queued, 1 skipped (1 already queued), 1 failed"
    );

    // Folders outside the storage directory cannot be queued in place.
    let outside = tempfile::tempdir().unwrap();
    let run = world.run(&with_path(&[], outside.path()));
    run.assert_code(2);
    assert!(
        run.stderr().contains("not inside the storage directory"),
        "{}",
        run.stderr()
    );
}

/// queue-files running in the background, its standard error collected.
struct Background {
    child: ChildGuard,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(world: &World, args: &[OsString]) -> Background {
        let mut child = ChildGuard(
            world
                .command(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start queue-files"),
        );
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.0.stderr.take().unwrap();
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Background {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until its standard error contains `text`.
    async fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.logs().contains(text) {
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {text:?} from queue-files:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for it to exit; returns its status and all it wrote.
    async fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = tokio::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                break status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "queue-files did not exit within {timeout:?}:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.logs())
    }
}

/// Appends `data` to `path` in `parts` pieces, one every `pace`, as a slow
/// copy does. Returns the longest time during which the file may not have
/// changed: from the start of one append to the end of the next.
fn grow_slowly(path: &Path, data: &[u8], parts: usize, pace: Duration) -> Duration {
    use std::io::Write;
    let mut longest = Duration::ZERO;
    let mut previous_start: Option<Instant> = None;
    for part in data.chunks(data.len().div_ceil(parts)) {
        let start = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(part).unwrap();
        drop(f);
        if let Some(previous) = previous_start {
            longest = longest.max(previous.elapsed());
        }
        previous_start = Some(start);
        // Pacing the copy, not waiting for anything.
        std::thread::sleep(pace);
    }
    longest
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_waits_until_a_file_stops_growing() {
    // Two scans are at least this far apart.
    const INTERVAL: Duration = Duration::from_secs(2);
    let world = World::s3().await;
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    copy(&fixtures::video_only(2), &lib.join("first.avi"));
    let mut qf = Background::start(&world, &with_path(&["--watch", "--interval", "2s"], &lib));

    // A fresh channel per poll: until queue-files has declared the jobs
    // queue, basic.get fails with NOT_FOUND, which closes the channel.
    let queue = world.jobs_queue();
    let conn = &world.conn;
    let get = || {
        let queue = queue.clone();
        async move {
            let channel = conn.create_channel().await.expect("channel");
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .ok()
                .flatten()
                .map(|m| Job::parse(&m.delivery.data).expect("a job"));
            let _ = channel.close(200, "done".into()).await;
            got
        }
    };
    let next_job = |what: &'static str| {
        let get = &get;
        let qf = &qf;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(job) = get().await {
                    return job;
                }
                if tokio::time::Instant::now() >= deadline {
                    panic!(
                        "timed out waiting for {what}; queue-files said:\n{}",
                        qf.logs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let first = next_job("the job of first.avi").await;
    assert_eq!(first.input_key, "input/first.avi");

    // A file being copied slowly, for more than two scans: it changes
    // every 50 ms. The check below holds only if it never stayed the same
    // for the time between two scans, which is measured, not assumed.
    let data = std::fs::read(fixtures::wmv_with_audio(2)).unwrap();
    let growing = lib.join("copying.wmv");
    let writer = {
        let (growing, data) = (growing.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            grow_slowly(&growing, &data, 100, Duration::from_millis(50))
        })
    };
    let unchanged = with_timeout(Duration::from_secs(120), "the slow copy", writer)
        .await
        .unwrap();
    assert!(
        unchanged < INTERVAL,
        "the copy stood still for {unchanged:?}, as long as the time between two scans, so a scan \
         could rightly take the file as complete: this machine is too loaded for the test"
    );
    // The first such line was of first.avi, new at the first scan.
    let logs = qf.logs();
    assert!(
        logs.matches("1 file(s) new or still changing").count() >= 2,
        "no scan saw copying.wmv before it was complete:\n{logs}"
    );
    // The only job of copying.wmv is of the whole file: none was queued
    // while it grew (that one would come first, smaller).
    let second = next_job("the job of copying.wmv once it stopped growing").await;
    assert_eq!(second.input_key, "input/copying.wmv");
    assert_eq!(
        second.source.as_ref().unwrap().size_bytes,
        Some(data.len() as u64)
    );

    // SIGTERM ends the watch with a summary and status 0.
    // SAFETY: signalling our own child process, which has not been reaped.
    unsafe { libc::kill(qf.child.0.id() as i32, libc::SIGTERM) };
    let (status, logs) = qf.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(logs.contains("2 queued, 0 skipped, 0 failed"), "{logs}");
    assert!(get().await.is_none(), "no other job");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_exits_non_zero_when_a_job_fails_and_keeps_its_original() {
    let world = World::s3().await;
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    let archive = dir.path().join("archive");
    copy(&fixtures::video_only(2), &lib.join("gone.avi"));

    let mut args = os(&["--wait", "--wait-timeout", "120s", "--archive"]);
    args.push(archive.clone().into_os_string());
    args.push(lib.clone().into_os_string());
    let mut qf = Background::start(&world, &args);
    // Queued, with no worker yet: take its input away, then start one.
    qf.wait_for_log("waiting for 1 job", Duration::from_secs(60))
        .await;
    let deleted = world
        .bucket()
        .delete_object("input/gone.avi")
        .await
        .expect("delete the input");
    assert_eq!(deleted.status_code(), 204);
    let worker_log = dir.path().join("worker.log");
    let _worker = spawn_worker(&world, &dir.path().join("scratch"), &worker_log);

    let (status, logs) = qf.wait_exit(Duration::from_secs(120)).await;
    let worker_logs = std::fs::read_to_string(&worker_log).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{logs}\nworker:\n{worker_logs}");
    assert!(logs.contains("failed (input_not_found)"), "{logs}");
    assert!(
        logs.contains("1 queued, 0 skipped, 0 failed; jobs: 0 completed, 1 failed"),
        "{logs}"
    );
    assert!(
        lib.join("gone.avi").is_file(),
        "a failed job's original was moved"
    );
    assert!(!archive.join("gone.avi").exists());
}

/// Kills and reaps a child process when the test ends, even on panic
/// (nothing happens to one that was already reaped).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `transcode-worker run` with the world's settings; its output goes
/// to `log`. Killed when the guard is dropped.
fn spawn_worker(world: &World, scratch: &Path, log: &Path) -> ChildGuard {
    std::fs::create_dir_all(scratch).unwrap();
    let log_file = std::fs::File::create(log).expect("worker log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_transcode-worker"));
    cmd.arg("run")
        .current_dir(world.cwd.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&world.env)
        .env("TRANSCODE_WORKER__SCRATCH_DIR", scratch)
        .env("TRANSCODE_WORKER__ID", random_name("qf-worker"))
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    if let Some(home) = std::env::var_os("HOME") {
        cmd.env("HOME", home);
    }
    ChildGuard(cmd.spawn().expect("start transcode-worker"))
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_follows_the_jobs_to_the_end_and_archives_the_originals() {
    let world = World::s3().await;
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    let archive = dir.path().join("archive");
    copy(&fixtures::video_only(2), &lib.join("a.avi"));
    copy(&fixtures::wmv_with_audio(2), &lib.join("sub/b c.wmv"));
    let worker_log = dir.path().join("worker.log");
    let _worker = spawn_worker(&world, &dir.path().join("scratch"), &worker_log);

    let mut args = os(&["--wait", "--wait-timeout", "240s", "--archive"]);
    args.push(archive.clone().into_os_string());
    args.push(lib.clone().into_os_string());
    let run = world.run(&args);
    eprintln!("queue-files --wait:\n{}", run.stderr());
    let worker_logs = std::fs::read_to_string(&worker_log).unwrap_or_default();
    assert_eq!(
        run.code(),
        Some(0),
        "queue-files:\n{}\nworker:\n{worker_logs}",
        run.stderr()
    );
    assert!(
        run.summary()
            .ends_with("2 queued, 0 skipped, 0 failed; jobs: 2 completed, 0 failed"),
        "{}",
        run.stderr()
    );
    for (rel, output) in [
        ("a.avi", "output/a.mp4"),
        ("sub/b c.wmv", "output/sub/b c.mp4"),
    ] {
        let meta = world
            .metadata(output)
            .await
            .unwrap_or_else(|| panic!("no output {output}\n{worker_logs}"));
        assert!(
            meta.get("transcode-job-id")
                .is_some_and(|id| id.starts_with("qf-")),
            "{meta:?}"
        );
        assert!(archive.join(rel).is_file(), "{rel} not archived");
        assert!(!lib.join(rel).exists(), "{rel} still in the library");
    }
    // The progress events went to the shared progress queue untouched:
    // queue-files read its own temporary queue, which is gone now.
    let progress_queue = &world.env["TRANSCODE_BROKER__PROGRESS_QUEUE"];
    // (Counted by the queue itself: `rabbitmqctl list_queues` lags for
    // quorum queues.)
    let conn = lapin::Connection::connect(
        &shared_rabbit().amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare(
            progress_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("no {progress_queue}: {e}"));
    assert!(queue.message_count() >= 4, "{}", queue.message_count());
    let exchange = &world.env["TRANSCODE_BROKER__PROGRESS_EXCHANGE"];
    let bindings = shared_rabbit().ctl(&["list_bindings", "source_name", "destination_name"]);
    let bound: Vec<&str> = bindings
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(exchange.as_str())).then(|| parts.next().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        bound,
        [progress_queue.as_str()],
        "a temporary queue outlived queue-files"
    );

    // Nothing left to do: a second run with --wait exits at once.
    let run = world.run(&with_path(&["--wait"], &archive));
    run.assert_code(0);
    assert!(
        run.summary().contains("2 already transcoded"),
        "{}",
        run.stderr()
    );
}
