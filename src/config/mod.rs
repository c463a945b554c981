//! Settings: built-in defaults <- optional file <- environment (and `.env`).
//!
//! This is the only module that reads environment variables. The defaults
//! live in `config/transcode-worker.toml`, which is compiled in, so the file
//! operators read is the one the binary uses. Bad settings fail at start with
//! a message that names the setting; secrets are wrapped so they never print.

mod presets;
mod sections;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::fragment::{Allowlist, Limits};

pub use presets::Preset;
pub use sections::{
    redact_url, AllowedHost, Backend, BrokerSettings, DashboardSettings, FetchInput,
    HistorySettings, MetricsSettings, PipelineSettings, SegmentSettings, StorageSettings,
    WebhookSettings, WorkerSettings,
};

/// The built-in defaults, the same text as `config/transcode-worker.toml`.
pub const DEFAULTS_TOML: &str = include_str!("../../config/transcode-worker.toml");

/// Environment variables of the original service, and the setting each sets.
pub const SEED_ENV_NAMES: &[(&str, &str)] = &[
    ("AMQP_URL", "broker.url"),
    ("AWS_ACCESS_KEY_ID", "storage.access_key"),
    ("AWS_SECRET_ACCESS_KEY", "storage.secret_key"),
    ("S3_BUCKET_NAME", "storage.bucket"),
    ("AWS_S3_ENDPOINT_URL", "storage.endpoint"),
    ("AWS_REGION", "storage.region"),
];

/// Prefix of the environment variables that set any other setting.
pub const ENV_PREFIX: &str = "TRANSCODE";

/// All settings of the worker and of `queue-files`.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// RabbitMQ connection and topology.
    pub broker: BrokerSettings,
    /// Where inputs are read and outputs written.
    pub storage: StorageSettings,
    /// How the worker runs jobs.
    pub worker: WorkerSettings,
    /// Pipeline policy.
    pub pipeline: PipelineSettings,
    /// Named presets, by name.
    pub presets: BTreeMap<String, Preset>,
    /// The Prometheus endpoint and health check.
    pub metrics: MetricsSettings,
    /// The job history.
    pub history: HistorySettings,
    /// Webhook delivery.
    pub webhook: WebhookSettings,
    /// Segmented jobs.
    pub segments: SegmentSettings,
    /// The dashboard.
    pub dashboard: DashboardSettings,
}

