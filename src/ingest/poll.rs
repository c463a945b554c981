//! Poll mode, for storage that sends no event notifications (s3s-fs,
//! Garage, plain AWS without a queue, a directory): every so often, list
//! the rules' prefixes and ingest each matching object that is new or
//! changed since the last listing.
//!
//! An object is looked at once its listing entry (size, ETag when the
//! server lists one, modification time) is the same in two listings in a
//! row: a file still being copied into a folder, or an object whose
//! metadata a server writes after its content (s3s-fs, the directory
//! backend's sidecar), is left for a later listing. The entries of the
//! objects looked at are remembered in memory, so an unchanged object
//! costs nothing but its line in the listing; after a restart every
//! object is looked at once more, and the markers in the storage say
//! which jobs were made already.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Ingest, IngestError, Outcome, Upload};
use crate::broker::{Broker, BrokerError};
use crate::storage::Listed;

/// The listing entries of the objects seen: looked at, or seen once and
/// waiting for the next listing to show the same entry.
#[derive(Debug, Default)]
struct Seen {
    looked_at: HashMap<String, String>,
    settling: HashMap<String, String>,
}

/// What one listing did.
#[derive(Debug, Default)]
struct Pass {
    /// Objects listed under the rules' prefixes.
    listed: usize,
    /// Objects new or changed, seen for the first time in this state.
    settling: usize,
    /// Objects new or changed, the same as in the listing before: looked at.
    looked_at: usize,
    /// Jobs made.
    jobs: usize,
    /// Objects looked at that made no job.
    skipped: usize,
    /// Objects that could not be looked at (tried again next time).
    failed: usize,
}

impl Ingest {
    /// Lists the rules' prefixes every `every` until `shutdown` is
    /// cancelled. Ends with an error only when the broker's topology
    /// conflicts with the farm's.
    pub async fn poll(
        &self,
        every: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        tracing::info!(every = ?every, prefixes = ?self.rules.list_prefixes(), storage = %self.storage.describe(), rules = self.rules.all().len(), "ingesting by listing");
        let mut seen = Seen::default();
        let mut broker: Option<Broker> = None;
        loop {
            if !broker.as_ref().is_some_and(Broker::is_connected) {
                broker = match self.connect(shutdown).await? {
                    Some(broker) => Some(broker),
                    None => return Ok(()),
                };
            }
            let connected = broker.as_ref().expect("connected above");
            match self.pass(connected, &mut seen).await {
                Ok(pass) if pass.looked_at > 0 => {
                    tracing::info!(
                        listed = pass.listed,
                        looked_at = pass.looked_at,
                        jobs = pass.jobs,
                        skipped = pass.skipped,
                        failed = pass.failed,
                        "listing done"
                    )
                }
                Ok(pass) => {
                    tracing::debug!(
                        listed = pass.listed,
                        settling = pass.settling,
                        "listing done; nothing to look at"
                    )
                }
                Err(IngestError::Broker(e)) => {
                    tracing::warn!(error = %e, "the broker did not take a job; trying again at the next listing");
                    if let Some(lost) = broker.take() {
                        lost.close().await;
                    }
                }
                Err(IngestError::Storage(e)) => {
                    tracing::warn!(error = %e, "cannot list the storage; trying again at the next listing")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => {
                    if let Some(broker) = broker {
                        broker.close().await;
                    }
                    tracing::info!("stopped");
                    return Ok(());
                }
            }
        }
    }

    /// Lists once and ingests what is new or changed since `seen` and
    /// the same as in the listing before; updates `seen`.
    async fn pass(&self, broker: &Broker, seen: &mut Seen) -> Result<Pass, IngestError> {
        let mut listed: BTreeMap<String, Listed> = BTreeMap::new();
        for prefix in self.rules.list_prefixes() {
            for object in self.storage.list(prefix).await? {
                listed.insert(object.key.clone(), object);
            }
        }
        seen.looked_at.retain(|key, _| listed.contains_key(key));
        seen.settling.retain(|key, _| listed.contains_key(key));
        let mut pass = Pass {
            listed: listed.len(),
            ..Pass::default()
        };
        for (key, object) in listed {
            if self.rules.matching(&key).next().is_none() {
                continue;
            }
            let stamp = format!(
                "{} {} {}",
                object.size,
                object.version.as_deref().unwrap_or("-"),
                object.modified
            );
            if seen.looked_at.get(&key) == Some(&stamp) {
                continue;
            }
            if seen.settling.get(&key) != Some(&stamp) {
                tracing::debug!(
                    key,
                    "new or changed; looked at once the next listing shows it the same"
                );
                pass.settling += 1;
                seen.settling.insert(key, stamp);
                continue;
            }
            pass.looked_at += 1;
            let upload = Upload {
                key: key.clone(),
                version: object.version,
                made_by_job: None,
            };
            match self.object(broker, &upload).await {
                Ok(Outcome::Made(jobs)) => pass.jobs += jobs.len(),
                Ok(Outcome::Skipped(_)) => pass.skipped += 1,
                Err(IngestError::Storage(e)) => {
                    tracing::warn!(key, error = %e, "cannot look at this object now; trying again at the next listing");
                    pass.failed += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            seen.settling.remove(&key);
            seen.looked_at.insert(key, stamp);
        }
        Ok(pass)
    }
}
