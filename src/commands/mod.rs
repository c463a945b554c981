//! The commands of the `transcode-worker` binary, one function each, each
//! returning its exit code: 0 success, 1 failure, 2 bad settings or
//! arguments. [`crate::cli`] parses the command line and calls them.

pub mod dashboard;
pub mod ingest;
pub mod inspect;
pub mod jobs;
pub mod setup;
pub mod submit;
pub mod watch;
pub mod worker;

use std::process::ExitCode;

use crate::config::Settings;

/// `check-config`: prints the settings (secrets hidden).
pub fn check_config(settings: &Settings) -> ExitCode {
    println!("{settings:#?}");
    ExitCode::SUCCESS
}
