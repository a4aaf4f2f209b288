//! The simulator's durability oracle. Before a storage server's reply leaves, what the
//! reply tells the proxy (a promise made, a record accepted, a purge's raised floor) is
//! checked against what the simulated disk durably holds — not against the server's own
//! bookkeeping, which is exactly what a durability bug gets wrong (a group commit that
//! announces its fsync early, a promise answered from memory, a floor kept in memory).
//! A reply ahead of the disk is an invariant violation and fails the seed, whether or
//! not a crash happens to expose it.
//!
//! The promises those replies told are kept, by server and key, for the **promise
//! oracle**: a replica that accepts a ballot below a promise it told a proxy breaks the
//! acceptor's one rule, whatever it lost or forgot since (a crash, a purge, a damaged
//! slot, an in-memory restart), unless it dropped its replica of the key's shard since
//! (it joins again, if ever, as a new acceptor). Outside the simulator this is nothing
//! at all.
//!
//! And the **ballot oracle**: every record any replica accepts is kept by key and
//! ballot, and a ballot accepted with two different records for one key fails the
//! seed. A proposer sends one record a ballot; two under one ballot (a lease used
//! twice, a ballot drawn twice) let two replicas agree on a ballot and disagree on the
//! value, which a read may then resolve either way.

use crate::at_rest::SlotCodec;
use crate::record::Slot;
use crate::replica::Write;

/// What a reply depends on, to be found on disk when it leaves.
#[cfg(madsim)]
pub struct Expect {
    key: Vec<u8>,
    /// The slot's promise (with the floor) at least this; its accepted ballot at least
    /// `accepted` (or the key purged above it).
    promised: crate::record::Ballot,
    accepted: Option<crate::record::Ballot>,
}

#[cfg(not(madsim))]
pub struct Expect;

/// What a reply about `key` depends on: the write it waits for.
#[cfg(madsim)]
pub fn of_write(key: &[u8], write: &Write) -> Option<Expect> {
    match write {
        Write::Put(slot) => of_slot(key, slot),
        Write::Purge(floor) => Some(Expect {
            key: key.to_vec(),
            promised: *floor,
            accepted: None,
        }),
    }
}

/// What a reply about `key` that describes `slot` (a write still in flight) depends on.
#[cfg(madsim)]
pub fn of_slot(key: &[u8], slot: &Slot) -> Option<Expect> {
    Some(Expect {
        key: key.to_vec(),
        promised: slot.promised,
        accepted: slot.accepted_ballot(),
    })
}

#[cfg(not(madsim))]
#[inline(always)]
pub fn of_write(_: &[u8], _: &Write) -> Option<Expect> {
    None
}

#[cfg(not(madsim))]
#[inline(always)]
pub fn of_slot(_: &[u8], _: &Slot) -> Option<Expect> {
    None
}

/// Checks `expect` against the disk of `server` (see the module doc).
#[cfg(madsim)]
pub fn verify(server: &str, codec: &SlotCodec, floor_key: &[u8], expect: &Expect) {
    use crate::fault::durable_bytes;
    use crate::record::Ballot;
    let Some(stored) = durable_bytes(server, &expect.key) else {
        return; // not a simulated server
    };
    let floor: Ballot = match durable_bytes(server, floor_key).flatten() {
        Some(b) => bincode::deserialize(&b).unwrap_or_default(),
        None => Ballot::default(),
    };
    let (promised, accepted) = match stored {
        None => (floor, floor),
        Some(bytes) => match codec.decode(&expect.key, &bytes) {
            // A slot holding no record may be one a prepare made after the record was
            // purged (in the same group-commit batch as the write a reply waits on):
            // the floor then stands for the purged record, as for a missing key.
            Ok(d) => {
                let accepted = d.slot.accepted.map_or(floor, |(b, _)| b);
                (d.slot.promised.max(floor), accepted)
            }
            Err(_) => return, // corrupted on disk since: the damaged-slot rules apply
        },
    };
    told(server, &expect.key, expect.promised);
    let behind = promised < expect.promised || expect.accepted.is_some_and(|a| accepted < a);
    if behind {
        crate::fault::invariant_violated(format_args!(
            "{server} replied about {:?} before it was durable: it promised {:?} and accepted \
             {:?}, its disk holds {promised:?} and {accepted:?}",
            String::from_utf8_lossy(&expect.key),
            expect.promised,
            expect.accepted,
        ));
    }
}

#[cfg(not(madsim))]
#[inline(always)]
pub fn verify(_: &str, _: &SlotCodec, _: &[u8], _: &Expect) {}

/// Every record accepted, by engine key and ballot (see the module doc).
#[cfg(madsim)]
static ACCEPTED_AT: std::sync::Mutex<
    std::collections::BTreeMap<(Vec<u8>, crate::record::Ballot), crate::record::Record>,
> = std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The highest promise each server told a proxy, by key (see the module doc).
#[cfg(madsim)]
static TOLD: std::sync::Mutex<
    std::collections::BTreeMap<(String, Vec<u8>), crate::record::Ballot>,
> = std::sync::Mutex::new(std::collections::BTreeMap::new());

#[cfg(madsim)]
fn told(server: &str, key: &[u8], promised: crate::record::Ballot) {
    let mut told = TOLD.lock().unwrap();
    let at_least = told.entry((server.to_string(), key.to_vec())).or_default();
    *at_least = (*at_least).max(promised);
}

/// `server` writes `write` for engine key `key` as an accept: a record it accepts at a
/// ballot must be above no promise it told, and the record any replica accepted at
/// that ballot for the key, if any.
#[cfg(madsim)]
pub fn check_accept(server: &str, key: &[u8], write: &Write) {
    let Write::Put(Slot {
        accepted: Some((ballot, record)),
        ..
    }) = write
    else {
        return;
    };
    let ballot = *ballot;
    let mut accepted = ACCEPTED_AT.lock().unwrap();
    let first = accepted
        .entry((key.to_vec(), ballot))
        .or_insert_with(|| record.clone());
    if first != record {
        crate::fault::invariant_violated(format_args!(
            "{server} accepted {:?} at {ballot:?} with the record of originator {:?}, but that \
             ballot was accepted with another, of originator {:?}: a ballot carries one record",
            String::from_utf8_lossy(key),
            record.originator,
            first.originator,
        ));
    }
    drop(accepted);
    let promised = TOLD
        .lock()
        .unwrap()
        .get(&(server.to_string(), key.to_vec()))
        .copied();
    if let Some(promised) = promised.filter(|p| ballot < *p) {
        crate::fault::invariant_violated(format_args!(
            "{server} accepted {:?} at {ballot:?} below its promise of {promised:?}",
            String::from_utf8_lossy(key)
        ));
    }
}

/// `server` drops its replica of `shard`: the promises it told about it lapse.
#[cfg(madsim)]
pub fn forget_shard(server: &str, shard: u16) {
    let in_shard = |k: &[u8]| crate::key::StoreKey::shard_in(k) == Some(shard);
    (TOLD.lock().unwrap()).retain(|(s, k), _| s != server || !in_shard(k));
}

#[cfg(not(madsim))]
#[inline(always)]
pub fn check_accept(_: &str, _: &[u8], _: &Write) {}

#[cfg(not(madsim))]
#[inline(always)]
pub fn forget_shard(_: &str, _: u16) {}
