//! What a replica stores per key: its promise and its accepted record, and the
//! checksummed byte format they are persisted in.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// A Paxos ballot, totally ordered by counter then proposer. The proposer id is drawn
/// at random when a proxy starts, so a restarted proxy never reuses a ballot.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct Ballot {
    pub counter: u64,
    pub proposer: u64,
}

/// One version of a key as JunoDB clients see it, or a tombstone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u32,
    /// Unix seconds when the key was created.
    pub creation_time: u32,
    /// Unix seconds after which the record counts as absent.
    pub expires_at: u32,
    /// Unix nanoseconds of the write that made this version.
    pub last_modified_ns: u64,
    /// Request id of the write that made this version; lets a retried request recognise
    /// its own earlier attempt instead of applying twice.
    #[serde(with = "id")]
    pub originator: [u8; 16],
    /// Originators of the versions this one was built on, newest first, at most
    /// [`LINEAGE`] long (shorter means it reaches back to a version built on nothing).
    /// Lets a retried request tell whether its earlier attempt is in the key's history.
    #[serde(with = "ids")]
    pub lineage: Lineage,
    pub tombstone: bool,
    /// JunoDB payload type (0 clear, 1..3 encrypted or compressed by someone else).
    pub payload_kind: u8,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl Record {
    /// Whether a client may see this record at `now` (unix seconds).
    pub fn is_live(&self, now_secs: u32) -> bool {
        let expired = if crate::fault::bug(crate::fault::Bug::ExpiryOffByOne) {
            self.expires_at < now_secs
        } else {
            self.expires_at <= now_secs
        };
        !self.tombstone && !expired
    }

    /// The record's fields without its value and lineage: all that the answer to a
    /// write shows of the record it leaves, copied without touching the heap.
    pub fn meta_only(&self) -> Record {
        Record {
            lineage: Lineage::new(),
            value: Vec::new(),
            ..*self
        }
    }

    /// When the record died (was destroyed, or expired), if it is dead at `now`.
    pub fn died_at(&self, now_secs: u32) -> Option<u32> {
        if self.tombstone {
            Some((self.last_modified_ns / 1_000_000_000) as u32)
        } else {
            (!self.is_live(now_secs)).then_some(self.expires_at)
        }
    }

    /// Dead for longer than `grace_secs` at `now`: once every replica holds it, it may
    /// be purged. The grace outlasts any request (so a retry always finds the history
    /// it looks for) and any plausible clock skew between nodes.
    pub fn long_dead(&self, now_secs: u32, grace_secs: u32) -> bool {
        self.died_at(now_secs)
            .is_some_and(|died| died.saturating_add(grace_secs) < now_secs)
    }

    /// Seconds left to live at `now`, 0 when expired.
    pub fn ttl_left(&self, now_secs: u32) -> u32 {
        self.expires_at.saturating_sub(now_secs)
    }
}

/// How many predecessors a record remembers.
pub const LINEAGE: usize = 8;

/// A record's predecessors' originators, newest first: held in the record itself
/// (a lineage is never longer than [`LINEAGE`] but when a peer sends a longer one),
/// so that making, decoding or copying a record allocates for its value alone.
pub type Lineage = SmallVec<[[u8; 16]; LINEAGE]>;

impl Record {
    /// The tombstone that follows `self`: a destroy's, or an expiry made durable.
    pub fn buried(&self, version: u32, died_ns: u64, originator: [u8; 16]) -> Record {
        Record {
            version,
            last_modified_ns: died_ns,
            originator,
            lineage: Record::lineage_after(Some(self)),
            tombstone: true,
            payload_kind: 0,
            value: Vec::new(),
            ..self.meta_only()
        }
    }

    /// A tombstone standing for "no record": what repairs a damaged replica of a key
    /// that no sound replica holds (a damaged slot may not be left as it is).
    pub fn absence(died_ns: u64, originator: [u8; 16]) -> Record {
        let secs = (died_ns / 1_000_000_000) as u32;
        Record {
            version: 0,
            creation_time: secs,
            expires_at: secs,
            last_modified_ns: died_ns,
            originator,
            lineage: Lineage::new(),
            tombstone: true,
            payload_kind: 0,
            value: Vec::new(),
        }
    }

    /// The lineage of a version built on `base`.
    pub fn lineage_after(base: Option<&Record>) -> Lineage {
        match base {
            None => Lineage::new(),
            Some(b) => std::iter::once(b.originator)
                .chain(b.lineage.iter().copied())
                .take(LINEAGE)
                .collect(),
        }
    }

    /// Whether the write with originator `id` is this version or one it was built on.
    pub fn descends_from(&self, id: &[u8; 16]) -> bool {
        self.originator == *id || self.lineage.contains(id)
    }
}

/// A 16-byte id encoded as one little-endian `u128`: bincode lays that out exactly as
/// it does the 16 bytes, but writes and reads it at once rather than byte by byte (a
/// record carries up to nine ids, encoded and decoded several times a write).
mod id {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(id: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        u128::from_le_bytes(*id).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        u128::deserialize(d).map(u128::to_le_bytes)
    }
}

