//! Farm benchmarks: what the worker costs on top of the encoder.
//!
//! Run with `scripts/bench` (full run, writes BENCHMARKS.md) or
//! `scripts/bench --smoke` (tiny inputs, one run of each, what CI runs).
//! Options (after `--`, parsed with clap: [`Opts`]; `scripts/bench --help`
//! lists them): `--smoke`, `--runs N`, `--long-runs N`, `--workers 1,2,4`,
//! `--scale-jobs N`, `--history-jobs N`, `--only SECTION,..`,
//! `--skip-1080p`, `--skip-garage`, `--worker-env NAME=VALUE,..`,
//! `--out FILE`.
//! Sections: overhead, per-job cost, memory, scale-out, renditions
//! (farm/renditions.rs: a ladder from one decode against separate jobs),
//! segmented jobs (farm/segments.rs: one input on one and two workers;
//! farm/lengths.rs: what the segment length costs),
//! a part reading by ranges from storage far away (farm/far.rs), the
//! join fetching a segmented job's parts (farm/joins.rs),
//! progress marks (farm/marks.rs: a segmented job's events in order),
//! history (the dashboard and `status` with a large history; also on
//! Garage), the one-core, Garage and 1080p overhead runs.
//!
//! It starts its own RabbitMQ node and S3 server (s3-test-server) exactly as
//! the tests do (tests/common), and a Garage node for the sections on a
//! production S3 server when Garage is installed (support/garage.rs); runs
//! the real worker binary, and asserts no speed. Every wait has a timeout.
//! Local commands are timed by waiting for their exit (`waitid`), never by
//! polling.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "farm/far.rs"]
mod far;
#[path = "support/garage.rs"]
mod garage;
#[path = "farm/joins.rs"]
mod joins;
#[path = "farm/lengths.rs"]
mod lengths;
#[path = "farm/marks.rs"]
mod marks;
#[path = "farm/renditions.rs"]
mod renditions;
#[path = "farm/segments.rs"]
mod segments;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::farm::{Farm, Rabbit, WorkerProc, WORKER_BIN};
use common::services::S3Server;
use garage::Garage;
use serde_json::json;
use transcode_worker::job::{Phase, Progress};

/// The worker's default preset (`h264-mp4`), as configured.
const PRESET_VIDEO: &str = "videoconvert ! x264enc pass=qual quantizer=23 speed-preset=medium";
const PRESET_AUDIO: &str = "audioconvert ! audioresample ! avenc_aac bitrate=128000";
/// The cheap output of the memory measurement.
const CHEAP_VIDEO: &str =
    "videoconvert ! videoscale ! video/x-raw,width=320,height=180 ! x264enc speed-preset=ultrafast";
/// Longest single job or command.
const JOB_TIMEOUT: Duration = Duration::from_secs(900);

/// The sections of a run, in the order they run.
const SECTIONS: [&str; 17] = [
    "overhead",
    "perjob",
    "memory",
    "memory-s3",
    "memory-garage",
    "scale",
    "renditions",
    "segments",
    "lengths",
    "far",
    "joins",
    "marks",
    "history",
    "history-garage",
    "overhead-garage",
    "overhead-1core",
    "overhead-1080p",
];

/// The sections that need Garage.
const GARAGE_SECTIONS: [&str; 3] = ["memory-garage", "history-garage", "overhead-garage"];

/// Farm benchmarks: what the worker costs on top of the encoder (see
/// benches/farm.rs). Run through `scripts/bench`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "scripts/bench", bin_name = "scripts/bench")]
struct Opts {
    /// Tiny inputs, one run of each measurement, no file written.
    #[arg(long)]
    smoke: bool,
    /// Runs per command in the overhead comparison.
    #[arg(long, value_name = "N", default_value_t = 3)]
    runs: usize,
    /// Runs per command for the 60 s 1080p input and the one-core
    /// comparison (default: --runs).
    #[arg(long, value_name = "N")]
    long_runs: Option<usize>,
    /// Worker counts of the scale-out table.
    #[arg(
        long,
        value_name = "N,N,..",
        value_delimiter = ',',
        default_value = "1,2,4"
    )]
    workers: Vec<usize>,
    /// Jobs in the scale-out batch.
    #[arg(long, value_name = "N", default_value_t = 40)]
    scale_jobs: usize,
    /// Job records written into the history before the dashboard and
    /// `status` are timed.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    history_jobs: usize,
    /// Run only these sections (in the usual order; the 60 s 1080p overhead
    /// input is its own section, last; `history` times the dashboard and
    /// `status` over a history of --history-jobs records, `history-garage`
    /// the same on Garage).
    #[arg(long, value_name = "SECTION,..", value_delimiter = ',', value_parser = SECTIONS)]
    only: Option<Vec<String>>,
    /// Leave out the 60 s 1080p MJPEG overhead input.
    #[arg(long = "skip-1080p")]
    skip_1080p: bool,
    /// Leave out the sections on Garage (a production S3 server; see
    /// scripts/install-garage). --smoke leaves them out too.
    #[arg(long)]
    skip_garage: bool,
    /// Extra environment of every worker the benchmark starts, e.g.
    /// `MALLOC_ARENA_MAX=2` (to measure allocator settings).
    #[arg(long, value_name = "NAME=VALUE,..", value_delimiter = ',')]
    worker_env: Vec<String>,
    /// Write the report there (full runs default to BENCHMARKS.md).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Passed by `cargo bench`; means nothing here.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Opts {
    /// The command line's options, with what `--smoke` implies and the
    /// full run's default report file.
    fn from_command_line() -> Opts {
        let mut o = <Opts as clap::Parser>::parse();
        if o.smoke {
            o.runs = 1;
            o.long_runs = None;
            o.scale_jobs = o.scale_jobs.min(4);
            o.history_jobs = o.history_jobs.min(300);
            o.workers = vec![1, 2];
        } else if o.out.is_none() {
            o.out = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md"));
        }
        o
    }

    fn wants(&self, section: &str) -> bool {
        let skipped = match section {
            "overhead-1080p" => self.smoke || self.skip_1080p,
            _ if GARAGE_SECTIONS.contains(&section) => self.smoke || self.skip_garage,
            _ => false,
        };
        !skipped
            && self
                .only
                .as_ref()
                .is_none_or(|s| s.iter().any(|x| x == section))
    }

    /// [`Opts::worker_env`] as pairs.
    fn worker_env(&self) -> Vec<(&str, &str)> {
        self.worker_env
            .iter()
            .map(|kv| kv.split_once('=').expect("--worker-env takes NAME=VALUE"))
            .collect()
    }
}

/// The line after which `BENCHMARKS.md` is written by hand; a run rewrites
/// what is above it and keeps the rest.
const HAND_WRITTEN: &str =
    "<!-- Written by hand from the figures above; scripts/bench keeps this part. -->";

