//! `transcode-worker ingest --rules FILE [--poll SECONDS]`: turns new
//! objects in the farm's storage into jobs by the rules of FILE, from S3
//! event notifications on the uploads queue, or by listing the rules'
//! prefixes every SECONDS. Runs until SIGTERM or SIGINT.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Backend, Settings};
use crate::ingest::{rules::Rules, Ingest};

/// Loads and checks the rules (exit 2 when they or the settings cannot be
/// used), then ingests until `shutdown`: events, or a listing every
/// `poll`.
pub async fn ingest(
    settings: Settings,
    rules: &Path,
    poll: Option<Duration>,
    shutdown: &CancellationToken,
) -> ExitCode {
    let rules = match Rules::load(rules, &settings) {
        Ok(rules) => rules,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if poll.is_none() && settings.storage.backend == Backend::Directory {
        tracing::error!("event notifications come from S3 storage, but storage.backend is \"directory\": use --poll SECONDS to list the folder instead");
        return ExitCode::from(2);
    }
    let ingest = match Ingest::new(settings, rules) {
        Ok(ingest) => ingest,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = match poll {
        Some(every) => ingest.poll(every, shutdown).await,
        None => ingest.listen(shutdown).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a poll interval: a number of seconds (`30`, `0.5`) or a
/// duration (`30s`, `5m`); at least 10 ms.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = match text.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => Duration::from_secs_f64(seconds),
        Ok(_) => return Err(format!("{text:?} is not a number of seconds")),
        Err(_) => humantime::parse_duration(text.trim())
            .map_err(|e| format!("{text:?} is neither a number of seconds nor a duration: {e}"))?,
    };
    if interval < Duration::from_millis(10) {
        return Err(format!("{text:?} is too short: poll at most every 10 ms"));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_seconds_or_durations() {
        assert_eq!(parse_interval("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_interval("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("-3").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
