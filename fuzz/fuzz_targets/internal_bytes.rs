//! Bytes a storage server reads back from its disk (a stored slot, in clear or sealed)
//! or receives from cluster members (internal protocol frames): damaged or hostile,
//! they must decode to an error or a value, never panic or exhaust memory. A sealed
//! slot that opens must also re-seal to one that opens to the same slot.
#![no_main]

use junokv::at_rest::{SlotCodec, StaticKeys, KEY_LEN};
use junokv::record::Slot;
use junokv::replica::{ReplicaReply, ReplicaRequest};
use std::sync::OnceLock;

fn codec() -> &'static SlotCodec {
    static CODEC: OnceLock<SlotCodec> = OnceLock::new();
    CODEC.get_or_init(|| {
        let key = StaticKeys([(1, [7; KEY_LEN])].into());
        SlotCodec::sealed(Box::new(key)).expect("a fixed key")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = Slot::decode(data);
    if let Ok(decoded) = codec().decode(b"key", data) {
        let resealed = codec().encode(b"key", &decoded.slot);
        let again = codec()
            .decode(b"key", &resealed)
            .expect("a re-sealed slot opens");
        assert_eq!(again.slot, decoded.slot);
    }
    let _ = bincode::deserialize::<(Option<[u8; 16]>, ReplicaRequest)>(data);
    let _ = bincode::deserialize::<ReplicaReply>(data);
});
