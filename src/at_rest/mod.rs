//! Encryption at rest: how a storage server turns a key's slot into the bytes its
//! engine stores, sealed with the cluster's data keys when it has them.
//!
//! A sealed slot is `[2][key id: u32 BE][nonce: 24][XChaCha20-Poly1305(slot) + tag]
//! [crc32 of all before]`, authenticated together with its engine key: changed bytes,
//! or a record copied under another key, fail the checksum or the tag and count as a
//! damaged replica, which the read path repairs from the others. (The checksum keeps
//! bit rot in the key id from passing for a key this server lacks.) The whole slot is sealed (value, versions, TTLs); keys
//! are not (the engine orders and shards by them). A record sealed with a key the
//! server lacks is a configuration error, never damage: repairing it would overwrite
//! data that is only unreadable here.

mod keys;

pub use keys::{Fingerprint, KeyFile, KeyId, KeySource, Keyring, OpenError, StaticKeys, KEY_LEN};

use crate::record::{CorruptRecord, Slot};
use smallvec::SmallVec;
use std::sync::{Arc, RwLock};

/// The first byte of a sealed slot (a clear one starts with [`crate::record::FORMAT`]).
const SEALED: u8 = 2;
const HEADER_LEN: usize = 5;

/// Encodes and decodes stored slots: in clear, or sealed with the newest data key.
/// Either way it reads both forms, so that encryption can be turned on for a store that
/// has clear records (the sweeper re-seals them).
#[derive(Clone, Default)]
pub struct SlotCodec {
    sealing: Option<Arc<Sealing>>,
}

struct Sealing {
    source: Box<dyn KeySource>,
    ring: RwLock<Arc<Keyring>>,
}

/// A decoded slot, and whether it should be written again to be sealed with the
/// newest key (it is in clear, or sealed with an older one).
pub struct Decoded {
    pub slot: Slot,
    pub stale: bool,
}

/// Why stored bytes give no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// Damaged or tampered with: a repair from the other replicas replaces it.
    #[error(transparent)]
    Damaged(#[from] CorruptRecord),
    /// Sealed with a key this server lacks: it must not be served nor repaired.
    #[error("record sealed with data key {0}, which this server does not have")]
    NoKey(KeyId),
}

impl SlotCodec {
    /// Stores new slots in clear.
    pub fn clear() -> Self {
        SlotCodec::default()
    }

    /// Seals new slots with the newest key of `source`.
    pub fn sealed(source: Box<dyn KeySource>) -> Result<Self, String> {
        let ring = RwLock::new(Arc::new(source.load()?));
        Ok(SlotCodec {
            sealing: Some(Arc::new(Sealing { source, ring })),
        })
    }

    /// The keys in force, if slots are sealed.
    pub fn keyring(&self) -> Option<Arc<Keyring>> {
        let sealing = self.sealing.as_ref()?;
        Some(sealing.ring.read().unwrap().clone())
    }

    /// Reads the key source again and, once `admit` accepts the new keys, seals with
    /// them (a rotation: add a key, reload). On an error the old keys stay.
    pub fn reload(&self, admit: impl FnOnce(&Keyring) -> Result<(), String>) -> Result<(), String> {
        let Some(sealing) = &self.sealing else {
            return Ok(());
        };
        let ring = sealing.source.load()?;
        admit(&ring)?;
        tracing::info!(source = %sealing.source.describe(), newest = ring.newest(), "data keys reloaded");
        *sealing.ring.write().unwrap() = Arc::new(ring);
        Ok(())
    }

    /// The bytes to store for `slot` under engine key `key`.
    pub fn encode(&self, key: &[u8], slot: &Slot) -> Vec<u8> {
        let Some(ring) = self.keyring() else {
            return slot.encode();
        };
        let id = ring.newest();
        let body = slot.body_size();
        let mut out = Vec::with_capacity(HEADER_LEN + keys::NONCE_LEN + body + 16 + 4);
        out.extend_from_slice(&header(id));
        ring.seal(id, &aad(key, id), &mut out, |out| slot.write_body(out));
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// The slot stored as `bytes` under engine key `key`.
    pub fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<Decoded, Unreadable> {
        if bytes.first() != Some(&SEALED) {
            let slot = Slot::decode(bytes)?;
            let stale = self.sealing.is_some();
            return Ok(Decoded { slot, stale });
        }
        let Some(sealed) = bytes.len().checked_sub(4).filter(|&n| n >= HEADER_LEN) else {
            return Err(CorruptRecord::Checksum.into());
        };
        let (sealed, crc) = bytes.split_at(sealed);
        if crc32fast::hash(sealed).to_be_bytes() != crc {
            return Err(CorruptRecord::Checksum.into());
        }
        let id = KeyId::from_be_bytes(sealed[1..HEADER_LEN].try_into().expect("4 bytes"));
        let ring = self.keyring().ok_or(Unreadable::NoKey(id))?;
        let body = match ring.open(id, &aad(key, id), &sealed[HEADER_LEN..]) {
            Ok(body) => body,
            Err(OpenError::NoKey(id)) => return Err(Unreadable::NoKey(id)),
            Err(OpenError::Tampered) => return Err(CorruptRecord::Tampered.into()),
        };
        Ok(Decoded {
            slot: Slot::from_body(&body)?,
            stale: id != ring.newest(),
        })
    }
}

fn header(id: KeyId) -> [u8; HEADER_LEN] {
    let mut h = [SEALED; HEADER_LEN];
    h[1..].copy_from_slice(&id.to_be_bytes());
    h
}

/// What a sealed slot is authenticated with besides itself: its header and engine key
/// (on the stack, unless the key is unusually long).
fn aad(key: &[u8], id: KeyId) -> SmallVec<[u8; 256]> {
    let mut aad = SmallVec::from_slice(&header(id));
    aad.extend_from_slice(key);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Ballot, Record};

