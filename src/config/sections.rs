//! The sections of the settings, one struct each, and what they compute
//! from themselves (the broker URLs, the control exchange's name, the
//! metrics address).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The HTTP endpoint serving `/metrics` (Prometheus) and `/healthz`.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    /// `IP:port` to listen on (port 0 picks a free one); empty turns the
    /// endpoint off.
    pub listen: String,
}

impl MetricsSettings {
    /// The address to listen on; `None` when the endpoint is off. Checked
    /// when the settings are loaded.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.trim().parse().ok()
    }
}

/// `transcode-worker dashboard`: the live page of the farm and its JSON API.
#[derive(Debug, Clone, Deserialize)]
pub struct DashboardSettings {
    /// `IP:port` to listen on (port 0 picks a free one); `--listen`
    /// overrides it. Checked when the settings are loaded.
    pub listen: String,
    /// The secret the page's actions and the API's POST requests must give;
    /// empty makes the dashboard read-only.
    pub token: SecretString,
}

impl DashboardSettings {
    /// The address to listen on (checked when the settings are loaded).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.trim().parse().ok()
    }

    /// The token, when one is set.
    pub fn token(&self) -> Option<&str> {
        Some(self.token.expose_secret().trim()).filter(|t| !t.is_empty())
    }
}

/// RabbitMQ connection and topology.
#[derive(Debug, Clone, Deserialize)]
pub struct BrokerSettings {
    /// AMQP URL; holds the password, so it is secret.
    pub url: SecretString,
    /// Durable quorum queue of jobs.
    pub jobs_queue: String,
    /// Fanout exchange of progress events.
    pub progress_exchange: String,
    /// Durable queue bound to the progress exchange.
    pub progress_queue: String,
    /// Bound on unread progress events kept in `progress_queue`.
    pub progress_queue_max_length: u32,
    /// Queue of jobs that cannot succeed.
    pub dead_letter_queue: String,
    /// Durable quorum queue of webhook deliveries waiting to be sent; its
    /// dead-letter queue is `<webhooks_queue>.dead` and its wait queues
    /// `<webhooks_queue>.wait.<delay>`.
    pub webhooks_queue: String,
    /// Durable quorum queue of S3 event notifications that
    /// `transcode-worker ingest` turns into jobs; its dead letters go to
    /// `<uploads_queue>.dead` (see [`BrokerSettings::uploads_dead_letter_queue`]).
    pub uploads_queue: String,
    /// Durable fanout exchange bound to `uploads_queue`, for publishers
    /// that declare the exchange they publish to (MinIO's AMQP target).
    pub uploads_exchange: String,
    /// Fanout exchange of `inspect` and `ping` requests; empty means
    /// `<jobs_queue>.control`. Use [`BrokerSettings::control_exchange`].
    pub control_exchange: String,
    /// Longest wait for a connection to open.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often the broker's liveness is checked.
    #[serde(with = "humantime_serde")]
    pub liveness_interval: Duration,
    /// First wait between reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_min_delay: Duration,
    /// Longest wait between reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
}

impl BrokerSettings {
    /// The queue of jobs of `priority`: `<jobs_queue>.high`, `<jobs_queue>`
    /// or `<jobs_queue>.low`.
    pub fn jobs_queue_for(&self, priority: crate::job::Priority) -> String {
        match priority {
            crate::job::Priority::Normal => self.jobs_queue.clone(),
            other => format!("{}.{other}", self.jobs_queue),
        }
    }

    /// The jobs queues, most urgent first.
    pub fn jobs_queues(&self) -> Vec<String> {
        crate::job::Priority::ALL
            .iter()
            .map(|p| self.jobs_queue_for(*p))
            .collect()
    }

    /// The queue where jobs that waited too long for a capable worker
    /// arrive (`<jobs_queue>.unplaced`), to be placed again or
    /// dead-lettered as `no_capable_worker`.
    pub fn unplaced_queue(&self) -> String {
        format!("{}.unplaced", self.jobs_queue)
    }

