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
        // A new write-ahead log reuses an obsolete one's blocks, so that an fdatasync
        // writes the data only: a log growing into fresh blocks made every sync also
        // write the inode (its size), a second I/O and a second trip to the disk.
        opts.set_recycle_log_file_num(4);
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

    fn logs(dir: &Path) -> Vec<(String, u64)> {
        let mut logs: Vec<(String, u64)> = (std::fs::read_dir(dir).unwrap())
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        logs.sort();
        logs
    }

    /// Once a memtable is flushed, its log's blocks carry the next writes: the newest
    /// log starts at the size of the one it reuses, not empty. A reopen reads exactly
    /// the records written into the reused log, none of what it held before.
    #[test]
    fn write_ahead_logs_are_recycled_and_replay_only_their_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let put = |k: &str, v: &[u8]| (k.as_bytes().to_vec(), Some(v.to_vec()));
        let engine = RocksEngine::open(dir.path()).unwrap();
        let big = vec![7u8; 64 << 10];
        for round in 0..3 {
            let batch: Vec<Change> = (0..16)
                .map(|i| put(&format!("{round}-{i}"), &big))
                .collect();
            engine.write(&batch, true).unwrap();
            // (A manual compaction flushes the memtable first: its log is obsolete.)
            engine.reclaim().unwrap();
        }
        engine
            .write(&[put("last", b"1"), (b"0-0".to_vec(), None)], true)
            .unwrap();
        let newest = logs(dir.path()).pop().expect("a write-ahead log");
        assert!(
            newest.1 >= 16 * (64 << 10),
            "{newest:?} is a fresh log, not a recycled one"
        );
        drop(engine);
        let engine = RocksEngine::open(dir.path()).unwrap();
        assert_eq!(engine.get(b"last").unwrap(), Some(b"1".to_vec()));
        assert_eq!(engine.get(b"0-0").unwrap(), None);
        assert_eq!(engine.get(b"2-15").unwrap(), Some(big.clone()));
        let mut keys = 0;
        crate::engine::for_each(&engine, |_, _| keys += 1).unwrap();
        assert_eq!(keys, 3 * 16 - 1 + 1);
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
