//! The claims of segmented jobs (the job's end, its audio part): made by a
//! create-if-absent in the storage, or, where the storage's
//! create-if-absent can have more than one winner, settled on the broker
//! ([`Arbiter`]); and the question that tells the two apart
//! ([`Objects::claims_flaw`]).

use std::time::Duration;

use serde::Serialize;

use super::{broken, Objects};
use crate::broker::Broker;
use crate::segment::plan::SegmentPlan;
use crate::storage::StorageError;

/// Where the claims of plans whose storage cannot settle them go
/// ([`SegmentPlan::claims_on_broker`]).
#[derive(Clone, Copy)]
pub struct Arbiter<'a> {
    /// The broker ([`Broker::claim_first`]).
    pub broker: &'a Broker,
    /// How long a claim nothing uses is kept.
    pub expires: Duration,
}

/// How long a worker that lost a claim on the broker waits for the
/// winner to write it, and how often it looks.
const WINNER_WRITES_WITHIN: Duration = Duration::from_secs(5);
const LOOK_EVERY: Duration = Duration::from_millis(50);

impl Objects<'_> {
    /// Writes `claim` (`what`: `end`, `audio`) of `plan` under `key` unless
    /// a claim is there, and returns the claim that holds. It is read
    /// back, so a request retried after it created the claim still tells
    /// its winner. A server that ignores the condition could tell two
    /// workers each that it holds theirs, so such plans settle their
    /// claims on the broker ([`Objects::claim_on_broker`]).
    pub(super) async fn claim<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        plan: &SegmentPlan,
        what: &str,
        key: &str,
        claim: &T,
    ) -> Result<T, StorageError> {
        let bytes = serde_json::to_vec(claim).expect("a claim serializes");
        if plan.claims_on_broker {
            let name = format!("{}.{}.{what}", plan.job_id, plan.plan_id);
            return self.claim_on_broker(plan, &name, key, bytes).await;
        }
        self.storage.put_small_new(key, &bytes).await?;
        self.record(key).await?.ok_or_else(|| {
            StorageError::Unavailable(format!(
                "the claim {key:?} is missing right after it was made"
            ))
        })
    }

    /// Claims `name` of `plan` on the broker with `bytes`: the winner
    /// writes its claim under `key` (no condition needed: it alone writes
    /// it); a loser is told the claim under `key` once the winner wrote it
    /// (looking every [`LOOK_EVERY`] for up to [`WINNER_WRITES_WITHIN`]).
    /// The broker's copy is never read: a queue's length limit counts only
    /// the messages no one holds, so a claim taken out to be read would
    /// let another claim in. A winner that dies between the broker's
    /// answer and its write leaves the others an error (retried); its job
    /// then ends as abandoned ([`Objects::claim_abandoned_end`]).
    async fn claim_on_broker<T: serde::de::DeserializeOwned>(
        &self,
        plan: &SegmentPlan,
        name: &str,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<T, StorageError> {
        let Some(arbiter) = self.arbiter else {
            return Err(StorageError::Local(format!(
                "the claim {name:?} is settled on the broker, and none was given"
            )));
        };
        let won = (arbiter.broker)
            .claim_first(name, &bytes, arbiter.expires)
            .await
            .map_err(|e| {
                StorageError::Unavailable(format!("claiming {name:?} on the broker: {e}"))
            })?;
        if won {
            self.storage.put_small(key, &bytes).await?;
            return serde_json::from_slice(&bytes).map_err(|e| broken(key, e));
        }
        let deadline = tokio::time::Instant::now() + WINNER_WRITES_WITHIN;
        loop {
            if let Some(record) = self.record(key).await? {
                return Ok(record);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StorageError::Unavailable(format!(
                    "the claim {name:?} was won on the broker, but its winner has not written it within {WINNER_WRITES_WITHIN:?} (it may have died)"
                )));
            }
            if self.plan(&plan.job_id).await?.is_none() {
                return Err(StorageError::Unavailable(format!(
                    "the claim {name:?} was won on the broker, and its job has ended"
                )));
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// Removes the claims `plan` made on the broker, if it made any there.
    pub async fn remove_claims_on_broker(&self, plan: &SegmentPlan) {
        let (Some(arbiter), true) = (self.arbiter, plan.claims_on_broker) else {
            return;
        };
        for what in ["end", "audio", "abandon"] {
            let name = format!("{}.{}.{what}", plan.job_id, plan.plan_id);
            if let Err(e) = arbiter.broker.remove_claim(&name).await {
                tracing::warn!(error = %e, claim = %name, "cannot remove a claim on the broker");
            }
        }
    }

    /// Why the storage cannot settle the claims (its create-if-absent can
    /// have more than one winner), or `None` when it can
    /// ([`Storage::create_if_absent_flaw`], under `~probe/`).
    pub async fn claims_flaw(&self) -> Result<Option<String>, StorageError> {
        let folder = format!("{}~probe/", self.prefix);
        let key = format!("{folder}{}.json", uuid::Uuid::new_v4().simple());
        let flaw = self.storage.create_if_absent_flaw(&key).await?;
        if let Err(e) = self.storage.remove_empty_folder(&folder).await {
            tracing::debug!(error = %e, "could not remove the probe's folder");
        }
        Ok(flaw)
    }
}
