//! Shared helpers for integration tests.
//!
//! Include from a test crate with
//! `#[path = "../common/mod.rs"] mod common;`.
//!
//! * [`services`]: real RabbitMQ nodes and S3 servers as child processes;
//! * [`fixtures`]: small test videos made with `gst-launch-1.0`;
//! * [`browser`]: headless Chromium driven through WebDriver;
//! * waiting helpers: every wait in a test has a timeout and says what it
//!   waited for when it gives up.
#![allow(dead_code)]

pub mod browser;
pub mod farm;
pub mod fixtures;
pub mod relay;
pub mod services;
pub mod tls;

use std::future::Future;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A generous default for waits in tests.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the polling helpers re-check their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A unique, lower-case name usable as a queue, bucket or object name:
/// `"{prefix}-{16 hex digits}"`.
pub fn random_name(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Polls the async `condition` until it returns `true`.
///
/// Panics with `what` once `timeout` has passed (including when a single
/// evaluation of `condition` hangs).
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_value(timeout, what, || {
        let fut = condition();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls the async `probe` until it returns `Some(value)`, and returns the
/// value. Panics with `what` once `timeout` has passed.
pub async fn wait_for_value<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, probe()).await {
            Ok(Some(value)) => return value,
            Ok(None) => {}
            Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Awaits `fut`, panicking with `what` if it takes longer than `timeout`.
pub async fn with_timeout<T>(timeout: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Blocking version of [`wait_for`], for synchronous code.
pub fn poll_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Runs `cmd` to completion with its stdout and stderr captured (stdin is
/// `/dev/null`). If it runs longer than `timeout` it is killed and an error
/// with the output so far is returned.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status, false),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                break (child.wait().map_err(|e| e.to_string())?, true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {cmd:?}: {e}")),
        }
    };
    let output = Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    };
    if timed_out {
        return Err(format!(
            "{cmd:?} timed out after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output)
}

/// Sends `tracing` output of the code under test to the test's captured
/// output (filter with `RUST_LOG`, default `info`). Safe to call many times.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Process ids of the pipeline processes that the process `parent` runs
/// with a job (named `tw-pipeline`); its standby process (`tw-standby`) and
/// other children, such as GStreamer's plugin scanner while a fresh worker
/// builds its registry, are left out.
pub fn pipelines_of(parent: i32) -> Vec<i32> {
    named_children_of(parent, transcode_worker::transcoder::RUNNING_NAME)
}

/// Process ids of the children of `parent` named `name` (`/proc/PID/comm`).
pub fn named_children_of(parent: i32, name: &str) -> Vec<i32> {
    children_of(parent)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// Sends `signal` to the process `pid` (a child of a worker the test
/// started, such as its pipeline process).
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(pid, signal) };
}

/// Whether the process `pid` has ended (gone, or a zombie not yet reaped).
pub fn process_ended(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The name (`/proc/PID/comm`) of the process `pid`, if it exists.
pub fn process_name(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|comm| comm.trim_end().to_string())
}

/// Process ids whose parent is `parent` (from `/proc`).
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command name, which is in parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}