    /// The stream that records the queues of jobs waiting for capable
    /// workers (`<jobs_queue>.requirements`).
    pub fn requirements_stream(&self) -> String {
        format!("{}.requirements", self.jobs_queue)
    }

    /// Where webhooks that could not be delivered end, with the reason in
    /// their headers: `<webhooks_queue>.dead`.
    pub fn webhooks_dead_queue(&self) -> String {
        format!("{}.dead", self.webhooks_queue)
    }

    /// The queue a webhook waits in for `delay` before it goes back to the
    /// webhooks queue: `<webhooks_queue>.wait.<delay>`, e.g.
    /// `transcoding_webhooks.wait.1m30s`.
    pub fn webhooks_wait_queue(&self, delay: Duration) -> String {
        let delay = humantime::format_duration(delay)
            .to_string()
            .replace(' ', "");
        format!("{}.wait.{delay}", self.webhooks_queue)
    }

    /// The control exchange's name: the setting, or `<jobs_queue>.control`
    /// when it is empty, so farms on different job queues stay apart.
    pub fn control_exchange(&self) -> String {
        if self.control_exchange.is_empty() {
            format!("{}.control", self.jobs_queue)
        } else {
            self.control_exchange.clone()
        }
    }

    /// The queue of upload events that could not be read: `<uploads_queue>.dead`.
    pub fn uploads_dead_letter_queue(&self) -> String {
        format!("{}.dead", self.uploads_queue)
    }
}

/// How workers deliver the webhooks of jobs that ended.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// Deliveries one worker makes at once (its prefetch on the webhooks
    /// queue); 0 turns delivery off in that worker.
    pub senders: u16,
    /// Hosts webhooks may go to: host names, IP addresses, CIDR ranges and
    /// `public`; empty means `public` (see [`AllowedHost`]). Checked when
    /// the settings are loaded; read with [`WebhookSettings::allowed_hosts`].
    pub allowed_hosts: Vec<String>,
    /// Waits before the 1st, 2nd, ... retry of a failed delivery; the last
    /// one repeats.
    #[serde(deserialize_with = "durations")]
    pub retry_delays: Vec<Duration>,
    /// How long after its first attempt a delivery is retried before it
    /// goes to the webhooks' dead-letter queue.
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// Longest one delivery (connect, send, answer) may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl WebhookSettings {
    /// The parsed `allowed_hosts` entries; an empty list means `public`.
    pub fn allowed_hosts(&self) -> Result<Vec<AllowedHost>, String> {
        let entries: Vec<AllowedHost> = self
            .allowed_hosts
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if entries.is_empty() {
            Ok(vec![AllowedHost::Public])
        } else {
            Ok(entries)
        }
    }
}

/// One entry of `webhook.allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHost {
    /// `public`: any public address (the rule of an empty list): no
    /// loopback, private, link-local, unique-local, shared, multicast,
    /// documentation or otherwise reserved one.
    Public,
    /// A host name (lower case), trusted to whatever addresses it resolves to.
    Name(String),
    /// The addresses of a CIDR range; an IP address is a range of one.
    Net(ipnet::IpNet),
}

impl FromStr for AllowedHost {
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        if entry.eq_ignore_ascii_case("public") {
            return Ok(AllowedHost::Public);
        }
        if let Ok(net) = entry.parse::<ipnet::IpNet>() {
            return Ok(AllowedHost::Net(net.trunc()));
        }
        if let Ok(ip) = entry.parse::<std::net::IpAddr>() {
            return Ok(AllowedHost::Net(ip.into()));
        }
        let name = entry.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "{entry:?} is not a host name, an IP address, a CIDR range or \"public\""
            ));
        }
        Ok(AllowedHost::Name(name))
    }
}

/// Reads a list of durations written like `"10s"`, `"5m"`.
fn durations<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| {
            humantime::parse_duration(text.trim()).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a duration like \"10s\" or \"5m\": {e}"
                ))
            })
        })
        .collect()
}