fn main() {
    let opts = Opts::from_command_line();
    let started = Instant::now();
    let date = sh("date -u '+%Y-%m-%d %H:%M UTC'");
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    eprintln!("bench: starting RabbitMQ and s3-test-server");
    common::services::shared_rabbit();
    let test_server = S3Target {
        server: common::services::shared_s3(),
        name: s3_server_name(),
    };
    // Garage, when installed and wanted.
    let garage = GARAGE_SECTIONS
        .iter()
        .any(|s| opts.wants(s))
        .then(Garage::binary)
        .flatten()
        .map(|bin| {
            eprintln!("bench: starting Garage ({})", bin.display());
            Garage::start(&bin)
        });
    let garage_target = garage.as_ref().map(|g| S3Target {
        server: &g.server,
        name: format!(
            "Garage ({}), one node on loopback, LMDB metadata",
            g.version
        ),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = String::new();
    // The report is rewritten after each section, so an interrupted run
    // keeps what it measured.
    let save = |report: &str, finished: bool| {
        if let Some(out) = &opts.out {
            let total = started.elapsed();
            let status = if finished {
                ""
            } else {
                "\n**Partial run: interrupted or still running; sections below are the ones finished.**\n"
            };
            let mut doc = format!(
                "{}{status}\n{report}",
                header(&opts, &date, &load_before, total)
            );
            // What people wrote below the marker stays.
            if let Some(kept) = std::fs::read_to_string(out)
                .ok()
                .and_then(|old| old.find(HAND_WRITTEN).map(|at| old[at..].to_string()))
            {
                doc = format!("{}\n{kept}", doc.trim_end());
            }
            std::fs::write(out, doc).expect("write the report");
            eprintln!("bench: wrote {}", out.display());
        }
    };
    let no_garage = |title: &str| {
        format!(
            "\n## {title}\n\nNot measured in this run: no `garage` binary was found \
             (`scripts/install-garage` installs Garage {} from crates.io).\n",
            garage::VERSION
        )
    };
    let ts = &test_server;
    let sections: [(&str, &dyn Fn() -> String); 17] = [
        ("overhead", &|| {
            rt.block_on(overhead(&opts, Overhead::Main, ts, "1a", ""))
        }),
        ("perjob", &|| rt.block_on(per_job(&opts))),
        ("memory", &|| rt.block_on(memory(&opts))),
        ("memory-s3", &|| rt.block_on(memory_s3(&opts, ts, "3b"))),
        ("memory-garage", &|| match &garage_target {
            Some(g) => rt.block_on(memory_s3(&opts, g, "3c")),
            None => no_garage("3c. Memory on Garage"),
        }),
        ("scale", &|| rt.block_on(scale_out(&opts))),
        ("renditions", &|| rt.block_on(renditions::renditions(&opts))),
        ("segments", &|| rt.block_on(segments::segments(&opts))),
        ("lengths", &|| rt.block_on(lengths::lengths(&opts))),
        ("far", &|| rt.block_on(far::far(&opts))),
        ("joins", &|| rt.block_on(joins::joins(&opts))),
        ("marks", &|| rt.block_on(marks::marks(&opts))),
        ("history", &|| rt.block_on(history(&opts, ts))),
        ("history-garage", &|| match &garage_target {
            Some(g) => rt.block_on(history_garage(&opts, g)),
            None => no_garage("6b. Job history on Garage"),
        }),
        ("overhead-garage", &|| match &garage_target {
            Some(g) => rt.block_on(overhead(&opts, Overhead::Main, g, "1d", " (on Garage)")),
            None => no_garage("1d. Overhead on Garage"),
        }),
        ("overhead-1core", &|| {
            rt.block_on(overhead(
                &opts,
                Overhead::OneCore,
                ts,
                "1c",
                " (a slower machine: the worker and the encoders on one core)",
            ))
        }),
        ("overhead-1080p", &|| {
            rt.block_on(overhead(&opts, Overhead::Long, ts, "1b", ""))
        }),
    ];
    for (name, run) in sections {
        if !opts.wants(name) {
            continue;
        }
        report += &run();
        save(&report, false);
    }
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    save(&report, true);
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn header(opts: &Opts, date: &str, load_before: &str, total: Duration) -> String {
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo");
    let gst = sh("gst-launch-1.0 --version | sed -n 2p");
    let ffmpeg = sh("ffmpeg -version | head -1 | cut -d' ' -f1-3");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    format!(
        "# Benchmarks\n\n\
         Generated by `scripts/bench {}` (benches/farm.rs); do not edit the figures by hand.\n\n\
         | | |\n|---|---|\n\
         | date | {date} |\n\
         | machine | {} cores, {cpu}, {mem} RAM |\n\
         | load average (1, 5, 15 min) before / after | {load_before} / {} |\n\
         | GStreamer | {gst} |\n\
         | ffmpeg | {ffmpeg} |\n\
         | source | commit {} |\n\
         | worker binary | `{WORKER_BIN}` |\n\
         | S3 server | {} (sections 1d, 3c and 6b: Garage) |\n\
         | runs per command | {} |\n\
         | whole run | {:.0} s |\n",
        args.join(" "),
        cores(),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        sh("git rev-parse --short HEAD 2>/dev/null && git status --porcelain -- src | grep -q . && echo '(src/ modified)'")
            .replace('\n', " "),
        s3_server_name(),
        opts.runs,
        total.as_secs_f64(),
    )
}

/// An S3 server the benchmark's farms use, and its name in the report.
struct S3Target<'a> {
    server: &'a S3Server,
    name: String,
}

impl S3Target<'_> {
    /// A farm with a new bucket on this server.
    async fn farm(&self, extra: &[(&str, &str)]) -> Farm {
        Farm::s3_on(
            Rabbit::Shared(common::services::shared_rabbit()),
            self.server,
            extra,
        )
        .await
    }
}

/// Starts a worker of `farm` with `extra` and `--worker-env` in its
/// environment.
fn spawn_worker(opts: &Opts, farm: &Farm, extra: &[(&str, &str)]) -> WorkerProc {
    let mut env = opts.worker_env();
    env.extend_from_slice(extra);
    farm.spawn_worker(&env)
}

/// The S3 server of the benchmark's farms (and of the sections on Garage,
/// Garage), in words.
fn s3_server_name() -> String {
    match std::env::var("TEST_S3_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => format!(
            "{} at {endpoint}",
            std::env::var("BENCH_S3_SERVER").unwrap_or_else(|_| "an external S3 server".into())
        ),
        _ => {
            "s3-test-server, the s3s-fs library's file-system server (tools/s3-test-server)".into()
        }
    }
}

fn inputs_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-inputs");
    std::fs::create_dir_all(&dir).expect("inputs dir");
    dir
}

/// Makes (once, cached under target/tmp/bench-inputs) an input with ffmpeg.
fn ffmpeg_input(name: &str, args: &str) -> PathBuf {
    let path = inputs_dir().join(name);
    if !path.exists() {
        let tmp = path.with_extension("part");
        make_ffmpeg(&tmp, args);
        std::fs::rename(&tmp, &path).expect("rename input");
    }
    path
}

fn make_ffmpeg(dest: &Path, args: &str) {
    eprintln!("bench: making {}", dest.display());
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y"])
        .args(args.split_whitespace())
        .arg(dest);
    let out = common::run_with_timeout(&mut cmd, JOB_TIMEOUT).expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test-pattern input: `secs` seconds of `size` video with a sine tone.
fn lavfi(secs: u32, size: &str, video_codec: &str, audio_codec: &str) -> String {
    format!(
        "-f lavfi -i testsrc2=size={size}:rate=25:duration={secs} \
         -f lavfi -i sine=frequency=440:sample_rate=44100:duration={secs} \
         {video_codec} {audio_codec}"
    )
}

fn wmv(secs: u32, size: &str) -> PathBuf {
    ffmpeg_input(
        &format!("wmv-{secs}s-{size}.wmv"),
        &lavfi(
            secs,
            size,
            "-c:v wmv2 -b:v 4M",
            "-c:a wmav2 -b:a 128k -f asf",
        ),
    )
}

fn mjpeg_mov(secs: u32, size: &str) -> PathBuf {
    ffmpeg_input(
        &format!("mjpeg-{secs}s-{size}.mov"),
        &lavfi(
            secs,
            size,
            "-c:v mjpeg -q:v 3 -pix_fmt yuvj420p",
            "-c:a pcm_s16le -f mov",
        ),
    )
}

/// What one run of a command cost.
#[derive(Debug, Clone, Copy)]
struct Timed {
    /// From just before it was started to its exit, as the kernel reports
    /// the exit to a waiting parent (not polled).
    wall: Duration,
    /// CPU time, user and system, of the process and the children it
    /// waited for (its resource usage as `wait4` returns it).
    cpu: Duration,
}

/// Runs a command to completion, timing it: this thread blocks in
/// `waitid` until the process exits, so the end is exact, not the next
/// tick of a poll. Panics on failure or after [`JOB_TIMEOUT`].
fn time_cmd(cmd: &mut Command) -> Timed {
    time_cmd_exiting(cmd, 0)
}

/// [`time_cmd`] of a command expected to exit with `code`.
fn time_cmd_exiting(cmd: &mut Command, code: i32) -> Timed {
    let mut out = tempfile::tempfile().expect("temp file");
    let mut err = tempfile::tempfile().expect("temp file");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"));
    let start = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    // Kills the process if it runs past the timeout. The exited process
    // stays a zombie until it is reaped below, after this thread is done,
    // so its pid cannot be reused while this thread may signal it.
    let (done, until_done) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let late =
            until_done.recv_timeout(JOB_TIMEOUT) == Err(std::sync::mpsc::RecvTimeoutError::Timeout);
        if late {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        late
    });
    loop {
        // SAFETY: waitid on our own child with a zeroed siginfo_t; WNOWAIT
        // leaves it to be reaped by wait4 below.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "waitid: {e}");
    }
    let wall = start.elapsed();
    drop(done);
    let timed_out = watchdog.join().expect("watchdog");
    let mut status = 0;
    // SAFETY: reaps our own exited child; `usage` is written by the kernel.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let r = libc::wait4(pid, &mut status, 0, &mut usage);
        assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
        usage
    };
    drop(child);
    let text = |f: &mut std::fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut s);
        s
    };
    assert!(
        !timed_out && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == code,
        "{cmd:?} failed (wait status {status:#x}{}): {}{}",
        if timed_out { ", timed out" } else { "" },
        text(&mut out),
        text(&mut err)
    );
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Timed {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `gst-launch-1.0` running the worker's pipeline: the same elements, with
/// the `queue` the worker puts at the head of each branch.
fn gst_launch(input: &Path, output: &Path, video: &str, audio: &str) -> Command {
    let text = format!(
        "filesrc location={} ! decodebin name=d d. ! queue ! {video} ! mp4mux name=mux ! filesink location={} \
         d. ! queue ! {audio} ! mux.",
        input.display(),
        output.display()
    );
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.arg("-q").args(text.split_whitespace());
    cmd
}

fn gst_launch_raw(text: &str) -> Command {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.arg("-q").args(text.split_whitespace());
    cmd
}

fn ffmpeg_h264(input: &Path, output: &Path) -> Command {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-i"])
        .arg(input)
        .args("-c:v libx264 -preset medium -crf 23 -c:a aac -b:a 128k".split_whitespace())
        .arg(output);
    cmd
}

/// The pipeline process alone, as the worker starts it: spec on stdin.
fn pipeline_child(input: &Path, output: &Path) -> Command {
    let spec = json!({
        "input": input,
        "outputs": [{"key": "out.mp4", "path": output, "target": {"file": {
            "video": PRESET_VIDEO, "audio": PRESET_AUDIO, "muxer": "mp4mux"}}}],
        "duration_tolerance_ms": 500, "max_input": [7680, 4320, 86_400_000u64],
    });
    let spec_file = output.with_extension("spec.json");
    std::fs::write(&spec_file, format!("{spec}\n")).expect("spec");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("exec {WORKER_BIN} pipeline < \"$0\" > /dev/null"))
        .arg(&spec_file);
    cmd
}

