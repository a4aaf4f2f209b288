//! One-round-trip writes: the [`Lease`]s a proxy holds, one per key it wrote last,
//! so that its next write to the key skips phase 1 (DESIGN §3).
//!
//! A lease is *taken* when a request starts and comes back only with the next lease an
//! accept round grants: a lease is used at most once, so no ballot is sent with two
//! different records. A key that other proxies write too would waste a round trip on
//! every refused lease, so after a refusal the key's writes go through both phases for
//! a while, twice as long after each refusal in a row (at most [`MAX_SKIP`] writes).
//! Keys written by several proxies at random are refused too often to be worth it (a
//! refused lease costs three round trips where both phases cost two): while fewer than
//! half of a proxy's recent lease writes were taken, it uses only one lease in
//! [`PROBE_EVERY`], to notice when that changes.
//! The table is bounded in bytes (a lease holds its record, value included): past its
//! budget the oldest entries go (a lost lease costs a round trip, never correctness).

use crate::bounded::BoundedMap;
use crate::coordinator::Lease;
use crate::fault::{bug, Bug};
use crate::key::StoreKey;
use std::sync::Mutex;

/// Writes a key makes through both phases after a first refusal of its lease.
const FIRST_SKIP: u32 = 8;
/// The most it makes after refusals in a row.
const MAX_SKIP: u32 = 1024;
/// While leases mostly fail, one in this many is still used.
const PROBE_EVERY: u64 = 16;

/// What a proxy knows of one key.
#[derive(Default)]
struct Entry {
    /// The lease, and the epoch of the map whose quorum granted it: a lease is good
    /// only under that map (the next one's quorums may miss the one that promised).
    lease: Option<(u64, Lease)>,
    /// Writes still to go without a lease (other proxies write the key too).
    skip: u32,
    /// What `skip` was set to after the last refusal (0: the last lease was taken).
    penalty: u32,
}

/// A proxy's leases, by key.
pub struct Leases {
    table: Mutex<Table>,
}

struct Table {
    entries: BoundedMap<StoreKey, Entry>,
    /// The share of recent lease writes that a quorum took (a moving average).
    taken_share: f64,
    /// Leases not used because that share is low.
    held_back: u64,
}

impl Leases {
    /// A table holding at most `budget` bytes (0: no one-round-trip writes).
    pub fn new(budget: usize) -> Self {
        Leases {
            table: Mutex::new(Table {
                entries: BoundedMap::new(budget),
                taken_share: 1.0,
                held_back: 0,
            }),
        }
    }

    /// The lease for a write to `key` that is starting under the map of `epoch`, if the
    /// proxy holds one from that map: from now on it is this request's alone.
    pub fn take(&self, key: &StoreKey, epoch: u64) -> Option<Lease> {
        let mut t = self.table.lock().unwrap();
        let mut entry = t.entries.remove(key)?;
        let lease = if entry.skip > 0 {
            entry.skip -= 1;
            None
        } else if entry.lease.is_some() && t.holding_back() {
            None // kept: never sent, it stays good until a newer one replaces it
        } else if bug(Bug::LeaseReused) {
            entry.lease.clone()
        } else {
            entry.lease.take()
        };
        t.put(key, entry);
        lease.filter(|(e, _)| *e == epoch).map(|(_, l)| l)
    }

    /// Keeps the lease a request's accept round granted on `key` (unless the key's
    /// writes go without leases for now). `taken` tells whether the request itself
    /// wrote on a lease and a quorum took it; the quorum was of the map of `epoch`.
    pub fn grant(&self, key: &StoreKey, lease: Lease, taken: bool, epoch: u64) {
        let mut t = self.table.lock().unwrap();
        let mut entry = t.entries.remove(key).unwrap_or_default();
        if taken {
            entry.penalty = 0;
            t.observe(true);
        }
        if entry.skip == 0 {
            entry.lease = Some((epoch, lease));
        }
        t.put(key, entry);
    }

    /// A write on a lease of `key` was refused: another proxy writes it too.
    pub fn refused(&self, key: &StoreKey) {
        let mut t = self.table.lock().unwrap();
        t.observe(false);
        let mut entry = t.entries.remove(key).unwrap_or_default();
        entry.penalty = (entry.penalty * 2).clamp(FIRST_SKIP, MAX_SKIP);
        entry.skip = entry.penalty;
        entry.lease = None;
        t.put(key, entry);
    }
}

impl Table {
    /// Whether to hold a lease back because leases mostly fail (all but one in
    /// [`PROBE_EVERY`] while they do).
    fn holding_back(&mut self) -> bool {
        if self.taken_share >= 0.5 {
            return false;
        }
        self.held_back += 1;
        !self.held_back.is_multiple_of(PROBE_EVERY)
    }

