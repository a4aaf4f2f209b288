//! The storage engine seam: everything above it is the same code in production
//! (RocksDB) and in the simulator (in-memory).

mod memory;
#[cfg(all(not(madsim), feature = "rocksdb"))]
mod rocks;
mod volatile;

pub use memory::{scan_map, MemoryEngine};
#[cfg(all(not(madsim), feature = "rocksdb"))]
pub use rocks::RocksEngine;
pub use volatile::VolatileEngine;

use std::io;

/// A key as the engine is given it: shared, so that a replica's maps of slots and its
/// writes in flight hold the request's one copy.
pub type EngineKey = std::sync::Arc<[u8]>;

/// One change in a write batch: a value to put, or `None` to delete.
pub type Change = (EngineKey, Option<Vec<u8>>);

/// An ordered key-value store with atomic, optionally durable, batches. Keys are at
/// least two bytes long, and the first two are the key's group: its shard (see
/// `StoreKey`), or 0xFFFF for the replica's own keys. RocksDB hashes its memtable by
/// group, and refuses shorter keys.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>>;

    /// Applies every change or none. With `sync`, the batch survives a crash of the
    /// machine once this returns; this is the call group commit amortises.
    fn write(&self, batch: &[Change], sync: bool) -> io::Result<()>;

    /// Up to `limit` entries in key order, after `after` (from the first key when
    /// `None`) and before `before` (to the last when `None`): how the sweeper walks the
    /// store without holding it still. `before` lets a walk of one shard stop at its end
    /// rather than read a page of the shards beyond.
    fn scan(
        &self,
        after: Option<&[u8]>,
        before: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<Entry>>;

    /// Gives the space of deleted entries back to the file system (RocksDB: a manual
    /// compaction). Called after a sweep that removed records.
    fn reclaim(&self) -> io::Result<()> {
        Ok(())
    }

    /// Whether records are gone after a restart (an in-memory engine that keeps only
    /// the replica's own state on disk): the replica must then not take a missing
    /// record for an absent one.
    fn volatile(&self) -> bool {
        false
    }

    /// The size ([`EngineStats::size_bytes`]) at which the replica refuses new records
    /// (an in-memory engine's cap), while eviction makes room.
    fn size_limit(&self) -> Option<u64> {
        None
    }

    /// How much the engine holds, for the metrics.
    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
}

/// What an engine reports of its size.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineStats {
    /// Bytes held: RocksDB's SST files and memtables; an in-memory engine's entries.
    pub size_bytes: u64,
    /// Bytes compactions still have to rewrite.
    pub pending_compaction_bytes: u64,
}

/// A stored key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Calls `f` on every entry, in key order, a page at a time.
pub fn for_each(engine: &dyn Engine, mut f: impl FnMut(&[u8], &[u8])) -> io::Result<()> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = engine.scan(after.as_deref(), None, 1024)?;
        for (k, v) in &page {
            f(k, v);
        }
        match page.into_iter().last() {
            Some((k, _)) => after = Some(k),
            None => return Ok(()),
        }
    }
}