/// Which storage backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// S3-compatible object storage.
    S3,
    /// A plain directory (NAS, NFS mount).
    Directory,
}

/// Where inputs are read and outputs written.
#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    /// `s3` or `directory`.
    pub backend: Backend,
    /// S3 bucket name.
    pub bucket: String,
    /// S3 endpoint URL; empty for AWS.
    pub endpoint: String,
    /// S3 region.
    pub region: String,
    /// S3 access key id.
    pub access_key: String,
    /// S3 secret access key.
    pub secret_key: SecretString,
    /// Path-style addressing; defaults to on when an endpoint is set.
    pub path_style: Option<bool>,
    /// Root folder of the directory backend.
    pub directory: PathBuf,
    /// How long a failing transfer is retried.
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// Multipart upload parts in flight.
    pub upload_concurrency: usize,
    /// Parts of a download (byte ranges) in flight; also the parts of a
    /// segmented job its join fetches at a time.
    pub download_concurrency: usize,
    /// Prefixes `input_key` must start with; empty for any.
    pub allowed_input_prefixes: Vec<String>,
    /// Prefixes `output_key` must start with; empty for any.
    pub allowed_output_prefixes: Vec<String>,
    /// Other buckets, on the same endpoint and with the same keys, that
    /// jobs may name in `s3://BUCKET/key` locations; a job naming any other
    /// bucket is refused.
    pub extra_buckets: Vec<String>,
}

/// How the worker runs jobs.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Name in progress events; empty means `<host>:<pid>`.
    pub id: String,
    /// Jobs at once (and AMQP prefetch).
    pub concurrency: u16,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// Folder for per-job temporary folders; empty means the system temp dir.
    pub scratch_dir: PathBuf,
    /// Time a running job gets to finish on shutdown.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// A download that moves no byte for this long is aborted.
    #[serde(with = "humantime_serde")]
    pub download_stall_timeout: Duration,
    /// A transcode whose position does not move for this long is aborted.
    #[serde(with = "humantime_serde")]
    pub transcode_stall_timeout: Duration,
    /// An upload that moves no byte for this long is aborted.
    #[serde(with = "humantime_serde")]
    pub upload_stall_timeout: Duration,
    /// Longest a single attempt may run.
    #[serde(with = "humantime_serde")]
    pub job_timeout: Duration,
    /// First delay before a transiently failed job is given back.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// Longest such delay.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// Largest job message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Free space (MiB) the scratch folder must keep beyond the input's size.
    pub min_free_space_mb: u64,
    /// Memory limit (MiB) of a pipeline process; 0 for none.
    pub pipeline_memory_limit_mb: u64,
    /// Keep one pipeline process started ahead of the next job, with
    /// GStreamer's plugins loaded, and let a process whose job completed
    /// serve the next one (saves about 80 ms a job).
    pub standby_pipeline: bool,
    /// Labels jobs may ask for (`"requires": ["gpu"]`).
    pub labels: Vec<String>,
    /// How long a job no live worker can run waits before it is
    /// dead-lettered as `no_capable_worker`.
    #[serde(with = "humantime_serde")]
    pub no_capable_worker_timeout: Duration,
    /// Fault injection for reliability tests: abort the process right after
    /// this phase of an attempt (`downloading`, `transcoding` or
    /// `uploading`), as a power cut would. Only in builds with the
    /// `fault-injection` feature (the test suite's).
    #[cfg(feature = "fault-injection")]
    #[serde(default)]
    pub crash_after: Option<crate::job::Phase>,
}

/// The job history kept in the storage.
#[derive(Debug, Clone, Deserialize)]
pub struct HistorySettings {
    /// Whether workers write job records.
    pub enabled: bool,
    /// Key prefix of the records (ends in `/`).
    pub prefix: String,
    /// Records older than this are removed.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// At most this many records are kept (the oldest go first).
    pub max_jobs: usize,
}

