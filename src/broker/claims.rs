//! Claims settled on the broker, for storage whose create-if-absent has
//! more than one winner (see [`crate::segment::Objects::claims_flaw`]):
//! a claim is a durable queue of its own that holds at most one message
//! (`x-max-length: 1`, `x-overflow: reject-publish`). Every claimant
//! publishes its claim there with publisher confirms; the queue takes the
//! first and the broker nacks every later one, so exactly one claimant is
//! told yes. The message stays (persistent), so the claim survives a
//! broker restart. Nothing reads it: the length limit counts only the
//! messages no one holds, so a claim taken out to be read would let
//! another in (the winner writes its claim to the storage for readers).
//! The queue goes when its job's objects go, or after `x-expires` unused.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use super::queues::declare_expiring;
use super::{Broker, BrokerError};

impl Broker {
    /// The queue of the claim `name` (`<job>.<plan>.end`, say).
    fn claim_queue(&self, name: &str) -> String {
        format!("{}.claim.{name}", self.settings.progress_queue)
    }

    /// Claims `name` with `body`: `true` when this call made the claim,
    /// `false` when another claim was there first. The claim is kept
    /// until [`Broker::remove_claim`] or until it is unused for `expires`.
    pub async fn claim_first(
        &self,
        name: &str,
        body: &[u8],
        expires: Duration,
    ) -> Result<bool, BrokerError> {
        let queue = self.claim_queue(name);
        let channel = self.open_channel().await?;
        let result = async {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let mut arguments = FieldTable::default();
            arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
            arguments.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
            declare_expiring(&channel, &queue, expires, arguments).await?;
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                )
                .await?
                .await?;
            Ok(confirm.is_ack())
        }
        .await;
        let _ = channel.close(200, "claimed".into()).await;
        result.map_err(|e| self.amqp(e))
    }

    /// Removes the claim `name` (once its job has ended).
    pub async fn remove_claim(&self, name: &str) -> Result<(), BrokerError> {
        let queue = self.claim_queue(name);
        let channel = self.open_channel().await?;
        let result = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = channel.close(200, "removed a claim".into()).await;
        result.map(|_| ()).map_err(|e| self.amqp(e))
    }
}
