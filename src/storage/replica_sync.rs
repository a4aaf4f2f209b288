//! Anti-entropy: bringing a key's replicas back into agreement when no client read
//! reaches the one that lags. Client reads ask only a quorum of replicas, so a replica
//! that missed writes (it was down, or cut off) is repaired only by the reads that
//! happen to ask it; this pass finds every such key instead.
//!
//! For each shard it is responsible for (one replica of each shard is: the one at the
//! shard's number modulo the replica count, so the work is shared and done once), a
//! storage server asks every replica for the shard's digest (see
//! `storage::shard_digest`): equal digests, the usual case, mean the replicas agree and
//! the shard is done in one round trip. Otherwise it lists the shard's keys on every
//! replica, with the ballot each durably accepted, in key order, a page at a time, and
//! merges the lists. A key
//! missing from a replica, held at different ballots, or in flux (a write on its way)
//! is handed to the proxy's read path with every replica asked
//! ([`Proxy::read_everywhere`]), which decides and repairs by the protocol's own rules:
//! this pass only picks keys. It skips a shard a replica of which does not answer (the
//! next pass tries again) and the whole pass while the map changes (a move's catch-up
//! settles keys on the new replicas then).

use crate::key::StoreKey;
use crate::proxy::Proxy;
use crate::record::Ballot;
use crate::replica::{NodeRequest, ReplicaReply};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;

/// Keys listed per request to a replica.
const PAGE: u32 = 1024;
/// Shards compared at once (most passes find nothing to do: the time a pass takes is
/// then round trips to the replicas, which a pass in step would add up).
const SHARDS_AT_ONCE: usize = 8;

/// Compares the replicas of every shard the server `me` (its address in the map) is
/// responsible for, through `proxy`, resolving about `concurrency` keys at once.
/// Returns how many keys the replicas disagreed on (each handed to the read path),
/// and how many shards' keys were listed.
pub async fn sync(proxy: &Arc<Proxy>, me: &str, concurrency: usize) -> (u64, u64) {
    let map = proxy.map();
    if map.previous.is_some() {
        return (0, 0);
    }
    let per_shard = (concurrency / SHARDS_AT_ONCE).max(1);
    let (mut running, mut disagreed, mut listed) = (FuturesUnordered::new(), 0, 0);
    // A shard whose keys were listed, with the keys its replicas disagreed on.
    let mut tally = |synced: Option<u64>| {
        if let Some(keys) = synced {
            (disagreed, listed) = (disagreed + keys, listed + 1);
        }
    };
    for shard in 0..map.num_shards {
        let replicas = map.replicas(shard);
        if replicas[usize::from(shard) % replicas.len()] != me {
            continue;
        }
        let replicas = replicas.into_iter().map(String::from).collect();
        running.push(sync_shard(proxy, shard, replicas, per_shard));
        if running.len() >= SHARDS_AT_ONCE {
            if let Some(synced) = running.next().await {
                tally(synced);
            }
        }
    }
    while let Some(synced) = running.next().await {
        tally(synced);
    }
    (disagreed, listed)
}

/// One replica's listing of a shard, read a page at a time.
struct Listing<'a> {
    addr: &'a str,
    /// Keys listed and not yet merged, with their engine key (the order listings
    /// come in).
    ahead: VecDeque<(Vec<u8>, StoreKey, Option<Ballot>)>,
    after: Option<StoreKey>,
    done: bool,
}

impl Listing<'_> {
    /// Makes sure a key is ahead unless the listing is over; false if the replica
    /// did not answer.
    async fn fill(&mut self, proxy: &Proxy, shard: u16) -> bool {
        if !self.ahead.is_empty() || self.done {
            return true;
        }
        let ask = NodeRequest::ListKeys {
            after: self.after.take(),
            shard: Some(shard),
            limit: PAGE,
        };
        let Ok(ReplicaReply::Keys { keys }) = proxy.ask_node(self.addr, ask).await else {
            return false;
        };
        self.done = keys.len() < PAGE as usize;
        self.after = keys.last().map(|(k, _)| k.clone());
        (self.ahead).extend(keys.into_iter().map(|(k, b)| (k.to_bytes(), k, b)));
        true
    }
}

/// Whether every replica of `shard` gave the same digest.
async fn digests_agree(proxy: &Proxy, shard: u16, replicas: &[String]) -> bool {
    let asked =
        (replicas.iter()).map(|addr| proxy.ask_node(addr, NodeRequest::ShardDigest { shard }));
    let digests: Vec<Option<[u8; 16]>> = (futures::future::join_all(asked).await.into_iter())
        .map(|reply| match reply {
            Ok(ReplicaReply::Digest { digest }) => Some(digest),
            _ => None,
        })
        .collect();
    digests[0].is_some() && digests.iter().all(|d| *d == digests[0])
}

/// Unless the replicas' digests of `shard` agree (then: `None`), merges the listings
/// of `shard` on `replicas` and resolves every key they disagree on, as far as every
/// replica answers (the rest waits for the next pass). Returns how many keys that was.
async fn sync_shard(
    proxy: &Arc<Proxy>,
    shard: u16,
    replicas: Vec<String>,
    concurrency: usize,
) -> Option<u64> {
    if digests_agree(proxy, shard, &replicas).await {
        return None;
    }
    let mut listings: Vec<Listing> = (replicas.iter())
        .map(|addr| Listing {
            addr,
            ahead: VecDeque::new(),
            after: None,
            done: false,
        })
        .collect();
    let mut resolving = FuturesUnordered::new();
    let mut disagreed = 0;
    loop {
        let filled = listings.iter_mut().map(|l| l.fill(proxy, shard));
        if !futures::future::join_all(filled)
            .await
            .into_iter()
            .all(|answered| answered)
        {
            break;
        }
        let Some(next) = (listings.iter())
            .filter_map(|l| l.ahead.front().map(|(bytes, _, _)| bytes))
            .min()
            .cloned()
        else {
            break;
        };
        // Each replica's ballot for the key (`None`: it lacks the key).
        let mut key = None;
        let ballots: Vec<Option<Option<Ballot>>> = (listings.iter_mut())
            .map(|l| match l.ahead.front() {
                Some((bytes, _, _)) if *bytes == next => {
                    let (_, k, ballot) = l.ahead.pop_front().expect("a key ahead");
                    key = Some(k);
                    Some(ballot)
                }
                _ => None,
            })
            .collect();
        let agreed =
            matches!(ballots[0], Some(Some(_))) && ballots.iter().all(|b| *b == ballots[0]);
        if agreed {
            continue;
        }
        disagreed += 1;
        let key = key.expect("the key came from a listing");
        let proxy = proxy.clone();
        resolving.push(async move {
            let now_ns = proxy.clock().now_ns();
            // The answer does not matter: the read path repairs what it finds.
            let _ = proxy.read_everywhere(key, now_ns).await;
        });
        while resolving.len() >= concurrency.max(1) {
            resolving.next().await;
        }
    }
    while resolving.next().await.is_some() {}
    Some(disagreed)
}
