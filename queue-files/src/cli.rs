//! The command line: options parsed with clap derive; the doc comments are
//! the help text.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Queues a video library for transcoding.
///
/// Walks each PATH recursively, probes every file with GStreamer, skips
/// files already in the target format (by default H.264 in MP4) and files
/// that are not video, uploads the others to the bucket under an input
/// prefix (keeping their path relative to the scanned folder) and publishes
/// one job per file to the worker's jobs queue. With the directory backend
/// files are queued in place, without uploading.
///
/// Running it again queues nothing new: each job's id is derived from the
/// file's content, and a marker `<output key>.queued.json` stored beside
/// the output records it. A file whose content changed is queued again.
///
/// Settings are the worker's: the same environment variables (AMQP_URL,
/// S3_BUCKET_NAME, AWS_*, TRANSCODE_*), `.env` file and `--config` file.
///
/// Exit status: 0 when every file was queued or skipped (and, with --wait,
/// every job completed); 1 when a file or job failed or the broker or
/// storage could not be reached; 2 for bad options or settings; 130 when
/// interrupted.
#[derive(Debug, Clone, Parser)]
#[command(name = "queue-files", version)]
pub struct Cli {
    /// Folders (scanned recursively) and files to queue.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Configuration file (TOML), the same as the worker's; also TRANSCODE_CONFIG.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the jobs that would be queued (JSON lines on standard output);
    /// upload, publish, move and write nothing. The broker is not contacted.
    #[arg(long)]
    pub dry_run: bool,

    /// Preset from the configuration for every job (default: the worker's
    /// default preset for the output's container).
    #[arg(long, value_name = "NAME", conflicts_with = "transcode_options")]
    pub preset: Option<String>,

    /// GStreamer video branch for every job instead of a preset, e.g.
    /// "videoconvert ! x264enc"; checked against the worker's allowlist.
    #[arg(long, value_name = "FRAGMENT")]
    pub transcode_options: Option<String>,

    /// Priority of every job: high, normal or low. Each has its own queue
    /// (`transcoding_jobs.high`, `transcoding_jobs`, `transcoding_jobs.low`);
    /// a free worker takes high jobs first, low jobs last.
    #[arg(long, value_name = "PRIORITY", default_value = "normal")]
    pub priority: transcode_worker::job::Priority,

    /// Encode every input in segments of about N seconds (at least 2),
    /// each by any free worker, joined into its one output.
    #[arg(long, value_name = "N")]
    pub segment_seconds: Option<f64>,

    /// S3 bucket (overrides S3_BUCKET_NAME and the configuration).
    #[arg(long, value_name = "NAME")]
    pub bucket: Option<String>,

    /// Key prefix the inputs are uploaded under (S3 only) [default: input/].
    #[arg(long, value_name = "PREFIX")]
    pub input_prefix: Option<String>,

    /// Key prefix of the outputs; "" puts each output beside its input
    /// (directory backend).
    #[arg(long, value_name = "PREFIX", default_value = "output/")]
    pub output_prefix: String,

    /// Only queue files matching this glob; repeatable. A glob without "/"
    /// matches file names at any depth ("*.wmv"); one with "/" matches the
    /// path relative to the scanned folder ("2023/**/*.avi").
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,

    /// Leave out files and folders matching this glob (same rules as
    /// --include); repeatable; wins over --include.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// Target video codec: h264, h265, vp9, av1, or a GStreamer caps name
    /// such as video/x-h264. Files already in it, in the target container,
    /// are skipped.
    #[arg(long, value_name = "CODEC", default_value = "h264")]
    pub target_codec: String,

    /// Target container, as the outputs' extension: mp4, m4v, mov, mkv or webm.
    #[arg(long, value_name = "EXT", default_value = "mp4")]
    pub target_ext: String,

    /// Move each original into DIR, keeping its relative path: once it is
    /// safely uploaded, or with --wait once its job completed (the
    /// directory backend needs --wait).
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,

    /// Follow the queued jobs with a progress bar each; exit 0 when all
    /// completed, 1 if any failed. Uses a private temporary queue bound to
    /// the progress exchange.
    #[arg(long, conflicts_with = "watch")]
    pub wait: bool,

    /// With --wait: give up waiting after this long, e.g. "2h".
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "wait")]
    pub wait_timeout: Option<Duration>,

    /// Keep scanning every --interval until interrupted; a file is queued
    /// only once its size and modification time stayed the same between
    /// two scans (so a file still being copied is left alone).
    #[arg(long)]
    pub watch: bool,

    /// Time between two scans with --watch.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// Queue files even when they were already queued or transcoded, or
    /// their output exists.
    #[arg(long)]
    pub force: bool,

    /// Longest time probing one file may take.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub probe_timeout: Duration,

    /// Print only failures and the summary.
    #[arg(short, long)]
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn paths_may_start_with_a_dash_after_double_dash() {
        let cli = Cli::try_parse_from(["queue-files", "--dry-run", "--", "-odd name.wmv"]).unwrap();
        assert_eq!(cli.paths, [PathBuf::from("-odd name.wmv")]);
        assert!(cli.dry_run);
    }

    #[test]
    fn preset_and_fragment_exclude_each_other() {
        assert!(Cli::try_parse_from([
            "queue-files",
            "--preset",
            "a",
            "--transcode-options",
            "x264enc",
            "d"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["queue-files", "--wait", "--watch", "d"]).is_err());
    }
}
