//! Recovery of a restarted in-memory replica, which lost every record but kept its
//! ballot bounds (the engine keeps those on disk).
//!
//! Until it has recovered, a key it lacks counts as damaged: it promises nothing for
//! it and accepts only a repair above its ceiling. Declaring a missing key absent is
//! safe only once no value it had accepted before the restart can still be chosen
//! through it alone. A value accepted by a quorum that included this replica was also
//! accepted by another replica of that quorum, so recovery:
//!
//! 1. waits out `recovery_delay_ms`, longer than any proxy request lasts: a write this
//!    replica accepted before the restart is by then either acknowledged (so every
//!    other member of its quorum holds it) or over;
//! 2. lists the keys the other replicas of its shards hold (all of them but `q - 2` of
//!    each shard's: see [`Recovery::pass`]), and reads each one through the proxy's
//!    read path, which writes the chosen record back to this replica (a repair above
//!    the ceiling), until this replica holds it;
//! 3. raises its floor to its ceiling (no forgotten promise can be broken) and serves
//!    missing keys as absent again.
//!
//! Writes made after the restart need no listing: they never counted on this replica
//! (it promised nothing), so a quorum of the others holds them. A replica with too few
//! peers reachable keeps trying; meanwhile the others serve its keys (with a quorum).

use super::replica_actor::Envelope;
use crate::clock::Clock;
use crate::fault::{bug, Bug};
use crate::key::StoreKey;
use crate::proxy::Proxy;
use crate::replica::{NodeRequest, ReplicaReply};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Keys asked of a peer at once.
const PAGE: u32 = 1024;
/// Keys resolved through the read path at once.
const CONCURRENCY: usize = 32;
/// Reads of one key before the pass gives up on it (and the pass is retried).
const ATTEMPTS: u32 = 5;

/// What a recovery needs: this server's address in the map, its replica, and a proxy
/// (the read path, and a connection to every peer).
pub struct Recovery {
    pub me: String,
    pub replica: mpsc::UnboundedSender<Envelope>,
    pub proxy: Arc<Proxy>,
    pub clock: Clock,
    pub delay: Duration,
}

impl Recovery {
    /// Recovers, retrying a pass every few seconds until one completes.
    pub async fn run(self) {
        if !bug(Bug::RecoveryWithoutWait) {
            tokio::time::sleep(self.delay).await;
        }
        loop {
            match self.pass().await {
                Ok(keys) => {
                    tracing::info!(server = %self.me, keys, "recovery pass complete");
                    let _ = self.replica.send(Envelope::Recovered);
                    return;
                }
                Err(e) => {
                    tracing::warn!(server = %self.me, error = %e, "recovery pass incomplete: retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    /// Lists the keys its peers hold of this server's shards, and makes sure this
    /// replica holds each one. Returns how many keys it looked at.
    ///
    /// Not every peer need answer: a value chosen through this replica was accepted by
    /// a majority of each layout of its shard's acceptors (one layout; two while the
    /// map changes), so in a layout of `n` holding this replica, any `n - q + 1` of its
    /// other `n - 1` members include one that holds it (three zones: both peers; five:
    /// three of four). A shard with fewer peers listed fails the pass. A server that
    /// holds no shard has nothing to recover: a shard it joins later, it joins empty.
    async fn pass(&self) -> Result<u64, String> {
        let map = self.proxy.map();
        let me = self.me.as_str();
        let mine: BTreeMap<u16, crate::cluster::Placement> = (0..map.num_shards)
            .map(|s| (s, map.placement(s)))
            .filter(|(_, p)| p.nodes.iter().any(|n| n.addr == me))
            .collect();
        let peers: BTreeSet<&str> = (mine.values())
            .flat_map(|p| p.nodes.iter().map(|n| n.addr.as_str()))
            .filter(|a| *a != me)
            .take(if bug(Bug::RecoveryAsksOnePeer) {
                1
            } else {
                usize::MAX
            })
            .collect();
        let shards: BTreeSet<u16> = mine.keys().copied().collect();
        let (mut seen, mut listed, mut unlisted) = (0, BTreeSet::new(), Vec::new());
        for peer in peers {
            match self.recover_from(peer, &shards).await? {
                Ok(keys) => {
                    seen += keys;
                    listed.insert(peer);
                }
                Err(e) => unlisted.push(e),
            }
        }
        let short_in = |p: &crate::cluster::Placement| {
            p.layouts.iter().any(|layout| {
                let members: Vec<&str> = layout.iter().map(|&i| p.nodes[i].addr.as_str()).collect();
                let answered = members.iter().filter(|a| listed.contains(*a)).count();
                let needed = layout.len() - (layout.len() / 2 + 1) + 1;
                members.contains(&me) && answered < needed
            })
        };
        match mine.iter().find(|(_, p)| short_in(p)) {
            Some((shard, _)) if !bug(Bug::RecoveryAsksOnePeer) => Err(format!(
                "shard {shard}: too few of its other replicas listed their keys ({})",
                unlisted.join("; ")
            )),
            _ => Ok(seen),
        }
    }

    /// Pages through `peer`'s keys, making sure this replica holds those of its own
    /// shards. The outer error fails the pass (a key it could not make sure of); the
    /// inner one only leaves the peer out (it did not answer the listing).
    async fn recover_from(
        &self,
        peer: &str,
        mine: &BTreeSet<u16>,
    ) -> Result<Result<u64, String>, String> {
        let (mut seen, mut after) = (0, None);
        loop {
            let req = NodeRequest::ListKeys {
                after: after.clone(),
                shard: None,
                limit: PAGE,
            };
            let keys = match self.proxy.ask_node(peer, req).await {
                Ok(ReplicaReply::Keys { keys }) => keys,
                Ok(other) => return Ok(Err(format!("{peer} answered a listing with {other:?}"))),
                Err(e) => return Ok(Err(e)),
            };
            let end = keys.len() < PAGE as usize;
            after = keys.last().map(|(k, _)| k.clone());
            let ours: Vec<StoreKey> = (keys.into_iter().map(|(k, _)| k))
                .filter(|k| mine.contains(&k.shard()))
                .collect();
            seen += ours.len() as u64;
            stream::iter(ours.into_iter().map(|k| self.hold(k)))
                .buffer_unordered(CONCURRENCY)
                .try_collect::<()>()
                .await?;
            if end {
                return Ok(Ok(seen));
            }
        }
    }

    /// Reads `key` through the proxy until this replica holds it. The read answers
    /// first and repairs a damaged replica after, so each read is followed by a short
    /// wait for the repair to land (a round trip or two) before the next.
    async fn hold(&self, key: StoreKey) -> Result<(), String> {
        for _ in 0..ATTEMPTS {
            if !self.damaged_here(&key).await? {
                return Ok(());
            }
            let now_ns = self.clock.now_ns();
            let _ = self.proxy.read_everywhere(key.clone(), now_ns).await;
            for wait_ms in [1, 2, 4, 8, 16, 32, 64, 128] {
                if !self.damaged_here(&key).await? {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            }
        }
        Err(format!("{key:?} still not repaired after {ATTEMPTS} reads"))
    }

    async fn damaged_here(&self, key: &StoreKey) -> Result<bool, String> {
        let (tx, rx) = oneshot::channel();
        let stopped = || "the replica stopped".to_string();
        (self.replica.send(Envelope::IsDamaged(key.to_bytes(), tx))).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }
}
