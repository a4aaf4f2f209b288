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
        // The memtable is hashed by group (see `Engine`): a write searches the short
        // skiplist of its shard, not one of every key, whose levels were a cache miss
        // each (the biggest single cost of a set in the profiles). Scans therefore
        // walk group by group, never in total order, which would copy the memtable.
        opts.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(GROUP));
        opts.set_memtable_factory(rocksdb::MemtableFactory::HashSkipList {
            bucket_count: 1 << 16,
            height: 4,
            branching_factor: 4,
        });
        opts.set_allow_concurrent_memtable_write(false);
        // Bloom filters of whole keys and groups: a read of a missing key, and a walk
        // past an empty shard, skip the tables that cannot hold it.
        let mut tables = rocksdb::BlockBasedOptions::default();
        tables.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&tables);
        let db = rocksdb::DB::open(&opts, dir).map_err(to_io)?;
        Ok(RocksEngine { db })
    }

    /// Entries of `group` into `out` until it holds `limit`: after `after` (from the
    /// group's start when `None`) and before `before`.
    fn scan_group(
        &self,
        group: u16,
        after: Option<&[u8]>,
        before: Option<&[u8]>,
        limit: usize,
        out: &mut Vec<Entry>,
    ) -> io::Result<()> {
        let start = group.to_be_bytes();
        let from = after.unwrap_or(&start);
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_prefix_same_as_start(true);
        if let Some(b) = before {
            opts.set_iterate_upper_bound(b);
        }
        let mode = rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward);
        for item in self.db.iterator_opt(mode, opts) {
            let (k, v) = item.map_err(to_io)?;
            if after.is_some_and(|a| *k == *a) {
                continue;
            }
            out.push((k.into_vec(), v.into_vec()));
            if out.len() == limit {
                break;
            }
        }
        Ok(())
    }
}

/// The length of the key prefix RocksDB hashes its memtable by: the group.
const GROUP: usize = 2;

/// A key too short to have a group, refused before RocksDB would read past its end.
fn check_key(key: &[u8]) -> io::Result<()> {
    if key.len() < GROUP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("engine key {key:?} is shorter than its {GROUP}-byte group"),
        ));
    }
    Ok(())
}

impl Engine for RocksEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        check_key(key)?;
        self.db.get(key).map_err(to_io)
    }

    fn write(&self, batch: &[Change], sync: bool) -> io::Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for (k, v) in batch {
            check_key(k)?;
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
        let mut out = Vec::with_capacity(limit.min(1024));
        if limit == 0 {
            return Ok(out);
        }
        // (A key shorter than a group sorts before the group it would start.)
        let first = after.map_or(0, |a| {
            let mut group = [0; GROUP];
            group.iter_mut().zip(a).for_each(|(g, b)| *g = *b);
            u16::from_be_bytes(group)
        });
        for group in first..=u16::MAX {
            if before.is_some_and(|b| b <= group.to_be_bytes().as_slice()) {
                break;
            }
            let after = after.filter(|a| group == first && a.len() >= GROUP);
            self.scan_group(group, after, before, limit, &mut out)?;
            if out.len() == limit {
                break;
            }
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

    /// Bytes from few values, so that keys share groups and prefixes; 255 makes
    /// groups far apart (a walk crosses thousands of empty ones).
    fn bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![0u8..3, Just(255)], len)
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
        let put = |k: &str, v: &[u8]| (k.as_bytes().into(), Some(v.to_vec()));
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
            .write(&[put("last", b"1"), (b"0-0"[..].into(), None)], true)
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

    /// The tables RocksDB writes carry a filter of their keys and groups, so that a read
    /// of a missing key and a walk past an empty group skip them.
    #[test]
    fn tables_carry_group_filters() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RocksEngine::open(dir.path()).unwrap();
        let batch: Vec<Change> = (0..100u16)
            .map(|i| {
                (
                    [i.to_be_bytes().as_slice(), b"k"].concat().into(),
                    Some(vec![1]),
                )
            })
            .collect();
        engine.write(&batch, false).unwrap();
        engine.reclaim().unwrap();
        let props = (engine.db)
            .property_value("rocksdb.aggregated-table-properties")
            .unwrap()
            .expect("table properties");
        let field = |name: &str| {
            (props.split("; "))
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
                .and_then(|n| n.trim().parse::<u64>().ok())
        };
        assert!(field("filter block size").is_some_and(|n| n > 0), "{props}");
        // Each key's filter holds the key and its group: 100 keys in 100 groups.
        assert_eq!(field("# entries for filter"), Some(200), "{props}");
    }

    /// A key too short to have a group is refused, not hashed by bytes it lacks.
    #[test]
    fn keys_shorter_than_a_group_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RocksEngine::open(dir.path()).unwrap();
        let refused = engine.write(&[(b"k"[..].into(), Some(b"v".to_vec()))], false);
        assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            engine.get(b"").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(engine.scan(None, None, 10).unwrap().is_empty());
    }

    /// A store written before the memtable was hashed by group (its tables carry no
    /// group filters) is read and walked the same after an upgrade.
    #[test]
    fn a_store_written_without_groups_is_read_and_walked_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Vec<u8>> = (0..300u16)
            .map(|i| [(i * 7).to_be_bytes().as_slice(), b"key", &i.to_be_bytes()].concat())
            .collect();
        {
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            let old = rocksdb::DB::open(&opts, dir.path()).unwrap();
            for k in &keys {
                old.put(k, k).unwrap();
            }
            old.flush().unwrap();
            old.put(&keys[0], b"in the log").unwrap();
        }
        let engine = RocksEngine::open(dir.path()).unwrap();
        assert_eq!(engine.get(&keys[0]).unwrap(), Some(b"in the log".to_vec()));
        assert_eq!(engine.get(&keys[299]).unwrap(), Some(keys[299].clone()));
        let mut walked = Vec::new();
        crate::engine::for_each(&engine, |k, _| walked.push(k.to_vec())).unwrap();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(walked, want);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// RocksDB's pages, bounds included, are the ordered map's, whether the keys are
        /// in tables, in the memtable, or deleted there over a table's: the sweeper, the
        /// digests and the drops of a shard walk the engine by them, group by group.
        #[test]
        fn a_scan_is_the_ordered_maps_range(
            keys in proptest::collection::btree_set(bytes(2..5), 0..40),
            in_tables in 0usize..40,
            deleted in proptest::collection::btree_set(bytes(2..5), 0..8),
            after in proptest::option::of(bytes(0..4)),
            before in proptest::option::of(bytes(0..4)),
            limit in 1usize..50,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let engine = RocksEngine::open(dir.path()).unwrap();
            let mut map: BTreeMap<Vec<u8>, Vec<u8>> =
                keys.into_iter().map(|k| (k.clone(), [b"v".as_slice(), &k].concat())).collect();
            let batch: Vec<Change> = map.iter().map(|(k, v)| (k[..].into(), Some(v.clone()))).collect();
            let (first, rest) = batch.split_at(in_tables.min(batch.len()));
            engine.write(first, false).unwrap();
            engine.reclaim().unwrap();
            engine.write(rest, false).unwrap();
            let deletes: Vec<Change> = deleted.iter().map(|k| (k[..].into(), None)).collect();
            engine.write(&deletes, false).unwrap();
            map.retain(|k, _| !deleted.contains(k));
            let got = engine.scan(after.as_deref(), before.as_deref(), limit).unwrap();
            let want = super::super::scan_map(&map, after.as_deref(), before.as_deref(), limit);
            prop_assert_eq!(got, want);
        }
    }
}
