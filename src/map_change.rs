//! Changing the cluster map online: nodes join, leave or replace one another while
//! clients read and write every shard (DESIGN §12).
//!
//! A change from map M (epoch e) to M' goes through three maps, each published to the
//! map source that every proxy and storage server follows:
//!
//! 1. **Joint** (e+1): M' with M's zones as `previous`. A moving shard has both its
//!    old and its new node as acceptors, and a quorum holds a majority of each layout,
//!    so it meets every quorum of M and of M'. A joining node starts empty: the first
//!    time a server serves a map that names it a new acceptor of a shard, it drops
//!    whatever it held of the shard (left over from an earlier tenure by a drop that a
//!    crash cut short), and persists the map's epoch behind the removals before it
//!    serves the map; the driver waits for each joining node to serve the joint map so
//!    (a dead one holds the change up until the change is redirected without it).
//! 2. **Fence.** Storage servers serve only senders on their own map. Once a majority
//!    of each moving shard's old layout serves the joint map (or later), no request on
//!    M can complete any more.
//! 3. **Copy and catch-up**, a few shards at a time. Each joining node is sent the
//!    records the node it replaces holds of the shard, a page per message, which it
//!    takes as late Accepts of their ballots: never below its own promise, and only
//!    from senders on the joint map (it refuses them once it serves the final map).
//!    Such an Accept is one the protocol already allows: the record is a real
//!    proposal, and in the joint map every quorum holds a majority of the old layout,
//!    where Paxos' own argument applies. Then every node of the shard lists its keys
//!    with their accepted ballots, and every key an old node holds at a ballot that
//!    a majority of the new layout has not reached is read through the joint quorums:
//!    a read answers only when a joint quorum agrees on the key's record, and writes
//!    it back first otherwise. A record chosen before the change is on an old
//!    majority, which meets the old nodes listed, so afterwards it (or a later record
//!    built on it) is on a majority of the new layout. Records chosen later are there
//!    anyway (joint quorums). The copy only saves reads; the lists decide.
//! 4. **Final** (e+2): M' alone. Its quorums meet the joint map's; M's cannot complete
//!    any more. A server drops the shards the map no longer places on it.
//!
//! Adjacent maps always have intersecting quorums, and maps two apart never serve at
//! once: that is the whole safety argument, with the catch-up for records chosen
//! before the change. The driver keeps no state of its own: a change interrupted
//! anywhere is resumed from the map source (a joint map there is finished).
//!
//! A change under way can be **redirected** to other zones (or rolled back to M's):
//! the new joint map keeps M's zones as `previous`. Its quorums hold a majority of M's
//! layout, as the abandoned joint map's did, so the two meet, and its fence (a majority
//! of M's layout on it) stops the abandoned one before its own final map.

use crate::cluster::{Placement, ShardMap, Zone};
use crate::fault::{bug, Bug};
use crate::key::StoreKey;
use crate::protocol::Status;
use crate::proxy::Proxy;
use crate::record::Ballot;
use crate::replica::{NodeRequest, ReplicaReply, ReplicaRequest};
use futures::future::BoxFuture;
use futures::StreamExt;
use std::collections::{btree_map, BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `[map_source]` in a proxy's or storage server's configuration.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MapSourceConfig {
    /// etcd's client URLs (`http://host:2379`).
    pub etcd: Vec<String>,
    /// The key that holds the map.
    #[serde(default = "default_key")]
    pub key: String,
}

fn default_key() -> String {
    "/junokv/map".into()
}

/// Where the cluster map lives: what every proxy and storage server follows.
pub trait MapStore: Send + Sync {
    /// The map now.
    fn current(&self) -> BoxFuture<'_, Result<ShardMap, String>>;
    /// Replaces the map, if it is still the one of epoch `over` (so that two drivers
    /// cannot interleave their steps).
    fn publish(&self, map: ShardMap, over: u64) -> BoxFuture<'_, Result<(), String>>;
}

/// A map source inside one process (the simulator's, or a test's): followers
/// subscribe to the channel.
impl MapStore for tokio::sync::watch::Sender<ShardMap> {
    fn current(&self) -> BoxFuture<'_, Result<ShardMap, String>> {
        let map = self.borrow().clone();
        Box::pin(async move { Ok(map) })
    }

    fn publish(&self, map: ShardMap, over: u64) -> BoxFuture<'_, Result<(), String>> {
        let mut result = Ok(());
        self.send_if_modified(|current| {
            if current.epoch != over {
                result = Err(format!(
                    "the map is at epoch {}, not {over}: another change went first",
                    current.epoch
                ));
                return false;
            }
            *current = map;
            true
        });
        Box::pin(async move { result })
    }
}

