//! Changing the cluster map online: nodes join, leave or replace one another while
//! clients read and write every shard (DESIGN §12).
//!
//! A change from map M (epoch e) to M' goes through three maps, each published to the
//! map source that every proxy and storage server follows:
//!
//! 1. **Joint** (e+1): M' with M's zones as `previous`. A moving shard has both its
//!    old and its new node as acceptors, and a quorum holds a majority of each layout,
//!    so it meets every quorum of M and of M'. A joining node starts empty.
//! 2. **Fence.** Storage servers serve only senders on their own map. Once a majority
//!    of each moving shard's old layout serves the joint map (or later), no request on
//!    M can complete any more.
//! 3. **Catch-up.** Every key an old majority holds of a moving shard is read through
//!    the joint quorums: a read answers only when a joint quorum agrees on the key's
//!    record, and writes it back first otherwise, so afterwards the record is on a
//!    majority of the new layout. Records chosen later are there anyway (joint quorums).
//! 4. **Final** (e+2): M' alone. Its quorums meet the joint map's; M's cannot complete
//!    any more. A server drops the shards the map no longer places on it.
//!
//! Adjacent maps always have intersecting quorums, and maps two apart never serve at
//! once: that is the whole safety argument, with the catch-up for records chosen
//! before the change. The driver keeps no state of its own: a change interrupted
//! anywhere is resumed from the map source (a joint map there is finished).

use crate::cluster::{ShardMap, Zone};
use crate::fault::{bug, Bug};
use crate::key::StoreKey;
use crate::protocol::Status;
use crate::proxy::Proxy;
use crate::replica::{NodeRequest, ReplicaReply};
use crate::semantics::Op;
use futures::future::BoxFuture;
use futures::StreamExt;
use std::collections::BTreeSet;
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

/// Catch-up reads in flight at once.
const CATCH_UP_READS: usize = 64;

/// Changes the map in `store` to one of `zones` (same number of zones, nodes added,
/// removed or replaced), through `proxy`, which follows `store`. Finishes a change
/// already under way to the same zones; refuses one under way to others. Returns the
/// final map.
pub async fn change(
    store: &dyn MapStore,
    proxy: &Arc<Proxy>,
    zones: Vec<Zone>,
) -> Result<ShardMap, String> {
    let now = store.current().await?;
    let joint = match &now.previous {
        Some(_) if now.zones == zones => now,
        Some(_) => {
            return Err(format!(
                "another change of the map is under way (epoch {}): finish it first",
                now.epoch
            ))
        }
        None if now.zones == zones => return Ok(now),
        None => {
            let mut joint = ShardMap {
                epoch: now.epoch + 1,
                previous: Some(now.zones.clone()),
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
            tracing::info!(epoch = joint.epoch, "map change: joint map published");
            joint
        }
    };
    finish(store, proxy, joint).await
}

/// Finishes the change under way in `store`, if there is one (its joint map is
/// there): what a driver does first, after another driver stopped mid-change.
pub async fn resume(store: &dyn MapStore, proxy: &Arc<Proxy>) -> Result<Option<ShardMap>, String> {
    let now = store.current().await?;
    match now.previous {
        Some(_) => finish(store, proxy, now).await.map(Some),
        None => Ok(None),
    }
}

/// Finishes a change whose joint map `store` holds (fence, catch-up, final map).
async fn finish(
    store: &dyn MapStore,
    proxy: &Arc<Proxy>,
    joint: ShardMap,
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
    if !bug(Bug::MoveWithoutCatchUp) {
        let keys = old_keys(proxy, &joint, &moving).await;
        tracing::info!(keys = keys.len(), "map change: keys to catch up");
        let total = keys.len();
        let reads = futures::stream::iter(keys).map(|key| catch_up(proxy, key));
        let mut reads = reads.buffer_unordered(CATCH_UP_READS);
        let mut done = 0;
        while reads.next().await.is_some() {
            done += 1;
            if done % 10_000 == 0 {
                tracing::info!("map change: caught up {done} of {total} keys");
            }
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

/// The old layouts of the moving shards (their nodes by address), and every node
/// of them once.
struct OldLayouts<'a> {
    layouts: Vec<Vec<&'a str>>,
    nodes: BTreeSet<&'a str>,
}

impl<'a> OldLayouts<'a> {
    fn of(joint: &'a ShardMap, moving: &[u16]) -> Self {
        let layouts: Vec<Vec<&str>> = (moving.iter())
            .map(|&s| {
                let p = joint.placement(s);
                let old = p.layouts[1].iter().map(|&i| p.nodes[i].addr.as_str());
                old.collect()
            })
            .collect();
        let nodes = layouts.iter().flatten().copied().collect();
        OldLayouts { layouts, nodes }
    }

    /// Whether `done` holds a majority of every old layout.
    fn majority_of_each(&self, done: &BTreeSet<&str>) -> bool {
        (self.layouts.iter()).all(|l| l.iter().filter(|a| done.contains(*a)).count() > l.len() / 2)
    }
}

/// Waits until a majority of every moving shard's old layout serves `joint` or a
/// later map: from then on no quorum of the map before can form.
async fn wait_for_fence(proxy: &Arc<Proxy>, joint: &ShardMap, moving: &[u16]) {
    let old = OldLayouts::of(joint, moving);
    loop {
        let mut fenced = BTreeSet::new();
        for node in &old.nodes {
            if let Ok(ReplicaReply::Node(info)) = proxy.ask_node(node, NodeRequest::Status).await {
                if info.epoch.is_some_and(|e| e >= joint.epoch) {
                    fenced.insert(*node);
                }
            }
        }
        if old.majority_of_each(&fenced) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every key of a moving shard held by a majority of its old layout (listed once all
/// of such a majority answered in full): every record chosen before the change is on
/// an old majority, which shares a node with this one.
async fn old_keys(proxy: &Arc<Proxy>, joint: &ShardMap, moving: &[u16]) -> BTreeSet<StoreKey> {
    let old = OldLayouts::of(joint, moving);
    let wanted: BTreeSet<u16> = moving.iter().copied().collect();
    let mut keys = BTreeSet::new();
    let mut listed = BTreeSet::new();
    loop {
        let unlisted: Vec<&str> = old.nodes.difference(&listed).copied().collect();
        for node in unlisted {
            if let Some(held) = list_keys(proxy, node).await {
                keys.extend(held.into_iter().filter(|k| wanted.contains(&k.shard)));
                listed.insert(node);
            }
        }
        if old.majority_of_each(&listed) {
            return keys;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every key `node` holds a slot for, or None if it did not answer in full.
async fn list_keys(proxy: &Arc<Proxy>, node: &str) -> Option<Vec<StoreKey>> {
    const PAGE: u32 = 1024;
    let mut keys: Vec<StoreKey> = Vec::new();
    loop {
        let after = keys.last().cloned();
        let ask = NodeRequest::ListKeys { after, limit: PAGE };
        let Ok(ReplicaReply::Keys { keys: page }) = proxy.ask_node(node, ask).await else {
            return None;
        };
        let last = page.len() < PAGE as usize;
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
        let read = Op::Get { extend_ttl: 0 };
        match proxy.execute(key.clone(), read, now_ns, None).await {
            Ok(_) | Err(Status::NoKey) => return,
            Err(status) => {
                tracing::debug!(%status, "map change: catch-up read failed, retrying");
                tokio::time::sleep(POLL).await;
            }
        }
    }
}
