//! The shard map: which storage node in each zone holds each shard.

use serde::{Deserialize, Serialize};

/// A zone: one replica of every shard, spread over the zone's storage nodes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// The datacentre the zone is in.
    pub datacenter: String,
    /// Addresses of the zone's storage nodes.
    pub nodes: Vec<String>,
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
}

fn default_shards() -> u16 {
    1024
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
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = (self.zones.iter())
            .flat_map(|z| &z.nodes)
            .find(|node| !seen.insert(node.as_str()))
        {
            return Err(format!("node {twice} is named twice in the map"));
        }
        Ok(())
    }

    /// The storage node holding `shard` in each zone, in zone order. Shards are dealt
    /// round-robin over a zone's nodes, so each node holds an equal share.
    pub fn replicas(&self, shard: u16) -> Vec<&str> {
        self.zones
            .iter()
            .map(|z| z.nodes[shard as usize % z.nodes.len()].as_str())
            .collect()
    }

    /// Every storage node address, each once.
    pub fn nodes(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .zones
            .iter()
            .flat_map(|z| z.nodes.iter().map(String::as_str))
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
                *per_node.entry(n).or_insert(0) += 1;
            }
        }
        assert_eq!(per_node["a:1"], 512);
        assert_eq!(per_node["c:1"], 1024);
        assert!((341..=342).contains(&per_node["b:3"]));
    }
}