/// How long the driver waits between looks at the nodes, and before retrying a key.
const POLL: Duration = Duration::from_millis(200);

/// Shards moved at once.
const SHARDS_AT_ONCE: usize = 4;

/// Catch-up reads of one shard in flight at once.
const CATCH_UP_READS: usize = 16;

/// About how many bytes of records one copy message carries.
const COPY_BYTES: u32 = 1 << 20;

/// What a change tells as it goes (an operator's progress bar, log lines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The old map can no longer complete a request: `shards` shards move now.
    Fenced { shards: usize },
    /// One shard is on its new nodes.
    Moved(ShardMoved),
}

/// What moving one shard took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardMoved {
    pub shard: u16,
    /// Records copied to its joining nodes, and their size, roughly.
    pub copied: u64,
    pub bytes: u64,
    /// Keys read through the joint quorums: those a majority of the new layout did
    /// not yet hold at the newest ballot an old node had.
    pub read: u64,
}

/// What the shards moved so far took, added up (a report is a shared `Fn`, hence the
/// atomics): what an operator's progress bar and the simulator's trace tell.
#[derive(Debug, Default)]
pub struct Totals {
    copied: AtomicU64,
    bytes: AtomicU64,
    read: AtomicU64,
}

impl Totals {
    pub fn add(&self, moved: &ShardMoved) {
        self.copied.fetch_add(moved.copied, Ordering::Relaxed);
        self.bytes.fetch_add(moved.bytes, Ordering::Relaxed);
        self.read.fetch_add(moved.read, Ordering::Relaxed);
    }

    /// Records copied, their bytes, and keys read through the joint quorums.
    pub fn get(&self) -> (u64, u64, u64) {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        (load(&self.copied), load(&self.bytes), load(&self.read))
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (copied, bytes, read) = self.get();
        let mib = bytes as f64 / f64::from(1 << 20);
        write!(
            f,
            "{copied} records ({mib:.1} MiB) copied, {read} keys read through the joint quorums"
        )
    }
}

/// Changes the map in `store` to one of `zones` (same number of zones, nodes added,
/// removed or replaced), through `proxy`, which follows `store`, telling `report` how
/// it goes. Finishes a change already under way to the same zones, and redirects one
/// under way to others (from the zones before it). Returns the final map.
pub async fn change(
    store: &dyn MapStore,
    proxy: &Arc<Proxy>,
    zones: Vec<Zone>,
    report: &(dyn Fn(Progress) + Sync),
) -> Result<ShardMap, String> {
    let now = store.current().await?;
    let joint = match &now.previous {
        Some(_) if now.zones == zones => now,
        None if now.zones == zones => return Ok(now),
        // A change under way to other zones is redirected: the joint map of the zones
        // before it and these (back to them, it rolls the change back).
        before => {
            let mut joint = ShardMap {
                epoch: now.epoch + 1,
                previous: Some(before.clone().unwrap_or(now.zones.clone())),
                zones,
                ..now.clone()
            };
            joint.validate()?;
            if bug(Bug::MoveSkipsJoint) {
                joint.previous = None;
                store.publish(joint.clone(), now.epoch).await?;
                return Ok(joint);
            }
            store.publish(joint.clone(), now.epoch).await?;
            tracing::info!(
                epoch = joint.epoch,
                redirected = before.is_some(),
                "map change: joint map published"
            );
            joint
        }
    };
    finish(store, proxy, joint, report).await
}

/// Finishes the change under way in `store`, if there is one (its joint map is
/// there): what a driver does first, after another driver stopped mid-change.
pub async fn resume(
    store: &dyn MapStore,
    proxy: &Arc<Proxy>,
    report: &(dyn Fn(Progress) + Sync),
) -> Result<Option<ShardMap>, String> {
    let now = store.current().await?;
    match now.previous {
        Some(_) => finish(store, proxy, now, report).await.map(Some),
        None => Ok(None),
    }
}