/// A list of ids encoded as [`id`] encodes one.
mod ids {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(ids: &[[u8; 16]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ids.iter().map(|id| u128::from_le_bytes(*id)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<super::Lineage, D::Error> {
        struct Ids;
        impl<'de> Visitor<'de> for Ids {
            type Value = super::Lineage;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of 16-byte ids")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // (The length is the sender's word: no room is made for it, and one
                // longer than a lineage spills to the heap as it arrives.)
                let mut out = super::Lineage::new();
                while let Some(id) = seq.next_element::<u128>()? {
                    out.push(id.to_le_bytes());
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Ids)
    }
}

/// An accepted record with the ballot it was accepted at.
pub type Accepted = (Ballot, Record);

/// A replica's durable state for one key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub promised: Ballot,
    pub accepted: Option<Accepted>,
}

/// Why stored bytes could not be read back as a slot.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CorruptRecord {
    #[error("record checksum mismatch")]
    Checksum,
    #[error("unknown record format {0}")]
    Format(u8),
    #[error("record body undecodable")]
    Body,
    #[error("record fails its authentication tag")]
    Tampered,
}

/// The first byte of a slot stored in clear; sealed slots (`crate::at_rest`) start
/// with another.
pub const FORMAT: u8 = 1;

impl Slot {
    /// The ballot of the record accepted, if any: what replicas compare to agree.
    pub fn accepted_ballot(&self) -> Option<Ballot> {
        self.accepted.as_ref().map(|(b, _)| *b)
    }

    /// `[format][bincode body][crc32 of format and body]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.body_size() + 4);
        out.push(FORMAT);
        self.write_body(&mut out);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes and verifies bytes written by [`Slot::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Slot, CorruptRecord> {
        if bytes.len() < 5 {
            return Err(CorruptRecord::Checksum);
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_be_bytes() != crc {
            return Err(CorruptRecord::Checksum);
        }
        if body[0] != FORMAT {
            return Err(CorruptRecord::Format(body[0]));
        }
        Slot::from_body(&body[1..])
    }

    /// The length of the slot's body: the slot alone, without format byte or
    /// checksum (what a sealed slot seals), to allocate once what holds it.
    pub fn body_size(&self) -> usize {
        bincode::serialized_size(self).expect("a slot serialises") as usize
    }

    /// Appends the slot's body to `out`.
    pub fn write_body(&self, out: &mut Vec<u8>) {
        bincode::serialize_into(out, self).expect("serialising to a Vec cannot fail");
    }

    pub fn from_body(body: &[u8]) -> Result<Slot, CorruptRecord> {
        bincode::deserialize(body).map_err(|_| CorruptRecord::Body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Slot {
        Slot {
            promised: Ballot {
                counter: 7,
                proposer: 3,
            },
            accepted: Some((
                Ballot {
                    counter: 6,
                    proposer: 3,
                },
                Record {
                    version: 2,
                    creation_time: 100,
                    expires_at: 200,
                    last_modified_ns: 5,
                    originator: [9; 16],
                    lineage: smallvec::smallvec![[8; 16]],
                    tombstone: false,
                    payload_kind: 0,
                    value: b"hello".to_vec(),
                },
            )),
        }
    }

    /// The record as serde encodes it without [`id`] and [`ids`]: what nodes and disks
    /// written before them hold.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct PlainRecord {
        version: u32,
        creation_time: u32,
        expires_at: u32,
        last_modified_ns: u64,
        originator: [u8; 16],
        lineage: Vec<[u8; 16]>,
        tombstone: bool,
        payload_kind: u8,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    }

    proptest::proptest! {
        #[test]
        fn ids_are_encoded_as_serde_encodes_their_bytes(
            originator: [u8; 16],
            lineage in proptest::collection::vec(proptest::prelude::any::<[u8; 16]>(), 0..=LINEAGE),
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let r = Record { originator, lineage: lineage.into(), value, ..slot().accepted.unwrap().1 };
            let plain = PlainRecord {
                version: r.version,
                creation_time: r.creation_time,
                expires_at: r.expires_at,
                last_modified_ns: r.last_modified_ns,
                originator: r.originator,
                lineage: r.lineage.to_vec(),
                tombstone: r.tombstone,
                payload_kind: r.payload_kind,
                value: r.value.clone(),
            };
            let bytes = bincode::serialize(&r).unwrap();
            proptest::prop_assert_eq!(&bytes, &bincode::serialize(&plain).unwrap());
            proptest::prop_assert_eq!(bincode::deserialize::<Record>(&bytes).unwrap(), r);
        }
    }

    #[test]
    fn slot_round_trips_and_detects_every_bit_flip() {
        let bytes = slot().encode();
        assert_eq!(Slot::decode(&bytes).unwrap(), slot());
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(Slot::decode(&b).is_err(), "flip of bit {i} went unnoticed");
        }
        assert!(Slot::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn ballots_order_by_counter_then_proposer() {
        let b = |c, p| Ballot {
            counter: c,
            proposer: p,
        };
        assert!(b(1, 9) < b(2, 0));
        assert!(b(2, 1) < b(2, 2));
    }
}
