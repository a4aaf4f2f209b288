//! The proxy through raw JunoDB frames: operations, pipelining, and bad input.

mod common;

use common::TestCluster;
use junokv::protocol::{read_frame, Frame, OpCode, OpMessage, Payload, Status};
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn request(op: OpCode, key: &str, value: &str) -> OpMessage {
    let mut m = OpMessage::request(op.to_byte());
    m.namespace = b"raw".to_vec();
    m.key = key.as_bytes().to_vec();
    if !value.is_empty() {
        m.payload = Payload {
            kind: 0,
            data: value.as_bytes().to_vec(),
        };
    }
    m.meta.request_id = Some([7; 16]);
    m
}

async fn read_response(s: &mut TcpStream) -> Option<OpMessage> {
    match read_frame(s).await {
        Ok(Frame::Message(_, bytes)) => Some(OpMessage::decode(&bytes).unwrap()),
        _ => None,
    }
}

async fn call(s: &mut TcpStream, mut m: OpMessage, opaque: u32) -> OpMessage {
    m.opaque = opaque;
    s.write_all(&m.to_bytes()).await.unwrap();
    let resp = read_response(s).await.expect("a response");
    assert_eq!(resp.opaque, opaque);
    assert_eq!(resp.opcode, m.opcode);
    resp
}

#[tokio::test]
async fn every_operation_through_raw_frames() {
    let cluster = TestCluster::memory(3).await;
    let mut s = TcpStream::connect(cluster.proxy_addr).await.unwrap();
    let st = |m: &OpMessage| Status::from_byte(m.status);
    assert_eq!(
        st(&call(&mut s, request(OpCode::Nop, "", ""), 1).await),
        Status::Ok
    );
    let mut create = request(OpCode::Create, "k", "hello");
    create.meta.ttl = Some(60);
    let r = call(&mut s, create.clone(), 2).await;
    assert_eq!(
        (st(&r), r.meta.version, r.meta.request_id),
        (Status::Ok, Some(1), Some([7; 16]))
    );
    // Seconds tick between the decision and the answer: allow one.
    assert!(matches!(r.meta.ttl, Some(59..=60)), "{:?}", r.meta.ttl);
    assert!(
        r.meta.creation_time.is_some()
            && r.meta.last_modification.is_some()
            && r.meta.originator.is_some()
            && r.meta.request_handling_time.is_some()
    );
    assert_eq!(st(&call(&mut s, create, 3).await), Status::DupKey);
    let g = call(&mut s, request(OpCode::Get, "k", ""), 4).await;
    assert_eq!(
        (
            st(&g),
            g.payload.data.as_slice(),
            g.namespace.as_slice(),
            g.key.as_slice()
        ),
        (Status::Ok, &b"hello"[..], &b"raw"[..], &b"k"[..])
    );
    let mut upd = request(OpCode::Update, "k", "v2");
    upd.meta.version = Some(5);
    assert_eq!(
        st(&call(&mut s, upd.clone(), 5).await),
        Status::VersionConflict
    );
    upd.meta.version = Some(1);
    assert_eq!(call(&mut s, upd, 6).await.meta.version, Some(2));
    assert_eq!(
        call(&mut s, request(OpCode::Set, "k", "v3"), 7)
            .await
            .meta
            .version,
        Some(3)
    );
    assert_eq!(
        st(&call(&mut s, request(OpCode::Destroy, "k", ""), 8).await),
        Status::Ok
    );
    assert_eq!(
        st(&call(&mut s, request(OpCode::Get, "k", ""), 9).await),
        Status::NoKey
    );
    for op in [
        OpCode::UdfGet,
        OpCode::UdfSet,
        OpCode::Other(0x42),
        OpCode::Other(0x81),
    ] {
        assert_eq!(
            st(&call(&mut s, request(op, "k", ""), 10).await),
            Status::NotSupported
        );
    }
    cluster.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_by_opaque() {
    let cluster = TestCluster::memory(3).await;
    let mut s = TcpStream::connect(cluster.proxy_addr).await.unwrap();
    let mut batch = Vec::new();
    for i in 0..200u32 {
        let mut m = request(OpCode::Set, &format!("p{}", i % 20), &format!("v{i}"));
        m.opaque = 1000 + i;
        m.encode(&mut batch);
    }
    s.write_all(&batch).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let r = read_response(&mut s).await.unwrap();
        assert_eq!(Status::from_byte(r.status), Status::Ok);
        assert!(seen.insert(r.opaque));
    }
    assert_eq!(seen, (1000..1200).collect());
    cluster.stop().await;
}

