//! `SimEngine`: the storage engine of simulated storage nodes. In memory, with the
//! failure behaviour of a real disk under the nemesis's control: writes not yet synced
//! are lost in a crash, reads and writes can be made to fail, and stored records can
//! be corrupted. A volatile one (the simulator's `--memory`) is `engine = "memory"`:
//! a crash loses every record, and keeps only the replica's own state.

use junokv::engine::{scan_map, Change, Engine, Entry};
use madsim::rand::Rng;
use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

#[derive(Default)]
struct State {
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Written without sync, in order; lost in a crash.
    unsynced: Vec<Change>,
    /// Probability that a read fails.
    read_error_rate: f64,
    writes_fail: bool,
}

/// One storage node's disk; it outlives the node's crashes and restarts.
#[derive(Default)]
pub struct SimEngine {
    state: Mutex<State>,
    volatile: bool,
}

impl SimEngine {
    /// An engine whose records are lost in every crash (an in-memory engine).
    pub fn volatile() -> Self {
        SimEngine {
            volatile: true,
            ..SimEngine::default()
        }
    }

    /// The node crashed: what was never synced is gone, and every record if the
    /// engine is volatile.
    pub fn crash(&self) {
        let mut st = self.state.lock().unwrap();
        st.unsynced.clear();
        if self.volatile {
            st.durable.retain(|k, _| !junokv::storage::is_record_key(k));
        }
    }

    pub fn set_read_error_rate(&self, p: f64) {
        self.state.lock().unwrap().read_error_rate = p;
    }

    pub fn set_writes_fail(&self, fail: bool) {
        self.state.lock().unwrap().writes_fail = fail;
    }

    /// Flips one byte of a stored key's value, chosen among keys accepted by `which`.
    /// Returns the key it damaged.
    pub fn corrupt(&self, which: impl Fn(&[u8]) -> bool, rng: &mut impl Rng) -> Option<Vec<u8>> {
        let mut st = self.state.lock().unwrap();
        let keys: Vec<Vec<u8>> = st.durable.keys().filter(|k| which(k)).cloned().collect();
        if keys.is_empty() {
            return None;
        }
        let key = keys[rng.gen_range(0..keys.len())].clone();
        let value = st.durable.get_mut(&key).expect("listed above");
        if value.is_empty() {
            return None;
        }
        let i = rng.gen_range(0..value.len());
        value[i] ^= 1 << rng.gen_range(0..8);
        Some(key)
    }

    /// What is durable under `key` (what a crash now would leave).
    pub fn durable_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.state.lock().unwrap().durable.get(key).cloned()
    }

    /// Every durable key and value (for the convergence check, once all is quiet).
    pub fn durable(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.state.lock().unwrap().durable.clone()
    }
}

fn apply(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, changes: &[Change]) {
    for (k, v) in changes {
        match v {
            Some(v) => map.insert(k.to_vec(), v.clone()),
            None => map.remove(&k[..]),
        };
    }
}

impl Engine for SimEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let st = self.state.lock().unwrap();
        if st.read_error_rate > 0.0 && madsim::rand::thread_rng().gen_bool(st.read_error_rate) {
            return Err(io::Error::other("injected read error"));
        }
        if let Some((_, v)) = st.unsynced.iter().rev().find(|(k, _)| **k == *key) {
            return Ok(v.clone());
        }
        Ok(st.durable.get(key).cloned())
    }

    fn write(&self, batch: &[Change], sync: bool) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        if st.writes_fail {
            return Err(io::Error::other("injected write error"));
        }
        st.unsynced.extend_from_slice(batch);
        if sync {
            let pending = std::mem::take(&mut st.unsynced);
            apply(&mut st.durable, &pending);
        }
        Ok(())
    }

    fn scan(
        &self,
        after: Option<&[u8]>,
        before: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<Entry>> {
        let st = self.state.lock().unwrap();
        if !st.unsynced.is_empty() {
            // Every write the servers make is synced: nothing to merge.
            return Err(io::Error::other("scan with unsynced writes pending"));
        }
        Ok(scan_map(&st.durable, after, before, limit))
    }

    fn volatile(&self) -> bool {
        self.volatile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loses_exactly_the_unsynced_writes() {
        let e = SimEngine::default();
        e.write(&[(b"a"[..].into(), Some(b"1".to_vec()))], false)
            .unwrap();
        e.write(&[(b"b"[..].into(), Some(b"2".to_vec()))], true)
            .unwrap();
        e.write(&[(b"c"[..].into(), Some(b"3".to_vec()))], false)
            .unwrap();
        assert_eq!(e.get(b"c").unwrap(), Some(b"3".to_vec()));
        e.crash();
        assert_eq!(
            e.get(b"a").unwrap(),
            Some(b"1".to_vec()),
            "synced by the later sync"
        );
        assert_eq!(e.get(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(e.get(b"c").unwrap(), None);
    }
}