/// Finishes a change whose joint map `store` holds (fence, catch-up, final map).
async fn finish(
    store: &dyn MapStore,
    proxy: &Arc<Proxy>,
    joint: ShardMap,
    report: &(dyn Fn(Progress) + Sync),
) -> Result<ShardMap, String> {
    while proxy.map().epoch < joint.epoch {
        tokio::time::sleep(POLL).await;
    }
    let moving: Vec<u16> = (0..joint.num_shards)
        .filter(|s| joint.placement(*s).layouts.len() > 1)
        .collect();
    wait_for_fence(proxy, &joint, &moving).await;
    tracing::info!(
        epoch = joint.epoch,
        shards = moving.len(),
        "map change: old maps fenced, catching up"
    );
    report(Progress::Fenced {
        shards: moving.len(),
    });
    if !bug(Bug::MoveWithoutCatchUp) {
        let moves = futures::stream::iter(moving).map(|s| move_shard(proxy, &joint, s));
        let mut moves = moves.buffer_unordered(SHARDS_AT_ONCE);
        while let Some(moved) = moves.next().await {
            tracing::debug!(?moved, "map change: shard moved");
            report(Progress::Moved(moved));
        }
    }
    let done = ShardMap {
        epoch: joint.epoch + 1,
        previous: None,
        ..joint.clone()
    };
    store.publish(done.clone(), joint.epoch).await?;
    tracing::info!(epoch = done.epoch, "map change: final map published");
    Ok(done)
}

/// Whether the places in `done` hold a majority of `layout`.
fn majority(layout: &[usize], done: impl Fn(usize) -> bool) -> bool {
    layout.iter().filter(|i| done(**i)).count() > layout.len() / 2
}

