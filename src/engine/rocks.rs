//! The production engine: RocksDB with its write-ahead log on.

use super::{Change, Engine, EngineStats, Entry};
use std::io;
use std::path::Path;

/// A RocksDB database. Durable batches are written with `sync`, so an acknowledged
/// write survives power loss (JunoDB runs with the WAL off; JunoKV does not).
pub struct RocksEngine {
    db: rocksdb::DB,
}

fn to_io(e: rocksdb::Error) -> io::Error {
    io::Error::other(e.into_string())
}

impl RocksEngine {
    pub fn open(dir: &Path) -> io::Result<Self> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        let db = rocksdb::DB::open(&opts, dir).map_err(to_io)?;
        Ok(RocksEngine { db })
    }
}

impl Engine for RocksEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(to_io)
    }

    fn write(&self, batch: &[Change], sync: bool) -> io::Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for (k, v) in batch {
            match v {
                Some(v) => wb.put(k, v),
                None => wb.delete(k),
            }
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(to_io)
    }

    fn scan(
        &self,
        after: Option<&[u8]>,
        before: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<Entry>> {
        let mode = match after {
            Some(a) => rocksdb::IteratorMode::From(a, rocksdb::Direction::Forward),
            None => rocksdb::IteratorMode::Start,
        };
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(b) = before {
            opts.set_iterate_upper_bound(b);
        }
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.db.iterator_opt(mode, opts) {
            let (k, v) = item.map_err(to_io)?;
            if after.is_some_and(|a| *k == *a) {
                continue;
            }
            if out.len() == limit {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn reclaim(&self) -> io::Result<()> {
        self.db.compact_range::<&[u8], &[u8]>(None, None);
        Ok(())
    }

    fn stats(&self) -> EngineStats {
        let property = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        EngineStats {
            size_bytes: property("rocksdb.total-sst-files-size")
                + property("rocksdb.cur-size-all-mem-tables"),
            pending_compaction_bytes: property("rocksdb.estimate-pending-compaction-bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn short_key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..4, 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// RocksDB's pages, bounds included, are the ordered map's: the sweeper, the
        /// digests and the drops of a shard walk the engine by them.
        #[test]
        fn a_scan_is_the_ordered_maps_range(
            keys in proptest::collection::btree_set(short_key(), 0..40),
            after in proptest::option::of(short_key()),
            before in proptest::option::of(short_key()),
            limit in 1usize..50,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let engine = RocksEngine::open(dir.path()).unwrap();
            let map: BTreeMap<Vec<u8>, Vec<u8>> =
                keys.into_iter().map(|k| (k.clone(), [b"v".as_slice(), &k].concat())).collect();
            let batch: Vec<Change> = map.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
            engine.write(&batch, false).unwrap();
            let got = engine.scan(after.as_deref(), before.as_deref(), limit).unwrap();
            let want = super::super::scan_map(&map, after.as_deref(), before.as_deref(), limit);
            prop_assert_eq!(got, want);
        }
    }
}
