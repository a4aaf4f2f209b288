//! An in-memory engine for tests and the simulator.

use super::{Change, Engine};
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
                Some(v) => map.insert(k.clone(), v.clone()),
                None => map.remove(k),
            };
        }
        Ok(())
    }
}