    /// Counts one lease write in `taken_share`.
    fn observe(&mut self, taken: bool) {
        self.taken_share += (f64::from(u8::from(taken)) - self.taken_share) / 32.0;
    }

    /// Keeps `entry` as the newest, at roughly what it costs in memory.
    fn put(&mut self, key: &StoreKey, entry: Entry) {
        let held = (entry.lease.as_ref()).map_or(0, |(_, l)| {
            l.record.value.len() + l.record.lineage.len() * 16
        });
        let size = 128 + key.key().len() + key.namespace().len() + held;
        self.entries.insert(key.clone(), entry, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Ballot, Record};

    fn key(i: u32) -> StoreKey {
        StoreKey::new(b"ns", &i.to_be_bytes(), 16)
    }

    fn lease(c: u64) -> Lease {
        Lease {
            ballot: Ballot {
                counter: c,
                proposer: 1,
            },
            record: Record::absence(0, [0; 16]).into(),
        }
    }

    #[test]
    fn a_lease_is_good_only_under_the_map_that_granted_it() {
        let leases = Leases::new(1 << 20);
        leases.grant(&key(1), lease(2), false, 1);
        assert_eq!(leases.take(&key(1), 2), None);
        // Gone, not kept for a return to the old map.
        assert_eq!(leases.take(&key(1), 1), None);
    }

    #[test]
    fn a_lease_is_used_once() {
        let leases = Leases::new(1 << 20);
        leases.grant(&key(1), lease(2), false, 1);
        assert_eq!(leases.take(&key(1), 1), Some(lease(2)));
        assert_eq!(leases.take(&key(1), 1), None);
    }

    /// Writes to a key that go without a lease after `refusals` refusals in a row.
    fn skipped_after(refusals: u32) -> u32 {
        let leases = Leases::new(1 << 20);
        for _ in 0..refusals {
            leases.refused(&key(1));
        }
        let mut skipped = 0;
        loop {
            leases.grant(&key(1), lease(3), false, 1);
            if leases.take(&key(1), 1).is_some() {
                return skipped;
            }
            skipped += 1;
        }
    }

    #[test]
    fn a_contended_key_goes_without_leases_longer_after_each_refusal() {
        assert_eq!(skipped_after(1), FIRST_SKIP);
        assert_eq!(skipped_after(2), 2 * FIRST_SKIP);
        assert_eq!(skipped_after(20), MAX_SKIP);
        // A lease taken again clears the record of refusals.
        let leases = Leases::new(1 << 20);
        leases.refused(&key(1));
        leases.refused(&key(1));
        for _ in 0..2 * FIRST_SKIP {
            leases.take(&key(1), 1);
        }
        leases.grant(&key(1), lease(4), true, 1);
        leases.refused(&key(1));
        let t = leases.table.lock().unwrap();
        assert_eq!(t.entries.get(&key(1)).unwrap().skip, FIRST_SKIP);
    }

    #[test]
    fn a_proxy_whose_leases_are_mostly_refused_uses_few() {
        let leases = Leases::new(1 << 20);
        for i in 0..100 {
            leases.refused(&key(i)); // other proxies write every key
        }
        let used = (1000..1000 + 10 * PROBE_EVERY as u32)
            .filter(|&i| {
                leases.grant(&key(i), lease(5), false, 1);
                leases.take(&key(i), 1).is_some()
            })
            .count();
        assert_eq!(used, 10, "one lease in {PROBE_EVERY} is still tried");
        for i in 0..100 {
            leases.grant(&key(i), lease(6), true, 1); // they stopped
        }
        leases.grant(&key(5000), lease(7), false, 1);
        assert_eq!(leases.take(&key(5000), 1), Some(lease(7)));
    }

    #[test]
    fn the_table_keeps_the_newest_entries_within_its_budget() {
        let leases = Leases::new(3 * (128 + 4 + 2));
        for round in 0..50u64 {
            for i in 0..5 {
                leases.grant(&key(i), lease(round * 10 + u64::from(i)), false, 1);
            }
        }
        assert_eq!(leases.table.lock().unwrap().entries.len(), 3);
        assert_eq!(leases.take(&key(0), 1), None);
        assert_eq!(leases.take(&key(4), 1), Some(lease(494)));
    }

    #[test]
    fn no_budget_no_leases() {
        let leases = Leases::new(0);
        leases.grant(&key(1), lease(2), false, 1);
        assert_eq!(leases.take(&key(1), 1), None);
    }
}
