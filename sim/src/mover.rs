//! The membership nemesis: changes the map (a node leaves its zone, joins one, or
//! replaces another) one change after another while every other fault goes on, through
//! the same driver an operator runs (`junokv::map_change`). Its node is crashed and
//! restarted too: a new driver finishes the change the old one left, or redirects it
//! to other zones, or rolls it back.

use junokv::cluster::{ShardMap, Zone};
use junokv::map_change::{Progress, Totals};
use junokv::proxy::Proxy;
use madsim::rand::{seq::SliceRandom, Rng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// What the drivers of a run did, all told.
#[derive(Debug, Default)]
pub struct Moves {
    /// Changes finished.
    pub changes: AtomicU64,
    /// What their shard moves took.
    pub totals: Totals,
}

impl Moves {
    fn report(&self, step: Progress) {
        if let Progress::Moved(moved) = step {
            self.totals.add(&moved);
        }
    }
}

/// Changes the map in `store` through `proxy` (which follows it) until `until`, each
/// change to zones made of the nodes of `all` (every node the topology has, zone by
/// zone), after finishing any change a crashed driver left; the change under way at
/// `until` is finished. Counts what it does in `moves`.
pub async fn run(
    store: Arc<watch::Sender<ShardMap>>,
    proxy: Arc<Proxy>,
    all: Vec<Zone>,
    until: Instant,
    moves: Arc<Moves>,
) {
    let mut rng = madsim::rand::thread_rng();
    let report = |step| moves.report(step);
    // A change a crashed driver left is finished, or now and then redirected to other
    // zones or rolled back.
    let left = store.borrow().clone();
    let resumed = match &left.previous {
        Some(before) if rng.gen_bool(0.3) => {
            let zones = match rng.gen_bool(0.5) {
                true => before.clone(),
                false => next_zones(&left.zones, &all, &mut rng),
            };
            tracing::info!(to = %describe(&zones), "mover: redirecting the change a crashed driver left");
            junokv::map_change::change(&*store, &proxy, zones, &report)
                .await
                .map(Some)
        }
        _ => junokv::map_change::resume(&*store, &proxy, &report).await,
    };
    match resumed {
        Ok(Some(done)) => {
            moves.changes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                epoch = done.epoch,
                "mover: finished the change a crashed driver left"
            );
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "mover: could not resume"),
    }
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..3000))).await;
        let map = store.borrow().clone();
        let zones = next_zones(&map.zones, &all, &mut rng);
        tracing::info!(from = %describe(&map.zones), to = %describe(&zones), "mover: changing the map");
        match junokv::map_change::change(&*store, &proxy, zones, &report).await {
            Ok(done) => {
                moves.changes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(epoch = done.epoch, "mover: map changed");
            }
            Err(e) => tracing::warn!(error = %e, "mover: change refused"),
        }
    }
}

/// Each zone changed with a chance of one in two, and at least one: a node removed
/// (if it has two), one of `all`'s outside it added, or one replaced by an outsider.
/// Zones changed together move their shards in the same joint map.
fn next_zones(zones: &[Zone], all: &[Zone], rng: &mut impl Rng) -> Vec<Zone> {
    let mut zones = zones.to_vec();
    let first = rng.gen_range(0..zones.len());
    for (z, zone) in zones.iter_mut().enumerate() {
        if z == first || rng.gen_bool(0.5) {
            change_zone(zone, &all[z], rng);
        }
    }
    zones
}

fn change_zone(zone: &mut Zone, all: &Zone, rng: &mut impl Rng) {
    let outside: Vec<_> = (all.nodes.iter())
        .filter(|n| !zone.nodes.contains(n))
        .cloned()
        .collect();
    let mut choices = Vec::new();
    if zone.nodes.len() > 1 {
        choices.push("remove");
    }
    if !outside.is_empty() {
        choices.extend(["add", "replace"]);
    }
    let i = rng.gen_range(0..zone.nodes.len());
    match choices.choose(rng) {
        Some(&"remove") => {
            zone.nodes.remove(i);
        }
        Some(&"add") => zone.nodes.push(outside.choose(rng).expect("some").clone()),
        Some(_) => zone.nodes[i] = outside.choose(rng).expect("some").clone(),
        None => {}
    }
}

fn describe(zones: &[Zone]) -> String {
    let zone = |z: &Zone| {
        let ips = z
            .nodes
            .iter()
            .map(|n| n.addr.split(':').next().unwrap_or(""));
        ips.collect::<Vec<_>>().join("+")
    };
    zones.iter().map(zone).collect::<Vec<_>>().join(" | ")
}
