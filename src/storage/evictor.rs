//! Eviction for an in-memory engine with a size cap: when it fills past the high
//! watermark, the soonest-expiring live records are destroyed until it is back under
//! the low one (Redis calls this policy `volatile-ttl`).
//!
//! A record is evicted through the proxy's write path, as a client's destroy: every
//! replica then agrees the key is gone (a replica dropping records on its own would
//! be a replica that forgot acknowledged writes), and the destroy is linearizable.
//! Its tombstone is small and goes after the purge grace period like any other. Between
//! checks the replica refuses new records once the engine is at its cap.

use super::replica_actor::is_record_key;
use crate::at_rest::SlotCodec;
use crate::clock::Clock;
use crate::engine::{for_each, Engine};
use crate::key::StoreKey;
use crate::proxy::Proxy;
use crate::semantics::Op;
use futures::stream::{self, StreamExt};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

/// Eviction starts above this share of the cap, in percent...
const HIGH_WATERMARK: u64 = 90;
/// ...and frees enough to go back under this one.
const LOW_WATERMARK: u64 = 80;
/// How often the engine's size is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Destroys in flight at once.
const CONCURRENCY: usize = 32;

/// What eviction needs: the engine and its cap, and the proxy to destroy through.
pub struct Evictor {
    pub engine: Arc<dyn Engine>,
    pub limit: u64,
    pub codec: SlotCodec,
    pub proxy: Arc<Proxy>,
    pub clock: Clock,
}

impl Evictor {
    /// Checks the engine's size every half second, evicting when it is too full.
    pub async fn run(self) {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let size = self.engine.stats().size_bytes;
            if size <= self.limit / 100 * HIGH_WATERMARK {
                continue;
            }
            let excess = size - self.limit / 100 * LOW_WATERMARK;
            match self.evict(excess).await {
                Ok(n) => tracing::info!(
                    records = n,
                    size,
                    limit = self.limit,
                    "evicted the soonest-expiring records"
                ),
                Err(e) => tracing::warn!(error = %e, "eviction pass failed"),
            }
        }
    }

    /// Destroys the soonest-expiring live records whose sizes add up to `excess`
    /// bytes. Returns how many it destroyed.
    pub async fn evict(&self, excess: u64) -> std::io::Result<u64> {
        let victims = self.soonest_expiring(excess)?;
        let now_ns = self.clock.now_ns();
        let destroys = victims.into_iter().map(|key| {
            let proxy = self.proxy.clone();
            async move { proxy.execute(key, Op::Destroy, now_ns, None).await.is_ok() }
        });
        let done = stream::iter(destroys).buffer_unordered(CONCURRENCY);
        Ok(done.filter(|ok| std::future::ready(*ok)).count().await as u64)
    }

    /// One walk over the store, keeping the soonest-expiring live records that free
    /// at least `excess` bytes (in a heap whose top is the latest-expiring kept).
    fn soonest_expiring(&self, excess: u64) -> std::io::Result<Vec<StoreKey>> {
        let now = (self.clock.now_ns() / 1_000_000_000) as u32;
        let mut kept: BinaryHeap<(u32, Vec<u8>, u64)> = BinaryHeap::new();
        let mut kept_bytes = 0u64;
        for_each(&*self.engine, |key, bytes| {
            let Some(slot) = (is_record_key(key))
                .then(|| self.codec.decode(key, bytes).ok())
                .flatten()
                .map(|d| d.slot)
            else {
                return;
            };
            let Some((_, record)) = slot.accepted.filter(|(_, r)| r.is_live(now)) else {
                return;
            };
            let size = (key.len() + bytes.len()) as u64;
            kept.push((record.expires_at, key.to_vec(), size));
            kept_bytes += size;
            while kept
                .peek()
                .is_some_and(|(_, _, s)| kept_bytes - s >= excess)
            {
                let (_, _, s) = kept.pop().expect("peeked");
                kept_bytes -= s;
            }
        })?;
        let victims = kept.into_sorted_vec();
        Ok(victims
            .into_iter()
            .filter_map(|(_, k, _)| StoreKey::from_bytes(&k))
            .collect())
    }
}
