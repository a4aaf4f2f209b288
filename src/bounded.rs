//! A map bounded in bytes, dropping its oldest insertions first: for what a process
//! keeps only to go faster (a proxy's leases, a replica's slot cache), where losing an
//! entry costs a round trip or a read, never correctness.
//!
//! It sits on every request's path, so each call is one probe of a hash table keyed
//! by std's keyed hash, and the insertion order is a list linked through the entries: no
//! key is cloned, and no superseded insertion is left behind to be swept.

use hashbrown::HashTable;
use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};

/// The end of the insertion order.
const END: usize = usize::MAX;

pub struct BoundedMap<K, V> {
    budget: usize,
    /// The sizes of the entries held.
    bytes: usize,
    /// std's keyed hash (clients choose the keys), drawn as `HashMap::new` draws it.
    hasher: RandomState,
    /// Where each key's entry is in `nodes`, found by the key's hash.
    index: HashTable<usize>,
    /// The entries; a removed one leaves a `None` that `free` lists for reuse.
    nodes: Vec<Option<Node<K, V>>>,
    free: Vec<usize>,
    /// The ends of the insertion order (`END` when empty).
    oldest: usize,
    newest: usize,
}

struct Node<K, V> {
    key: K,
    value: V,
    size: usize,
    hash: u64,
    /// The neighbours in insertion order.
    older: usize,
    newer: usize,
}

impl<K: Hash + Eq, V> BoundedMap<K, V> {
    /// A map holding at most `budget` bytes of entries (0: it keeps nothing).
    pub fn new(budget: usize) -> Self {
        BoundedMap {
            budget,
            bytes: 0,
            hasher: RandomState::new(),
            index: HashTable::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            oldest: END,
            newest: END,
        }
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let hash = self.hasher.hash_one(key);
        let at = self
            .index
            .find(hash, |&i| held(&self.nodes, i).key.borrow() == key)?;
        Some(&held(&self.nodes, *at).value)
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.remove_hashed(self.hasher.hash_one(key), key)
    }

    /// Inserts `key` as the newest entry (replacing any entry it had, in its place:
    /// a replica re-caches each slot it writes), then drops the oldest entries until
    /// the map is within its budget.
    pub fn insert(&mut self, key: K, value: V, size: usize) {
        if self.budget == 0 {
            return;
        }
        let hash = self.hasher.hash_one(&key);
        let nodes = &self.nodes;
        let at = match self.index.find(hash, |&i| held(nodes, i).key == key) {
            Some(&at) => {
                self.detach(at);
                let node = self.node_mut(at);
                let old = std::mem::replace(&mut node.size, size);
                node.value = value;
                self.bytes -= old;
                at
            }
            None => {
                let node = Node {
                    key,
                    value,
                    size,
                    hash,
                    older: END,
                    newer: END,
                };
                let at = match self.free.pop() {
                    Some(at) => {
                        self.nodes[at] = Some(node);
                        at
                    }
                    None => {
                        self.nodes.push(Some(node));
                        self.nodes.len() - 1
                    }
                };
                let nodes = &self.nodes;
                self.index.insert_unique(hash, at, |&i| held(nodes, i).hash);
                at
            }
        };
        self.attach_newest(at);
        self.bytes += size;
        while self.bytes > self.budget {
            let oldest = self.oldest;
            let hash = held(&self.nodes, oldest).hash;
            (self.index.find_entry(hash, |&i| i == oldest))
                .expect("every linked entry is indexed")
                .remove();
            self.unlink(oldest);
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn remove_hashed<Q: Eq + ?Sized>(&mut self, hash: u64, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let nodes = &self.nodes;
        let found = (self.index)
            .find_entry(hash, |&i| held(nodes, i).key.borrow() == key)
            .ok()?;
        let (at, _) = found.remove();
        Some(self.unlink(at))
    }

    /// Takes the entry at `at` out of the insertion order and frees its place.
    fn unlink(&mut self, at: usize) -> V {
        self.detach(at);
        let node = self.nodes[at].take().expect("linked entries are held");
        self.free.push(at);
        self.bytes -= node.size;
        node.value
    }

    /// Takes the entry at `at` out of the insertion order (it stays in its place).
    fn detach(&mut self, at: usize) {
        let (older, newer) = {
            let node = held(&self.nodes, at);
            (node.older, node.newer)
        };
        match older {
            END => self.oldest = newer,
            older => self.node_mut(older).newer = newer,
        }
        match newer {
            END => self.newest = older,
            newer => self.node_mut(newer).older = older,
        }
    }

    /// Links the entry at `at` in as the newest.
    fn attach_newest(&mut self, at: usize) {
        let newest = self.newest;
        let node = self.node_mut(at);
        (node.older, node.newer) = (newest, END);
        match newest {
            END => self.oldest = at,
            newest => self.node_mut(newest).newer = at,
        }
        self.newest = at;
    }

    fn node_mut(&mut self, at: usize) -> &mut Node<K, V> {
        self.nodes[at].as_mut().expect("linked entries are held")
    }
}

/// The entry at `at`, which the index or the insertion order names: always held.
/// (A function of `nodes` alone, so that the index's closures can borrow just them.)
fn held<K, V>(nodes: &[Option<Node<K, V>>], at: usize) -> &Node<K, V> {
    nodes[at]
        .as_ref()
        .expect("indexed and linked entries are held")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn keeps_the_newest_entries_within_its_budget() {
        let mut m = BoundedMap::new(30);
        for round in 0..50u32 {
            for k in 0..5u32 {
                m.insert(k, round * 10 + k, 10);
            }
        }
        assert_eq!(m.len(), 3);
        assert!(m.nodes.len() <= 4, "places are reused");
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

    #[derive(Clone, Debug)]
    enum Call {
        Insert(u8, u32, usize),
        Remove(u8),
        Get(u8),
    }

    fn call() -> impl Strategy<Value = Call> {
        prop_oneof![
            (0u8..12, any::<u32>(), 0usize..40).prop_map(|(k, v, s)| Call::Insert(k, v, s)),
            (0u8..12).prop_map(Call::Remove),
            (0u8..12).prop_map(Call::Get),
        ]
    }

    proptest! {
        /// The map answers as a list of insertions, oldest first, that drops its front
        /// while over budget.
        #[test]
        fn answers_as_a_list_of_insertions_oldest_first(
            budget in 0usize..120,
            calls in proptest::collection::vec(call(), 0..200),
        ) {
            let mut map = BoundedMap::new(budget);
            let mut model: VecDeque<(u8, u32, usize)> = VecDeque::new();
            for c in calls {
                match c {
                    Call::Insert(k, v, s) => {
                        map.insert(k, v, s);
                        model.retain(|e| e.0 != k);
                        if budget > 0 {
                            model.push_back((k, v, s));
                        }
                        while model.iter().map(|e| e.2).sum::<usize>() > budget {
                            model.pop_front();
                        }
                    }
                    Call::Remove(k) => {
                        let want = model.iter().position(|e| e.0 == k).map(|i| model.remove(i).unwrap().1);
                        prop_assert_eq!(map.remove(&k), want);
                    }
                    Call::Get(k) => {
                        let want = model.iter().find(|e| e.0 == k).map(|e| e.1);
                        prop_assert_eq!(map.get(&k).copied(), want);
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert_eq!(map.bytes, model.iter().map(|e| e.2).sum::<usize>());
            }
        }
    }
}
