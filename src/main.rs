//! The `transcode-worker` binary: parses the command line and hands over to
//! the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use transcode_worker::config::Settings;
use transcode_worker::telemetry::{self, LogFormat};
use transcode_worker::transcoder::{self, Transcoder};
use transcode_worker::worker::Worker;

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
    /// Internal: run one pipeline, reading its spec from standard input.
    #[command(hide = true)]
    Pipeline,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Pipeline) = cli.command {
        return ExitCode::from(transcoder::child_main() as u8);
    }
    telemetry::init(cli.log_format);
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
        let transcoder = Transcoder::new(exe, (limit_mb > 0).then_some(limit_mb << 20));
        let worker = match Worker::new(settings, transcoder, exit_when_idle) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(2);
            }
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
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing the running job, taking no new one"),
        _ = int.recv() => tracing::info!("SIGINT: finishing the running job, taking no new one"),
    }
    shutdown.cancel();
}