fn ts(event: &Progress) -> SystemTime {
    humantime::parse_rfc3339(&event.timestamp).expect("RFC 3339 timestamp")
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Waits until the worker's log says it is consuming.
async fn wait_ready(worker: &WorkerProc) {
    common::wait_for(Duration::from_secs(60), "the worker to connect", || {
        let ready = worker.logs().contains("waiting for jobs");
        async move { ready }
    })
    .await;
}

/// Publishes one job and waits for its `completed` event; returns the time
/// from publish to that event and the events of the job.
async fn run_job(farm: &Farm, job: serde_json::Value) -> (Duration, Vec<Progress>, SystemTime) {
    let job_id = job["job_id"].as_str().expect("job_id").to_string();
    let mut watch = farm.watch_progress().await;
    let published = SystemTime::now();
    let start = Instant::now();
    farm.publish_job(job).await;
    let last = watch.until_final(&job_id, JOB_TIMEOUT).await;
    let took = start.elapsed();
    assert_eq!(
        last.state,
        Phase::Completed,
        "job {job_id} failed: {last:?}"
    );
    (took, watch.of(&job_id), published)
}

/// The phases of one completed job, in ms, from its progress events.
fn job_phases(
    events: &[Progress],
    published: SystemTime,
    took: Duration,
) -> Vec<(&'static str, f64)> {
    let at = |state: Phase| {
        events
            .iter()
            .find(|e| e.state == state)
            .map(ts)
            .expect("event")
    };
    let (d, t, u, c) = (
        at(Phase::Downloading),
        at(Phase::Transcoding),
        at(Phase::Uploading),
        at(Phase::Completed),
    );
    let received = published + took;
    let ms = |a, b| secs_between(a, b) * 1000.0;
    vec![
        (
            "1 publish -> worker starts the job (`downloading` event)",
            ms(published, d),
        ),
        (
            "2 fetch: HEAD input, HEAD output (already done?), download",
            ms(d, t),
        ),
        (
            "3 transcode in the waiting pipeline process: probe, encode, verify",
            ms(t, u),
        ),
        ("4 upload", ms(u, c)),
        (
            "5 `completed` published, confirmed, delivered to the observer",
            ms(c, received),
        ),
        (
            "total (publish -> `completed` received)",
            took.as_secs_f64() * 1000.0,
        ),
    ]
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    println!("\n{s}");
    s
}

// ---------------------------------------------------------------------------
// 1. Overhead against gst-launch-1.0 and ffmpeg
// ---------------------------------------------------------------------------

/// Which overhead comparison to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overhead {
    /// The 20 s 720p WMV (smoke: two tiny inputs).
    Main,
    /// The 60 s 1080p MJPEG input (its own section, run last, as it takes
    /// the longest).
    Long,
    /// The 20 s 720p WMV with the worker, its pipeline processes and the
    /// other encoders on one core: a slower machine.
    OneCore,
}

/// The pipeline's stage timings of one job and when the worker received
/// them, from its `outputs verified` log line (`LOG_FORMAT=json`).
#[derive(Debug, Clone)]
struct Verified {
    at: SystemTime,
    ms: BTreeMap<String, f64>,
}

impl Verified {
    fn get(&self, field: &str) -> f64 {
        self.ms.get(field).copied().unwrap_or(0.0)
    }
}

/// The `outputs verified` line of `job_id` in `worker`'s JSON log.
fn verified_line(worker: &WorkerProc, job_id: &str) -> Verified {
    let logs = worker.logs();
    for line in logs.lines().filter(|l| l.contains(job_id)) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["message"] != "outputs verified" {
            continue;
        }
        let at = humantime::parse_rfc3339(v["timestamp"].as_str().expect("timestamp"))
            .expect("RFC 3339 log timestamp");
        let ms = v
            .as_object()
            .expect("object")
            .iter()
            .filter(|(k, _)| k.ends_with("_ms"))
            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
            .collect();
        return Verified { at, ms };
    }
    panic!("no `outputs verified` line for {job_id} in the worker's log:\n{logs}");
}

/// The pipeline stages of phase 3 (transcode), as the worker logs them:
/// (log field, label).
const STAGES: [(&str, &str); 6] = [
    ("probe_ms", "3a probe of the input (GStreamer's Discoverer)"),
    (
        "stream_ms",
        "3b pipeline start -> the end of the input's video enters the video branch",
    ),
    (
        "encoder_flush_ms",
        "3c -> the end leaves the video branch (the encoder flushes the frames it holds)",
    ),
    (
        "muxer_finish_ms",
        "3d -> end of stream at the file sink (other branches, the muxer finishing the file)",
    ),
    ("stop_ms", "3e pipeline stopped"),
    ("verify_ms", "3f output verified (its container headers)"),
];

/// The end of one job, from the end of its input's video entering the
/// encoder to the `uploading` event, in ms: (label, ms) rows that add up
/// to the last, and the gap from the last `transcoding` event.
fn job_end(events: &[Progress], verified: &Verified) -> Vec<(&'static str, f64)> {
    let uploading = events
        .iter()
        .find(|e| e.state == Phase::Uploading)
        .map(ts)
        .expect("uploading event");
    let last_transcoding = events
        .iter()
        .filter(|e| e.state == Phase::Transcoding)
        .map(ts)
        .max()
        .expect("transcoding event");
    let ms = |a, b| secs_between(a, b) * 1000.0;
    let worker = ms(verified.at, uploading);
    let parts = [
        ("encoder_flush_ms", "a encoder flush: the end of the input's video enters the video branch -> leaves the encoder"),
        ("muxer_finish_ms", "b muxer finishes the file (end of stream at the file sink)"),
        ("stop_ms", "c pipeline stopped"),
        ("verify_ms", "d output verified (its container headers)"),
    ];
    let mut rows: Vec<(&str, f64)> = parts
        .iter()
        .map(|(field, label)| (*label, verified.get(field)))
        .collect();
    rows.push((
        "e result at the worker (its `outputs verified` log line) -> `uploading` event (cancel check: one HEAD; the event)",
        worker,
    ));
    let total: f64 = rows.iter().map(|(_, v)| v).sum();
    rows.push((
        "a-e: the end of the input's video enters the encoder -> `uploading` event",
        total,
    ));
    rows.push((
        "for comparison: last `transcoding` event -> `uploading` event",
        ms(last_transcoding, uploading),
    ));
    rows
}

