//! The high-water mark of a segmented job's progress: one message in a
//! queue of the job's own, holding the highest percentage published for
//! the job.
//!
//! The parts of a segmented job run on several workers at once, each
//! knowing only its own share; their events would reach the progress
//! exchange with the job's percentage going back and forth. So a worker
//! publishing an event of such a job first takes the mark (`basic.get`,
//! not acked), raises the event's `progress` to it, and then, in one
//! transaction, publishes the event, puts the mark back raised to the
//! event's percentage, and acks the mark it took. While one worker holds
//! the mark no other can take it; the event and the raised mark are
//! committed together, so every queue bound to the exchange receives a
//! job's events with a percentage that never goes back. A worker that
//! dies holding the mark has published nothing: the broker gives the mark
//! back when its channel closes, unchanged.
//!
//! A job without a mark (split by an older worker, or its mark expired
//! after `x-expires` without use) has its events published as they are.
//!
//! On one RabbitMQ node the order is strict: the event reaches its queues
//! before the raised mark reaches its own, and the next holder's event
//! after that. On a cluster whose progress queue lives on another node
//! than the workers' connections, two events committed by two workers a
//! moment apart travel on different links between nodes and may in
//! principle arrive the other way round.

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};

use super::queues::declare_expiring;
use super::{progress_properties, publish_json, Broker, BrokerError};
use crate::job::Progress;

/// How many times a worker tries to take a mark another holds, and how
/// long it waits between tries: a mark is held for one `basic.get` and one
/// commit (a few milliseconds).
const TRIES: u32 = 20;
const BETWEEN_TRIES: Duration = Duration::from_millis(10);

/// The body of a mark.
#[derive(Debug, Serialize, Deserialize)]
struct Mark {
    /// The highest `progress` published for the job.
    percent: f64,
}

/// What became of an event offered in order ([`Broker::publish_in_order`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InOrder {
    /// Published, its `progress` raised to the job's mark.
    Published,
    /// Not published: the job has no mark.
    NoMark,
    /// Not published: other workers held the mark for every try.
    Busy,
}

impl Broker {
    /// The queue holding the progress mark of `job_id`.
    fn mark_queue(&self, job_id: &str) -> String {
        format!("{}.mark.{job_id}", self.settings.progress_queue)
    }

    /// Runs `op` on the channel marks are read and written on (in
    /// transaction mode; opened at first use, and again after the broker
    /// closed it), one operation at a time. `op` runs to its end even when
    /// the caller stops waiting for it: a mark taken and not put back, or
    /// a transaction left half done, would stay on the channel. After a
    /// failure the channel is closed, which gives back a mark it held and
    /// drops the transaction.
    async fn on_mark_channel<T, F, Fut>(&self, op: F) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(Channel) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, lapin::Error>> + Send + 'static,
    {
        let mut slot = self.marks.clone().lock_owned().await;
        let channel = match slot.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.open_channel().await?;
                channel.tx_select().await.map_err(|e| self.amqp(e))?;
                *slot = Some(channel.clone());
                channel
            }
        };
        let task = tokio::spawn(async move {
            let result = op(channel.clone()).await;
            if result.is_err() {
                let _ = channel
                    .close(200, "a progress mark operation failed".into())
                    .await;
                *slot = None;
            }
            result
        });
        match task.await {
            Ok(result) => result.map_err(|e| self.amqp(e)),
            Err(e) => Err(BrokerError::NotConfirmed {
                what: "a progress mark".into(),
                detail: e.to_string(),
            }),
        }
    }

    /// Starts the progress mark of `job_id` at `percent` (any mark it had
    /// is removed first), kept until [`Broker::remove_mark`] or until it
    /// has not been used for `expires`.
    pub async fn start_mark(
        &self,
        job_id: &str,
        percent: f64,
        expires: Duration,
    ) -> Result<(), BrokerError> {
        let queue = self.mark_queue(job_id);
        self.on_mark_channel(move |channel| async move {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
            declare_expiring(&channel, &queue, expires, FieldTable::default()).await?;
            put_mark(&channel, &queue, percent).await?;
            channel.tx_commit().await
        })
        .await
    }

    /// Removes the progress mark of `job_id` (once its job has ended).
    pub async fn remove_mark(&self, job_id: &str) -> Result<(), BrokerError> {
        let queue = self.mark_queue(job_id);
        self.on_mark_channel(move |channel| async move {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map(|_| ())
        })
        .await
    }

    /// Publishes `event` of a segmented job in order: its `progress`
    /// raised to the job's mark, and the mark to it, in one transaction.
    /// With `persistent`, the event is a persistent message.
    pub async fn publish_in_order(
        &self,
        event: &mut Progress,
        persistent: bool,
    ) -> Result<InOrder, BrokerError> {
        let queue = self.mark_queue(&event.job_id);
        let exchange = self.settings.progress_exchange.clone();
        let mut owned = event.clone();
        let (outcome, published) = self
            .on_mark_channel(move |channel| async move {
                let outcome =
                    take_and_publish(&channel, &queue, &exchange, &mut owned, persistent).await?;
                Ok((outcome, owned))
            })
            .await?;
        *event = published;
        Ok(outcome)
    }
}

/// Takes the mark in `queue` (trying [`TRIES`] times), raises `event` to
/// it, and commits the event's publish to `exchange`, the raised mark and
/// the ack of the mark taken.
async fn take_and_publish(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    event: &mut Progress,
    persistent: bool,
) -> Result<InOrder, lapin::Error> {
    for _ in 0..TRIES {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await;
        let message = match got {
            Ok(Some(message)) => message,
            Ok(None) => {
                tokio::time::sleep(BETWEEN_TRIES).await;
                continue;
            }
            // The broker closed the channel: no such queue.
            Err(e) if e.is_amqp_soft_error() => return Ok(InOrder::NoMark),
            Err(e) => return Err(e),
        };
        let mark = serde_json::from_slice::<Mark>(&message.delivery.data)
            .map(|m| m.percent)
            .unwrap_or(0.0);
        event.progress = event.progress.max(mark);
        publish_json(
            channel,
            exchange,
            "",
            &*event,
            progress_properties(persistent),
        )
        .await?;
        put_mark(channel, queue, event.progress).await?;
        channel
            .basic_ack(message.delivery.delivery_tag, BasicAckOptions::default())
            .await?;
        channel.tx_commit().await?;
        return Ok(InOrder::Published);
    }
    Ok(InOrder::Busy)
}

/// Publishes the mark `percent` to `queue` on `channel` (in its
/// transaction).
async fn put_mark(channel: &Channel, queue: &str, percent: f64) -> Result<(), lapin::Error> {
    let persistent = BasicProperties::default().with_delivery_mode(2);
    publish_json(channel, "", queue, &Mark { percent }, persistent)
        .await
        .map(|_| ())
}
