//! The sweeper: a background pass over one storage server's slots that removes what
//! nobody may read again, and repairs what is damaged, even for keys no client reads.
//!
//! It decides nothing itself. A long-dead record (tombstone or expired, older than the
//! grace period) or a damaged slot is handed to the proxy's own read path, which
//! purges a record only when every replica holds the very same dead record, and
//! writes the key back to replicas that lag or are damaged. The one thing the sweeper
//! does alone is fold a slot that holds nothing but a promise into the replica-wide
//! floor, which keeps that promise. Freed space goes back to the file system through
//! [`Engine::reclaim`] after a pass that removed many records.

use super::replica_actor::{is_record_key, Envelope, ReplyTo};
use crate::at_rest::{SlotCodec, Unreadable};
use crate::clock::Clock;
use crate::engine::Engine;
use crate::fault::{bug, Bug};
use crate::key::StoreKey;
use crate::proxy::Proxy;
use crate::record::Slot;
use crate::replica::ReplicaRequest;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// `[sweeper]` in a storage server's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepConfig {
    /// Pause between passes.
    pub interval_ms: u64,
    /// How long a dead record is kept; the same as the proxies' `purge_grace_secs`.
    pub purge_grace_secs: u32,
    /// Keys resolved through the read path at once.
    pub concurrency: usize,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            interval_ms: 60_000,
            purge_grace_secs: 3600,
            concurrency: 32,
        }
    }
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Record slots looked at.
    pub seen: u64,
    /// Long-dead or damaged keys handed to the read path.
    pub resolved: u64,
    /// Promise-only slots folded into the floor.
    pub forgotten: u64,
    /// Slots written again to be sealed with the newest data key.
    pub resealed: u64,
    /// Slots sealed with a data key this server lacks (left alone).
    pub unreadable: u64,
    /// Keys whose replicas disagreed, handed to the read path (see
    /// [`super::replica_sync`]).
    pub out_of_sync: u64,
    /// Shards whose replicas' digests differed, so that their keys were listed.
    pub shards_listed: u64,
}

/// Everything a sweeper needs: the engine to walk, the replica to send its own
/// requests to, and a proxy (the read path) for keys that need every replica.
pub struct Sweeper {
    /// This server's zone in the map, if it is named there: the sweepers of a key's
    /// replicas share the work by shard (the zone `shard % zones` resolves it), and
    /// take over what is dead for twice the grace period (its sweeper may be down).
    pub zone: Option<usize>,
    pub zones: usize,
    /// This server's address in the map: whose shards' replicas it compares (see
    /// [`super::replica_sync`]).
    pub me: String,
    pub engine: Arc<dyn Engine>,
    pub codec: SlotCodec,
    pub replica: mpsc::UnboundedSender<Envelope>,
    pub proxy: Arc<Proxy>,
    pub clock: Clock,
    pub config: SweepConfig,
}

