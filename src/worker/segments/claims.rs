//! How this worker settles the claims of segmented jobs: it asks the
//! storage once whether its create-if-absent has one winner, and settles
//! the claims of plans that say so on the broker.

use super::*;
use crate::segment::objects::Arbiter;

impl Worker {
    /// The objects of segmented jobs, with `broker` to settle the claims of
    /// plans whose claims go there ([`SegmentPlan::claims_on_broker`]).
    pub(super) fn claims<'a>(&'a self, broker: &'a Broker) -> Objects<'a> {
        let expires = self.settings.segments.abandon_after * 2 + Duration::from_secs(3600);
        self.objects().with_arbiter(Arbiter { broker, expires })
    }

    /// Why the storage cannot settle a segmented job's claims (which
    /// worker joins it, which encodes its audio), or `None`; asked once
    /// (a failure to ask is not kept: the job is retried).
    pub(super) async fn claims_flaw(&self) -> Result<Option<String>, JobError> {
        let flaw = self
            .claims_flaw
            .get_or_try_init(|| async {
                let flaw = self.objects().claims_flaw().await?;
                if let Some(why) = &flaw {
                    tracing::warn!(
                        "the storage cannot settle segmented jobs' claims; they are settled on the broker: {why}"
                    );
                }
                Ok::<_, JobError>(flaw)
            })
            .await?;
        Ok(flaw.clone())
    }
}
