//! The command line of the `transcode-worker` binary, as clap definitions:
//! the worker itself (`run`), the operator commands (`inspect`, `ping`,
//! `watch`, `check-config`, `setup`, `submit`, `status`, `jobs`, `cancel`,
//! `dashboard`), `ingest` (jobs made by uploads) and the hidden `pipeline`
//! command the worker runs as its child process. Each command is one
//! function in [`crate::commands`] that returns its exit code: 0 success,
//! 1 failure, 2 bad settings or arguments.

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{self, inspect::Format, watch::WatchOptions};
use crate::config::Settings;
use crate::telemetry::{self, LogFormat};
use crate::transcoder;

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
    /// Declare the farm's queues and exchanges on the broker and exit, so
    /// that jobs published before any worker started are kept.
    Setup {
        /// Print them as a RabbitMQ definitions file (for `load_definitions`
        /// in rabbitmq.conf) instead of declaring them.
        #[arg(long)]
        definitions: bool,
        /// The virtual host the definitions are for.
        #[arg(long, default_value = "/", requires = "definitions")]
        vhost: String,
    },
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
    /// Publish one job and print its id; with --wait, follow it to its end
    /// (exit 0 when it completed).
    Submit {
        /// Key of the input object (or path in the storage directory).
        #[arg(long, value_name = "KEY")]
        input: String,
        /// Key to store the output under; its extension picks the container.
        #[arg(long, value_name = "KEY")]
        output: String,
        /// A preset from the configuration.
        #[arg(long, value_name = "NAME", conflicts_with = "transcode_options")]
        preset: Option<String>,
        /// A GStreamer video branch instead of a preset, e.g. "videoconvert ! x264enc".
        #[arg(long, value_name = "FRAGMENT")]
        transcode_options: Option<String>,
        /// The job's id (default: a new one).
        #[arg(long, value_name = "ID")]
        job_id: Option<String>,
        /// high, normal or low: the queue the job goes to.
        #[arg(long, default_value = "normal")]
        priority: crate::job::Priority,
        /// A label the worker must have (repeat for more).
        #[arg(long = "requires", value_name = "LABEL")]
        requires: Vec<String>,
        /// Encode the input in segments of about N seconds (at least 2),
        /// each by any free worker, joined into the one output.
        #[arg(long, value_name = "N")]
        segment_seconds: Option<f64>,
        /// Follow the job to its end: exit 0 when it completed, 1 otherwise.
        #[arg(long)]
        wait: bool,
    },
    /// What the farm knows of a job: state, progress, worker, attempts,
    /// outputs, times (exit 3 when it knows nothing of it).
    Status {
        /// The job's id.
        job_id: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The most recent jobs, newest first.
    Jobs {
        /// Only jobs in this state (queued, waiting, running, completed,
        /// failed, dead, cancelled).
        #[arg(long)]
        state: Option<crate::history::JobState>,
        /// At most this many.
        #[arg(long, default_value = "20")]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a job: a running one within seconds, a queued one when a worker
    /// reaches it (exit 0), nothing for an ended (1) or unknown (3) one.
    Cancel {
        /// The job's id.
        job_id: String,
    },
    /// Turn new objects in the storage into jobs, by the rules of a TOML
    /// file: from S3 event notifications on the uploads queue (the
    /// default), or by listing the rules' prefixes every --poll SECONDS.
    /// Runs until SIGTERM or SIGINT.
    Ingest {
        /// The rules file (TOML): `[[rule]]` tables with `prefix`, an
        /// optional `suffix`, `fan_out` and `outputs`.
        #[arg(long, value_name = "FILE")]
        rules: std::path::PathBuf,
        /// List the rules' prefixes every SECONDS (or a duration such as
        /// "1m") instead of consuming event notifications, for storage
        /// that sends none (s3s-fs, Garage, AWS without a queue, a
        /// directory).
        #[arg(long, value_name = "SECONDS", value_parser = commands::ingest::parse_interval)]
        poll: Option<std::time::Duration>,
    },
    /// Serve the farm's live page and JSON API (workers, queues, recent
    /// jobs, dead letters; with dashboard.token set, cancel, requeue and
    /// submit) until SIGTERM or SIGINT.
    Dashboard {
        /// Address to listen on (IP:port; default dashboard.listen,
        /// 127.0.0.1:3000).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
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
    let command = cli.command.unwrap_or(Command::Run {
        exit_when_idle: None,
    });
    if let Command::Pipeline { preload } = &command {
        // The pipeline process: no logging set-up, no runtime.
        return ExitCode::from(transcoder::child_main(preload) as u8);
    }
    telemetry::init(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(dispatch(command, cli.config.as_deref()))
}

/// Loads the settings `command` needs and runs it.
async fn dispatch(command: Command, config: Option<&Path>) -> ExitCode {
    let observer = matches!(
        command,
        Command::Inspect { .. }
            | Command::Ping { .. }
            | Command::Watch { .. }
            | Command::Setup { .. }
    );
    // Observers (and setup) only talk to the broker: they need no storage
    // settings.
    let loaded = if observer {
        Settings::load_for_broker(config)
    } else {
        Settings::load(config)
    };
    let settings = match loaded {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let format = |json: bool| if json { Format::Json } else { Format::Table };
    match command {
        Command::Run { exit_when_idle } => commands::worker::run(settings, exit_when_idle).await,
        Command::CheckConfig => commands::check_config(&settings),
        Command::Submit {
            input,
            output,
            preset,
            transcode_options,
            job_id,
            priority,
            requires,
            segment_seconds,
            wait,
        } => {
            let submission = crate::operations::Submission {
                input,
                output,
                preset,
                transcode_options,
                job_id,
                priority,
                requires,
                webhook: None,
                segment_seconds,
            };
            commands::submit::submit(&settings, &submission, wait).await
        }
        Command::Status { job_id, json } => commands::jobs::status(&settings, &job_id, json).await,
        Command::Jobs { state, limit, json } => {
            commands::jobs::jobs(&settings, state, limit, json).await
        }
        Command::Cancel { job_id } => commands::jobs::cancel(&settings, &job_id).await,
        Command::Setup { definitions, vhost } => {
            commands::setup::setup(&settings, definitions, &vhost).await
        }
        Command::Inspect { json, timeout } => {
            commands::inspect::inspect(&settings.broker, format(json), timeout).await
        }
        Command::Ping { json, timeout } => {
            commands::inspect::ping(&settings.broker, format(json), timeout).await
        }
        Command::Watch {
            json,
            jobs,
            timeout,
        } => {
            let options = WatchOptions {
                json,
                jobs,
                timeout,
            };
            commands::watch::watch(
                &settings.broker,
                &options,
                &crate::signals::interrupt_token(),
            )
            .await
        }
        Command::Ingest { rules, poll } => {
            commands::ingest::ingest(settings, &rules, poll, &crate::signals::interrupt_token())
                .await
        }
        Command::Dashboard { listen } => commands::dashboard::dashboard(settings, listen).await,
        Command::Pipeline { .. } => ExitCode::from(2),
    }
}
