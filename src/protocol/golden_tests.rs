//! Golden tests: the hex samples of JunoDB's `docs/wireprotocol.md`.
//!
//! The samples predate the payload-type byte that the same document's prose and
//! JunoDB's code put before a non-empty value (payload length = 1 + data length). For
//! samples that carry a value, the expected bytes are the sample with that one byte
//! (type 0, clear) inserted, the value length one more and the padding one less; every
//! other byte is the sample's.

use super::*;
use std::net::{IpAddr, Ipv4Addr};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn uuid(s: &str) -> [u8; 16] {
    let digits = s.replace('-', "");
    let bytes: Vec<u8> = (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

fn source(port: u16) -> SourceInfo {
    SourceInfo {
        ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        port,
        app_name: b"DummyAppName".to_vec(),
    }
}

fn base(opcode: u8, direction: Direction, id: &str) -> OpMessage {
    let mut m = OpMessage::request(opcode);
    m.direction = direction;
    m.namespace = b"DummyNS".to_vec();
    m.key = b"key".to_vec();
    m.meta.request_id = Some(uuid(id));
    m
}

fn check(msg: &OpMessage, expected: &[u8]) {
    let bytes = msg.to_bytes();
    assert_eq!(hexdump(&bytes), hexdump(expected));
    assert_eq!(&OpMessage::decode(expected).unwrap(), msg);
}

fn hexdump(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02X}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn create_request() {
    let mut m = base(
        1,
        Direction::Request,
        "51d0f4af-505f-11e7-9176-000c29cadc31",
    );
    m.meta.ttl = Some(1800);
    m.meta.source_info = Some(source(0xA90C));
    m.payload = Payload {
        kind: 0,
        data: b"value to store".to_vec(),
    };
    // Sample with the payload type byte: value length 0x0E -> 0x0F, one less pad byte.
    check(
        &m,
        &hex("
        50 50 01 40 00 00 00 70 00 00 00 00 01 00 00 00
        00 00 00 38 02 03 21 65 06 00 00 00 00 00 07 08
        51 D0 F4 AF 50 5F 11 E7 91 76 00 0C 29 CA DC 31
        14 0C A9 0C 7F 00 00 01 44 75 6D 6D 79 41 70 70
        4E 61 6D 65 00 00 00 00 00 00 00 28 01 07 00 03
        00 00 00 0F 44 75 6D 6D 79 4E 53 6B 65 79 00 76 61
        6C 75 65 20 74 6F 20 73 74 6F 72 65 00 00 00"),
    );
}

#[test]
fn create_response() {
    let mut m = base(
        1,
        Direction::Response,
        "51d0f4af-505f-11e7-9176-000c29cadc31",
    );
    m.meta.ttl = Some(1800);
    m.meta.version = Some(1);
    m.meta.creation_time = Some(1497375598);
    check(
        &m,
        &hex("
        50 50 01 00 00 00 00 50 00 00 00 00 01 00 00 00
        00 00 00 28 02 04 21 22 23 65 00 00 00 00 07 08
        00 00 00 01 59 40 23 6E 51 D0 F4 AF 50 5F 11 E7
        91 76 00 0C 29 CA DC 31 00 00 00 18 01 07 00 03
        00 00 00 00 44 75 6D 6D 79 4E 53 6B 65 79 00 00"),
    );
}

#[test]
fn get_request() {
    let mut m = base(
        2,
        Direction::Request,
        "88f8fbde-505f-11e7-a836-000c29cadc31",
    );
    m.meta.source_info = Some(source(0xA91A));
    check(
        &m,
        &hex("
        50 50 01 40 00 00 00 58 00 00 00 00 02 00 00 00
        00 00 00 30 02 02 65 06 88 F8 FB DE 50 5F 11 E7
        A8 36 00 0C 29 CA DC 31 14 0C A9 1A 7F 00 00 01
        44 75 6D 6D 79 41 70 70 4E 61 6D 65 00 00 00 00
        00 00 00 18 01 07 00 03 00 00 00 00 44 75 6D 6D
        79 4E 53 6B 65 79 00 00"),
    );
}

#[test]
fn get_response() {
    let mut m = base(
        2,
        Direction::Response,
        "88f8fbde-505f-11e7-a836-000c29cadc31",
    );
    m.meta.ttl = Some(1708);
    m.meta.version = Some(1);
    m.meta.creation_time = Some(1497375598);
    m.payload = Payload {
        kind: 0,
        data: b"value to store".to_vec(),
    };
    // Sample with the payload type byte: value length 0x0E -> 0x0F, one less pad byte.
    check(
        &m,
        &hex("
        50 50 01 00 00 00 00 60 00 00 00 00 02 00 00 00
        00 00 00 28 02 04 21 22 23 65 00 00 00 00 06 AC
        00 00 00 01 59 40 23 6E 88 F8 FB DE 50 5F 11 E7
        A8 36 00 0C 29 CA DC 31 00 00 00 28 01 07 00 03
        00 00 00 0F 44 75 6D 6D 79 4E 53 6B 65 79 00 76 61
        6C 75 65 20 74 6F 20 73 74 6F 72 65 00 00 00"),
    );
}

#[test]
fn update_and_set_responses() {
    for (op, id, ttl, version, ttl_hex) in [
        (
            3u8,
            "cb475df7-505f-11e7-9926-000c29cadc31",
            1596u32,
            2u32,
            "06 3C",
        ),
        (4, "d91ff0df-505f-11e7-8de8-000c29cadc31", 1573, 3, "06 25"),
    ] {
        let mut m = base(op, Direction::Response, id);
        m.meta.ttl = Some(ttl);
        m.meta.version = Some(version);
        m.meta.creation_time = Some(1497375598);
        let mut expected = hex(&format!(
            "50 50 01 00 00 00 00 50 00 00 00 00 {op:02X} 00 00 00
             00 00 00 28 02 04 21 22 23 65 00 00 00 00 {ttl_hex}
             00 00 00 {version:02X} 59 40 23 6E"
        ));
        expected.extend_from_slice(&uuid(id));
        expected.extend(hex(
            "00 00 00 18 01 07 00 03 00 00 00 00 44 75 6D 6D 79 4E 53 6B 65 79 00 00",
        ));
        check(&m, &expected);
    }
}

#[test]
fn destroy_request_and_response() {
    let mut req = base(
        5,
        Direction::Request,
        "e185f415-505f-11e7-a80b-000c29cadc31",
    );
    req.meta.source_info = Some(source(0xA92E));
    check(
        &req,
        &hex("
        50 50 01 40 00 00 00 58 00 00 00 00 05 00 00 00
        00 00 00 30 02 02 65 06 E1 85 F4 15 50 5F 11 E7
        A8 0B 00 0C 29 CA DC 31 14 0C A9 2E 7F 00 00 01
        44 75 6D 6D 79 41 70 70 4E 61 6D 65 00 00 00 00
        00 00 00 18 01 07 00 03 00 00 00 00 44 75 6D 6D
        79 4E 53 6B 65 79 00 00"),
    );
    let resp = base(
        5,
        Direction::Response,
        "e185f415-505f-11e7-a80b-000c29cadc31",
    );
    check(
        &resp,
        &hex("
        50 50 01 00 00 00 00 40 00 00 00 00 05 00 00 00
        00 00 00 18 02 01 65 00 E1 85 F4 15 50 5F 11 E7
        A8 0B 00 0C 29 CA DC 31 00 00 00 18 01 07 00 03
        00 00 00 00 44 75 6D 6D 79 4E 53 6B 65 79 00 00"),
    );
}

#[test]
fn every_meta_field_round_trips() {
    let mut m = base(
        3,
        Direction::Request,
        "e185f415-505f-11e7-a80b-000c29cadc31",
    );
    m.meta = Meta {
        ttl: Some(7),
        version: Some(9),
        creation_time: Some(11),
        expiration_time: Some(13),
        request_id: Some([1; 16]),
        source_info: Some(SourceInfo {
            ip: "::1".parse().unwrap(),
            port: 99,
            app_name: b"app".to_vec(),
        }),
        last_modification: Some(1 << 40),
        originator: Some([2; 16]),
        correlation_id: Some(b"corr-id-1".to_vec()),
        request_handling_time: Some(17),
        udf_name: Some(b"udf".to_vec()),
    };
    for kind in 0..4 {
        m.payload = Payload {
            kind,
            data: vec![kind; 33],
        };
        let bytes = m.to_bytes();
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(OpMessage::decode(&bytes).unwrap(), m);
    }
}