/// Segmented jobs: inputs encoded in segments by many workers (see
/// [`crate::segment`]).
#[derive(Debug, Clone, Deserialize)]
pub struct SegmentSettings {
    /// Segment every input longer than this (as if its job gave
    /// `segment_seconds = seconds`); zero turns it off.
    #[serde(with = "humantime_serde")]
    pub auto_above: Duration,
    /// Segment length of the jobs segmented because of `auto_above`, in seconds.
    pub seconds: f64,
    /// Key prefix of the segments and plans (ends in `/`).
    pub prefix: String,
    /// A segmented job none of whose objects changed for this long is
    /// abandoned: the hourly history pruning pass fails it and removes them.
    #[serde(with = "humantime_serde")]
    pub abandon_after: Duration,
    /// How a worker that did not split a job gets its input on S3.
    pub fetch_input: FetchInput,
    /// KiB of each range request when parts read their input by ranges.
    pub range_block_kib: u64,
    /// Blocks a part reading by ranges fetches ahead once it has read
    /// three blocks in a row (0: none).
    pub range_read_ahead: u64,
}

/// How the workers of a segmented job that did not split it get its input
/// from S3 (the splitting worker downloads it whole to scan it, and keeps
/// it for its parts; on the directory backend every worker reads it in
/// place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchInput {
    /// By byte ranges, as the parts read it: a worker fetches the blocks
    /// its segments (and the container's index) are in, and keeps them for
    /// its next parts of the job. Needs credentials that can presign URLs;
    /// with anonymous credentials the input is downloaded whole.
    Ranges,
    /// Whole, once per worker and job, kept for its next parts; an idle
    /// worker starts the download while the job is split.
    Whole,
}

/// Pipeline policy.
#[derive(Debug, Clone, Deserialize)]
pub struct PipelineSettings {
    /// Preset for jobs that name neither a preset nor a fragment.
    pub default_preset: String,
    /// Preset for `.webm` outputs of such jobs.
    pub default_webm_preset: String,
    /// Preset for `.m3u8` outputs (HLS packages) of such jobs.
    pub default_hls_preset: String,
    /// Whether jobs may carry raw `transcode_options`.
    pub allow_transcode_options: bool,
    /// Elements allowed in fragments beyond the built-in list.
    pub extra_allowed_elements: Vec<String>,
    /// Allowed difference between input and output duration.
    #[serde(with = "humantime_serde")]
    pub duration_tolerance: Duration,
    /// Widest frame a fragment may ask for, and widest input accepted.
    pub max_width: u32,
    /// Tallest frame a fragment may ask for, and tallest input accepted.
    pub max_height: u32,
    /// Highest encoder bitrate a fragment may ask for, in kbit/s.
    pub max_bitrate_kbps: u64,
    /// Longest input accepted.
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// Elements treated as absent although installed: jobs that need them
    /// go to other workers.
    pub hidden_elements: Vec<String>,
}

impl BrokerSettings {
    /// The broker URLs: `url` may list several nodes of a cluster,
    /// separated by commas; they are tried in order.
    pub fn urls(&self) -> Vec<SecretString> {
        self.url
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| SecretString::from(u.to_string()))
            .collect()
    }
}

/// The AMQP URL (or comma-separated URLs) without passwords, for logs.
pub fn redact_url(url: &SecretString) -> String {
    url.expose_secret()
        .split(',')
        .map(|u| redact_one(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    match lapin::uri::AMQPUri::from_str(url) {
        Ok(uri) => format!(
            "{}://{}@{}:{}/{}",
            match uri.scheme {
                lapin::uri::AMQPScheme::AMQP => "amqp",
                lapin::uri::AMQPScheme::AMQPS => "amqps",
            },
            uri.authority.userinfo.username,
            uri.authority.host,
            uri.authority.port,
            uri.vhost
        ),
        Err(_) => "<invalid AMQP URL>".to_string(),
    }
}
