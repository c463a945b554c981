//! Event mode: consumes S3 event notifications from the uploads queue, one
//! message at a time, and settles each only when its jobs are made:
//!
//! - every record of an object created in the farm's bucket is ingested;
//!   other events (removals...) are logged and ignored;
//! - a message that cannot be read, or with a record that cannot be read
//!   (or names another bucket), is moved to `<uploads queue>.dead` with
//!   the reason in its headers (`x-error`, `x-error-kind`,
//!   `x-original-queue`, `x-failed-at`, `x-ingest`), after its readable
//!   records are ingested: it never comes back and never stops the rest;
//! - the message is acked once every job it makes is confirmed by the
//!   broker; when the storage or the broker fails, it is given back after
//!   a growing delay (the queue's delivery limit dead-letters one that
//!   keeps failing).

use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::events::{self, Record};
use super::{Ingest, IngestError, Upload};
use crate::broker::{string_headers, until_taken, Broker, BrokerError, Delivery};

/// Largest event message read, in bytes (AWS caps its own at 64 KiB).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// How a session on one broker connection ended.
enum SessionEnd {
    /// Shutdown was asked for.
    Stopped,
    /// The connection or the consumer was lost.
    Lost(String),
}

impl Ingest {
    /// Consumes the uploads queue until `shutdown` is cancelled,
    /// reconnecting whenever the broker is lost. Ends with an error only
    /// when the broker's topology conflicts with the farm's.
    pub async fn listen(&self, shutdown: &CancellationToken) -> Result<(), BrokerError> {
        let b = &self.settings.broker;
        tracing::info!(queue = %b.uploads_queue, exchange = %b.uploads_exchange, storage = %self.storage.describe(), rules = self.rules.all().len(), "ingesting upload events");
        loop {
            let Some(broker) = self.connect(shutdown).await? else {
                return Ok(());
            };
            match self.session(&broker, shutdown).await {
                SessionEnd::Stopped => {
                    broker.close().await;
                    tracing::info!("stopped");
                    return Ok(());
                }
                SessionEnd::Lost(why) => {
                    tracing::warn!(reason = %why, "lost the broker; reconnecting")
                }
            }
        }
    }

    /// Consumes on one connection until shutdown or its loss.
    async fn session(&self, broker: &Broker, shutdown: &CancellationToken) -> SessionEnd {
        let tag = format!("ingest-{}-{}", self.id, uuid::Uuid::new_v4().simple());
        let mut consumer = match broker.consume_uploads(&tag).await {
            Ok(consumer) => consumer,
            Err(e) => return SessionEnd::Lost(e.to_string()),
        };
        tracing::info!(queue = %self.settings.broker.uploads_queue, "connected; waiting for upload events");
        let liveness = self.settings.broker.liveness_interval;
        let mut live_check = tokio::time::interval(liveness);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Stopped,
                _ = live_check.tick() => {
                    if let Err(why) = broker.ping(liveness * 2).await {
                        return SessionEnd::Lost(why);
                    }
                }
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        let delivery = Delivery::new(delivery, &self.settings.broker.uploads_queue);
                        match self.handle(broker, &delivery).await {
                            Ok(()) => failures = 0,
                            Err(IngestError::Broker(e @ BrokerError::Amqp { .. })) => {
                                return SessionEnd::Lost(e.to_string())
                            }
                            Err(e) => {
                                failures += 1;
                                let delay = self.retry_delay(failures);
                                tracing::warn!(error = %e, retry_in = ?delay, "cannot ingest this event now; giving it back");
                                tokio::select! {
                                    _ = tokio::time::sleep(delay) => {}
                                    _ = shutdown.cancelled() => {}
                                }
                                delivery.give_back().await;
                            }
                        }
                    }
                    Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                    None => return SessionEnd::Lost("the broker cancelled the consumer".into()),
                },
            }
        }
    }

    /// Reads one event message, ingests its objects, and settles it.
    async fn handle(&self, broker: &Broker, delivery: &Delivery) -> Result<(), IngestError> {
        let body = delivery.body();
        if body.len() > MAX_EVENT_BYTES {
            let reason = format!(
                "the message is {} bytes long; the limit is {MAX_EVENT_BYTES}",
                body.len()
            );
            self.dead_letter(broker, delivery, &reason).await;
            return Ok(());
        }
        let records = match events::parse(body) {
            Ok(records) => records,
            Err(reason) => {
                self.dead_letter(broker, delivery, &reason).await;
                return Ok(());
            }
        };
        if records.is_empty() {
            tracing::info!(
                "an event message without object records (such as S3's test event); nothing to do"
            );
        }
        let mut problems = Vec::new();
        let bucket = &self.settings.storage.bucket;
        for (i, record) in records.into_iter().enumerate() {
            let number = i + 1;
            match record {
                Err(reason) => problems.push(format!("record {number}: {reason}")),
                Ok(Record::Other { event_name, key }) => {
                    tracing::info!(event = %event_name, key = key.as_deref().unwrap_or_default(), "not an object creation; ignored")
                }
                Ok(Record::Created(created)) if created.bucket != *bucket => problems.push(format!(
                    "record {number}: {} of {:?} in bucket {:?}, which is not this farm's bucket {bucket:?}",
                    created.event_name, created.key, created.bucket
                )),
                Ok(Record::Created(created)) => {
                    let upload = Upload {
                        key: created.key,
                        version: created.etag,
                        made_by_job: created.made_by_job,
                    };
                    self.object(broker, &upload).await?;
                }
            }
        }
        if problems.is_empty() {
            delivery.ack().await;
        } else {
            self.dead_letter(broker, delivery, &problems.join("; "))
                .await;
        }
        Ok(())
    }

    /// Moves the event to the uploads' dead-letter queue with `reason` in
    /// its headers, then acks it; gives it back if the broker does not
    /// take the dead letter.
    async fn dead_letter(&self, broker: &Broker, delivery: &Delivery, reason: &str) {
        let b = &self.settings.broker;
        let queue = b.uploads_dead_letter_queue();
        tracing::warn!(%reason, dead_letter_queue = %queue, "event dead-lettered");
        let headers = string_headers([
            ("x-error", reason.to_string()),
            ("x-error-kind", "invalid_event".to_string()),
            ("x-original-queue", b.uploads_queue.clone()),
            ("x-failed-at", crate::job::now_rfc3339()),
            ("x-ingest", self.id.clone()),
        ]);
        let publish = || broker.publish_confirmed(&queue, delivery.body(), headers.clone());
        match until_taken("the dead letter", publish).await {
            Ok(()) => delivery.ack().await,
            Err(e) => {
                tracing::error!(error = %e, "could not dead-letter the event; giving it back");
                delivery.give_back().await;
            }
        }
    }

    /// The wait before giving back an event after `failures` failures in a
    /// row: the broker's reconnection delays, doubling.
    fn retry_delay(&self, failures: u32) -> Duration {
        let b = &self.settings.broker;
        b.reconnect_min_delay
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(b.reconnect_max_delay)
    }
}