#[tokio::test]
async fn oversized_fields_get_bad_param_and_store_nothing() {
    let cluster = TestCluster::memory(3).await;
    let mut s = TcpStream::connect(cluster.proxy_addr).await.unwrap();
    let long_key = "k".repeat(129);
    let big = "x".repeat(204_801);
    let mut long_ttl = request(OpCode::Create, "ttl", "v");
    long_ttl.meta.ttl = Some(3 * 24 * 3600 + 1);
    let mut long_ns = request(OpCode::Create, "ns", "v");
    long_ns.namespace = vec![b'n'; 65];
    for (i, m) in [
        request(OpCode::Create, &long_key, "v"),
        request(OpCode::Set, "big", &big),
        long_ttl,
        long_ns,
        request(OpCode::Set, "", "v"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            Status::from_byte(call(&mut s, m, i as u32).await.status),
            Status::BadParam
        );
    }
    for key in ["big", "ttl"] {
        assert_eq!(
            Status::from_byte(call(&mut s, request(OpCode::Get, key, ""), 99).await.status),
            Status::NoKey
        );
    }
    cluster.stop().await;
}

#[tokio::test]
async fn garbage_closes_only_its_own_connection() {
    let cluster = TestCluster::memory(3).await;
    let mut good = TcpStream::connect(cluster.proxy_addr).await.unwrap();
    call(&mut good, request(OpCode::Set, "g", "1"), 1).await;
    // Not JunoDB framing at all: the connection is closed.
    let mut bad = TcpStream::connect(cluster.proxy_addr).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut bad).await.is_none());
    // Valid framing, invalid body: answered BadMsg with the opaque, connection kept.
    let mut frame = request(OpCode::Get, "g", "").to_bytes();
    frame[8..12].copy_from_slice(&77u32.to_be_bytes());
    frame[16..20].copy_from_slice(&9999u32.to_be_bytes()); // meta component size past the end
    let mut odd = TcpStream::connect(cluster.proxy_addr).await.unwrap();
    odd.write_all(&frame).await.unwrap();
    let r = read_response(&mut odd).await.unwrap();
    assert_eq!(
        (r.opaque, Status::from_byte(r.status)),
        (77, Status::BadMsg)
    );
    assert_eq!(
        Status::from_byte(
            call(&mut odd, request(OpCode::Get, "g", ""), 78)
                .await
                .status
        ),
        Status::Ok
    );
    // The well-behaved connection never noticed.
    assert_eq!(
        call(&mut good, request(OpCode::Get, "g", ""), 2)
            .await
            .payload
            .data,
        b"1"
    );
    cluster.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Mutated and truncated frames never take the proxy down or store half a record.
    #[test]
    fn mutated_frames_never_hurt_the_proxy(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let cluster = TestCluster::memory(3).await;
            let mut bytes = request(OpCode::Create, "fuzz", "value").to_bytes();
            for (at, b) in &edits {
                let i = at % bytes.len();
                bytes[i] = *b;
            }
            let keep = 12 + cut % (bytes.len() - 11);
            let mut s = TcpStream::connect(cluster.proxy_addr).await.unwrap();
            s.write_all(&bytes[..keep]).await.unwrap();
            s.shutdown().await.unwrap();
            // Whatever came back, the proxy still serves a fresh connection.
            while read_response(&mut s).await.is_some() {}
            let mut fresh = TcpStream::connect(cluster.proxy_addr).await.unwrap();
            assert_eq!(Status::from_byte(call(&mut fresh, request(OpCode::Nop, "", ""), 1).await.status), Status::Ok);
            // Any stored record is whole: its value is exactly what some frame said.
            let g = call(&mut fresh, request(OpCode::Get, "fuzz", ""), 2).await;
            if Status::from_byte(g.status) == Status::Ok {
                assert!(!g.payload.data.is_empty());
            }
            cluster.stop().await;
        });
    }
}
