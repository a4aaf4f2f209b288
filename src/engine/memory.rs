//! An in-memory engine for tests and the simulator.

use super::{Change, Engine, EngineStats, Entry};
use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

/// A `BTreeMap` behind a mutex. Every write counts as durable: crash behaviour is
/// modelled by whoever owns it (the simulator keeps or drops the whole engine).
#[derive(Default)]
pub struct MemoryEngine {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.map.lock().unwrap().get(key).cloned())
    }

    fn write(&self, batch: &[Change], _sync: bool) -> io::Result<()> {
        let mut map = self.map.lock().unwrap();
        for (k, v) in batch {
            match v {
                Some(v) => map.insert(k.to_vec(), v.clone()),
                None => map.remove(&k[..]),
            };
        }
        Ok(())
    }

    fn scan(
        &self,
        after: Option<&[u8]>,
        before: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<Entry>> {
        Ok(scan_map(&self.map.lock().unwrap(), after, before, limit))
    }

    fn stats(&self) -> EngineStats {
        let map = self.map.lock().unwrap();
        EngineStats {
            size_bytes: map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
            pending_compaction_bytes: 0,
        }
    }
}

/// [`Engine::scan`] over an ordered map (shared with the simulator's engine).
pub fn scan_map(
    map: &BTreeMap<Vec<u8>, Vec<u8>>,
    after: Option<&[u8]>,
    before: Option<&[u8]>,
    limit: usize,
) -> Vec<Entry> {
    use std::ops::Bound;
    let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_vec()));
    let to = before.map_or(Bound::Unbounded, |b| Bound::Excluded(b.to_vec()));
    if matches!((&from, &to), (Bound::Excluded(a), Bound::Excluded(b)) if a >= b) {
        return Vec::new(); // (`range` panics on an empty interval.)
    }
    map.range((from, to))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
