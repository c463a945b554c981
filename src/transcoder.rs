//! The pipeline process: each attempt's GStreamer pipeline runs in a child
//! process (`transcode-worker pipeline`), so a decoder that crashes, aborts
//! or runs out of memory fails that attempt only, and the worker's own
//! threads (and its AMQP heartbeats) never wait on GStreamer.
//!
//! The worker writes a [`TranscodeSpec`] as one JSON line to the child's
//! standard input; the child answers with [`ChildEvent`] JSON lines on its
//! standard output, the last one `finished` or `failed`. The child dies
//! with the worker (`PR_SET_PDEATHSIG`), is killed when the attempt is
//! dropped, and runs under a memory limit (`RLIMIT_DATA`): an attempt whose
//! process could not allocate memory fails as `pipeline_crashed`, saying it
//! ran out of memory, whether the allocation failure aborted the process or
//! made an element give up.
//!
//! Starting a pipeline process costs a job about 80 ms, most of it loading
//! GStreamer's plugins (libav, x264). So the transcoder keeps one *standby*
//! process started ahead, with GStreamer initialised and the plugins a job
//! is likely to need loaded, waiting for a spec; and a process whose job
//! completed waits for the next spec instead of exiting, up to
//! [`JOBS_PER_PROCESS`] jobs. Isolation stays per attempt: a process runs
//! one job at a time, exits after any failure, and a crash ends only the
//! attempt it was running. A process is named `tw-standby` while it waits
//! and `tw-pipeline` while it has a job (`ps -C tw-pipeline`).
//!
//! The child's side is in `child.rs`; how a process's death or its
//! allocation failures become the attempt's error, in `crash.rs`.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;

use crate::error::{ErrorKind, JobError};
use crate::pipeline::{self, MediaInfo, Outcome, TranscodeSpec};

mod child;
mod crash;

pub use child::child_main;
use crash::{allocation_failure, crashed, out_of_memory};

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
    /// Every output is complete and verified; says how many decoders the
    /// run created (one per decoded input stream, however many outputs).
    Finished(Outcome),
    /// A part of a segmented job is done (see [`pipeline::PartRequest`]).
    PartFinished(pipeline::PartOutcome),
    /// The attempt failed.
    Failed {
        /// Classification.
        kind: ErrorKind,
        /// For people.
        message: String,
    },
}

/// The name (`/proc/PID/comm`) of a pipeline process waiting for its spec.
pub const STANDBY_NAME: &str = "tw-standby";
/// The name of a pipeline process that has its job.
pub const RUNNING_NAME: &str = "tw-pipeline";

/// How many jobs one pipeline process runs before it is replaced, so
/// whatever a long series of jobs might leave behind in a process (leaks in
/// a plugin) stays bounded.
pub const JOBS_PER_PROCESS: u32 = 100;

/// How a pipeline process answered a request.
enum Answer {
    /// A transcode's verified output.
    Transcode(Outcome),
    /// What a part of a segmented job made.
    Part(pipeline::PartOutcome),
}

/// Runs pipeline processes.
#[derive(Debug)]
pub struct Transcoder {
    exe: PathBuf,
    memory_limit: Option<u64>,
    preload: Vec<String>,
    /// With [`Transcoder::with_standby`]: the process waiting for the next
    /// job's spec.
    standby: Option<std::sync::Mutex<Option<Process>>>,
}

/// A started pipeline process and its pipes.
#[derive(Debug)]
struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The last lines of its standard error, kept by `stderr_reader`.
    stderr_tail: Arc<std::sync::Mutex<VecDeque<String>>>,
    /// The task that reads its standard error; it ends with the process.
    stderr_reader: tokio::task::JoinHandle<()>,
    /// Jobs it has completed.
    jobs: u32,
}

impl Process {
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Writes one spec line.
    async fn give(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.stdin.write_all(line).await?;
        self.stdin.flush().await
    }

    fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Transcoder {
    /// Uses the program `exe` (the worker binary) as the pipeline process,
    /// limiting its memory to `memory_limit` bytes when given. Each job
    /// starts its own process; see [`Transcoder::with_standby`].
    pub fn new(exe: PathBuf, memory_limit: Option<u64>) -> Self {
        Transcoder {
            exe,
            memory_limit,
            preload: Vec::new(),
            standby: None,
        }
    }

    /// Keeps a pipeline process ready for the next job, with the plugins of
    /// the elements `preload` names (and of [`pipeline::LIKELY_ELEMENTS`])
    /// already loaded, and lets a process whose job completed wait for the
    /// next one.
    pub fn with_standby(mut self, preload: Vec<String>) -> Self {
        self.preload = preload;
        self.preload
            .extend(pipeline::LIKELY_ELEMENTS.iter().map(|s| s.to_string()));
        self.preload.sort_unstable();
        self.preload.dedup();
        self.standby = Some(std::sync::Mutex::new(None));
        self
    }

    fn slot(&self) -> Option<std::sync::MutexGuard<'_, Option<Process>>> {
        let slot = self.standby.as_ref()?;
        Some(slot.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Starts the standby process if there is none (or it has died). Does
    /// nothing without [`Transcoder::with_standby`].
    pub fn prepare(&self) {
        let Some(mut slot) = self.slot() else { return };
        if slot.as_mut().is_some_and(Process::alive) {
            return;
        }
        *slot = match self.spawn() {
            Ok(process) => Some(process),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a standby pipeline process");
                None
            }
        };
    }

    /// The standby process if it is still alive, else a new process.
    fn take_or_spawn(&self) -> std::io::Result<Process> {
        if let Some(mut process) = self.slot().and_then(|mut slot| slot.take()) {
            if process.alive() {
                return Ok(process);
            }
        }
        self.spawn()
    }

    /// Keeps `process`, whose job completed, as the standby for the next
    /// job, unless it has run its share of jobs (or there is no standby
    /// slot, or another process waits in it): then it is told to exit.
    fn keep(&self, mut process: Process) {
        process.jobs += 1;
        if process.jobs < JOBS_PER_PROCESS {
            if let Some(mut slot) = self.slot() {
                if !slot.as_mut().is_some_and(Process::alive) {
                    *slot = Some(process);
                    return;
                }
            }
        }
        // Closing its standard input ends it; reap it in the background.
        let Process { mut child, .. } = process;
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        self.prepare();
    }

    fn spawn(&self) -> std::io::Result<Process> {
        let mut command = tokio::process::Command::new(&self.exe);
        command.arg("pipeline");
        if !self.preload.is_empty() {
            command.arg("--preload").arg(self.preload.join(","));
        }
        command
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
        let mut child = command.spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let stderr = child.stderr.take().expect("piped");
        let stderr_tail = Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let tail = stderr_tail.clone();
        let stderr_reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "pipeline", "{line}");
                let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Ok(Process {
            child,
            stdin,
            stdout,
            stderr_tail,
            stderr_reader,
            jobs: 0,
        })
    }

    /// Runs the pipeline for `spec` in the standby process (or a new one);
    /// events arrive on `events`. Resolves when the process reports the
    /// verified output (it then waits for the next job) or ends without
    /// one. Dropping the future kills the process.
    pub async fn run(
        &self,
        spec: &TranscodeSpec,
        events: mpsc::UnboundedSender<ChildEvent>,
    ) -> Result<Outcome, JobError> {
        let line = serde_json::to_vec(spec).expect("a spec serializes");
        match self.exchange(line, events).await? {
            Answer::Transcode(outcome) => Ok(outcome),
            Answer::Part(_) => Err(JobError::new(
                ErrorKind::Internal,
                "the pipeline process answered a transcode as a part",
            )),
        }
    }

    /// Runs `request`, a part of a segmented job, as [`Transcoder::run`]
    /// runs a transcode.
    pub async fn run_part(
        &self,
        request: &pipeline::PartRequest,
        events: mpsc::UnboundedSender<ChildEvent>,
    ) -> Result<pipeline::PartOutcome, JobError> {
        let line = serde_json::to_vec(request).expect("a request serializes");
        match self.exchange(line, events).await? {
            Answer::Part(outcome) => Ok(outcome),
            Answer::Transcode(_) => Err(JobError::new(
                ErrorKind::Internal,
                "the pipeline process answered a part as a transcode",
            )),
        }
    }

    /// Gives `line` to the standby process (or a new one) and reads its
    /// events until its answer.
    async fn exchange(
        &self,
        mut line: Vec<u8>,
        events: mpsc::UnboundedSender<ChildEvent>,
    ) -> Result<Answer, JobError> {
        let internal = |what: &str, e: std::io::Error| {
            JobError::new(
                ErrorKind::Internal,
                format!("pipeline process: {what}: {e}"),
            )
        };
        line.push(b'\n');
        let mut process = self.take_or_spawn().map_err(|e| internal("start", e))?;
        if let Err(e) = process.give(&line).await {
            // A standby that died just now: start a process of its own.
            tracing::debug!(error = %e, "the standby pipeline process did not take the spec");
            process = self.spawn().map_err(|e| internal("start", e))?;
            process
                .give(&line)
                .await
                .map_err(|e| internal("write spec", e))?;
        }
        process
            .stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();

        let mut failure: Option<JobError> = None;
        while let Some(line) = process
            .stdout
            .next_line()
            .await
            .map_err(|e| internal("read", e))?
        {
            match serde_json::from_str::<ChildEvent>(&line) {
                Ok(ChildEvent::Finished(outcome)) => {
                    self.keep(process);
                    return Ok(Answer::Transcode(outcome));
                }
                Ok(ChildEvent::PartFinished(outcome)) => {
                    self.keep(process);
                    return Ok(Answer::Part(outcome));
                }
                Ok(ChildEvent::Failed { kind, message }) => {
                    failure = Some(JobError::new(kind, message))
                }
                Ok(event) => {
                    let _ = events.send(event);
                }
                Err(_) => tracing::debug!(target: "pipeline", "{line}"),
            }
        }
        let status = process
            .child
            .wait()
            .await
            .map_err(|e| internal("wait", e))?;
        // Its last words (a GStreamer critical before an abort) may still be
        // in the pipe.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut process.stderr_reader).await;
        self.prepare();
        let tail = process.stderr_tail();
        let error = failure.unwrap_or_else(|| crashed(status, &tail));
        Err(match allocation_failure(&tail) {
            Some(line) => out_of_memory(self.memory_limit, line, &error),
            None => error,
        })
    }
}
