//! The farm's queues and exchanges on the broker, declared by every worker
//! at connect (declaring is idempotent; a declaration whose arguments
//! differ from an existing queue's is refused and reported by name).

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use super::{declare_fanout, Broker, BrokerError};
use crate::config::BrokerSettings;

impl Broker {
    /// Declares the queues and exchange on a throwaway channel each, so a
    /// mismatch can be reported by name (the broker closes the channel).
    pub(super) async fn declare(&self, max_attempts: u32) -> Result<(), BrokerError> {
        let s = &self.settings;
        let mut dead = FieldTable::default();
        dead.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        self.declare_queue(&s.dead_letter_queue, dead).await?;

        self.declare_queue(&s.jobs_queue, jobs_queue_arguments(s, max_attempts))
            .await?;

        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| self.amqp(e))?;
        declare_fanout(&channel, &s.progress_exchange)
            .await
            .map_err(|e| self.mismatch(&format!("exchange {:?}", s.progress_exchange), e))?;
        let _ = channel.close(200, "declared".into()).await;

        // A quorum queue too: a classic queue lives on one node, and while
        // that node is down nobody could even declare it.
        let mut progress = FieldTable::default();
        progress.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        progress.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::from(s.progress_queue_max_length)),
        );
        self.declare_queue(&s.progress_queue, progress).await?;
        self.publish_channel()
            .queue_bind(
                s.progress_queue.as_str().into(),
                s.progress_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.amqp(e))?;
        Ok(())
    }

    async fn declare_queue(&self, name: &str, arguments: FieldTable) -> Result<(), BrokerError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| self.amqp(e))?;
        channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .map_err(|e| self.mismatch(&format!("queue {name:?}"), e))?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    fn mismatch(&self, what: &str, e: lapin::Error) -> BrokerError {
        let detail = e.to_string();
        if detail.contains("PRECONDITION_FAILED") || detail.contains("inequivalent") {
            BrokerError::TopologyMismatch {
                what: what.to_string(),
                detail,
            }
        } else {
            self.amqp(e)
        }
    }
}

/// The arguments of the jobs queue: quorum type, a delivery limit of
/// `max_attempts` redeliveries, and at-least-once dead-lettering into the
/// dead-letter queue.
///
/// The limit lets one delivery more through than a worker will attempt:
/// when every allowed attempt ended without a result (each killed its
/// worker), the next worker to get the job dead-letters it at once with a
/// `failed` event; the broker's own limit is the backstop behind that.
pub fn jobs_queue_arguments(settings: &BrokerSettings, max_attempts: u32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(max_attempts)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(settings.dead_letter_queue.as_str().into()),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}
