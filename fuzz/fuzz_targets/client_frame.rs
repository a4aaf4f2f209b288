//! Whatever a client sends to a proxy's port: the JunoDB frame decoder must return an
//! error or a message, never panic, and a message it returns must re-encode to bytes
//! that decode to the same message.
#![no_main]

use junokv::protocol::OpMessage;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(message) = OpMessage::decode(data) {
        let again = OpMessage::decode(&message.to_bytes()).expect("a re-encoded message decodes");
        assert_eq!(again, message);
    }
});