/// A setting that is missing or wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The layers could not be read or merged.
    #[error("configuration: {0}")]
    Load(String),
    /// One setting is invalid.
    #[error("invalid setting {setting}: {problem}")]
    Invalid {
        /// Dotted name of the setting, with its environment name where it has one.
        setting: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// The environment settings are read from: a `.env` file in the working
/// directory, overridden by the process environment.
pub fn environment() -> HashMap<String, String> {
    let mut env: HashMap<String, String> = HashMap::new();
    if let Ok(iter) = dotenvy::from_filename_iter(".env") {
        for (key, value) in iter.flatten() {
            env.insert(key, value);
        }
    }
    env.extend(std::env::vars());
    env
}

fn invalid(setting: &str, problem: impl Into<String>) -> ConfigError {
    let env = SEED_ENV_NAMES
        .iter()
        .find(|(_, key)| *key == setting)
        .map(|(env, _)| (*env).to_string())
        .unwrap_or_else(|| {
            format!(
                "{ENV_PREFIX}_{}",
                setting.replace('.', "__").to_ascii_uppercase()
            )
        });
    ConfigError::Invalid {
        setting: format!("{setting} (env {env})"),
        problem: problem.into(),
    }
}

impl Settings {
    /// Loads settings from the process environment, a `.env` file in the
    /// working directory, and `file` (or the file named by `TRANSCODE_CONFIG`).
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::from_env(file, &environment())
    }

    /// Like [`Settings::load`], for commands that only talk to the broker
    /// (`inspect`, `ping`, `watch`): the storage settings are not checked,
    /// so an operator needs no bucket or keys to run them.
    pub fn load_for_broker(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::for_broker_from_env(file, &environment())
    }

    /// Like [`Settings::from_env`], checking the broker settings only (see
    /// [`Settings::load_for_broker`]).
    pub fn for_broker_from_env(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let settings = Settings::build(file, env)?;
        settings.validate_broker()?;
        Ok(settings)
    }

    /// Loads settings from the given environment map and optional file.
    pub fn from_env(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let settings = Settings::build(file, env)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Merges the layers, without checking the values.
    fn build(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let load = |e: config::ConfigError| ConfigError::Load(e.to_string());
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.get("TRANSCODE_CONFIG").map(PathBuf::from));
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = &file {
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "the configuration file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path.as_path()));
        }
        let prefixed: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}_")) && *k != "TRANSCODE_CONFIG")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("pipeline.extra_allowed_elements")
                .with_list_parse_key("storage.allowed_input_prefixes")
                .with_list_parse_key("storage.allowed_output_prefixes")
                .with_list_parse_key("storage.extra_buckets")
                .with_list_parse_key("worker.labels")
                .with_list_parse_key("pipeline.hidden_elements")
                .with_list_parse_key("webhook.allowed_hosts")
                .with_list_parse_key("webhook.retry_delays")
                .try_parsing(true)
                .source(Some(prefixed)),
        );
        for (name, key) in SEED_ENV_NAMES {
            builder = builder
                .set_override_option(*key, env.get(*name).cloned())
                .map_err(load)?;
        }
        let mut settings: Settings = builder
            .build()
            .map_err(load)?
            .try_deserialize()
            .map_err(load)?;
        // An empty list setting in the environment (`NAME=`) is one empty
        // item: it means none.
        for list in [
            &mut settings.worker.labels,
            &mut settings.pipeline.hidden_elements,
            &mut settings.pipeline.extra_allowed_elements,
            &mut settings.storage.extra_buckets,
            &mut settings.storage.allowed_input_prefixes,
            &mut settings.storage.allowed_output_prefixes,
        ] {
            list.retain(|item| !item.trim().is_empty());
        }
        Ok(settings)
    }

    /// Checks the broker settings only.
    fn validate_broker(&self) -> Result<(), ConfigError> {
        for url in self.broker.urls() {
            lapin::uri::AMQPUri::from_str(url.expose_secret())
                .map_err(|e| invalid("broker.url", format!("not an AMQP URL: {e}")))?;
        }
        for (key, name) in [
            ("broker.jobs_queue", &self.broker.jobs_queue),
            ("broker.progress_exchange", &self.broker.progress_exchange),
            ("broker.progress_queue", &self.broker.progress_queue),
            ("broker.dead_letter_queue", &self.broker.dead_letter_queue),
            ("broker.control_exchange", &self.broker.control_exchange()),
            ("broker.uploads_queue", &self.broker.uploads_queue),
            ("broker.uploads_exchange", &self.broker.uploads_exchange),
        ] {
            if name.is_empty() || name.len() > 255 {
                return Err(invalid(key, "must be 1 to 255 characters long"));
            }
        }
        // Its wait queues add `.wait.<delay>` to the name.
        let queue = &self.broker.webhooks_queue;
        if queue.is_empty() || queue.len() > 200 {
            return Err(invalid(
                "broker.webhooks_queue",
                "must be 1 to 200 characters long",
            ));
        }
        self.validate_webhook()
    }

    /// Checks the segment settings.
    fn validate_segments(&self) -> Result<(), ConfigError> {
        use crate::job::{MAX_SEGMENT_SECONDS, MIN_SEGMENT_SECONDS};
        let s = &self.segments;
        if !(MIN_SEGMENT_SECONDS..=MAX_SEGMENT_SECONDS).contains(&s.seconds) {
            return Err(invalid(
                "segments.seconds",
                format!("must be from {MIN_SEGMENT_SECONDS} to {MAX_SEGMENT_SECONDS}"),
            ));
        }
        let prefix = &s.prefix;
        if prefix.is_empty() || !prefix.ends_with('/') || prefix.starts_with('/') {
            return Err(invalid(
                "segments.prefix",
                format!("{prefix:?} must be a relative key prefix ending in /"),
            ));
        }
        if s.abandon_after < Duration::from_secs(60) {
            return Err(invalid("segments.abandon_after", "must be at least 1m"));
        }
        if !(64..=65536).contains(&s.range_block_kib) {
            return Err(invalid(
                "segments.range_block_kib",
                "must be from 64 to 65536",
            ));
        }
        if s.range_read_ahead > 16 {
            return Err(invalid("segments.range_read_ahead", "must be from 0 to 16"));
        }
        // Each block fetched ahead is in memory until it is kept.
        if s.range_read_ahead * s.range_block_kib > 256 << 10 {
            return Err(invalid(
                "segments.range_read_ahead",
                format!(
                    "{} blocks of {} KiB would hold more than 256 MiB in memory",
                    s.range_read_ahead, s.range_block_kib
                ),
            ));
        }
        Ok(())
    }

    /// Checks the webhook settings (the topology depends on the delays).
    fn validate_webhook(&self) -> Result<(), ConfigError> {
        let w = &self.webhook;
        w.allowed_hosts()
            .map_err(|e| invalid("webhook.allowed_hosts", e))?;
        if w.retry_delays.is_empty() {
            return Err(invalid(
                "webhook.retry_delays",
                "give at least one delay, e.g. \"10s,1m,5m\"",
            ));
        }
        let (shortest, longest) = (Duration::from_millis(10), Duration::from_secs(7 * 86400));
        if let Some(bad) = w
            .retry_delays
            .iter()
            .find(|d| **d < shortest || **d > longest)
        {
            return Err(invalid(
                "webhook.retry_delays",
                format!("{bad:?} is outside 10ms to 7 days"),
            ));
        }
        if w.retry_for.is_zero() {
            return Err(invalid("webhook.retry_for", "must be above zero"));
        }
        if w.timeout.is_zero() || w.timeout > Duration::from_secs(300) {
            return Err(invalid(
                "webhook.timeout",
                "must be above zero and at most 5m",
            ));
        }
        if w.senders > 256 {
            return Err(invalid("webhook.senders", "must be at most 256"));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_broker()?;
        let listen = self.metrics.listen.trim();
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.listen",
                format!("{listen:?} is not an IP:port address (e.g. \"127.0.0.1:9464\"); leave it empty to turn the endpoint off"),
            ));
        }
        let dashboard = self.dashboard.listen.trim();
        if dashboard.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "dashboard.listen",
                format!("{dashboard:?} is not an IP:port address (e.g. \"127.0.0.1:3000\")"),
            ));
        }
        match self.storage.backend {
            Backend::S3 => {
                if self.storage.bucket.is_empty() {
                    return Err(invalid(
                        "storage.bucket",
                        "required when storage.backend is \"s3\"",
                    ));
                }
                if !self.storage.endpoint.is_empty() {
                    let ok = self.storage.endpoint.starts_with("http://")
                        || self.storage.endpoint.starts_with("https://");
                    if !ok {
                        return Err(invalid(
                            "storage.endpoint",
                            "must start with http:// or https://",
                        ));
                    }
                }
                if self.storage.access_key.is_empty()
                    != self.storage.secret_key.expose_secret().is_empty()
                {
                    return Err(invalid(
                        "storage.secret_key",
                        "the access key and the secret key must be given together",
                    ));
                }
            }
            Backend::Directory => {
                if !self.storage.directory.is_dir() {
                    return Err(invalid(
                        "storage.directory",
                        format!("{:?} is not an existing directory", self.storage.directory),
                    ));
                }
            }
        }
        let prefix = &self.history.prefix;
        if prefix.is_empty() || !prefix.ends_with('/') || prefix.starts_with('/') {
            return Err(invalid(
                "history.prefix",
                format!("{prefix:?} must be a relative key prefix ending in /"),
            ));
        }
        self.validate_segments()?;
        if self.storage.upload_concurrency == 0 {
            return Err(invalid("storage.upload_concurrency", "must be at least 1"));
        }
        if !(1..=32).contains(&self.storage.download_concurrency) {
            return Err(invalid(
                "storage.download_concurrency",
                "must be from 1 to 32",
            ));
        }
        if self.worker.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1"));
        }
        if self.worker.max_attempts == 0 {
            return Err(invalid("worker.max_attempts", "must be at least 1"));
        }
        for label in &self.worker.labels {
            crate::job::check_label(label).map_err(|e| invalid("worker.labels", e))?;
        }
        if self.worker.no_capable_worker_timeout.is_zero() {
            return Err(invalid(
                "worker.no_capable_worker_timeout",
                "must be longer than 0",
            ));
        }
        presets::check(&self.presets, &self.allowlist())
            .map_err(|(setting, problem)| invalid(&setting, problem))?;
        let defaults = [
            ("pipeline.default_preset", &self.pipeline.default_preset),
            (
                "pipeline.default_webm_preset",
                &self.pipeline.default_webm_preset,
            ),
            (
                "pipeline.default_hls_preset",
                &self.pipeline.default_hls_preset,
            ),
        ];
        for (key, name) in defaults {
            if !self.presets.contains_key(name) {
                return Err(invalid(key, format!("there is no preset named {name:?}")));
            }
        }
        Ok(())
    }

    /// The preset named `name`, or a sentence saying there is none and
    /// which there are.
    pub fn preset(&self, name: &str) -> Result<&Preset, String> {
        self.presets.get(name).ok_or_else(|| {
            format!(
                "there is no preset named {name:?} (known: {})",
                self.presets.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// The limits job fragments must keep to.
    pub fn limits(&self) -> Limits {
        Limits {
            max_width: self.pipeline.max_width,
            max_height: self.pipeline.max_height,
            max_bitrate_kbps: self.pipeline.max_bitrate_kbps,
        }
    }

    /// The elements job fragments may use.
    pub fn allowlist(&self) -> Allowlist {
        Allowlist::new(&self.pipeline.extra_allowed_elements)
    }

    /// The worker's name in progress events.
    pub fn worker_id(&self) -> String {
        if self.worker.id.is_empty() {
            format!(
                "{}:{}",
                gethostname::gethostname().to_string_lossy(),
                std::process::id()
            )
        } else {
            self.worker.id.clone()
        }
    }

    /// The folder per-job temporary folders are made in.
    pub fn scratch_dir(&self) -> PathBuf {
        if self.worker.scratch_dir.as_os_str().is_empty() {
            std::env::temp_dir()
        } else {
            self.worker.scratch_dir.clone()
        }
    }
}

#[cfg(test)]
mod tests;
