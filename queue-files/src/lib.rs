//! queue-files: feeds a video library to the transcoding farm.
//!
//! It walks folders, probes each file with GStreamer's Discoverer, skips
//! what needs no transcoding, uploads the rest (or, with the directory
//! backend, leaves them in place) and publishes one job per file to the
//! worker's jobs queue, once: the job id is derived from the file's
//! content, and what was queued is recorded in the storage itself.
//!
//! Layout, one module per concern:
//! - [`cli`]: the command line (clap derive);
//! - [`app`]: one run, from checking the options to the summary;
//! - [`scan`]: walking folders, globs, `--watch` stability;
//! - [`inspect`]: target format, verdicts, probe details, content hash;
//! - [`keys`]: input and output keys;
//! - [`record`]: what was queued already (markers, object metadata);
//! - [`publish`]: broker connection, upload with progress, confirmed publish;
//! - [`wait`]: `--wait`, following progress through a private queue;
//! - [`archive`]: `--archive`, moving originals out of the library;
//! - [`ui`]: lines, progress bars, the summary.

#![warn(missing_docs)]

pub mod app;
pub mod archive;
pub mod cli;
pub mod inspect;
pub mod keys;
pub mod publish;
pub mod record;
pub mod scan;
pub mod ui;
pub mod wait;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use transcode_worker::config::Settings;

/// The whole program: parses the command line, loads the worker's
/// settings, and runs.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let ui = ui::Ui::new(cli.quiet);
    init_logging(&ui);
    if let Some(bucket) = &cli.bucket {
        // Settings::load gives S3_BUCKET_NAME the last word; nothing else
        // runs yet, so setting it here is safe.
        std::env::set_var("S3_BUCKET_NAME", bucket);
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            let mut message = e.to_string();
            if message.contains("S3_BUCKET_NAME") {
                message.push_str(" (or pass --bucket)");
            }
            ui.line(&format!("queue-files: error: {message}"));
            return ExitCode::from(app::EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            ui.line(&format!("queue-files: error: cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        tokio::spawn(cancel_on_signal(cancel.clone(), ui.clone()));
        app::run(cli, settings, ui, cancel).await
    })
}

/// Library warnings (storage retries and the like) go to standard error
/// above the bars; `RUST_LOG` filters them (default `warn`, and `error` for
/// rust-s3's own retry notes).
fn init_logging(ui: &ui::Ui) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,s3=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(ui.log_writer())
        .try_init();
}

/// The first SIGINT or SIGTERM stops the run after the current file (and
/// ends `--watch` or `--wait`); a second one exits at once.
async fn cancel_on_signal(cancel: CancellationToken, ui: ui::Ui) {
    transcode_worker::signals::stop_requested().await;
    ui.line("queue-files: stopping after the current file (again to stop at once)");
    cancel.cancel();
    transcode_worker::signals::stop_requested().await;
    std::process::exit(i32::from(app::EXIT_INTERRUPTED));
}
