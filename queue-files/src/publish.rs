//! Getting a file to the workers: connecting to the broker, uploading the
//! input (streamed by the worker library's storage, multipart for large
//! files) with a byte progress bar, and publishing the job as a persistent,
//! mandatory message with publisher confirms.

use std::path::Path;
use std::time::Duration;

use transcode_worker::broker::{string_headers, Broker, BrokerError};
use transcode_worker::config::{redact_url, Settings};
use transcode_worker::job::Job;
use transcode_worker::storage::{Storage, StorageError, Transferred};

use crate::ui::Ui;

/// How long connecting to the broker may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to the broker and declares the worker's topology (the jobs
/// queue with its dead-letter queue, the progress exchange), exactly as a
/// worker would. The error is one line.
pub async fn connect(settings: &Settings) -> Result<Broker, String> {
    let name = format!(
        "queue-files@{}:{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id()
    );
    let connecting = Broker::connect(settings, &name);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(broker)) => Ok(broker),
        Ok(Err(e)) => Err(format!(
            "cannot use the broker: {}",
            one_line(&e.to_string())
        )),
        Err(_) => Err(format!(
            "cannot use the broker: no answer from RabbitMQ at {} within {} s",
            redact_url(&settings.broker.url),
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// `text` with line breaks folded, for one-line errors.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Uploads `path` (`size` bytes) to `key` with `metadata`, showing progress
/// as `label`.
pub async fn upload(
    storage: &Storage,
    ui: &Ui,
    path: &Path,
    key: &str,
    metadata: &[(String, String)],
    size: u64,
    label: &str,
) -> Result<(), StorageError> {
    let counter = Transferred::default();
    let mut view = ui.transfer(label, size);
    let store = storage.store(path, key, metadata, &counter);
    tokio::pin!(store);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let result = loop {
        tokio::select! {
            result = &mut store => break result,
            _ = tick.tick() => view.update(counter.get()),
        }
    };
    view.update(counter.get());
    view.finish(result.is_ok());
    result
}

/// Publishes `job` to the jobs queue of its priority: persistent,
/// mandatory, confirmed.
pub async fn publish(broker: &Broker, settings: &Settings, job: &Job) -> Result<(), BrokerError> {
    let body = serde_json::to_vec(job).expect("a job serializes");
    let headers = string_headers([("queued-by", "queue-files".to_string())]);
    let queue = settings
        .broker
        .jobs_queue_for(job.priority.unwrap_or_default());
    broker.publish_confirmed(&queue, &body, headers).await
}
