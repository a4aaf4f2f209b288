//! A map bounded in bytes, dropping its oldest insertions first: for what a process
//! keeps only to go faster (a proxy's leases), where losing an entry costs a round
//! trip, never correctness.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub struct BoundedMap<K, V> {
    budget: usize,
    /// The sizes of the entries held.
    bytes: usize,
    /// Each entry with its size and the number of its insertion (so that `order` can
    /// tell whether it still refers to it).
    entries: HashMap<K, (V, usize, u64)>,
    /// Insertions, oldest first (some superseded).
    order: VecDeque<(K, u64)>,
    inserted: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    /// A map holding at most `budget` bytes of entries (0: it keeps nothing).
    pub fn new(budget: usize) -> Self {
        BoundedMap {
            budget,
            bytes: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
            inserted: 0,
        }
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.entries.get(key).map(|(v, _, _)| v)
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let (v, size, _) = self.entries.remove(key)?;
        self.bytes -= size;
        Some(v)
    }

    /// Inserts `value` (costing `size` bytes) as the newest entry, then drops the
    /// oldest while over budget.
    pub fn insert(&mut self, key: K, value: V, size: usize) {
        self.remove(&key);
        if self.budget == 0 {
            return;
        }
        self.inserted += 1;
        self.bytes += size;
        self.order.push_back((key.clone(), self.inserted));
        self.entries.insert(key, (value, size, self.inserted));
        while self.bytes > self.budget {
            let (oldest, seq) = self.order.pop_front().expect("every entry is in order");
            if self.entries.get(&oldest).is_some_and(|e| e.2 == seq) {
                self.remove(&oldest);
            }
        }
        // Superseded insertions pile up in `order` as keys come back: drop them once
        // they outnumber the live ones.
        if self.order.len() > 2 * self.entries.len().max(16) {
            let entries = &self.entries;
            self.order
                .retain(|(k, seq)| entries.get(k).is_some_and(|e| e.2 == *seq));
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_entries_within_its_budget() {
        let mut m = BoundedMap::new(30);
        for round in 0..50u32 {
            for k in 0..5u32 {
                m.insert(k, round * 10 + k, 10);
            }
        }
        assert_eq!(m.len(), 3);
        assert!(m.order.len() <= 2 * 16 + 1);
        assert_eq!(m.get(&0), None);
        assert_eq!(m.get(&4), Some(&494));
        assert_eq!(m.bytes, 30);
        assert_eq!(m.remove(&4), Some(494));
        assert_eq!(m.bytes, 20);
    }

    #[test]
    fn no_budget_keeps_nothing() {
        let mut m = BoundedMap::new(0);
        m.insert(1, 1, 1);
        assert!(m.is_empty());
    }
}
