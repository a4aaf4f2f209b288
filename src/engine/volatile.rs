//! The in-memory engine of cache clusters (`engine = "memory"`): records live in RAM
//! and are gone when the process stops; only the replica's own small state (its
//! ballot bounds, the data key fingerprints) is kept on disk, because a replica that
//! forgot its promises could break the protocol, while one that forgot its records is
//! merely behind (see `storage::recovery`).

use super::{memory::scan_map, Change, Engine, EngineStats, Entry};
use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Records in a `BTreeMap`; entries under the durable prefix also in a file, rewritten
/// whole (it holds a few small entries) and atomically whenever one of them changes.
pub struct VolatileEngine {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Bytes of keys and values in `map`, kept as it changes (the memory cap reads it
    /// often).
    bytes: AtomicU64,
    /// The cap: the replica refuses new records beyond it.
    limit: u64,
    durable_prefix: Vec<u8>,
    state_file: PathBuf,
    /// Held while the state file is rewritten, so that rewrites land in order.
    persisting: Mutex<()>,
}

const STATE_FILE: &str = "replica-state.bin";

impl VolatileEngine {
    /// An engine capped at `limit` bytes whose entries under `durable_prefix` survive
    /// restarts in `dir` (loaded now, if a previous process left them).
    pub fn open(dir: &Path, durable_prefix: &[u8], limit: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let state_file = dir.join(STATE_FILE);
        let map: BTreeMap<Vec<u8>, Vec<u8>> = match std::fs::read(&state_file) {
            Ok(bytes) => bincode::deserialize(&bytes)
                .map_err(|e| io::Error::other(format!("{}: {e}", state_file.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        if let Some(k) = map.keys().find(|k| !k.starts_with(durable_prefix)) {
            return Err(io::Error::other(format!(
                "{}: holds {k:?}, outside the durable prefix",
                state_file.display()
            )));
        }
        let bytes = map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        Ok(VolatileEngine {
            map: Mutex::new(map),
            bytes: AtomicU64::new(bytes),
            limit,
            durable_prefix: durable_prefix.to_vec(),
            state_file,
            persisting: Mutex::new(()),
        })
    }

    /// Writes the durable entries to a new file, syncs it, and renames it over the old
    /// one (then syncs the directory): a crash leaves the old state or the new.
    fn persist(&self, state: &BTreeMap<Vec<u8>, Vec<u8>>) -> io::Result<()> {
        let bytes = bincode::serialize(state).map_err(io::Error::other)?;
        let tmp = self.state_file.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.state_file)?;
        let dir = self.state_file.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()
    }
}

impl Engine for VolatileEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.map.lock().unwrap().get(key).cloned())
    }

    fn write(&self, batch: &[Change], _sync: bool) -> io::Result<()> {
        let _order = self.persisting.lock().unwrap();
        let durable_state = {
            let mut map = self.map.lock().unwrap();
            for (k, v) in batch {
                let size = |v: &Vec<u8>| (k.len() + v.len()) as u64;
                let old = match v {
                    Some(v) => {
                        self.bytes.fetch_add(size(v), Ordering::Relaxed);
                        map.insert(k.to_vec(), v.clone())
                    }
                    None => map.remove(&k[..]),
                };
                if let Some(old) = old {
                    self.bytes.fetch_sub(size(&old), Ordering::Relaxed);
                }
            }
            let touches_state = batch
                .iter()
                .any(|(k, _)| k.starts_with(&self.durable_prefix));
            touches_state.then(|| {
                map.range(self.durable_prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&self.durable_prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        durable_state.map_or(Ok(()), |state| self.persist(&state))
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
        EngineStats {
            size_bytes: self.bytes.load(Ordering::Relaxed),
            pending_compaction_bytes: 0,
        }
    }

    fn volatile(&self) -> bool {
        true
    }

    fn size_limit(&self) -> Option<u64> {
        Some(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_durable_prefix_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let e = VolatileEngine::open(dir.path(), b"\xff", 1 << 20).unwrap();
        let put = |k: &[u8], v: &[u8]| (k.into(), Some(v.to_vec()));
        e.write(&[put(b"a", b"1"), put(b"\xffs", b"2")], true)
            .unwrap();
        e.write(&[put(b"b", b"33")], true).unwrap();
        assert_eq!(e.stats().size_bytes, 2 + 3 + 3);
        e.write(&[(b"a"[..].into(), None)], true).unwrap();
        assert_eq!(e.stats().size_bytes, 3 + 3);
        drop(e);
        let e = VolatileEngine::open(dir.path(), b"\xff", 1 << 20).unwrap();
        assert_eq!(e.get(b"\xffs").unwrap(), Some(b"2".to_vec()));
        assert_eq!(e.get(b"b").unwrap(), None);
        assert_eq!(e.stats().size_bytes, 3);
    }

    #[test]
    fn a_state_file_with_foreign_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = VolatileEngine::open(dir.path(), b"\xff", 1 << 20).unwrap();
        e.write(&[(b"\xffs"[..].into(), Some(b"2".to_vec()))], true)
            .unwrap();
        drop(e);
        assert!(VolatileEngine::open(dir.path(), b"\xfe", 1 << 20).is_err());
    }
}