/// Waits until a majority of every moving shard's old layout serves `joint` or a
/// later map: from then on no quorum of the map before can form.
async fn wait_for_fence(proxy: &Arc<Proxy>, joint: &ShardMap, moving: &[u16]) {
    let placements: Vec<Placement> = moving.iter().map(|s| joint.placement(*s)).collect();
    let nodes: BTreeSet<&str> = (placements.iter())
        .flat_map(|p| p.layouts[1].iter().map(|i| p.nodes[*i].addr.as_str()))
        .collect();
    loop {
        let mut fenced = BTreeSet::new();
        for node in &nodes {
            if let Ok(ReplicaReply::Node(info)) = proxy.ask_node(node, NodeRequest::Status).await {
                if info.epoch.is_some_and(|e| e >= joint.epoch) {
                    fenced.insert(*node);
                }
            }
        }
        let old_fenced =
            |p: &Placement| majority(&p.layouts[1], |i| fenced.contains(p.nodes[i].addr.as_str()));
        if placements.iter().all(old_fenced) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Moves `shard` onto its joining nodes: copies its records there from the nodes
/// they replace, then reads through the joint quorums every key whose record a
/// majority of the new layout may still lack.
async fn move_shard(proxy: &Arc<Proxy>, joint: &ShardMap, shard: u16) -> ShardMoved {
    let placement = joint.placement(shard);
    let (new, old) = (&placement.layouts[0], &placement.layouts[1]);
    let mut moved = ShardMoved {
        shard,
        ..ShardMoved::default()
    };
    for (zone, &was) in old.iter().enumerate() {
        if was != new[zone] {
            let to = placement.nodes[new[zone]].addr.as_str();
            if !joined(proxy, joint.epoch, to).await {
                return moved;
            }
            // From the node it replaces, or else any other that held the shard.
            let from = std::iter::once(was).chain(old.iter().copied().filter(|i| *i != was));
            for from in from.map(|i| placement.nodes[i].addr.as_str()) {
                if copy(proxy, joint.epoch, shard, from, to, &mut moved).await {
                    break;
                }
            }
        }
    }
    let keys = unsettled(proxy, &placement, shard).await;
    if !bug(Bug::CatchUpTrustsCopy) {
        moved.read = keys.len() as u64;
        let reads = futures::stream::iter(keys).map(|key| catch_up(proxy, key));
        reads.buffer_unordered(CATCH_UP_READS).collect::<()>().await;
    }
    moved
}

/// Waits until the joining node `to` durably serves the joint map of `epoch` (so that
/// it has dropped whatever it held of its new shards from an earlier tenure: see the
/// module doc), or returns false once the map has moved past it (another driver
/// finished or redirected the change: this one's final map will be refused).
async fn joined(proxy: &Arc<Proxy>, epoch: u64, to: &str) -> bool {
    let nothing = ReplicaRequest::Copy {
        records: Vec::new(),
    };
    let mut tries = 0u64;
    loop {
        if proxy.map().epoch > epoch {
            return false;
        }
        tries += 1;
        match proxy.send(to, &nothing, epoch).await {
            Ok(ReplicaReply::Copied { .. }) => return true,
            other if tries.is_multiple_of(25) => tracing::warn!(
                node = to,
                ?other,
                "map change: waiting for a joining node to serve the joint map (if it is \
                 gone for good, change the map again without it)"
            ),
            _ => {}
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Copies the records `from` holds of `shard` to `to`, as a sender on the joint map
/// of `epoch` (see [`ReplicaRequest::Copy`]). Returns whether it got to the end; the
/// catch-up reads what a copy left out either way.
async fn copy(
    proxy: &Arc<Proxy>,
    epoch: u64,
    shard: u16,
    from: &str,
    to: &str,
    moved: &mut ShardMoved,
) -> bool {
    let mut after = None;
    loop {
        let read = NodeRequest::ReadShard {
            shard,
            after: after.clone(),
            limit_bytes: COPY_BYTES,
        };
        let records = match proxy.ask_node(from, read).await {
            Ok(ReplicaReply::Records { records }) if records.is_empty() => return true,
            Ok(ReplicaReply::Records { records }) => records,
            other => {
                tracing::debug!(shard, from, ?other, "map change: copy source failed");
                return false;
            }
        };
        after = records.last().map(|(k, _)| k.clone());
        let bytes: u64 = (records.iter())
            .map(|(_, (_, r))| r.value.len() as u64)
            .sum();
        let count = records.len() as u64;
        match proxy
            .send(to, &ReplicaRequest::Copy { records }, epoch)
            .await
        {
            Ok(ReplicaReply::Copied { .. }) => {
                (moved.copied, moved.bytes) = (moved.copied + count, moved.bytes + bytes)
            }
            other => {
                tracing::debug!(shard, to, ?other, "map change: copy refused");
                return false;
            }
        }
    }
}

/// The keys of `shard` an old node holds at a ballot that fewer than a majority of
/// the new layout has durably reached, or holds with no record or a write on its way
/// (listed once a majority of each layout answered in full). Every record chosen
/// before the change is durable on an old majority, which shares a node with the
/// one listed, so its ballot, or a later one, or a key in flux is what is found.
async fn unsettled(proxy: &Arc<Proxy>, placement: &Placement<'_>, shard: u16) -> Vec<StoreKey> {
    let (new, old) = (&placement.layouts[0], &placement.layouts[1]);
    let mut lists: BTreeMap<usize, BTreeMap<StoreKey, Option<Ballot>>> = BTreeMap::new();
    loop {
        for (i, node) in placement.nodes.iter().enumerate() {
            if let btree_map::Entry::Vacant(unlisted) = lists.entry(i) {
                if let Some(list) = list_shard(proxy, &node.addr, shard).await {
                    unlisted.insert(list);
                }
            }
        }
        let listed = |i| lists.contains_key(&i);
        if majority(new, listed) && majority(old, listed) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let ballot =
        |i: usize, key: &StoreKey| lists.get(&i).and_then(|l| l.get(key).copied().flatten());
    // The newest ballot an old node holds each key at; none if one holds it in flux.
    let mut newest: BTreeMap<&StoreKey, Option<Ballot>> = BTreeMap::new();
    for (key, b) in old.iter().filter_map(|i| lists.get(i)).flatten() {
        let at = newest.entry(key).or_insert(*b);
        *at = at.zip(*b).map(|(x, y)| x.max(y));
    }
    (newest.into_iter())
        .filter(|(key, b)| b.is_none_or(|b| !majority(new, |i| ballot(i, key) >= Some(b))))
        .map(|(key, _)| key.clone())
        .collect()
}

/// Every key `node` holds a slot for of `shard`, with its accepted ballot, or None if
/// it did not answer in full.
async fn list_shard(
    proxy: &Arc<Proxy>,
    node: &str,
    shard: u16,
) -> Option<BTreeMap<StoreKey, Option<Ballot>>> {
    const PAGE: u32 = 1024;
    let mut keys = BTreeMap::new();
    let mut after = None;
    loop {
        let ask = NodeRequest::ListKeys {
            after,
            shard: Some(shard),
            limit: PAGE,
        };
        let Ok(ReplicaReply::Keys { keys: page }) = proxy.ask_node(node, ask).await else {
            return None;
        };
        let last = page.len() < PAGE as usize;
        after = page.last().map(|(k, _)| k.clone());
        keys.extend(page);
        if last {
            return Some(keys);
        }
    }
}

/// Reads `key` through the joint quorums until a read completes (see the module doc).
async fn catch_up(proxy: &Arc<Proxy>, key: StoreKey) {
    loop {
        let now_ns = proxy.clock().now_ns();
        match proxy.read_everywhere(key.clone(), now_ns).await {
            Ok(_) | Err(Status::NoKey) => return,
            Err(status) => {
                tracing::debug!(%status, "map change: catch-up read failed, retrying");
                tokio::time::sleep(POLL).await;
            }
        }
    }
}
