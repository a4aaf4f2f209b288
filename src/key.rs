//! Which shard a key lives in, and how a key is laid out in the storage engine.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A client key within its namespace, with the shard it hashes to. Held as its engine
/// key in one shared allocation: a request hands its key to its turn, its lease, its
/// coordinator and every message it sends, and each of those is a count, not a copy.
/// It compares, hashes, shows and crosses the wire as the fields `(shard, namespace,
/// key)` (bincode lays each byte string out as a length, then the bytes).
#[derive(Clone)]
pub struct StoreKey {
    /// Shard (big-endian, so a shard is one contiguous range), namespace length,
    /// namespace, key.
    bytes: Arc<[u8]>,
}

/// The fields of a [`StoreKey`], as they cross the wire.
#[derive(Serialize, Deserialize)]
#[serde(rename = "StoreKey")]
struct Fields<'a> {
    shard: u16,
    #[serde(borrow, with = "serde_bytes")]
    namespace: Cow<'a, [u8]>,
    #[serde(borrow, with = "serde_bytes")]
    key: Cow<'a, [u8]>,
}

impl StoreKey {
    pub fn new(namespace: &[u8], key: &[u8], num_shards: u16) -> Self {
        Self::from_parts(shard_of(namespace, key, num_shards), namespace, key)
    }

    /// The key `key` of `namespace` in `shard`. (A namespace is at most 255 bytes:
    /// JunoDB's wire protocol gives it one byte of length.)
    pub(crate) fn from_parts(shard: u16, namespace: &[u8], key: &[u8]) -> Self {
        let ns_len = u8::try_from(namespace.len()).expect("a namespace is at most 255 bytes");
        let bytes = (shard.to_be_bytes().into_iter())
            .chain([ns_len])
            .chain(namespace.iter().copied())
            .chain(key.iter().copied())
            .collect();
        StoreKey { bytes }
    }

    pub fn shard(&self) -> u16 {
        u16::from_be_bytes([self.bytes[0], self.bytes[1]])
    }

    pub fn namespace(&self) -> &[u8] {
        &self.bytes[3..3 + usize::from(self.bytes[2])]
    }

    pub fn key(&self) -> &[u8] {
        &self.bytes[3 + usize::from(self.bytes[2])..]
    }

    /// Engine key: shard (big-endian, so a shard is one contiguous range), namespace
    /// length, namespace, key.
    pub fn engine_key(&self) -> &[u8] {
        &self.bytes
    }

    /// [`StoreKey::engine_key`], owned.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.to_vec()
    }

    /// [`StoreKey::engine_key`], shared with this key: a replica keys its maps of
    /// slots by it without a copy per request.
    pub fn shared_engine_key(&self) -> crate::engine::EngineKey {
        self.bytes.clone()
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
        let (&[_, _, ns_len], rest) = bytes.split_first_chunk::<3>()?;
        (rest.len() >= usize::from(ns_len)).then(|| StoreKey {
            bytes: bytes.into(),
        })
    }

    fn fields(&self) -> (u16, &[u8], &[u8]) {
        (self.shard(), self.namespace(), self.key())
    }
}

impl PartialEq for StoreKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for StoreKey {}

impl Hash for StoreKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fields().hash(state);
    }
}

impl PartialOrd for StoreKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for StoreKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.fields().cmp(&other.fields())
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreKey")
            .field("shard", &self.shard())
            .field("namespace", &self.namespace())
            .field("key", &self.key())
            .finish()
    }
}

impl Serialize for StoreKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Fields {
            shard: self.shard(),
            namespace: Cow::Borrowed(self.namespace()),
            key: Cow::Borrowed(self.key()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for StoreKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = Fields::deserialize(d)?;
        if f.namespace.len() > usize::from(u8::MAX) {
            return Err(serde::de::Error::custom("a namespace is at most 255 bytes"));
        }
        Ok(StoreKey::from_parts(f.shard, &f.namespace, &f.key))
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
        let k = StoreKey::from_parts(0x0102, b"ns", b"key");
        let bytes = bincode::serialize(&k).unwrap();
        let mut want = vec![2, 1, 2, 0, 0, 0, 0, 0, 0, 0, b'n', b's'];
        want.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, b'k', b'e', b'y']);
        assert_eq!(bytes, want);
        assert_eq!(bincode::deserialize::<StoreKey>(&bytes).unwrap(), k);
    }

    /// What a key was before it was one shared allocation: its fields.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    struct Fields {
        shard: u16,
        namespace: Vec<u8>,
        key: Vec<u8>,
    }

    fn hash_of(v: &impl Hash) -> u64 {
        use std::hash::BuildHasher;
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(v)
    }

    proptest::proptest! {
        /// A key orders, hashes and shows as its fields did (maps keyed by keys keep
        /// their order, and the simulator's traces their bytes), and reads back.
        #[test]
        fn a_key_behaves_as_its_fields(
            a in (0u16..4, proptest::collection::vec(0u8..3, 0..4), proptest::collection::vec(0u8..3, 0..4)),
            b in (0u16..4, proptest::collection::vec(0u8..3, 0..4), proptest::collection::vec(0u8..3, 0..4)),
        ) {
            let key = |(shard, ns, k): &(u16, Vec<u8>, Vec<u8>)| StoreKey::from_parts(*shard, ns, k);
            let fields = |(shard, ns, k): &(u16, Vec<u8>, Vec<u8>)| Fields { shard: *shard, namespace: ns.clone(), key: k.clone() };
            let (ka, kb, fa, fb) = (key(&a), key(&b), fields(&a), fields(&b));
            proptest::prop_assert_eq!(ka.cmp(&kb), fa.cmp(&fb));
            proptest::prop_assert_eq!(ka == kb, fa == fb);
            proptest::prop_assert_eq!(hash_of(&ka), hash_of(&fa));
            proptest::prop_assert_eq!(format!("{ka:?}"), format!("{fa:?}").replace("Fields", "StoreKey"));
            proptest::prop_assert_eq!((ka.shard(), ka.namespace(), ka.key()), (a.0, &a.1[..], &a.2[..]));
            proptest::prop_assert_eq!(StoreKey::from_bytes(ka.engine_key()), Some(ka.clone()));
            let wire = bincode::serialize(&ka).unwrap();
            proptest::prop_assert_eq!(bincode::deserialize::<StoreKey>(&wire).unwrap(), ka);
        }
    }

    #[test]
    fn a_namespace_longer_than_a_byte_can_tell_is_refused_on_the_wire() {
        let mut wire = vec![0, 0];
        wire.extend_from_slice(&256u64.to_le_bytes());
        wire.extend_from_slice(&[b'n'; 256]);
        wire.extend_from_slice(&1u64.to_le_bytes());
        wire.push(b'k');
        assert!(bincode::deserialize::<StoreKey>(&wire).is_err());
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
