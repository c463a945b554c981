//! Queues read or made on a channel, outside any one connection's
//! life: how many messages wait in each, private queues bound to a
//! fanout exchange (progress and control observers), the fanout exchanges
//! themselves, the stream of requirements that no live worker meets, and
//! JSON messages published on a channel.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind, PublisherConfirm};

use crate::capability::WaitingQueue;

/// How many messages wait in each queue, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueDepths(pub Vec<(String, u32)>);

/// How many messages wait in each of `queues` (passive declares on
/// `channel`; a missing queue closes the channel with an error).
pub async fn queue_depths(
    channel: &Channel,
    queues: &[String],
) -> Result<QueueDepths, lapin::Error> {
    let mut depths = QueueDepths::default();
    for queue in queues {
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        depths.0.push((queue.clone(), declared.message_count()));
    }
    Ok(depths)
}

/// The queues of jobs waiting for capable workers, as the requirements
/// stream `stream` records them (read on `channel`, which this closes,
/// from its first entry until it has given them all, or nothing more for
/// a moment). Empty when the stream cannot be read.
pub async fn waiting_queues(channel: Channel, stream: &str) -> Vec<WaitingQueue> {
    use futures_util::StreamExt;
    /// How long a read waits for the next entry before it takes the
    /// stream as read, when the stream did not say how many it holds.
    const QUIET: Duration = Duration::from_millis(300);
    /// How long a read waits for the next of the entries the stream said
    /// it holds (a loaded broker may take more than [`QUIET`] to deliver
    /// the first).
    const HELD: Duration = Duration::from_secs(3);
    let mut found = std::collections::BTreeSet::new();
    // The entries the stream holds now: enough read, no wait at the end.
    let held = queue_depths(&channel, &[stream.to_string()])
        .await
        .ok()
        .and_then(|d| d.0.first().map(|(_, n)| *n as usize));
    if held == Some(0) {
        let _ = channel.close(200, "done".into()).await;
        return Vec::new();
    }
    let _ = channel
        .basic_qos(500, lapin::options::BasicQosOptions::default())
        .await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        lapin::types::AMQPValue::LongString("first".into()),
    );
    let consumer = channel
        .basic_consume(
            stream.into(),
            "read-requirements".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await;
    if let Ok(mut consumer) = consumer {
        let mut read = 0;
        let wait = if held.is_some() { HELD } else { QUIET };
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(wait, consumer.next()).await {
            read += 1;
            if let Ok(w) = serde_json::from_slice(&delivery.data) {
                found.insert(w);
            }
            let _ = delivery
                .acker
                .ack(lapin::options::BasicAckOptions::default())
                .await;
            if held.is_some_and(|n| read >= n) {
                break;
            }
        }
    }
    let _ = channel.close(200, "done".into()).await;
    found.into_iter().collect()
}

/// Declares a server-named, exclusive, auto-delete queue bound to the
/// fanout `exchange`, and consumes it without acks.
pub async fn private_queue(
    channel: &Channel,
    exchange: Option<&str>,
    consumer_tag: &str,
) -> Result<(String, lapin::Consumer), lapin::Error> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = queue.name().to_string();
    if let Some(exchange) = exchange {
        channel
            .queue_bind(
                name.as_str().into(),
                exchange.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consumer = channel
        .basic_consume(
            name.as_str().into(),
            consumer_tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((name, consumer))
}

/// Declares `name` as a durable fanout exchange (the progress exchange and
/// the control exchange are both one).
pub async fn declare_fanout(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Publishes `value` as JSON (content type `application/json`, the rest
/// of `properties` as given) to `exchange` with `routing_key` on
/// `channel`; the confirm, on a channel in confirm mode, is the caller's
/// to await.
pub async fn publish_json<T: serde::Serialize + ?Sized>(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    value: &T,
    properties: BasicProperties,
) -> Result<PublisherConfirm, lapin::Error> {
    let body = serde_json::to_vec(value).expect("a message serializes");
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            &body,
            properties.with_content_type("application/json".into()),
        )
        .await
}

/// Declares `queue` durable, removed by the broker once unused for
/// `expires`, with `arguments` besides (the progress marks' and claims'
/// queues of segmented jobs).
pub(super) async fn declare_expiring(
    channel: &Channel,
    queue: &str,
    expires: Duration,
    mut arguments: FieldTable,
) -> Result<(), lapin::Error> {
    let ms = expires.as_millis().min(i64::MAX as u128) as i64;
    arguments.insert("x-expires".into(), lapin::types::AMQPValue::LongLongInt(ms));
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .map(|_| ())
}