    fn codec(ids: &[KeyId]) -> SlotCodec {
        let keys = ids.iter().map(|id| (*id, [*id as u8; KEY_LEN])).collect();
        SlotCodec::sealed(Box::new(StaticKeys(keys))).unwrap()
    }

    fn slot(value: &[u8]) -> Slot {
        let record = Record {
            value: value.to_vec(),
            ..Record::absence(5, [1; 16])
        };
        Slot {
            promised: Ballot::default(),
            accepted: Some((Ballot::default(), record)),
        }
    }

    #[test]
    fn sealed_slots_hide_their_value_and_round_trip() {
        let c = codec(&[1]);
        let bytes = c.encode(b"key", &slot(b"secret-marker"));
        assert!(!bytes.windows(13).any(|w| w == b"secret-marker"));
        let d = c.decode(b"key", &bytes).unwrap();
        assert_eq!(d.slot, slot(b"secret-marker"));
        assert!(!d.stale);
    }

    /// `bytes` with its checksum made to match again, as a deliberate tamperer would.
    fn recrc(mut bytes: Vec<u8>) -> Vec<u8> {
        let n = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn any_changed_byte_is_damage_and_only_the_tag_catches_a_tamperer() {
        let c = codec(&[1]);
        let bytes = c.encode(b"key", &slot(b"v"));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            let rot = c.decode(b"key", &b).err();
            assert_eq!(rot, Some(CorruptRecord::Checksum.into()), "byte {i}");
            if (HEADER_LEN..bytes.len() - 4).contains(&i) {
                let err = c.decode(b"key", &recrc(b)).err();
                assert_eq!(err, Some(CorruptRecord::Tampered.into()), "byte {i}");
            }
        }
        let moved = c.decode(b"other", &bytes).err().unwrap();
        assert_eq!(moved, Unreadable::Damaged(CorruptRecord::Tampered));
    }

    /// The key is authenticated whole, however long: short keys' data sits on the
    /// stack, long ones' spills to the heap.
    #[test]
    fn a_slot_is_bound_to_its_whole_key_short_or_long() {
        let c = codec(&[1]);
        for len in [1, 250, 251, 600] {
            let key = vec![b'k'; len];
            let bytes = c.encode(&key, &slot(b"v"));
            assert_eq!(c.decode(&key, &bytes).unwrap().slot, slot(b"v"), "{len}");
            let mut other = key.clone();
            *other.last_mut().unwrap() = b'x';
            let moved = c.decode(&other, &bytes).err();
            assert_eq!(moved, Some(CorruptRecord::Tampered.into()), "{len}");
        }
    }

    #[test]
    fn a_missing_key_is_not_damage() {
        let bytes = codec(&[1]).encode(b"key", &slot(b"v"));
        let mut relabelled = bytes.clone();
        relabelled[1..HEADER_LEN].copy_from_slice(&7u32.to_be_bytes());
        let relabelled = recrc(relabelled);
        for (c, b, id) in [
            (codec(&[2]), &bytes, 1),
            (SlotCodec::clear(), &bytes, 1),
            (codec(&[1]), &relabelled, 7),
        ] {
            assert_eq!(c.decode(b"key", b).err(), Some(Unreadable::NoKey(id)));
        }
    }

    #[test]
    fn clear_and_older_keys_stay_readable_and_are_stale() {
        let clear = SlotCodec::clear().encode(b"key", &slot(b"v"));
        let old = codec(&[1]).encode(b"key", &slot(b"v"));
        let rotated = codec(&[1, 2]);
        for bytes in [&clear, &old] {
            let d = rotated.decode(b"key", bytes).unwrap();
            assert_eq!(d.slot, slot(b"v"));
            assert!(d.stale);
        }
        assert!(!SlotCodec::clear().decode(b"key", &clear).unwrap().stale);
        let fresh = rotated.encode(b"key", &slot(b"v"));
        assert!(!rotated.decode(b"key", &fresh).unwrap().stale);
    }
}