impl Sweeper {
    /// Sweeps every `interval` until the task is dropped.
    pub async fn run(self) {
        let mut resealing = false;
        loop {
            tokio::time::sleep(Duration::from_millis(self.config.interval_ms)).await;
            match self.pass().await {
                Ok(swept) => {
                    if swept.unreadable > 0 {
                        tracing::error!(records = swept.unreadable, "records sealed with a data key this server lacks: add it back to the key file");
                    }
                    if let Some(keys) = self.codec.keyring() {
                        if swept.resealed > 0 {
                            tracing::info!(
                                records = swept.resealed,
                                key = keys.newest(),
                                "re-sealed records with the newest data key"
                            );
                        } else if resealing && swept.unreadable == 0 {
                            tracing::info!(key = keys.newest(), "every record is sealed with the newest data key: older keys may leave the key file");
                        }
                        resealing = swept.resealed > 0;
                    }
                    // A pass that removed many records compacts, so that the space
                    // really comes back (RocksDB keeps deleted entries until then).
                    if swept.resolved >= 1000.max(swept.seen / 10) {
                        if let Err(e) = self.engine.reclaim() {
                            tracing::warn!(error = %e, "reclaiming space after a sweep");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sweep pass failed"),
            }
        }
    }

    /// One pass over every slot, a page at a time; then the replicas of the shards
    /// this server is responsible for are compared.
    pub async fn pass(&self) -> std::io::Result<Swept> {
        let started = tokio::time::Instant::now();
        let mut swept = Swept::default();
        let mut after: Option<Vec<u8>> = None;
        // Replies to the sweeper's own requests: nobody waits for them.
        let (ignored, _) = mpsc::unbounded_channel();
        let mut resolving = FuturesUnordered::new();
        loop {
            let page = self.engine.scan(after.as_deref(), None, 256)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            let mut stale = Vec::new();
            for (raw, bytes) in page.iter().filter(|(k, _)| is_record_key(k)) {
                let Some(key) = StoreKey::from_bytes(raw) else {
                    continue;
                };
                swept.seen += 1;
                let now_ns = self.clock.now_ns();
                let now = (now_ns / 1_000_000_000) as u32;
                let decoded = match self.codec.decode(raw, bytes) {
                    Ok(d) => {
                        if d.stale {
                            stale.push(raw.clone());
                        }
                        Ok(d.slot)
                    }
                    Err(Unreadable::NoKey(_)) => {
                        swept.unreadable += 1;
                        continue;
                    }
                    Err(Unreadable::Damaged(e)) => Err(e),
                };
                let resolve = match decoded {
                    Err(_) => {
                        // The replica may hold the slot decoded from before the damage.
                        let _ = self.replica.send(Envelope::Uncache(raw.clone()));
                        true
                    }
                    Ok(Slot {
                        promised,
                        accepted: None,
                    }) => {
                        swept.forgotten += 1;
                        let key = key.clone();
                        self.send(ReplicaRequest::Forget { key, promised }, &ignored);
                        false
                    }
                    Ok(Slot {
                        accepted: Some((ballot, record)),
                        ..
                    }) if record.long_dead(now, self.config.purge_grace_secs) => {
                        let mine = self
                            .zone
                            .is_none_or(|z| usize::from(key.shard()) % self.zones == z)
                            || record.long_dead(now, 2 * self.config.purge_grace_secs);
                        if !mine {
                            continue;
                        }
                        if bug(Bug::SweeperPurgesAlone) {
                            let key = key.clone();
                            self.send(ReplicaRequest::Purge { key, ballot }, &ignored);
                            continue;
                        }
                        true
                    }
                    Ok(_) => false,
                };
                if resolve {
                    swept.resolved += 1;
                    let proxy = self.proxy.clone();
                    resolving.push(async move {
                        // The answer does not matter: the read path purges or repairs.
                        let _ = proxy.read_everywhere(key, now_ns).await;
                    });
                    while resolving.len() >= self.config.concurrency.max(1) {
                        resolving.next().await;
                    }
                }
            }
            if !stale.is_empty() {
                swept.resealed += stale.len() as u64;
                let (done, resealed) = tokio::sync::oneshot::channel();
                if self.replica.send(Envelope::Reseal(stale, done)).is_ok() {
                    let _ = resealed.await;
                }
            }
            tokio::task::yield_now().await;
        }
        while resolving.next().await.is_some() {}
        let swept_at = tokio::time::Instant::now();
        let synced = super::replica_sync::sync(&self.proxy, &self.me, self.config.concurrency);
        (swept.out_of_sync, swept.shards_listed) = synced.await;
        crate::metrics::metrics()
            .replica_sync_repairs
            .inc_by(swept.out_of_sync);
        let sweep_ms = (swept_at - started).as_millis() as u64;
        let sync_ms = swept_at.elapsed().as_millis() as u64;
        tracing::debug!(?swept, sweep_ms, sync_ms, "sweep pass");
        Ok(swept)
    }

    fn send(&self, req: ReplicaRequest, ignored: &mpsc::UnboundedSender<Vec<u8>>) {
        let reply_to = ReplyTo {
            id: 0,
            out: ignored.clone(),
        };
        // A replica that has stopped has nothing left to sweep.
        let _ = self
            .replica
            .send(Envelope::Request(req, (None, None), reply_to));
    }
}