/// Overhead section `part` (`1a`...) with `title` added to its heading.
async fn overhead(
    opts: &Opts,
    which: Overhead,
    s3: &S3Target<'_>,
    part: &str,
    title: &str,
) -> String {
    eprintln!("bench: overhead ({which:?})");
    let inputs = if opts.smoke {
        vec![
            ("1 s 320x240 WMV2+WMA", wmv(1, "320x240"), opts.runs),
            (
                "1 s 320x240 MJPEG+PCM MOV",
                mjpeg_mov(1, "320x240"),
                opts.runs,
            ),
        ]
    } else if which == Overhead::Long {
        let runs = opts.long_runs.unwrap_or(opts.runs);
        vec![(
            "60 s 1920x1080 MJPEG+PCM MOV",
            mjpeg_mov(60, "1920x1080"),
            runs,
        )]
    } else if which == Overhead::OneCore {
        let runs = opts.long_runs.unwrap_or(opts.runs);
        vec![("20 s 1280x720 WMV2+WMA", wmv(20, "1280x720"), runs)]
    } else {
        vec![("20 s 1280x720 WMV2+WMA", wmv(20, "1280x720"), opts.runs)]
    };
    // One core: this thread's CPU mask, inherited by the worker (and so by
    // its pipeline processes) and by each command started from here.
    let one_core = which == Overhead::OneCore;
    let farm = s3.farm(&[]).await;
    let worker = on_cpus(one_core, || {
        spawn_worker(opts, &farm, &[("LOG_FORMAT", "json")])
    });
    wait_ready(&worker).await;
    let work = farm.dir.path().join("local");
    std::fs::create_dir_all(&work).unwrap();
    // Warm-up job: the worker's first S3 and broker round trips, page cache.
    let warm = wmv(1, "64x64");
    farm.put_input("warm.wmv", &warm).await;
    run_job(
        &farm,
        json!({"job_id": "warm", "input_key": "warm.wmv", "output_key": "out/warm.mp4"}),
    )
    .await;
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut phases: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    // Keyed by input, then by the order of the parts.
    let mut ends: BTreeMap<(String, usize, &str), Vec<f64>> = BTreeMap::new();
    for (label, input, runs) in &inputs {
        let key = format!("in/{}", input.file_name().unwrap().to_string_lossy());
        farm.put_input(&key, input).await;
        let size = std::fs::metadata(input).unwrap().len();
        let (mut w, mut g, mut f, mut c) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let timed = |cmd: &mut Command| on_cpus(one_core, || time_cmd(cmd)).wall.as_secs_f64();
        for run in 0..*runs {
            // Alternate the order of the four commands from run to run.
            for which in 0..4 {
                match (which + run) % 4 {
                    0 => {
                        let id = common::random_name("ovh");
                        let job = json!({"job_id": id, "input_key": key, "output_key": format!("out/{id}.mp4")});
                        let (took, events, published) = run_job(&farm, job).await;
                        w.push(took.as_secs_f64());
                        let verified = verified_line(&worker, &id);
                        let mut split = job_phases(&events, published, took);
                        split.extend(
                            STAGES
                                .iter()
                                .map(|(field, label)| (*label, verified.get(field))),
                        );
                        for (phase, ms) in split {
                            phases
                                .entry((label.to_string(), phase))
                                .or_default()
                                .push(ms);
                        }
                        for (i, (part, ms)) in job_end(&events, &verified).into_iter().enumerate() {
                            ends.entry((label.to_string(), i, part))
                                .or_default()
                                .push(ms);
                        }
                    }
                    3 => c.push(timed(&mut pipeline_child(input, &work.join("child.mp4")))),
                    1 => g.push(timed(&mut gst_launch(
                        input,
                        &work.join("gst.mp4"),
                        PRESET_VIDEO,
                        PRESET_AUDIO,
                    ))),
                    _ => f.push(timed(&mut ffmpeg_h264(input, &work.join("ffmpeg.mp4")))),
                }
            }
            eprintln!(
                "bench:   {label} run {}: worker {:.2} s, gst-launch {:.2} s, ffmpeg {:.2} s",
                run + 1,
                w[run],
                g[run],
                f[run]
            );
        }
        let fmt_runs = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        raw.push(format!(
            "* {label}: worker {}; gst-launch {}; ffmpeg {}; pipeline process alone {} (s, in run order)",
            fmt_runs(&w),
            fmt_runs(&g),
            fmt_runs(&f),
            fmt_runs(&c)
        ));
        // The same download without the worker: a bare streamed GET of the
        // input into a local file, from this process, same S3 server.
        let bucket = farm.bucket.as_ref().expect("S3 farm");
        let mut z = Vec::new();
        for _ in 0..*runs {
            let t = Instant::now();
            let mut file = tokio::fs::File::create(work.join("get.bin")).await.unwrap();
            bucket
                .get_object_to_writer(&key, &mut file)
                .await
                .expect("GET");
            tokio::io::AsyncWriteExt::flush(&mut file).await.unwrap();
            z.push(t.elapsed().as_secs_f64());
        }
        let _ = std::fs::remove_file(work.join("get.bin"));
        phases
            .entry((
                label.to_string(),
                "z for comparison: a bare streamed GET of the input into a local file (rust-s3, this process, same S3 server)",
            ))
            .or_default()
            .push(median(z) * 1000.0);
        let phase_ms = |name: &str| {
            phases
                .iter()
                .find(|((l, p), _)| l == label && p.starts_with(name))
                .map(|(_, v)| median(v.clone()) / 1000.0)
                .unwrap_or(0.0)
        };
        let transfers = phase_ms("2 fetch") + phase_ms("4 upload");
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (wmin, gmin) = (min(&w), min(&g));
        phases
            .entry((
                label.to_string(),
                "x for comparison: the pipeline process alone on the local file",
            ))
            .or_default()
            .push(median(c.clone()) * 1000.0);
        phases
            .entry((
                label.to_string(),
                "y for comparison: gst-launch-1.0 on the local file",
            ))
            .or_default()
            .push(median(g.clone()) * 1000.0);
        let (w, g, f) = (median(w), median(g), median(f));
        rows.push(vec![
            label.to_string(),
            format!("{:.1} MB", size as f64 / 1e6),
            runs.to_string(),
            format!("{w:.2} s"),
            format!("{g:.2} s"),
            format!("{f:.2} s"),
            format!("**{:.3}**", w / g),
            format!("{:.2} s", w - g),
            format!("{:.3}", w / f),
            format!("{:.3}", wmin / gmin),
            format!("{:.3}", (w - transfers) / g),
        ]);
    }
    drop(worker);
    let raw = raw.join("\n");
    let median_row = |label: &str, what: &str, v: &[f64]| {
        vec![
            label.to_string(),
            what.to_string(),
            format!("{:.0}", median(v.to_vec())),
        ]
    };
    let phase_rows: Vec<Vec<String>> = phases
        .iter()
        .map(|((label, phase), v)| median_row(label, phase, v))
        .collect();
    let split = table(
        &["input", "phase of the worker's job", "median ms"],
        &phase_rows,
    );
    let end_rows: Vec<Vec<String>> = ends
        .iter()
        .map(|((label, _, part), v)| median_row(label, part, v))
        .collect();
    let end = table(
        &["input", "the end of the worker's job", "median ms"],
        &end_rows,
    );
    let t = table(
        &[
            "input",
            "size",
            "runs",
            "worker (end to end)",
            "gst-launch-1.0",
            "ffmpeg libx264",
            "worker / gst-launch",
            "worker - gst-launch",
            "worker / ffmpeg",
            "worker / gst-launch, fastest runs",
            "worker without its download and upload / gst-launch",
        ],
        &rows,
    );
    let example_in = Path::new("IN");
    let example_out = Path::new("OUT.mp4");
    let where_ = if one_core {
        "The worker (and so its pipeline processes, which inherit its CPU affinity), gst-launch-1.0, \
         ffmpeg and the pipeline process alone each ran on one core only (CPU 0, `sched_setaffinity`), \
         so the encoders have half this machine; RabbitMQ and the S3 server were not pinned. "
    } else {
        ""
    };
    format!(
        "\n## {part}. Overhead: a job through the farm against the same encode on a local file{title}\n\n{t}\n\
         Median of the given number of runs of each command, the four commands (worker, gst-launch-1.0, ffmpeg, the worker's pipeline process alone) alternating (their order rotates \
         each run), after one warm-up job; all on this machine, one after another, nothing else of the benchmark running. \
         {where_}Each command is timed from just before it starts to its exit, which this process waits for \
         (`waitid`), so the times are exact to the microsecond, not to a polling interval.\n\n\
         * **worker**: one `transcode-worker run` (default settings: preset `h264-mp4`) on a queue of \
         the benchmark's RabbitMQ node, input and output in a bucket of {server}. Timed from just before the \
         job is published (default exchange, as the original service's pika example) to the receipt of its \
         `completed` event on a queue bound to the progress exchange. The worker publishes `completed`, waits for \
         the broker's confirm, then acks; the ack is not observable from outside and follows the confirm directly. \
         The input is uploaded before timing starts; the worker's time includes its download, its probe of the \
         input (GStreamer's Discoverer, which decodes the first frames), the verification of the output (its \
         container headers, read without decoding), the upload and every broker round trip.\n\
         * **gst-launch-1.0**, the identical pipeline on local files:\n  `{gst}`\n\
         * **ffmpeg**, the closest equivalent (CRF 23 = x264enc `pass=qual quantizer=23`):\n  `{ff}`\n\n\
         Every run:\n\n{raw}\n\n\
         Where the worker's time goes (progress event timestamps, as in section 2; rows 3a-3f are the stages of \
         phase 3 as the pipeline process measures them and the worker logs them with the verified output; the last \
         three rows, for comparison, are the worker's pipeline process run alone on the local file, timed \
         alternately with the others, gst-launch-1.0, and the input's download alone, without the worker, timed \
         after the runs). The download and upload are what the farm adds to a local encode by design (the input is \
         in S3); when the bare GET takes as long as the worker's fetch, the time is the S3 server's:\n\n{split}\n\
         The end of the job, taken apart (medians of each part; a-e add up to their total, from the worker's log \
         and events). The last `transcoding` event is not where the encode ends: the position those events carry \
         is that of the frames entering the video branch, which stops when the input's video has all gone in, while \
         the encoder still encodes the frames it holds (x264's lookahead); after that the events go out once a second. \
         gst-launch-1.0 spends the same flush, muxer finish and stop at its own end; the worker adds d and e:\n\n{end}\n\
         Target: worker / gst-launch <= 1.05.\n",
        gst = format!("{:?}", gst_launch(example_in, example_out, PRESET_VIDEO, PRESET_AUDIO)).replace('"', ""),
        ff = format!("{:?}", ffmpeg_h264(example_in, example_out)).replace('"', ""),
        server = s3.name,
    )
}

