//! RabbitMQ through lapin: connecting, declaring the topology, taking
//! jobs, and publishing progress events and dead letters with publisher
//! confirms.
//!
//! Topology (names are settings):
//! - `transcoding_jobs`: durable quorum queue with a delivery limit, so a job
//!   that keeps killing workers still ends; it dead-letters into
//! - `transcoding_jobs.dead`: durable quorum queue of jobs that cannot succeed;
//! - `transcoding.progress`: durable fanout exchange of progress events, with
//! - `transcoding_progress`: durable quorum queue bound to it, keeping the
//!   newest events (other observers bind their own queues to the exchange);
//! - `transcoding_webhooks`: durable quorum queue of webhook deliveries, with
//!   its wait queues and its dead-letter queue (see [`crate::webhook`]).
//! - `transcoding_uploads`: durable quorum queue of S3 event notifications
//!   for `transcode-worker ingest`, bound to the fanout exchange
//!   `transcoding.uploads`, dead-lettering into `transcoding_uploads.dead`.
//!
//! Every durable queue is a quorum queue, so the farm keeps working while
//! any one node of a RabbitMQ cluster is down.
//!
//! Automatic recovery is off: the worker owns its reconnect loop, because a
//! delivery belongs to the channel it came on and cannot be acked after a
//! reconnect.
//!
//! Parts: the connection and publishing (here), the topology
//! ([`topology`]), a delivered job with its header protocol
//! ([`Delivery`]), the progress marks of segmented jobs ([`high_water`]),
//! queues read or made on a channel ([`queue_depths`],
//! [`private_queue`], [`waiting_queues`]), and the dead-letter queue read back
//! ([`Broker::peek_dead_letters`], [`Broker::requeue_dead_letter`]).

mod claims;
mod dead_letters;
mod delivery;
mod high_water;
mod queues;
mod topology;

use std::future::Future;
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use secrecy::ExposeSecret;

pub use dead_letters::{DeadLetterMessage, DeadLetters, RequeueError, Requeued, REFRESH_AT};
pub use delivery::{dead_letter_headers, string_headers, DeadLetter, Delivery};
pub use high_water::InOrder;
pub use queues::{
    declare_fanout, private_queue, publish_json, queue_depths, waiting_queues, QueueDepths,
};
pub use topology::{jobs_queue_arguments, Argument, QueueSpec, Topology};

use crate::config::{redact_url, BrokerSettings, Settings};
use crate::job::Progress;

/// The properties of a progress event: persistent when it must survive
/// a broker restart (a final event, or one confirmed).
fn progress_properties(persistent: bool) -> BasicProperties {
    BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 })
}

/// A broker failure.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The connection or a channel failed.
    #[error("RabbitMQ at {url}: {source}")]
    Amqp {
        /// The redacted URL.
        url: String,
        /// What lapin reported.
        source: lapin::Error,
    },
    /// A queue or exchange exists with other arguments than ours.
    #[error("RabbitMQ refused to declare {what}: {detail}. It exists with other settings (for example as a classic queue, or with another delivery limit); delete it or choose another name in the configuration")]
    TopologyMismatch {
        /// Which queue or exchange.
        what: String,
        /// The broker's reply.
        detail: String,
    },
    /// The connection did not open in time.
    #[error("RabbitMQ at {url} did not complete the connection within {after:?}")]
    Timeout {
        /// The redacted URL (or URLs).
        url: String,
        /// How long it was given.
        after: std::time::Duration,
    },
    /// A publish was refused, returned as unroutable, or not confirmed.
    #[error("RabbitMQ did not take the message for {what}: {detail}")]
    NotConfirmed {
        /// Where it was going.
        what: String,
        /// Why.
        detail: String,
    },
}

