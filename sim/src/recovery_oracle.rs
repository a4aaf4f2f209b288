//! The recovery oracle: an in-memory storage node that lost its records in a crash
//! must, when it declares itself recovered, hold again every value that had been
//! chosen through it. Without the oracle a recovery that skips keys is caught only when
//! a later read happens to meet the forgetful replica and a lagging one as its quorum
//! (one seed in hundreds); the oracle sees the gap itself.
//!
//! At the crash it notes every record the node loses, and which of them a quorum of
//! the key's replicas (the node counted) durably held at that very ballot: chosen
//! values. When the node declares itself recovered, each chosen one (then or since)
//! must be back on it at that ballot or a later one (a read repairs at the chosen
//! ballot or above), unless it purged the key since or no other replica holds it at
//! such a ballot either (it was deleted and purged).

use crate::engine::SimEngine;
use junokv::at_rest::SlotCodec;
use junokv::cluster::ShardMap;
use junokv::key::StoreKey;
use junokv::record::Ballot;
use junokv::storage::is_record_key;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A forgetful node's lost records: each one's ballot, and whether it was chosen.
type Lost = BTreeMap<Vec<u8>, (Ballot, bool)>;

/// What the oracle knows of the cluster, and the chosen values each forgetful node
/// still owes.
pub struct RecoveryOracle {
    disks: BTreeMap<String, Arc<SimEngine>>,
    codec: SlotCodec,
    maps: tokio::sync::watch::Receiver<ShardMap>,
    owed: Mutex<BTreeMap<String, Lost>>,
}

impl RecoveryOracle {
    pub fn new(
        disks: BTreeMap<String, Arc<SimEngine>>,
        codec: SlotCodec,
        maps: tokio::sync::watch::Receiver<ShardMap>,
    ) -> Arc<Self> {
        Arc::new(RecoveryOracle {
            disks,
            codec,
            maps,
            owed: Mutex::default(),
        })
    }

    /// The accepted ballot of `server`'s durable record of `key`.
    fn durable_ballot(&self, server: &str, key: &[u8]) -> Option<Ballot> {
        let bytes = self.disks.get(server)?.durable_get(key)?;
        self.ballot_in(key, &bytes)
    }

    fn ballot_in(&self, key: &[u8], bytes: &[u8]) -> Option<Ballot> {
        self.codec.decode(key, bytes).ok()?.slot.accepted_ballot()
    }

    /// `server` crashes now and loses its records: notes each one's ballot, and
    /// whether it was chosen already. (Not while the map changes: a key's replicas are
    /// then two layouts, and the catch-up, not recovery, settles what a joining node
    /// holds.)
    pub fn crashed(&self, server: &str) {
        let map = self.maps.borrow().clone();
        let Some(disk) = self.disks.get(server).filter(|_| map.previous.is_none()) else {
            return;
        };
        let lost = (disk.durable().into_iter())
            .filter(|(key, _)| is_record_key(key))
            .filter_map(|(key, bytes)| {
                let ballot = self.ballot_in(&key, &bytes)?;
                let chosen = self.chosen_through(server, &key, ballot, &map)?;
                Some((key, (ballot, chosen)))
            });
        let mut owed = self.owed.lock().unwrap();
        let owed = owed.entry(server.to_string()).or_default();
        for (key, (ballot, chosen)) in lost {
            let had = owed.entry(key).or_insert((ballot, chosen));
            *had = match ballot.cmp(&had.0) {
                std::cmp::Ordering::Greater => (ballot, chosen),
                std::cmp::Ordering::Equal => (ballot, chosen || had.1),
                std::cmp::Ordering::Less => *had,
            };
        }
    }

    /// Whether `server`'s record of `key` at `ballot` and the other replicas' durable
    /// records at that very ballot make a quorum: a value chosen through `server`.
    fn chosen_through(
        &self,
        server: &str,
        key: &[u8],
        ballot: Ballot,
        map: &ShardMap,
    ) -> Option<bool> {
        let replicas = map.replicas(StoreKey::shard_in(key)?);
        let holding = (replicas.iter())
            .filter(|a| **a == server || self.durable_ballot(a, key) == Some(ballot))
            .count();
        Some(holding > replicas.len() / 2)
    }

    /// `server` removes its record of `key` (every replica held it, long dead): it
    /// owes the key no more.
    pub fn purged(&self, server: &str, key: &[u8]) {
        if let Some(owed) = self.owed.lock().unwrap().get_mut(server) {
            owed.remove(key);
        }
    }

    /// `server` declares itself recovered, holding what `holds` says (the accepted
    /// ballot of its record of a key, written or on its way to its engine): the
    /// chosen values it lacks that another replica still holds. A record it lost may
    /// also have been chosen after the crash, by an accept still on its way to
    /// another replica then (what recovery waits out): the replicas holding that
    /// very ballot now count too.
    pub fn recovered(&self, server: &str, holds: &dyn Fn(&[u8]) -> Option<Ballot>) -> Vec<String> {
        let owed = self.owed.lock().unwrap().remove(server).unwrap_or_default();
        let map = self.maps.borrow().clone();
        if map.previous.is_some() {
            return Vec::new();
        }
        (owed.into_iter())
            .filter(|(key, (ballot, _))| holds(key).is_none_or(|b| b < *ballot))
            .filter(|(key, (ballot, chosen))| {
                *chosen || self.chosen_through(server, key, *ballot, &map) == Some(true)
            })
            .filter_map(|(key, (ballot, _))| {
                let replicas = map.replicas(StoreKey::shard_in(&key)?);
                let peer = (replicas.iter().filter(|a| **a != server))
                    .find(|a| self.durable_ballot(a, &key).is_some_and(|b| b >= ballot))?;
                replicas.contains(&server).then(|| {
                    format!(
                        "{server} declared itself recovered without {:?}, chosen at {ballot:?} through it and still held by {peer}",
                        String::from_utf8_lossy(&key)
                    )
                })
            })
            .collect()
    }
}