/// Runs `f` with this thread's CPU affinity set to CPU 0 when `one` (and
/// restores it after): processes started in `f` inherit the mask.
fn on_cpus<T>(one: bool, f: impl FnOnce() -> T) -> T {
    if !one {
        return f();
    }
    // SAFETY: sched_{get,set}affinity on this thread (pid 0) with a
    // cpu_set_t of the right size.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(libc::sched_getaffinity(0, size, &mut old), 0);
        let mut only: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut only);
        assert_eq!(libc::sched_setaffinity(0, size, &only), 0);
        let out = f();
        assert_eq!(libc::sched_setaffinity(0, size, &old), 0);
        out
    }
}

// ---------------------------------------------------------------------------
// 2. Per-job cost on tiny inputs
// ---------------------------------------------------------------------------

async fn per_job(opts: &Opts) -> String {
    eprintln!("bench: per-job cost");
    let tiny = wmv(1, "64x64");
    let farm = Farm::s3(&[]).await;
    let worker = spawn_worker(opts, &farm, &[("LOG_FORMAT", "json")]);
    wait_ready(&worker).await;
    farm.put_input("tiny.wmv", &tiny).await;
    let job = |id: &str| json!({"job_id": id, "input_key": "tiny.wmv", "output_key": format!("out/{id}.mp4")});
    // Warm-up (first S3 connection, page cache).
    run_job(&farm, job(&common::random_name("warm"))).await;

    // a) One job at a time: where the time goes.
    let sequential = if opts.smoke { 2 } else { 10 };
    let mut phases: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..sequential {
        let id = common::random_name("seq");
        let (took, events, published) = run_job(&farm, job(&id)).await;
        let verified = verified_line(&worker, &id);
        let mut split = job_phases(&events, published, took);
        split.extend(
            STAGES
                .iter()
                .map(|(field, label)| (*label, verified.get(field))),
        );
        for (phase, ms) in split {
            phases.entry(phase).or_default().push(ms / 1000.0);
        }
    }
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|(k, v)| vec![k.to_string(), format!("{:.1}", median(v.clone()) * 1000.0)])
        .collect();
    let split = table(&["phase (one job at a time)", "median ms"], &rows);

    // b) The pipeline process alone, against plain GStreamer.
    let work = farm.dir.path().join("local");
    std::fs::create_dir_all(&work).unwrap();
    let reps = if opts.smoke { 1 } else { 10 };
    let measure = |label: &str, mk: &dyn Fn() -> Command| {
        let runs: Vec<Timed> = (0..reps).map(|_| time_cmd(&mut mk())).collect();
        let ms = |f: fn(&Timed) -> Duration| {
            median(runs.iter().map(|t| f(t).as_secs_f64() * 1000.0).collect())
        };
        vec![
            label.to_string(),
            format!("{:.1}", ms(|t| t.wall)),
            format!("{:.1}", ms(|t| t.cpu)),
        ]
    };
    let child_out = work.join("child.mp4");
    let gst_out = work.join("gst.mp4");
    let tiny2 = tiny.clone();
    let mut rows = vec![
        measure(
            "`transcode-worker pipeline` (process start, probe, transcode, verification), tiny input",
            &|| pipeline_child(&tiny2, &child_out),
        ),
        measure("`gst-launch-1.0` same pipeline, tiny input", &|| {
            gst_launch(&tiny2, &gst_out, PRESET_VIDEO, PRESET_AUDIO)
        }),
        measure(
            "`gst-launch-1.0 fakesrc num-buffers=1 ! fakesink` (GStreamer init only)",
            &|| {
                let mut c = Command::new("gst-launch-1.0");
                c.args("-q fakesrc num-buffers=1 ! fakesink".split_whitespace());
                c
            },
        ),
        measure("`gst-launch-1.0` decode only (`decodebin`, both streams to `fakesink`), tiny input", &|| {
            gst_launch_raw(&format!(
                "filesrc location={} ! decodebin name=d d. ! queue ! fakesink d. ! queue ! fakesink",
                tiny2.display()
            ))
        }),
        measure("`gst-launch-1.0` decode + video branch (x264enc medium) + mp4mux, no audio branch", &|| {
            gst_launch_raw(&format!(
                "filesrc location={} ! decodebin ! queue ! {PRESET_VIDEO} ! mp4mux ! filesink location={}",
                tiny2.display(),
                gst_out.display()
            ))
        }),
        measure("`gst-launch-1.0` same pipeline, x264enc `speed-preset=ultrafast`", &|| {
            gst_launch(&tiny2, &gst_out, "videoconvert ! x264enc pass=qual quantizer=23 speed-preset=ultrafast", PRESET_AUDIO)
        }),
        measure("`gst-launch-1.0 videotestsrc num-buffers=25 ! video/x-raw,width=64,height=64 ! x264enc (medium) ! fakesink` (encoder alone)", &|| {
            gst_launch_raw("videotestsrc num-buffers=25 ! video/x-raw,width=64,height=64 ! x264enc pass=qual quantizer=23 speed-preset=medium ! fakesink")
        }),
        measure(
            "`transcode-worker --help` (process start of the binary)",
            &|| {
                let mut c = Command::new(WORKER_BIN);
                c.arg("--help").stdout(Stdio::null());
                c
            },
        ),
    ];
    // gst-discoverer-1.0 comes with gstreamer1.0-plugins-base-apps, which
    // install-deps does not install.
    if !sh("command -v gst-discoverer-1.0").is_empty() {
        rows.push(measure(
            "`gst-discoverer-1.0` tiny input (one probe, with GStreamer init)",
            &|| {
                let mut c = Command::new("gst-discoverer-1.0");
                c.arg(&tiny2);
                c
            },
        ));
    }
    let child = table(
        &[
            "process alone (median of repeated runs)",
            "wall ms",
            "CPU ms (user + system)",
        ],
        &rows,
    );

    // CPU time of one pipeline process (perf stat software counters; the
    // hardware ones are often missing in VMs).
    let perf = sh(&format!(
        "command -v perf >/dev/null && perf stat -x, -e task-clock,context-switches,page-faults sh -c 'exec {WORKER_BIN} pipeline < {} > /dev/null' 2>&1 | cut -d, -f1,3 | tr '\\n' ' '",
        child_out.with_extension("spec.json").display()
    ));

    // Where the pipeline process spends its CPU, by shared object (perf
    // sampling on the cpu-clock software event; it follows child threads).
    let perf_data = work.join("perf.data");
    let dso = sh(&format!(
        "command -v perf >/dev/null && perf record -q -F 20000 -e cpu-clock -o {data} -- sh -c 'exec {WORKER_BIN} pipeline < {spec} > /dev/null' >/dev/null 2>&1 \
         && perf report -i {data} --stdio --sort dso 2>/dev/null | grep -v '^#' | grep -v '^$' | sed 's/^ *//' | head -12",
        data = perf_data.display(),
        spec = child_out.with_extension("spec.json").display()
    ));

    // d) The S3 requests of a fetch, timed alone with the same library
    // (rust-s3) against the same S3 server.
    let s3_rows = s3_request_costs(&farm, if opts.smoke { 2 } else { 20 }).await;
    let s3_table = table(
        &[
            "S3 request (rust-s3, loopback s3-test-server, 25 KB object)",
            "median ms",
        ],
        &s3_rows,
    );

    // c) Throughput: a batch of jobs queued at once.
    let batch = if opts.smoke { 5 } else { 50 };
    let mut watch = farm.watch_progress().await;
    let ids: Vec<String> = (0..batch).map(|_| common::random_name("batch")).collect();
    let start = Instant::now();
    for id in &ids {
        farm.publish_job(job(id)).await;
    }
    let mut done = HashSet::new();
    let deadline = Instant::now() + JOB_TIMEOUT;
    while done.len() < ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = watch.next(left).await;
        assert!(e.state != Phase::Failed, "a batch job failed: {e:?}");
        if e.state == Phase::Completed {
            done.insert(e.job_id);
        }
    }
    let took = start.elapsed().as_secs_f64();
    drop(worker);
    let jps = batch as f64 / took;
    let thr = table(
        &["jobs", "wall s", "jobs/s (one worker)", "ms per job"],
        &[vec![
            batch.to_string(),
            format!("{took:.2}"),
            format!("**{jps:.2}**"),
            format!("{:.0}", 1000.0 / jps),
        ]],
    );
    format!(
        "\n## 2. Per-job cost (tiny inputs: 1 s, 64x64 WMV2+WMA, preset `h264-mp4`, S3 backend)\n\n\
         Throughput of one worker over {batch} jobs published at once (timed from the first publish to the last \
         `completed` event):\n\n{thr}\n\
         Target: >= 20 jobs/s per worker (<= 50 ms per job).\n\n\
         Where the time of one job goes ({sequential} jobs one at a time, after a warm-up job; from the progress \
         events' timestamps, which the worker sets when it publishes each event, and this process's clock at \
         publish and receipt; same machine, same clock; rows 3a-3f are the stages of phase 3 as the pipeline \
         process measures them, from the worker's log line `outputs verified`; what they leave of phase 3 is the \
         spec's and the result's trip between the worker and the pipeline process and the worker's progress \
         events):\n\n{split}\n\
         Phase 3 runs in a pipeline process that was started ahead with GStreamer's plugins loaded and that \
         waits for the next job once its job completed (`standby_pipeline`, default on), so no process starts \
         in it. For comparison, a fresh process per job, taken apart with the same binary and GStreamer on local \
         files ({reps} run(s) each, median; each timed from just before its start to its exit, which this \
         process waits for, and its CPU time as `wait4` reports it):\n\n{child}\n\
         `perf stat` of one pipeline process (tiny input): `{perf}`\n\n\
         CPU samples of one pipeline process by shared object (`perf record -e cpu-clock`, `perf report --sort dso`):\n\n\
         ```\n{dso}\n```\n\n\
         Phase 2 (fetch) taken apart: each request of the worker's fetch, made alone from this process with the \
         same S3 library and settings (median of repeated requests):\n\n{s3_table}\n",
    )
}

