//! The pipeline process: each attempt's GStreamer pipeline runs in a child
//! process (`transcode-worker pipeline`), so a decoder that crashes, aborts
//! or runs out of memory fails that attempt only, and the worker's own
//! threads (and its AMQP heartbeats) never wait on GStreamer.
//!
//! The worker writes a [`TranscodeSpec`] as one JSON line to the child's
//! standard input; the child answers with [`ChildEvent`] JSON lines on its
//! standard output and exits. The child dies with the worker
//! (`PR_SET_PDEATHSIG`), is killed when the attempt is dropped, and runs
//! under an address-space limit.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::error::{ErrorKind, JobError};
use crate::pipeline::{self, MediaInfo, TranscodeSpec};

/// Lines of the child's standard error kept for error messages.
const STDERR_TAIL_LINES: usize = 20;

/// What the pipeline process reports, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChildEvent {
    /// The input was probed.
    Probed {
        /// What the probe found.
        input: MediaInfo,
    },
    /// Position of the transcode.
    Position {
        /// Milliseconds of media done.
        position_ms: u64,
        /// Total milliseconds, when known.
        duration_ms: Option<u64>,
    },
    /// The output is complete and verified.
    Finished {
        /// What the output probe found.
        output: MediaInfo,
    },
    /// The attempt failed.
    Failed {
        /// Classification.
        kind: ErrorKind,
        /// For people.
        message: String,
    },
}

/// Entry point of `transcode-worker pipeline`: reads the spec from standard
/// input, runs it, reports on standard output. Returns the exit code.
pub fn child_main() -> i32 {
    // Rust's runtime handles SIGSEGV and SIGBUS to report stack overflows,
    // and lets a signal sent with kill(2) pass; a pipeline process must die
    // of any such signal, so the worker sees the crash.
    // SAFETY: restoring the default disposition of two signals at start-up,
    // before any other thread exists.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
    let stdout = std::io::stdout();
    let emit = |event: &ChildEvent| {
        let mut out = stdout.lock();
        let _ = serde_json::to_writer(&mut out, event);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    };
    match run_child(&emit) {
        Ok(output) => {
            emit(&ChildEvent::Finished { output });
            0
        }
        Err(e) => {
            emit(&ChildEvent::Failed {
                kind: e.kind,
                message: e.message,
            });
            2
        }
    }
}

fn run_child(emit: &dyn Fn(&ChildEvent)) -> Result<MediaInfo, JobError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| JobError::new(ErrorKind::Internal, format!("reading the spec: {e}")))?;
    let spec: TranscodeSpec = serde_json::from_str(&line)
        .map_err(|e| JobError::new(ErrorKind::Internal, format!("bad spec: {e}")))?;
    let input = pipeline::probe(&spec.input, Duration::from_secs(60))?;
    pipeline::check_input_limits(&spec, &input)?;
    emit(&ChildEvent::Probed {
        input: input.clone(),
    });
    pipeline::transcode(&spec, &input, |position, duration| {
        emit(&ChildEvent::Position {
            position_ms: position.as_millis() as u64,
            duration_ms: duration.map(|d| d.as_millis() as u64),
        })
    })?;
    pipeline::verify(&spec, &input)
}

/// Runs pipeline processes.
#[derive(Debug, Clone)]
pub struct Transcoder {
    exe: PathBuf,
    memory_limit: Option<u64>,
}

impl Transcoder {
    /// Uses the program `exe` (the worker binary) as the pipeline process,
    /// limiting its memory to `memory_limit` bytes when given.
    pub fn new(exe: PathBuf, memory_limit: Option<u64>) -> Self {
        Transcoder { exe, memory_limit }
    }

    /// Starts the pipeline for `spec`; events arrive on `events`. Resolves
    /// when the child exits. Dropping the future kills the child.
    pub async fn run(
        &self,
        spec: &TranscodeSpec,
        events: mpsc::UnboundedSender<ChildEvent>,
    ) -> Result<MediaInfo, JobError> {
        let internal = |what: &str, e: std::io::Error| {
            JobError::new(
                ErrorKind::Internal,
                format!("pipeline process: {what}: {e}"),
            )
        };
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .arg("pipeline")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The worker keeps the plugin registry up to date at start; a
            // pipeline process that dies (or starves) while rewriting it
            // would leave every later job without plugins.
            .env("GST_REGISTRY_UPDATE", "no")
            .kill_on_drop(true);
        let memory_limit = self.memory_limit;
        // SAFETY: only async-signal-safe calls (prctl, setrlimit) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(bytes) = memory_limit {
                    let limit = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    libc::setrlimit(libc::RLIMIT_DATA, &limit);
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| internal("start", e))?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut line = serde_json::to_vec(spec).expect("a spec serializes");
        line.push(b'\n');
        stdin
            .write_all(&line)
            .await
            .map_err(|e| internal("write spec", e))?;
        drop(stdin);

        let stderr = child.stderr.take().expect("piped");
        let stderr_tail = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut tail = std::collections::VecDeque::new();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "pipeline", "{line}");
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail.into_iter().collect::<Vec<_>>().join("\n")
        });

        let mut outcome: Option<Result<MediaInfo, JobError>> = None;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        while let Some(line) = lines.next_line().await.map_err(|e| internal("read", e))? {
            match serde_json::from_str::<ChildEvent>(&line) {
                Ok(ChildEvent::Finished { output }) => outcome = Some(Ok(output)),
                Ok(ChildEvent::Failed { kind, message }) => {
                    outcome = Some(Err(JobError::new(kind, message)))
                }
                Ok(event) => {
                    let _ = events.send(event);
                }
                Err(_) => tracing::debug!(target: "pipeline", "{line}"),
            }
        }
        let status = child.wait().await.map_err(|e| internal("wait", e))?;
        let tail = stderr_tail.await.unwrap_or_default();
        match outcome {
            Some(Ok(output)) if status.success() => Ok(output),
            Some(Err(e)) => Err(e),
            _ => Err(crashed(status, &tail)),
        }
    }
}

fn crashed(status: std::process::ExitStatus, tail: &str) -> JobError {
    use std::os::unix::process::ExitStatusExt;
    let how = match status.signal() {
        Some(sig) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        None => format!("exited with {status} without a result"),
    };
    let mut message = format!("the pipeline process {how}");
    if !tail.is_empty() {
        let tail: String = tail
            .chars()
            .rev()
            .take(600)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        message.push_str(&format!("; its last output: {tail}"));
    }
    JobError::new(ErrorKind::PipelineCrashed, message)
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL, perhaps out of memory",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        _ => "signal",
    }
}
