//! Shard digests: what lets the anti-entropy pass skip a shard whose replicas agree
//! without listing its keys. A shard's digest is the XOR, over every key of the shard
//! holding an accepted record, of a hash of the key and the record's ballot: equal
//! digests mean (but for a 2^-128 chance) the same keys at the same ballots, so the same
//! records (one record per ballot). XOR lets each write update the digest in place —
//! out with the key's old ballot, in with its new one — so that once computed (one
//! scan of the shard, on the first request), a digest costs nothing to keep or to ask
//! for.
//!
//! A digest covers what the replica has written, durable or on its way. A write whose
//! old slot is unknown (a damaged slot) or a change of the map drops the digests
//! concerned; the next request computes them again.

use crate::key::StoreKey;
use crate::record::Ballot;
use std::collections::HashMap;

/// The digests computed so far, by shard.
#[derive(Default)]
pub struct ShardDigests {
    by_shard: HashMap<u16, u128>,
}

/// The hash of one key at one ballot (the first 128 bits of its SHA-256: stable
/// across builds and machines, as every replica's digest must be).
fn term(key: &[u8], ballot: Ballot) -> u128 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(key.len() as u32).to_be_bytes());
    ctx.update(key);
    ctx.update(&ballot.counter.to_be_bytes());
    ctx.update(&ballot.proposer.to_be_bytes());
    let sha = ctx.finish();
    u128::from_be_bytes(sha.as_ref()[..16].try_into().expect("SHA-256 is 32 bytes"))
}

/// The digest of a whole shard's `(engine key, accepted ballot)` pairs.
pub fn digest_of<'a>(entries: impl IntoIterator<Item = (&'a [u8], Ballot)>) -> u128 {
    (entries.into_iter()).fold(0, |d, (key, ballot)| d ^ term(key, ballot))
}

impl ShardDigests {
    /// The digest of `shard`, if computed and still good.
    pub fn get(&self, shard: u16) -> Option<u128> {
        self.by_shard.get(&shard).copied()
    }

    pub fn insert(&mut self, shard: u16, digest: u128) {
        self.by_shard.insert(shard, digest);
    }

    /// Engine key `key`'s accepted ballot goes from `before` to `after`. `before` is
    /// `Err` when it is unknown (the slot was damaged): the shard's digest is dropped.
    pub fn update(
        &mut self,
        key: &[u8],
        before: Result<Option<Ballot>, ()>,
        after: Option<Ballot>,
    ) {
        let Some(shard) = StoreKey::shard_in(key) else {
            return;
        };
        let Some(digest) = self.by_shard.get_mut(&shard) else {
            return;
        };
        match before {
            Err(()) => {
                self.by_shard.remove(&shard);
            }
            Ok(before) if before != after => {
                for ballot in before.into_iter().chain(after) {
                    *digest ^= term(key, ballot);
                }
            }
            Ok(_) => {}
        }
    }

    /// Drops every digest (the shards held changed).
    pub fn clear(&mut self) {
        self.by_shard.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(shard: u16, k: u8) -> Vec<u8> {
        StoreKey::from_parts(shard, b"ns", &[k]).to_bytes()
    }

    fn ballot(counter: u64) -> Ballot {
        Ballot {
            counter,
            proposer: 7,
        }
    }

    proptest! {
        /// Updating a digest write by write gives the digest of what is held at the
        /// end, whatever the writes; and two different holdings differ.
        #[test]
        fn updates_keep_the_digest_of_what_is_held(
            writes in proptest::collection::vec((0u8..6, proptest::option::of(1u64..5)), 0..40),
        ) {
            let mut held: std::collections::BTreeMap<Vec<u8>, Ballot> = Default::default();
            let mut digests = ShardDigests::default();
            digests.insert(3, 0);
            for (k, after) in writes {
                let k = key(3, k);
                let before = held.get(&k).copied();
                let after = after.map(ballot);
                digests.update(&k, Ok(before), after);
                match after {
                    Some(b) => held.insert(k, b),
                    None => held.remove(&k),
                };
            }
            let whole = digest_of(held.iter().map(|(k, b)| (k.as_slice(), *b)));
            prop_assert_eq!(digests.get(3), Some(whole));
            // One more key, or one key at another ballot, changes it.
            let mut more = held.clone();
            more.insert(key(3, 9), ballot(1));
            prop_assert_ne!(digest_of(more.iter().map(|(k, b)| (k.as_slice(), *b))), whole);
            if let Some((k, b)) = held.iter().next() {
                let mut moved = held.clone();
                moved.insert(k.clone(), ballot(b.counter + 10));
                prop_assert_ne!(digest_of(moved.iter().map(|(k, b)| (k.as_slice(), *b))), whole);
            }
        }
    }

    #[test]
    fn an_unknown_old_slot_drops_the_digest_and_other_shards_are_untouched() {
        let mut digests = ShardDigests::default();
        digests.insert(3, 0);
        digests.update(&key(4, 1), Ok(None), Some(ballot(1)));
        assert_eq!(digests.get(3), Some(0), "shard 4 has no digest to update");
        digests.update(&key(3, 1), Err(()), Some(ballot(1)));
        assert_eq!(digests.get(3), None);
    }
}
