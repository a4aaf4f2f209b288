//! Where every simulated node sits: datacentres, zones, storage nodes, proxies and
//! clients, their addresses, and the latency between datacentres.

use junokv::cluster::{Node, ShardMap, Zone};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The shape of the simulated cluster.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Zones in each datacentre (one entry per datacentre).
    pub zones_per_dc: Vec<usize>,
    pub nodes_per_zone: usize,
    pub proxies_per_dc: usize,
    pub clients_per_dc: usize,
}

impl Default for Topology {
    /// Three datacentres, five zones spread 2/2/1, two storage nodes per zone, one
    /// proxy and one client node per datacentre.
    fn default() -> Self {
        Topology {
            zones_per_dc: vec![2, 2, 1],
            nodes_per_zone: 2,
            proxies_per_dc: 1,
            clients_per_dc: 1,
        }
    }
}

/// A storage node's place.
#[derive(Clone, Copy, Debug)]
pub struct StorageSpot {
    pub dc: usize,
    pub zone: usize,
    pub addr: SocketAddr,
}

impl Topology {
    pub fn datacenters(&self) -> usize {
        self.zones_per_dc.len()
    }

    /// Every storage node, zone by zone. Addresses: 10.1.<zone>.<node+1>:7000.
    pub fn storage(&self) -> Vec<StorageSpot> {
        let mut out = Vec::new();
        let mut zone = 0;
        for (dc, &zones) in self.zones_per_dc.iter().enumerate() {
            for _ in 0..zones {
                for n in 0..self.nodes_per_zone {
                    let ip = IpAddr::from([10, 1, zone as u8, n as u8 + 1]);
                    out.push(StorageSpot {
                        dc,
                        zone,
                        addr: SocketAddr::new(ip, 7000),
                    });
                }
                zone += 1;
            }
        }
        out
    }

    /// Proxies of datacentre `dc`: 10.2.<dc>.<p+1>:8080.
    pub fn proxies(&self, dc: usize) -> Vec<SocketAddr> {
        (0..self.proxies_per_dc)
            .map(|p| SocketAddr::new(IpAddr::from([10, 2, dc as u8, p as u8 + 1]), 8080))
            .collect()
    }

    /// Client nodes of datacentre `dc`: 10.3.<dc>.<c+1>.
    pub fn clients(&self, dc: usize) -> Vec<IpAddr> {
        (0..self.clients_per_dc)
            .map(|c| IpAddr::from([10, 3, dc as u8, c as u8 + 1]))
            .collect()
    }

    /// The datacentre of every node's IP.
    pub fn dc_of(&self) -> BTreeMap<IpAddr, usize> {
        let mut m: BTreeMap<IpAddr, usize> =
            self.storage().iter().map(|s| (s.addr.ip(), s.dc)).collect();
        for dc in 0..self.datacenters() {
            m.extend(self.proxies(dc).iter().map(|a| (a.ip(), dc)));
            m.extend(self.clients(dc).iter().map(|ip| (*ip, dc)));
        }
        m
    }

    /// The shard map every proxy is given.
    pub fn shard_map(&self) -> ShardMap {
        let storage = self.storage();
        let zones = storage.iter().map(|s| s.zone).max().map_or(0, |z| z + 1);
        ShardMap {
            epoch: 1,
            num_shards: 64,
            zones: (0..zones)
                .map(|z| {
                    let nodes: Vec<&StorageSpot> = storage.iter().filter(|s| s.zone == z).collect();
                    Zone {
                        datacenter: format!("dc{}", nodes[0].dc),
                        nodes: nodes.iter().map(|s| Node::at(s.addr.to_string())).collect(),
                    }
                })
                .collect(),
            previous: None,
        }
    }
}

/// One-way latency between datacentres, drawn per seed: 10–60 ms between any two,
/// nothing extra inside one (madsim's own 0.2–1 ms applies to every link).
pub struct Latency {
    between: Vec<Vec<Duration>>,
}

impl Latency {
    pub fn draw(datacenters: usize, rng: &mut impl madsim::rand::Rng) -> Self {
        let mut between = vec![vec![Duration::ZERO; datacenters]; datacenters];
        let pairs = (0..datacenters).flat_map(|a| (a + 1..datacenters).map(move |b| (a, b)));
        for (a, b) in pairs {
            let d = Duration::from_millis(rng.gen_range(10..=60));
            between[a][b] = d;
            between[b][a] = d;
        }
        Latency { between }
    }

    /// The extra delay of one frame from `a` to `b`, with ±20% jitter.
    pub fn extra(&self, a: usize, b: usize, rng: &mut impl madsim::rand::Rng) -> Duration {
        let base = self.between[a][b];
        if base.is_zero() {
            return base;
        }
        base.mul_f64(rng.gen_range(0.8..1.2))
    }
}