/// A connection with one channel for consuming and one, in confirm mode,
/// for publishing.
#[derive(Debug)]
pub struct Broker {
    connection: Connection,
    consume: Channel,
    /// Replaced by a fresh channel after the broker nacks a publish: see
    /// [`Broker::renew_publish_channel`].
    publish: std::sync::Mutex<Channel>,
    /// The channel, in transaction mode, of segmented jobs' progress
    /// marks (see [`high_water`]); opened at first use.
    marks: std::sync::Arc<tokio::sync::Mutex<Option<Channel>>>,
    settings: BrokerSettings,
    url: String,
}

impl Broker {
    /// Connects and declares the topology of `settings` ([`Topology::of`]).
    pub async fn connect(settings: &Settings, name: &str) -> Result<Broker, BrokerError> {
        let broker = Broker::open(&settings.broker, name).await?;
        broker.declare(&Topology::of(settings)).await?;
        Ok(broker)
    }

    /// Connects without declaring anything, for a client that only looks
    /// and publishes to queues the workers (or `setup`) declared: its
    /// settings then need not match theirs in every queue argument.
    pub async fn open(settings: &BrokerSettings, name: &str) -> Result<Broker, BrokerError> {
        let (connection, url) = open_connection(settings, name).await?;
        let amqp = |source| BrokerError::Amqp {
            url: url.clone(),
            source,
        };
        let consume = connection.create_channel().await.map_err(amqp)?;
        let publish = connection.create_channel().await.map_err(amqp)?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp)?;
        Ok(Broker {
            connection,
            consume,
            publish: std::sync::Mutex::new(publish),
            marks: Default::default(),
            settings: settings.clone(),
            url,
        })
    }

    fn amqp(&self, source: lapin::Error) -> BrokerError {
        BrokerError::Amqp {
            url: self.url.clone(),
            source,
        }
    }

    /// Takes the oldest job of the first of `queues` that has one (a
    /// `basic.get` on each in turn, the most urgent first), or `None` when
    /// all are empty. Taking a job only when the worker is free is what
    /// keeps priorities exact: no job waits reserved by a busy worker.
    pub async fn take_job(&self, queues: &[String]) -> Result<Option<Delivery>, BrokerError> {
        for queue in queues {
            let got = self
                .consume
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| self.amqp(e))?;
            if let Some(message) = got {
                return Ok(Some(Delivery::new(message.delivery, queue)));
            }
        }
        Ok(None)
    }

    /// A consumer that never gets a message (of an exclusive, server-named
    /// queue nothing publishes to) on the channel jobs are taken on: when
    /// the broker closes that channel (its consumer timeout, a deleted
    /// queue), the consumer ends with the broker's reason, which the jobs
    /// taken on it cannot tell.
    pub async fn watch_jobs_channel(&self, tag: &str) -> Result<Consumer, BrokerError> {
        private_queue(&self.consume, None, tag)
            .await
            .map(|(_, consumer)| consumer)
            .map_err(|e| self.amqp(e))
    }

    /// Reads the stream `stream` from its first entry on a channel of its
    /// own, and goes on with each new one; each delivery must be acked.
    pub async fn read_stream(&self, stream: &str, tag: &str) -> Result<Consumer, BrokerError> {
        let channel = self.open_channel().await?;
        channel
            .basic_qos(100, lapin::options::BasicQosOptions::default())
            .await
            .map_err(|e| self.amqp(e))?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-stream-offset".into(),
            lapin::types::AMQPValue::LongString("first".into()),
        );
        channel
            .basic_consume(
                stream.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .map_err(|e| self.amqp(e))
    }

    /// Starts consuming the uploads queue (S3 event notifications, for
    /// `transcode-worker ingest`) on a channel of its own, one event at a
    /// time.
    pub async fn consume_uploads(&self, consumer_tag: &str) -> Result<Consumer, BrokerError> {
        let channel = self.open_channel().await?;
        channel
            .basic_qos(1, lapin::options::BasicQosOptions::default())
            .await
            .map_err(|e| self.amqp(e))?;
        channel
            .basic_consume(
                self.settings.uploads_queue.as_str().into(),
                consumer_tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.amqp(e))
    }

    fn publish_channel(&self) -> Channel {
        self.publish
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the publishing channel with a fresh one (in confirm mode)
    /// after the broker nacked a publish, so asking again is not answered
    /// by the same stale state.
    ///
    /// RabbitMQ keeps, per channel, a client for each quorum queue it
    /// published to, made at the first publish from the leader the queue
    /// record names then. A channel that first publishes while that record
    /// still names a stopped leader gets `nodedown`, learns no leader, and
    /// has every later publish to that queue nacked for as long as the
    /// channel lives (seen with 3.10 when the leader of the progress queue
    /// stops). A new channel reads the record again. If the fresh channel
    /// cannot be opened, the old one stays; the connection's loss is
    /// noticed elsewhere.
    async fn renew_publish_channel(&self) {
        let fresh = match self.connection.create_channel().await {
            Ok(channel) => channel,
            Err(e) => {
                tracing::debug!(error = %e, "cannot open a fresh publishing channel");
                return;
            }
        };
        if let Err(e) = fresh.confirm_select(ConfirmSelectOptions::default()).await {
            tracing::debug!(error = %e, "cannot put a fresh publishing channel in confirm mode");
            return;
        }
        let old = std::mem::replace(
            &mut *self
                .publish
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            fresh,
        );
        tracing::debug!("publishing on a fresh channel after a nack");
        let _ = old.close(200, "replaced after a nack".into()).await;
    }

    /// Publishes a progress event. With `confirm`, the event is persistent
    /// and this waits for the broker's confirm; otherwise it is sent and
    /// forgotten (a lost intermediate event does no harm).
    pub async fn publish_progress(
        &self,
        progress: &Progress,
        confirm: bool,
    ) -> Result<(), BrokerError> {
        let pending = publish_json(
            &self.publish_channel(),
            &self.settings.progress_exchange,
            "",
            progress,
            progress_properties(confirm),
        )
        .await
        .map_err(|e| self.amqp(e))?;
        if confirm {
            let confirmation = pending.await.map_err(|e| self.amqp(e))?;
            if !confirmation.is_ack() {
                self.renew_publish_channel().await;
                return Err(BrokerError::NotConfirmed {
                    what: format!("exchange {:?}", self.settings.progress_exchange),
                    detail: "the broker nacked it".into(),
                });
            }
        }
        Ok(())
    }

    /// Publishes `body` to the dead-letter queue as a persistent message with
    /// `headers`, and waits for the broker's confirm.
    pub async fn dead_letter(&self, body: &[u8], headers: FieldTable) -> Result<(), BrokerError> {
        let queue = self.settings.dead_letter_queue.clone();
        self.publish_confirmed(&queue, body, headers).await
    }

    /// Publishes `body` to `queue` through the default exchange, persistent
    /// and mandatory, and waits until the broker confirms it is stored.
    pub async fn publish_confirmed(
        &self,
        queue: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), BrokerError> {
        self.publish_confirmed_expiring(queue, body, headers, None)
            .await
    }

    /// [`publish_confirmed`](Self::publish_confirmed), and the message
    /// expires after `expires` when given (a queue with a dead-letter
    /// exchange then dead-letters it).
    pub async fn publish_confirmed_expiring(
        &self,
        queue: &str,
        body: &[u8],
        headers: FieldTable,
        expires: Option<Duration>,
    ) -> Result<(), BrokerError> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(after) = expires {
            properties = properties.with_expiration(after.as_millis().max(1).to_string().into());
        }
        let confirmation = self
            .publish_channel()
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .map_err(|e| self.amqp(e))?
            .await
            .map_err(|e| self.amqp(e))?;
        let not = |detail: String| BrokerError::NotConfirmed {
            what: format!("queue {queue:?}"),
            detail,
        };
        if !confirmation.is_ack() {
            self.renew_publish_channel().await;
            return Err(not("the broker nacked it".into()));
        }
        if let Some(returned) = confirmation.take_message() {
            return Err(not(format!(
                "returned as {} {}",
                returned.reply_code, returned.reply_text
            )));
        }
        Ok(())
    }

    /// Checks that the broker answers on the channel jobs are taken on,
    /// within `timeout`, and returns how many jobs wait in each jobs queue
    /// and in the dead-letter queue (passive declares).
    pub async fn ping(&self, timeout: std::time::Duration) -> Result<QueueDepths, String> {
        let mut queues = self.settings.jobs_queues();
        queues.push(self.settings.dead_letter_queue.clone());
        let count = queue_depths(&self.consume, &queues);
        match tokio::time::timeout(timeout, count).await {
            Ok(Ok(depths)) => Ok(depths),
            Ok(Err(e)) => Err(format!("the broker connection failed: {e}")),
            Err(_) => Err(format!("the broker did not answer within {timeout:?}")),
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    /// Opens a new channel on this connection (the control responder uses
    /// its own, so it never delays job consumption).
    pub async fn open_channel(&self) -> Result<Channel, BrokerError> {
        self.connection
            .create_channel()
            .await
            .map_err(|e| self.amqp(e))
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Closes the connection politely (unacked deliveries return to the queue).
    pub async fn close(&self) {
        let _ = self.connection.close(200, "worker stopping".into()).await;
    }

    /// Declares a server-named, exclusive, auto-delete queue bound to the
    /// progress exchange and consumes it without acks: a private copy of
    /// every progress event published from now on, which the broker deletes
    /// when this connection closes. Observers (`queue-files --wait`) use
    /// this and never take events from `progress_queue`. Returns the queue's
    /// name and the consumer.
    pub async fn consume_progress_events(
        &self,
        consumer_tag: &str,
    ) -> Result<(String, Consumer), BrokerError> {
        private_queue(
            &self.consume,
            Some(&self.settings.progress_exchange),
            consumer_tag,
        )
        .await
        .map_err(|e| self.amqp(e))
    }
}

/// Opens a connection to the first broker URL that answers (the URLs of a
/// cluster's nodes are tried in order, each within `connect_timeout`).
/// Returns it with its redacted URL.
pub async fn open_connection(
    settings: &BrokerSettings,
    name: &str,
) -> Result<(Connection, String), BrokerError> {
    let mut last = None;
    for url in settings.urls() {
        let redacted = redact_url(&url);
        let properties =
            ConnectionProperties::default().with_connection_name(name.to_string().into());
        let attempt = tokio::time::timeout(
            settings.connect_timeout,
            Connection::connect(url.expose_secret(), properties),
        )
        .await;
        match attempt {
            Ok(Ok(connection)) => return Ok((connection, redacted)),
            Ok(Err(source)) => {
                tracing::debug!(url = %redacted, error = %source, "broker node unreachable");
                last = Some(BrokerError::Amqp {
                    url: redacted,
                    source,
                });
            }
            Err(_) => {
                tracing::debug!(url = %redacted, "broker node did not answer in time");
                last = Some(BrokerError::Timeout {
                    url: redacted,
                    after: settings.connect_timeout,
                });
            }
        }
    }
    Err(last.unwrap_or(BrokerError::Timeout {
        url: redact_url(&settings.url),
        after: settings.connect_timeout,
    }))
}

/// Publishes with `publish` until the broker takes the message. A broker
/// that refuses it (a quorum queue electing a new leader nacks) is asked
/// again with backoff for about half a minute; a lost connection is not
/// retried (the delivery cannot be settled on it anyway).
pub async fn until_taken<F, Fut>(what: &str, publish: F) -> Result<(), BrokerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), BrokerError>>,
{
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(Duration::from_secs(30)))
        .without_max_times();
    publish
        .retry(backoff)
        .when(|e| matches!(e, BrokerError::NotConfirmed { .. }))
        .notify(|e, delay| tracing::warn!(error = %e, ?delay, "the broker refused {what}; asking again"))
        .await
}