// ---------------------------------------------------------------------------
// 3. Memory: small input against big inputs, directory and S3 backends
// ---------------------------------------------------------------------------

fn status_kb(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident memory of a worker and its child processes during one job.
#[derive(Default, Debug, Clone)]
struct TreeMemory {
    /// The worker's resident memory before the job, KiB.
    worker_before_kb: u64,
    /// The worker's peak (`VmHWM`, the kernel's own), KiB.
    worker_kb: u64,
    /// The largest peak (`VmHWM`) of a child process, KiB.
    child_kb: u64,
    /// The largest sum of the resident memory (`VmRSS`) of the worker and
    /// its children seen by the sampler, KiB.
    sampled_sum_kb: u64,
    /// Samples taken.
    samples: u64,
}

impl TreeMemory {
    /// The whole tree's peak as the sum of each process's own peak: never
    /// below the real peak of the sum (the peaks may not coincide).
    fn peak_kb(&self) -> u64 {
        self.worker_kb + self.child_kb
    }
}

/// The child processes of `pid`, from `/proc/PID/task/*/children` (one
/// small read per thread of it, where scanning all of `/proc` takes tens
/// of milliseconds on a busy machine).
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// How often the sampler reads `/proc`.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Samples the memory of `pid` and its children every [`SAMPLE_EVERY`]
/// until stopped; reads each process's `VmHWM` once more at the end (the
/// worker and its pipeline process, which waits for the next job, are
/// still alive then, so those peaks are exact).
fn sample(pid: i32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<TreeMemory> {
    std::thread::spawn(move || {
        let mut m = TreeMemory {
            worker_before_kb: status_kb(pid, "VmRSS:").unwrap_or(0),
            ..TreeMemory::default()
        };
        let mut child_peaks: BTreeMap<i32, u64> = BTreeMap::new();
        let mut read = |m: &mut TreeMemory| {
            let mut sum = status_kb(pid, "VmRSS:").unwrap_or(0);
            m.worker_kb = m.worker_kb.max(status_kb(pid, "VmHWM:").unwrap_or(0));
            for c in children(pid) {
                sum += status_kb(c, "VmRSS:").unwrap_or(0);
                let peak = child_peaks.entry(c).or_default();
                *peak = (*peak).max(status_kb(c, "VmHWM:").unwrap_or(0));
            }
            m.sampled_sum_kb = m.sampled_sum_kb.max(sum);
            m.samples += 1;
        };
        while !stop.load(Ordering::Relaxed) {
            read(&mut m);
            std::thread::sleep(SAMPLE_EVERY);
        }
        read(&mut m);
        m.child_kb = child_peaks.values().copied().max().unwrap_or(0);
        m
    })
}

/// Runs one job on a fresh worker of `farm` and measures its memory.
async fn job_memory(opts: &Opts, farm: &Farm, key: &str) -> (Duration, TreeMemory) {
    let worker = spawn_worker(opts, farm, &[]);
    wait_ready(&worker).await;
    // The standby pipeline process is started with the worker; wait until
    // it has loaded its plugins, so the small and the big job start alike.
    common::wait_for(
        Duration::from_secs(60),
        "the standby pipeline process",
        || {
            let ready = !worker.standbys().is_empty();
            async move { ready }
        },
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(worker.pid(), stop.clone());
    let id = common::random_name("mem");
    let job = json!({"job_id": id, "input_key": key, "output_key": format!("out/{id}.mp4"),
                     "transcode_options": CHEAP_VIDEO});
    let (took, _, _) = run_job(farm, job).await;
    stop.store(true, Ordering::Relaxed);
    let m = sampler.join().unwrap();
    drop(worker);
    (took, m)
}

/// The table of a memory section and the ratio of the biggest input's
/// peak to the smallest's.
fn memory_table(runs: &[(String, u64, Duration, TreeMemory)]) -> (String, f64) {
    let mib = |kb: u64| format!("{:.0}", kb as f64 / 1024.0);
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|(label, size, took, m)| {
            vec![
                label.clone(),
                format!("{:.0} MB", *size as f64 / 1e6),
                format!("{:.1}", took.as_secs_f64()),
                mib(m.worker_before_kb),
                mib(m.worker_kb),
                mib(m.child_kb),
                format!("**{}**", mib(m.peak_kb())),
                mib(m.sampled_sum_kb),
                format!("{:.2}", m.peak_kb() as f64 / runs[0].3.peak_kb() as f64),
            ]
        })
        .collect();
    let t = table(
        &[
            "input",
            "size",
            "job s",
            "worker before the job MiB",
            "worker peak MiB",
            "pipeline process peak MiB",
            "whole tree: sum of the peaks MiB",
            "whole tree: largest sampled sum MiB",
            "whole tree / smallest input's",
        ],
        &rows,
    );
    let ratio = runs
        .iter()
        .map(|r| r.3.peak_kb() as f64 / runs[0].3.peak_kb() as f64)
        .fold(0.0, f64::max);
    (t, ratio)
}

const MEMORY_METHOD: &str = "One fresh worker per input (default settings), started and \
    waited for until its standby pipeline process is up; job `transcode_options` = `CHEAP` into MP4 \
    with the default AAC audio branch. A thread of this process read `/proc/PID/status` of the \
    worker and of each of its child processes every 20 ms during the job: the *largest sampled \
    sum* is the largest sum of their `VmRSS` it saw; the *peaks* are `VmHWM`, the kernel's own \
    high-water mark of each process, read once more after the job (the worker and its pipeline \
    process, which then waits for the next job, are still alive, so no peak is missed). The whole \
    tree's figure is the sum of the two peaks, which is never below the real peak of the sum.";

async fn memory(opts: &Opts) -> String {
    eprintln!("bench: memory (directory backend)");
    // 1080p MJPEG with film-grain noise, so the file is large for its length;
    // the big input is sized from the small one to about 1 GB (100x).
    let recipe = |secs: u32| {
        format!(
            "-f lavfi -i testsrc2=size=1920x1080:rate=25:duration={secs} \
             -f lavfi -i sine=frequency=440:sample_rate=44100:duration={secs} \
             -vf noise=alls=8:allf=t -c:v mjpeg -q:v 3 -pix_fmt yuvj420p -c:a pcm_s16le -f mov"
        )
    };
    let small_secs = 1;
    let small = ffmpeg_input("mem-small.mov", &recipe(small_secs));
    let small_size = std::fs::metadata(&small).unwrap().len();
    let target: u64 = if opts.smoke {
        50_000_000
    } else {
        1_000_000_000
    };
    let big_secs = ((target as f64 / small_size as f64) * small_secs as f64)
        .round()
        .max(2.0) as u32;
    let farm = Farm::directory(&[]).await;
    let store = farm.store_dir.as_ref().unwrap().path().to_path_buf();
    std::fs::copy(&small, store.join("small.mov")).unwrap();
    // The big file is made straight into the storage folder and deleted after.
    make_ffmpeg(&store.join("big.mov"), &recipe(big_secs));
    let big_size = std::fs::metadata(store.join("big.mov")).unwrap().len();
    let mut runs = Vec::new();
    for (key, size, secs) in [
        ("small.mov", small_size, small_secs),
        ("big.mov", big_size, big_secs),
    ] {
        let (took, m) = job_memory(opts, &farm, key).await;
        runs.push((format!("{secs} s 1920x1080 MJPEG+PCM MOV"), size, took, m));
    }
    let _ = std::fs::remove_file(store.join("big.mov"));
    let (t, ratio) = memory_table(&runs);
    format!(
        "\n## 3a. Memory: peak resident memory against input size, directory backend\n\n{t}\n\
         Whole tree, biggest / smallest input: **{ratio:.2}** (target <= 1.3).\n\n\
         Directory backend: the worker reads the input in place, no copy. {method} Inputs made with \
         `ffmpeg {small_recipe} FILE` (the big one with duration={big_secs}); the big file is deleted \
         afterwards.\n",
        method = MEMORY_METHOD.replace("CHEAP", CHEAP_VIDEO),
        small_recipe = recipe(small_secs),
    )
}

/// Uploads the file `path` to `key` of the farm's bucket, streamed.
async fn put_streamed(farm: &Farm, key: &str, path: &Path) {
    let bucket = farm.bucket.as_ref().expect("S3 farm");
    let mut file = tokio::fs::File::open(path).await.expect("open input");
    bucket
        .put_object_stream(&mut file, key)
        .await
        .expect("put input");
}

/// Memory section `part` on the S3 server `s3`.
async fn memory_s3(opts: &Opts, s3: &S3Target<'_>, part: &str) -> String {
    eprintln!("bench: memory (S3 backend: {})", s3.name);
    // Raw video, as large a file as a few seconds can make: 640x360 I420
    // frames of 345,600 bytes, 25 a second (8.6 MB/s), with PCM audio.
    let recipe = |secs: f64| {
        format!(
            "-f lavfi -i testsrc2=size=640x360:rate=25:duration={secs} \
             -f lavfi -i sine=frequency=440:sample_rate=44100:duration={secs} \
             -c:v rawvideo -pix_fmt yuv420p -c:a pcm_s16le -f avi"
        )
    };
    let bytes_per_sec = 640.0 * 360.0 * 1.5 * 25.0 + 44_100.0 * 2.0;
    let sizes: &[u64] = if opts.smoke {
        &[10_000_000, 30_000_000]
    } else {
        &[10_000_000, 600_000_000, 1_200_000_000]
    };
    let farm = s3.farm(&[]).await;
    let mut runs = Vec::new();
    for &target in sizes {
        let secs = (target as f64 / bytes_per_sec * 10.0).round() / 10.0;
        let path = farm.dir.path().join("raw.avi");
        make_ffmpeg(&path, &recipe(secs));
        let size = std::fs::metadata(&path).unwrap().len();
        let key = format!("raw-{target}.avi");
        put_streamed(&farm, &key, &path).await;
        std::fs::remove_file(&path).unwrap();
        let (took, m) = job_memory(opts, &farm, &key).await;
        farm.bucket
            .as_ref()
            .unwrap()
            .delete_object(&key)
            .await
            .expect("delete input");
        runs.push((format!("{secs} s 640x360 raw video+PCM AVI"), size, took, m));
    }
    let (t, ratio) = memory_table(&runs);
    format!(
        "\n## {part}. Memory: peak resident memory against input size, S3 backend{on}\n\n{t}\n\
         Whole tree, biggest / smallest input: **{ratio:.2}** (target <= 1.3).\n\n\
         S3 backend: the worker downloads the input from a bucket of the benchmark's S3 server \
         ({server}) into its scratch folder, then transcodes it. {method} Inputs made with \
         `ffmpeg {recipe} FILE` with the durations in the table, uploaded and deleted after their job.\n",
        server = s3.name,
        method = MEMORY_METHOD.replace("CHEAP", CHEAP_VIDEO),
        recipe = recipe(1.0).replace("duration=1", "duration=SECS"),
        on = if part == "3c" { " on Garage" } else { "" },
    )
}

// ---------------------------------------------------------------------------
// 4. Scale-out: 1, 2, 4 ... workers on one machine
// ---------------------------------------------------------------------------

async fn scale_out(opts: &Opts) -> String {
    eprintln!("bench: scale-out");
    let input = wmv(2, "320x240");
    let n_jobs = opts.scale_jobs;
    let mut rows = Vec::new();
    let mut base = None;
    for &workers in &opts.workers {
        let threads = (cores() / workers).max(1);
        let farm = Farm::s3(&[]).await;
        farm.put_input("in.wmv", &input).await;
        let procs: Vec<WorkerProc> = (0..workers)
            .map(|_| spawn_worker(opts, &farm, &[]))
            .collect();
        for w in &procs {
            wait_ready(w).await;
        }
        let options = format!("{PRESET_VIDEO} threads={threads}");
        let mut watch = farm.watch_progress().await;
        let ids: Vec<String> = (0..n_jobs).map(|_| common::random_name("scale")).collect();
        let start = Instant::now();
        for id in &ids {
            farm.publish_job(json!({"job_id": id, "input_key": "in.wmv",
                "output_key": format!("out/{id}.mp4"), "transcode_options": options}))
                .await;
        }
        let mut done = HashSet::new();
        let deadline = Instant::now() + JOB_TIMEOUT;
        while done.len() < n_jobs {
            let e = watch
                .next(deadline.saturating_duration_since(Instant::now()))
                .await;
            assert!(e.state != Phase::Failed, "a scale-out job failed: {e:?}");
            if e.state == Phase::Completed {
                done.insert(e.job_id);
            }
        }
        let took = start.elapsed().as_secs_f64();
        drop(procs);
        let per_min = n_jobs as f64 / took * 60.0;
        let base = *base.get_or_insert(per_min);
        rows.push(vec![
            workers.to_string(),
            threads.to_string(),
            format!("{took:.1}"),
            format!("{per_min:.1}"),
            format!("{:.2}x", per_min / base),
        ]);
        eprintln!("bench:   {workers} worker(s): {took:.1} s");
    }
    let t = table(
        &[
            "workers",
            "x264enc threads each",
            "wall s",
            "jobs/minute",
            "speed-up",
        ],
        &rows,
    );
    format!(
        "\n## 4. Scale-out: workers on one machine ({n_jobs} jobs, 2 s 320x240 WMV2+WMA, S3 backend)\n\n{t}\n\
         Each row: a fresh queue, that many `transcode-worker run` processes, {n_jobs} jobs published at once \
         (timed from the first publish to the last `completed` event). Jobs use `transcode_options` = \
         `{PRESET_VIDEO} threads=N` with N = cores / workers (at least 1) so the workers share the {} cores \
         instead of each starting one encoder thread per core. Worker counts: `--workers 1,2,4` \
         (any list, e.g. `--workers 1,2,4,8,16` on a 16-core machine).\n",
        cores()
    )
}

// ---------------------------------------------------------------------------
// 5. The job history: the dashboard's first page and `status` among N jobs
// ---------------------------------------------------------------------------

/// Writes `n` job records through [`History::update`] (as workers do: most
/// completed, one in ten dead), named `hist-00000` up.
async fn fill_history(history: &transcode_worker::history::History, n: usize) {
    use futures_util::StreamExt;
    use transcode_worker::error::ErrorKind;
    use transcode_worker::history::JobState;
    let written = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let id = format!("hist-{i:05}");
            history
                .update(&id, |r| {
                    r.input_key = format!("uploads/batch-{}/tape-{i:05}.mov", i / 100);
                    r.output_keys = vec![format!("out/tape-{i:05}.mp4")];
                    r.mark(JobState::Queued, None, None, "submitted".into());
                    r.attempt_started(1, "bench-worker");
                    if i % 10 == 9 {
                        let why = format!("there is no input \"{}\" in bucket videos", r.input_key);
                        r.attempt_ended(1, "failed", Some((&ErrorKind::InputNotFound, &why)));
                        r.mark(JobState::Dead, Some(1), Some("bench-worker"), why);
                    } else {
                        r.attempt_ended(1, "completed", None);
                        r.output_size_bytes = Some(1_234_567 + i as u64);
                        r.duration_seconds = Some(20.0);
                        r.mark(
                            JobState::Completed,
                            Some(1),
                            Some("bench-worker"),
                            "completed".into(),
                        );
                    }
                })
                .await
                .map(|_| ())
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let failed = written.iter().filter(|w| w.is_err()).count();
    assert_eq!(failed, 0, "{failed} record(s) not written");
}

/// The address a `transcode-worker dashboard` logs that it listens on.
async fn dashboard_addr(process: &WorkerProc) -> String {
    common::wait_for_value(Duration::from_secs(60), "the dashboard to listen", || {
        let found = process
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|l| l["addr"].as_str().map(str::to_string));
        async move { found }
    })
    .await
}

/// Times `runs` GETs of each path (after one untimed), in ms; asserts 200.
async fn time_gets(
    http: &reqwest::Client,
    base: &str,
    paths: &[&str],
    runs: usize,
    pause: Duration,
) -> Vec<f64> {
    for path in paths {
        let _ = http.get(format!("{base}{path}")).send().await;
    }
    let mut times = Vec::new();
    for _ in 0..runs {
        tokio::time::sleep(pause).await;
        let start = Instant::now();
        for path in paths {
            let response = http
                .get(format!("{base}{path}"))
                .timeout(JOB_TIMEOUT)
                .send()
                .await
                .expect("the dashboard answers");
            assert_eq!(response.status().as_u16(), 200, "GET {path}");
            let _ = response.bytes().await.expect("a body");
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times
}

fn slowest(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Records and timed runs of each request of the history sections.
fn history_size(opts: &Opts) -> (usize, usize) {
    (opts.history_jobs, if opts.smoke { 3 } else { 20 })
}

/// Section 6: the history on the S3 server `s3` (s3-test-server) and on
/// the directory backend.
async fn history(opts: &Opts, s3: &S3Target<'_>) -> String {
    let (n, runs) = history_size(opts);
    let mut parts = String::new();
    for backend in ["S3", "directory"] {
        eprintln!("bench: history ({n} jobs, {backend} backend)");
        let (farm, store) = if backend == "S3" {
            (s3.farm(&[]).await, "an s3-test-server bucket")
        } else {
            (Farm::directory(&[]).await, "a storage folder")
        };
        parts += &format!(
            "\n### {backend} backend\n\n{}",
            history_on(&farm, store, n, runs).await
        );
    }
    format!(
        "\n## 6. Job history: the dashboard and `status` with {n} jobs of history\n{parts}\n\
         Each backend: {n} job records (nine in ten completed, one in ten dead) written through \
         `History::update`, as workers write them (16 at once), one worker running; then \
         `transcode-worker dashboard` is asked over HTTP from this process, each row after one untimed \
         request, and `status` is run as an operator runs it, a new process each time (settings, one GET \
         of the record; a completed job, so no worker is asked). The S3 backend is s3-test-server on \
         loopback: its listing (the s3s-fs library's) reads the metadata of every object under the \
         prefix before it sorts them and returns a page, so a listing of the index costs in proportion \
         to the whole history there (the row \"bare listing\" times that request alone, from this \
         process); AWS S3 and MinIO return a page from their own index. The directory backend reads the \
         index folder's names.\n\n\
         Targets: first page <= 500 ms; `status` of one job <= 200 ms.\n"
    )
}

/// Section 6b: section 6's S3 backend on Garage, a production S3 server.
async fn history_garage(opts: &Opts, garage: &S3Target<'_>) -> String {
    let (n, runs) = history_size(opts);
    eprintln!("bench: history ({n} jobs, S3 backend on Garage)");
    let farm = garage.farm(&[]).await;
    let part = history_on(&farm, "a Garage bucket", n, runs).await;
    format!(
        "\n## 6b. Job history on Garage: the dashboard and `status` with {n} jobs of history\n\n\
         {part}\n\
         Section 6's S3 backend, measured the same way, on a bucket of {server}. Garage keeps a \
         bucket's keys in order in its metadata database and answers ListObjectsV2 by reading one \
         range of them, as many as the page holds, as production S3 servers answer from their own \
         index; so the row \"bare listing\" is the cost of a page of the index that does not grow \
         with the history, and \"first page\" is that listing, the 50 reads of records (16 at once) \
         and the page's other requests. A search by job id still lists the whole index, in pages \
         of 1,000.\n\n\
         Targets: first page <= 500 ms; `status` of one job <= 200 ms.\n",
        server = garage.name,
    )
}

/// Section 6 or 6b on one farm, whose history is in `store` (in words):
/// writes `n` records, times the dashboard and `status`, and returns the
/// table and figures.
async fn history_on(farm: &Farm, store: &str, n: usize, runs: usize) -> String {
    let history =
        transcode_worker::history::History::from_settings(&farm.settings).expect("a history");
    let started = Instant::now();
    fill_history(&history, n).await;
    let wrote = started.elapsed().as_secs_f64();
    eprintln!("bench:   {n} records written in {wrote:.1} s");
    let worker = farm.spawn_worker(&[]);
    wait_ready(&worker).await;
    let dashboard = farm.spawn_command(&["dashboard", "--listen", "127.0.0.1:0"], &[]);
    let base = format!("http://{}", dashboard_addr(&dashboard).await);
    let http = reqwest::Client::new();
    let middle = format!("hist-{:05}", n / 2);
    let prefix = format!("hist-{:04}", n / 20);
    let none = Duration::ZERO;
    // Each /api/workers call asks the workers again (answers are reused for 1 s).
    let apart = Duration::from_millis(1100);
    let mut measured: Vec<(String, Vec<f64>)> = Vec::new();
    if let Some(bucket) = &farm.bucket {
        let index = format!("{}index/", farm.settings.history.prefix);
        let mut times = Vec::new();
        for _ in 0..=runs {
            let start = Instant::now();
            let (page, _) = bucket
                .list_page(index.clone(), None, None, None, Some(50))
                .await
                .expect("list the index");
            assert_eq!(page.contents.len(), 50.min(n));
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        times.remove(0);
        measured.push((
            "bare listing: ListObjectsV2 of the 50 newest index entries (rust-s3, this process)"
                .into(),
            times,
        ));
    }
    measured.extend([
        ("`GET /` (the page)".into(), time_gets(&http, &base, &["/"], runs, none).await),
        (
            "`GET /api/jobs` (the 50 newest: 50 index entries listed, 50 records read)".into(),
            time_gets(&http, &base, &["/api/jobs"], runs, none).await,
        ),
        (
            "**first page**: `/`, `/app.js`, `/style.css`, `/api/about`, `/api/jobs`, one after another".into(),
            time_gets(
                &http,
                &base,
                &["/", "/app.js", "/style.css", "/api/about", "/api/jobs?limit=50"],
                runs,
                none,
            )
            .await,
        ),
        (
            "`GET /api/jobs?state=dead` (the 50 newest dead: about 500 records read)".into(),
            time_gets(&http, &base, &["/api/jobs?state=dead"], runs, none).await,
        ),
        (
            format!("`GET /api/jobs?q={prefix}` (ids starting so: the whole index listed, 10 records read)"),
            time_gets(&http, &base, &[&format!("/api/jobs?q={prefix}")], runs, none).await,
        ),
        (
            format!("`GET /api/jobs/{middle}` (one record)"),
            time_gets(&http, &base, &[&format!("/api/jobs/{middle}")], runs, none).await,
        ),
        (
            "`GET /api/queues` (passive declares, the requirements stream)".into(),
            time_gets(&http, &base, &["/api/queues"], runs, none).await,
        ),
        (
            "`GET /api/workers` (one worker; calls 1.1 s apart, so each asks it)".into(),
            time_gets(&http, &base, &["/api/workers"], runs.min(10), apart).await,
        ),
    ]);
    let peak_kb = status_kb(dashboard.pid(), "VmHWM:").unwrap_or(0);
    drop(dashboard);
    // `status` as an operator runs it: a new process, one GET of the record.
    let mut status_times = Vec::new();
    let mut unknown_times = Vec::new();
    for _ in 0..runs {
        status_times.push(
            time_cmd(&mut farm.command(&["status", &middle, "--json"]))
                .wall
                .as_secs_f64()
                * 1000.0,
        );
        // Exit 3: no such job.
        let unknown = time_cmd_exiting(
            &mut farm.command(&["status", "never-submitted", "--json"]),
            3,
        );
        unknown_times.push(unknown.wall.as_secs_f64() * 1000.0);
    }
    drop(worker);
    measured.push((
        format!("**`transcode-worker status {middle} --json`** (a new process)"),
        status_times,
    ));
    measured.push((
        "`transcode-worker status never-submitted --json` (exit 3)".into(),
        unknown_times,
    ));
    let rows: Vec<Vec<String>> = measured
        .into_iter()
        .map(|(what, v)| {
            vec![
                what,
                format!("{:.1}", median(v.clone())),
                format!("{:.1}", slowest(&v)),
                v.len().to_string(),
            ]
        })
        .collect();
    let t = table(&["request", "median ms", "slowest ms", "runs"], &rows);
    format!(
        "{t}\n{n} records written into {store} in {wrote:.0} s. \
         Peak resident memory of the dashboard after all its requests: {:.1} MiB (VmHWM).\n",
        peak_kb as f64 / 1024.0
    )
}

/// Times the requests a fetch makes (HEAD of the input, HEAD of the missing
/// output, GET of the input) with rust-s3, with and without a request
/// timeout (the worker sets one on its control requests only).
async fn s3_request_costs(farm: &Farm, reps: usize) -> Vec<Vec<String>> {
    let bucket = farm.bucket.as_ref().expect("S3 farm");
    let mut rows = Vec::new();
    for timeout in [Some(Duration::from_secs(30)), None] {
        let mut b = (**bucket).clone();
        b.set_request_timeout(timeout);
        let label = match timeout {
            Some(_) => "request timeout 30 s",
            None => "no request timeout",
        };
        let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for _ in 0..reps {
            let t = Instant::now();
            let _ = b.head_object("tiny.wmv").await.expect("HEAD");
            times
                .entry("HEAD input (200)")
                .or_default()
                .push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let _ = b.head_object("out/none.mp4").await;
            times
                .entry("HEAD missing output (404)")
                .or_default()
                .push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let _ = b.get_object("tiny.wmv").await.expect("GET");
            times
                .entry("GET input")
                .or_default()
                .push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let mut sink = tokio::io::sink();
            let _ = b
                .get_object_to_writer("tiny.wmv", &mut sink)
                .await
                .expect("GET stream");
            times
                .entry("GET input, streamed (get_object_to_writer)")
                .or_default()
                .push(t.elapsed().as_secs_f64());
        }
        for (what, v) in times {
            rows.push(vec![
                format!("{what}, {label}"),
                format!("{:.1}", median(v) * 1000.0),
            ]);
        }
    }
    rows
}
