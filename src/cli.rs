//! The command line of the `transcode-worker` binary: the worker itself
//! (`run`), the operator commands (`inspect`, `ping`, `watch`,
//! `check-config`) and the hidden `pipeline` command the worker runs as its
//! child process. Maps outcomes to exit codes: 0 success, 1 failure, 2 bad
//! settings or arguments.

use std::process::ExitCode;

use crate::config::Settings;
use crate::control;
use crate::metrics::MetricsServer;
use crate::telemetry::{self, LogFormat};
use crate::transcoder::{self, Transcoder};
use crate::worker::Worker;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Takes transcoding jobs from RabbitMQ, runs them with GStreamer, and
/// stores the results in S3-compatible storage or a shared directory.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (TOML); also TRANSCODE_CONFIG.
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker until SIGTERM or SIGINT (the default).
    Run {
        /// Exit 0 once no job has arrived for this long, e.g. "30s".
        #[arg(long, value_parser = humantime::parse_duration)]
        exit_when_idle: Option<std::time::Duration>,
    },
    /// Check the configuration and print it (secrets hidden).
    CheckConfig,
    /// List the live workers on every machine and what each is doing.
    Inspect {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How long to wait for the workers' answers, e.g. "2s".
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// List the live workers and how fast each answers.
    Ping {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How long to wait for the workers' answers, e.g. "2s".
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Show the progress of running jobs live, until Ctrl-C.
    Watch {
        /// Print every progress event as a JSON line (plain lines are also
        /// used when the output is not a terminal).
        #[arg(long)]
        json: bool,
        /// Only this job (repeat for more); exit once each has ended
        /// (status 0 when all completed, 1 otherwise).
        #[arg(long = "job", value_name = "JOB_ID")]
        jobs: Vec<String>,
        /// Stop after this long, e.g. "10m".
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Internal: run one pipeline, reading its spec from standard input.
    #[command(hide = true)]
    Pipeline {
        /// Elements whose plugins to load before reading the spec.
        #[arg(long, value_delimiter = ',')]
        preload: Vec<String>,
    },
}

/// Parses the command line, runs the command, and returns its exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Pipeline { preload }) = &cli.command {
        return ExitCode::from(transcoder::child_main(preload) as u8);
    }
    telemetry::init(cli.log_format);
    if let Some(command) = cli.command.as_ref().filter(|c| c.is_observer()) {
        return observe(cli.config.as_deref(), command);
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let exit_when_idle = match cli.command {
        Some(Command::CheckConfig) => {
            println!("{settings:#?}");
            return ExitCode::SUCCESS;
        }
        Some(Command::Run { exit_when_idle }) => exit_when_idle,
        _ => None,
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                tracing::error!("cannot find the worker's own program: {e}");
                return ExitCode::FAILURE;
            }
        };
        let limit_mb = settings.worker.pipeline_memory_limit_mb;
        let settings_metrics = settings.metrics.listen_addr();
        let transcoder = Transcoder::new(exe, (limit_mb > 0).then_some(limit_mb << 20));
        let worker = match Worker::new(settings, transcoder, exit_when_idle) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(2);
            }
        };
        let _metrics = match settings_metrics {
            Some(addr) => match MetricsServer::start(addr, worker.status().clone()).await {
                Ok(server) => {
                    tracing::info!(address = %server.addr(), "serving /metrics and /healthz");
                    Some(server)
                }
                Err(e) => {
                    tracing::error!(address = %addr, error = %e, "cannot serve /metrics and /healthz (metrics.listen); running without them");
                    None
                }
            },
            None => None,
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        match worker.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    let signal = crate::signals::stop_requested().await;
    tracing::info!("{signal}: finishing the running job, taking no new one");
    shutdown.cancel();
}

impl Command {
    /// Whether this command only observes the farm through the broker.
    fn is_observer(&self) -> bool {
        matches!(
            self,
            Command::Inspect { .. } | Command::Ping { .. } | Command::Watch { .. }
        )
    }
}

/// Runs `inspect`, `ping` or `watch`: 0 when workers answered (or every
/// watched job completed), 1 otherwise, 2 for bad settings.
fn observe(config: Option<&std::path::Path>, command: &Command) -> ExitCode {
    let settings = match Settings::load_for_broker(config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let broker = &settings.broker;
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let (json, timeout, ping) = match command {
            Command::Inspect { json, timeout } => (*json, *timeout, false),
            Command::Ping { json, timeout } => (*json, *timeout, true),
            Command::Watch {
                json,
                jobs,
                timeout,
            } => {
                let options = crate::watch::WatchOptions {
                    json: *json,
                    jobs: jobs.clone(),
                    timeout: *timeout,
                };
                let cancel = CancellationToken::new();
                let on_signal = cancel.clone();
                tokio::spawn(async move {
                    crate::signals::stop_requested().await;
                    on_signal.cancel();
                });
                return match crate::watch::watch(broker, &options, &cancel).await {
                    Ok(end) => {
                        if let Some(why) = &end.stopped {
                            eprintln!("watch: {why}");
                        }
                        if !end.unfinished.is_empty() {
                            eprintln!("watch: not finished: {}", end.unfinished.join(", "));
                        }
                        if end.success() {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::FAILURE
                        }
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        ExitCode::FAILURE
                    }
                };
            }
            _ => return ExitCode::from(2),
        };
        let asked = if ping {
            control::Command::Ping
        } else {
            control::Command::Inspect
        };
        let answers = match control::ask(broker, asked, timeout).await {
            Ok(answers) => answers,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let text = match (ping, json) {
            (true, true) => control::ping_json(&answers),
            (true, false) => control::ping_table(&answers),
            (false, true) => control::inspect_json(&answers),
            (false, false) => control::inspect_table(&answers),
        };
        if json || !answers.is_empty() {
            println!("{text}");
        }
        if answers.is_empty() {
            eprintln!(
                "no worker answered within {} on the control exchange {:?}",
                humantime::format_duration(timeout),
                broker.control_exchange()
            );
            return ExitCode::FAILURE;
        }
        eprintln!(
            "{} worker(s) answered within {}",
            answers.len(),
            humantime::format_duration(timeout)
        );
        ExitCode::SUCCESS
    })
}
