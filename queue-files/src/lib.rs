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

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use transcode_worker::config::{ConfigError, Settings};

/// The whole program: parses the command line, loads the worker's
/// settings, and runs.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let ui = ui::Ui::new(cli.quiet);
    init_logging(&ui);
    let settings = match load_settings(&cli) {
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

/// The worker's settings, read the way [`Settings::load`] reads them (the
/// process environment over a `.env` file in the working directory, over
/// the configuration file), with `--bucket` in place of `S3_BUCKET_NAME`.
fn load_settings(cli: &cli::Cli) -> Result<Settings, ConfigError> {
    let env = transcode_worker::config::environment();
    settings_from(cli.config.as_deref(), env, cli.bucket.as_deref())
}

/// Settings from the environment map `env` and `file`, with `bucket` (when
/// given) overriding `S3_BUCKET_NAME` and the configuration.
fn settings_from(
    file: Option<&Path>,
    mut env: HashMap<String, String>,
    bucket: Option<&str>,
) -> Result<Settings, ConfigError> {
    if let Some(bucket) = bucket {
        env.insert("S3_BUCKET_NAME".to_string(), bucket.to_string());
    }
    Settings::from_env(file, &env)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_bucket_option_overrides_the_environment() {
        let e = env(&[("S3_BUCKET_NAME", "from-env")]);
        let s = settings_from(None, e.clone(), Some("from-option")).unwrap();
        assert_eq!(s.storage.bucket, "from-option");
        let s = settings_from(None, e, None).unwrap();
        assert_eq!(s.storage.bucket, "from-env");
    }

    #[test]
    fn the_bucket_option_stands_in_for_a_missing_bucket() {
        let s = settings_from(None, HashMap::new(), Some("videos")).unwrap();
        assert_eq!(s.storage.bucket, "videos");
        let err = settings_from(None, HashMap::new(), None).unwrap_err();
        assert!(err.to_string().contains("S3_BUCKET_NAME"), "{err}");
    }
}
