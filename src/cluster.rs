//! The shard map: which storage node in each zone holds each shard.

use serde::{Deserialize, Serialize};

/// A zone: one replica of every shard, spread over the zone's storage nodes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// The datacentre the zone is in.
    pub datacenter: String,
    /// The zone's storage nodes.
    pub nodes: Vec<Node>,
}

impl Zone {
    /// The node holding `shard` in this zone (see [`ShardMap::replicas`]).
    pub fn owner(&self, shard: u16) -> &Node {
        let best = self.nodes.iter().max_by_key(|n| score(shard, &n.id));
        best.expect("a validated zone has nodes")
    }
}

/// A storage node: the name its shards are placed by, and where to reach it. Placement
/// must not follow the address: the same node may be reached by different addresses
/// (a DNS name and an IP, a relay) or move to a new one, and every proxy must still
/// place every shard on the same nodes. In TOML a node is its address (then also its
/// id) or `{ id = "...", addr = "..." }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "NodeText", into = "NodeText")]
pub struct Node {
    pub id: String,
    pub addr: String,
}

impl Node {
    /// A node whose id is its address.
    pub fn at(addr: impl Into<String>) -> Self {
        let addr = addr.into();
        Node {
            id: addr.clone(),
            addr,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum NodeText {
    Addr(String),
    Named { id: String, addr: String },
}

impl From<NodeText> for Node {
    fn from(t: NodeText) -> Self {
        match t {
            NodeText::Addr(addr) => Node::at(addr),
            NodeText::Named { id, addr } => Node { id, addr },
        }
    }
}

impl From<Node> for NodeText {
    fn from(n: Node) -> Self {
        if n.id == n.addr {
            NodeText::Addr(n.addr)
        } else {
            NodeText::Named {
                id: n.id,
                addr: n.addr,
            }
        }
    }
}

/// The cluster layout, loaded from TOML. Replication factor = number of zones.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardMap {
    /// Bumped whenever the layout changes.
    #[serde(default)]
    pub epoch: u64,
    /// Fixed for the life of a cluster.
    #[serde(default = "default_shards")]
    pub num_shards: u16,
    pub zones: Vec<Zone>,
    /// While a change of the map is under way: the zones as they were before it. A
    /// shard whose node in a zone differs between `previous` and `zones` has both as
    /// acceptors, and a quorum must hold a majority of each layout (joint quorums,
    /// DESIGN §12): it meets every quorum of the maps before and after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Vec<Zone>>,
}

/// A shard's acceptors under one map, and which sets of them make a quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement<'a> {
    /// The shard's node in each zone, in zone order; then, while the map changes, the
    /// nodes that held it before and hold it no more.
    pub nodes: Vec<&'a Node>,
    /// Each layout's acceptors, as places in `nodes`: the layout of `zones`, and while
    /// the map changes the one before, if it differs. A quorum holds a majority of each.
    pub layouts: Vec<Vec<usize>>,
}

fn default_shards() -> u16 {
    1024
}

/// A node's score for a shard: a hash of its id and the shard, the same on every
/// machine and version (placement depends on it). Ties go to the larger id.
fn score(shard: u16, id: &str) -> (u64, &str) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a over the id...
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // ...mixed with the shard (splitmix64's finaliser), so that one node's scores for
    // different shards are unrelated.
    let mut x = h ^ u64::from(shard).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31), id)
}

impl ShardMap {
    /// Checks what the rest of the code relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_shards == 0 || self.num_shards == u16::MAX {
            return Err("num_shards must be between 1 and 65534".into());
        }
        if self.zones.is_empty() {
            return Err("at least one zone is needed".into());
        }
        if let Some(z) = self.zones.iter().find(|z| z.nodes.is_empty()) {
            return Err(format!(
                "a zone in datacenter {:?} has no nodes",
                z.datacenter
            ));
        }
        // A node named twice would hold two replicas of some shards: one failure could
        // then take a quorum.
        let nodes = || self.zones.iter().flat_map(|z| &z.nodes);
        let (mut ids, mut addrs) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        if let Some(twice) = nodes().find(|n| !ids.insert(n.id.as_str())) {
            return Err(format!("node {} is named twice in the map", twice.id));
        }
        if let Some(twice) = nodes().find(|n| !addrs.insert(n.addr.as_str())) {
            return Err(format!("node {} is named twice in the map", twice.addr));
        }
        if let Some(previous) = &self.previous {
            let before = ShardMap {
                zones: previous.clone(),
                previous: None,
                ..self.clone()
            };
            before
                .validate()
                .map_err(|e| format!("the map before the change: {e}"))?;
            if previous.len() != self.zones.len() {
                return Err("a change of the map cannot add or remove zones".into());
            }
            // A node on both sides keeps its address: a shard's two acceptors in a zone
            // must be two nodes.
            let renamed = self.zones.iter().zip(previous).find_map(|(now, was)| {
                now.nodes
                    .iter()
                    .find(|n| (was.nodes.iter()).any(|w| (w.id == n.id) != (w.addr == n.addr)))
            });
            if let Some(n) = renamed {
                return Err(format!(
                    "node {} changes its id or address mid-change",
                    n.id
                ));
            }
        }
        Ok(())
    }

    /// A shard's acceptors and quorums (see [`Placement`]).
    pub fn placement(&self, shard: u16) -> Placement<'_> {
        let mut nodes: Vec<&Node> = self.zones.iter().map(|z| z.owner(shard)).collect();
        let now: Vec<usize> = (0..nodes.len()).collect();
        let mut layouts = vec![now.clone()];
        if let Some(previous) = &self.previous {
            let mut before = now;
            for (z, zone) in previous.iter().enumerate() {
                let was = zone.owner(shard);
                if was.id != nodes[z].id {
                    before[z] = nodes.len();
                    nodes.push(was);
                }
            }
            if before != layouts[0] {
                layouts.push(before);
            }
        }
        Placement { nodes, layouts }
    }

    /// The address of the storage node holding `shard` in each zone, in zone order.
    /// Inside a zone the shard goes to the node whose id scores highest for it
    /// (rendezvous hashing): each node gets about an equal share, adding a node moves
    /// onto it only the shards it now wins (about 1/(n+1) of the zone's), and removing
    /// one moves only its own shards.
    pub fn replicas(&self, shard: u16) -> Vec<&str> {
        self.zones
            .iter()
            .map(|z| z.owner(shard).addr.as_str())
            .collect()
    }

    /// Every storage node address (of the layouts before and after a change under
    /// way), each once.
    pub fn nodes(&self) -> Vec<&str> {
        let mut all: Vec<&str> = (self.zones.iter())
            .chain(self.previous.iter().flatten())
            .flat_map(|z| z.nodes.iter().map(|n| n.addr.as_str()))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_has_one_node_per_zone_balanced() {
        let map: ShardMap = toml::from_str(
            r#"
            num_shards = 1024
            [[zones]]
            datacenter = "dc1"
            nodes = ["a:1", "a:2"]
            [[zones]]
            datacenter = "dc1"
            nodes = ["b:1", "b:2", "b:3"]
            [[zones]]
            datacenter = "dc2"
            nodes = ["c:1"]
            "#,
        )
        .unwrap();
        map.validate().unwrap();
        let mut per_node = std::collections::BTreeMap::new();
        for s in 0..map.num_shards {
            let r = map.replicas(s);
            assert_eq!(r.len(), 3);
            for n in r {
                *per_node.entry(n).or_insert(0usize) += 1;
            }
        }
        // Each node near its equal share: 512 of 1024, 341 and 1024.
        for (node, share) in [("a:1", 512), ("a:2", 512), ("b:3", 341), ("c:1", 1024)] {
            let got = per_node[node];
            assert!(
                got.abs_diff(share) <= share / 8,
                "{node}: {got} of about {share}"
            );
        }
    }

    /// Random zones of random nodes: a node added to a zone takes only shards of that
    /// zone, about 1/(n+1) of them; a node removed gives up only its own; no other zone
    /// moves; every node holds near its share.
    #[test]
    fn placement_follows_ids_not_addresses() {
        let map: ShardMap = toml::from_str(
            r#"
            [[zones]]
            datacenter = "dc1"
            nodes = ["a:1", { id = "b", addr = "b:1" }]
            "#,
        )
        .unwrap();
        let mut moved = map.clone();
        moved.zones[0].nodes[1].addr = "relay:9".into();
        for s in 0..map.num_shards {
            let (before, after) = (map.replicas(s)[0], moved.replicas(s)[0]);
            assert!(before == after || (before, after) == ("b:1", "relay:9"));
        }
        // A node whose id is its address is written back as its address.
        let text = toml::to_string(&map).unwrap();
        assert!(
            text.contains(r#""a:1""#) && text.contains(r#"id = "b""#),
            "{text}"
        );
        assert_eq!(toml::from_str::<ShardMap>(&text).unwrap(), map);
    }

    #[test]
    fn a_moving_shard_has_both_nodes_and_both_layouts() {
        let zone = |nodes: &[&str]| Zone {
            datacenter: "dc".into(),
            nodes: nodes.iter().map(|n| Node::at(*n)).collect(),
        };
        let before = vec![zone(&["a:1"]), zone(&["b:1"]), zone(&["c:1"])];
        let map = ShardMap {
            epoch: 2,
            num_shards: 64,
            zones: vec![zone(&["a:1", "a:2"]), zone(&["b:1"]), zone(&["c:1"])],
            previous: Some(before),
        };
        map.validate().unwrap();
        let (mut moving, mut staying) = (0, 0);
        for s in 0..64 {
            let p = map.placement(s);
            let addrs: Vec<&str> = p.nodes.iter().map(|n| n.addr.as_str()).collect();
            if addrs[0] == "a:2" {
                moving += 1;
                assert_eq!(addrs, ["a:2", "b:1", "c:1", "a:1"]);
                assert_eq!(p.layouts, [vec![0, 1, 2], vec![3, 1, 2]]);
            } else {
                staying += 1;
                assert_eq!(addrs, ["a:1", "b:1", "c:1"]);
                assert_eq!(p.layouts, [vec![0, 1, 2]]);
            }
        }
        assert!(moving > 0 && staying > 0);
        // Every node of either layout is reached.
        assert_eq!(map.nodes(), ["a:1", "a:2", "b:1", "c:1"]);
        // A change keeps the zones, and a node keeps its address through it.
        let mut fewer = map.clone();
        fewer.zones.pop();
        assert!(fewer.validate().unwrap_err().contains("zones"));
        let mut moved = map.clone();
        moved.zones[1].nodes[0].addr = "b:9".into();
        assert!(moved.validate().unwrap_err().contains("mid-change"));
    }

    mod movement {
        use super::*;
        use proptest::prelude::*;

        fn shape() -> impl Strategy<Value = (Vec<usize>, u16, usize, u64)> {
            let zones = proptest::collection::vec(1usize..9, 1..5);
            let shards = prop_oneof![Just(256u16), Just(1024), Just(4096)];
            (zones, shards, any::<usize>(), 0u64..200)
        }

        fn map(zones: &[usize], shards: u16, salt: u64) -> ShardMap {
            let zones = zones
                .iter()
                .enumerate()
                .map(|(z, &n)| Zone {
                    datacenter: format!("dc{z}"),
                    nodes: (0..n)
                        .map(|i| Node::at(format!("10.{z}.{salt}.{i}:7001")))
                        .collect(),
                })
                .collect();
            ShardMap {
                epoch: 1,
                num_shards: shards,
                zones,
                previous: None,
            }
        }

        /// Replicas that moved, as (zone, from, to).
        fn moved(a: &ShardMap, b: &ShardMap) -> Vec<(usize, String, String)> {
            let mut moves = Vec::new();
            for s in 0..a.num_shards {
                let (ra, rb) = (a.replicas(s), b.replicas(s));
                for z in (0..ra.len()).filter(|&z| ra[z] != rb[z]) {
                    moves.push((z, ra[z].to_string(), rb[z].to_string()));
                }
            }
            moves
        }

        /// The most of `shards` that a `share` of them plausibly comes to: five standard
        /// deviations of a binomial count above the mean.
        fn at_most(shards: u16, share: f64) -> usize {
            let mean = f64::from(shards) * share;
            (mean + 5.0 * (mean * (1.0 - share)).sqrt() + 1.0) as usize
        }

        proptest! {
            #[test]
            fn adding_a_node_moves_about_one_share_onto_it((zones, shards, pick, salt) in shape()) {
                let before = map(&zones, shards, salt);
                let z = pick % zones.len();
                let mut after = before.clone();
                let new = format!("10.{z}.{salt}.new:7001");
                after.zones[z].nodes.push(Node::at(new.clone()));
                let moves = moved(&before, &after);
                prop_assert!(moves.iter().all(|(zone, _, to)| *zone == z && *to == new));
                let n = zones[z];
                prop_assert!(
                    moves.len() <= at_most(shards, 1.0 / (n + 1) as f64),
                    "{} of {} moved for n = {}", moves.len(), shards, n
                );
                prop_assert!(!moves.is_empty(), "the new node must take some shards");
            }

            #[test]
            fn removing_a_node_moves_only_its_shards((zones, shards, pick, salt) in shape()) {
                let before = map(&zones, shards, salt);
                let z = pick % zones.len();
                prop_assume!(zones[z] > 1);
                let mut after = before.clone();
                let gone = after.zones[z].nodes.remove(pick % zones[z]).addr;
                let moves = moved(&before, &after);
                let held = (0..shards).filter(|s| before.replicas(*s)[z] == gone).count();
                prop_assert_eq!(moves.len(), held);
                prop_assert!(moves.iter().all(|(zone, from, _)| *zone == z && *from == gone));
            }

            #[test]
            fn every_node_holds_near_its_share((zones, shards, _pick, salt) in shape()) {
                let m = map(&zones, shards, salt);
                for (z, zone) in m.zones.iter().enumerate() {
                    let share = 1.0 / zone.nodes.len() as f64;
                    let mean = f64::from(shards) * share;
                    let floor = mean - 5.0 * (mean * (1.0 - share)).sqrt() - 1.0;
                    for node in zone.nodes.iter().map(|n| &n.addr) {
                        let held = (0..shards).filter(|s| m.replicas(*s)[z] == node).count();
                        prop_assert!(held <= at_most(shards, share), "{}: {}", node, held);
                        prop_assert!(held as f64 >= floor, "{}: {} of about {}", node, held, mean);
                    }
                }
            }
        }
    }
}
