//! Encryption at rest on real storage servers: nothing of a value reaches the disk in
//! clear, tampering is repaired, keys rotate, and a missing or wrong key never passes
//! for damage.

mod common;

use common::{assert_read_and_sweep_repair, eventually, Store, TestCluster};
use junokv::at_rest::{KeyFile, SlotCodec, Unreadable};
use junokv::engine::Engine;
use junokv::key::StoreKey;
use junokv::record::CorruptRecord;
use junokv::replica::{ReplicaReply, ReplicaRequest};
use junokv::rpc::Peer;
use junokv::transport::Connector;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("keys.toml");
    KeyFile::add_key(&path).unwrap();
    path
}

fn engine_key(key: &[u8]) -> Vec<u8> {
    StoreKey::new(b"test", key, 64).to_bytes()
}

/// Which data key sealed zone `z`'s copy of `key` (`None`: stored in clear).
fn sealed_with(cluster: &TestCluster, z: usize, key: &[u8]) -> Option<u32> {
    let bytes = cluster.stored(z, key).expect("stored");
    (bytes[0] == 2).then(|| u32::from_be_bytes(bytes[1..5].try_into().unwrap()))
}

/// Every file under `dir` (RocksDB's SSTs, WAL, MANIFEST, ...) that contains `marker`.
fn files_containing(dir: &Path, marker: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_containing(&path, marker));
        } else if std::fs::read(&path) // (a file RocksDB removed meanwhile has nothing)
            .is_ok_and(|bytes| bytes.windows(marker.len()).any(|w| w == marker))
        {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn no_value_reaches_the_disk_in_clear() {
    // In clear first, to show the scan finds a marker where there is one.
    for sealed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let keys = sealed.then(|| key_file(dir.path()));
        let stores = (0..3)
            .map(|z| Store::Rocks(dir.path().join(format!("zone-{z}"))))
            .collect();
        let cluster = TestCluster::start_with(stores, keys).await;
        let c = cluster.client().await;
        let marker = format!("marker-{:032x}", rand::random::<u128>()).into_bytes();
        for i in 0..50 {
            let mut value = marker.clone();
            value.extend(format!("-{i}").bytes());
            c.set(format!("key{i}").as_bytes(), &value, 0)
                .await
                .unwrap();
        }
        // Into the SST files as well as the WAL.
        for e in &cluster.engines {
            e.reclaim().unwrap();
        }
        cluster.stop().await;
        let found = files_containing(dir.path(), &marker);
        let ssts = found
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "sst"));
        if sealed {
            assert!(found.is_empty(), "marker in clear in {found:?}");
        } else {
            assert!(ssts.count() >= 3, "the clear run should find it: {found:?}");
        }
    }
}

/// Flips one byte of zone `z`'s stored copy of `key` with its server down, and makes
/// the record's checksum match again, as a deliberate tamperer would: only the
/// authentication tag can tell.
async fn tamper(cluster: &mut TestCluster, z: usize, key: &[u8], at: usize) {
    let mut bytes = cluster.stored(z, key).expect("stored");
    cluster.kill(z).await;
    let Store::Memory(engine) = &cluster.stores[z] else {
        unreachable!("a memory cluster")
    };
    bytes[at] ^= 0x01;
    let n = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_be_bytes());
    engine
        .write(&[(engine_key(key).into(), Some(bytes))], true)
        .unwrap();
    cluster.restart(z).await;
}

#[tokio::test]
async fn a_tampered_replica_is_detected_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path());
    let stores = (0..3).map(|_| Store::Memory(Default::default())).collect();
    let mut cluster = TestCluster::start_with(stores, Some(keys.clone())).await;
    let c = cluster.client().await;
    c.create(b"read", b"one", 0).await.unwrap();
    c.create(b"unread", b"two", 0).await.unwrap();
    cluster.stored_everywhere(b"read").await;
    cluster.stored_everywhere(b"unread").await;
    let before = cluster.stored(0, b"read").unwrap();
    // A flipped bit in the ciphertext, and one in the nonce.
    tamper(&mut cluster, 0, b"read", before.len() - 24).await;
    tamper(&mut cluster, 0, b"unread", 6).await;
    let codec = SlotCodec::sealed(Box::new(KeyFile { path: keys })).unwrap();
    let decode = |cluster: &TestCluster, key: &[u8]| {
        let bytes = cluster.stored(0, key).unwrap();
        codec.decode(&engine_key(key), &bytes).map(|d| d.slot)
    };
    let sound = |cluster: &TestCluster, key: &[u8]| decode(cluster, key).is_ok();
    for key in [&b"read"[..], b"unread"] {
        let tampered = Unreadable::Damaged(CorruptRecord::Tampered);
        assert_eq!(decode(&cluster, key).err(), Some(tampered));
    }
    drop(c);
    assert_read_and_sweep_repair(cluster, sound).await;
}

#[tokio::test]
async fn data_keys_rotate_and_old_records_are_resealed() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path());
    let stores = (0..3).map(|_| Store::Memory(Default::default())).collect();
    let cluster = TestCluster::start_with(stores, Some(keys.clone())).await;
    let c = cluster.client().await;
    let names: Vec<Vec<u8>> = (0..20).map(|i| format!("key{i}").into_bytes()).collect();
    for k in &names {
        c.set(k, b"before", 0).await.unwrap();
    }
    cluster.stored_everywhere(&names[0]).await;
    assert_eq!(sealed_with(&cluster, 0, &names[0]), Some(1));

    assert_eq!(KeyFile::add_key(&keys).unwrap(), 2);
    for s in cluster.storages.iter().flatten() {
        s.reload_data_keys().unwrap();
    }
    c.set(b"after", b"v", 0).await.unwrap();
    cluster.stored_everywhere(b"after").await;
    for z in 0..3 {
        assert_eq!(sealed_with(&cluster, z, b"after"), Some(2));
        assert_eq!(sealed_with(&cluster, z, &names[0]), Some(1));
    }
    for z in 0..3 {
        let swept = cluster.sweep(z, junokv::clock::Clock::default()).await;
        assert_eq!(swept.resealed, names.len() as u64, "zone {z}: {swept:?}");
    }
    eventually("every record is sealed with the new key", || {
        (0..3).all(|z| names.iter().all(|k| sealed_with(&cluster, z, k) == Some(2)))
    })
    .await;
    let again = cluster.sweep(0, junokv::clock::Clock::default()).await;
    assert_eq!((again.resealed, again.unreadable), (0, 0), "{again:?}");
    for k in &names {
        assert_eq!(c.get(k).await.unwrap().value, b"before");
    }
    cluster.stop().await;
}

#[tokio::test]
async fn a_missing_or_different_key_is_refused_not_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path());
    let stores = (0..3).map(|_| Store::Memory(Default::default())).collect();
    let cluster = TestCluster::start_with(stores, Some(keys.clone())).await;
    let c = cluster.client().await;
    c.set(b"k", b"kept", 0).await.unwrap();
    drop(c);
    let stores = cluster.stop().await;

    // Without its keys, a store serves nothing sealed, and changes nothing either.
    let cluster = TestCluster::start_with(stores, None).await;
    let c = cluster.client().await;
    let err = c
        .get(b"k")
        .await
        .expect_err("sealed records cannot be read");
    assert_ne!(
        err.status(),
        Some(junokv::protocol::Status::NoKey),
        "{err:?}"
    );
    let swept = cluster.sweep(0, junokv::clock::Clock::default()).await;
    assert_eq!((swept.unreadable, swept.resolved), (1, 0), "{swept:?}");
    // Each replica says why: not "damaged" (which invites a repair over the record).
    let peer = std::sync::Arc::new(Peer::new(
        cluster.addrs[0].to_string(),
        Connector::Plain,
        Duration::from_secs(5),
    ));
    let read = ReplicaRequest::Read {
        key: StoreKey::new(b"test", b"k", 64),
    };
    match peer
        .call(&read, (None, 1), Duration::from_secs(5))
        .await
        .unwrap()
    {
        ReplicaReply::Failed { reason } => assert!(reason.contains("data key 1"), "{reason}"),
        other => panic!("expected a failure naming the key, got {other:?}"),
    }
    drop(c);
    let stores = cluster.stop().await;

    // A different key under the same id is refused at start and at reload.
    let other = dir.path().join("other.toml");
    KeyFile::add_key(&other).unwrap();
    let mut cluster = TestCluster::start_with(stores, Some(keys.clone())).await;
    assert_eq!(
        cluster.client().await.get(b"k").await.unwrap().value,
        b"kept"
    );
    std::fs::copy(&other, &keys).unwrap();
    let refused = cluster.storages[0].as_ref().unwrap().reload_data_keys();
    assert!(refused.is_err_and(|e| e.contains("not the key")));
    cluster.kill(0).await;
    let refused = cluster.try_restart(0).await.expect_err("a wrong key file");
    assert!(refused.to_string().contains("not the key"), "{refused}");
    assert_eq!(
        cluster.client().await.get(b"k").await.unwrap().value,
        b"kept"
    );
}

/// `junokv dev` seals what it stores unless told `--clear-at-rest`.
#[test]
fn junokv_dev_seals_by_default() {
    for clear in [false, true] {
        let args: &[&str] = if clear { &["--clear-at-rest"] } else { &[] };
        let dev = common::dev::DevProcess::start(&[], args, "warn");
        let marker = format!("marker-{:032x}", rand::random::<u128>());
        assert_eq!(dev.cli(&["set", "k", &marker]).0, 0);
        // Written durably (the WAL) before the answer: the files have it now.
        let found = files_containing(&dev.dir.path().join("data"), marker.as_bytes());
        dev.stop();
        assert_eq!(
            found.is_empty(),
            !clear,
            "clear: {clear}, found in {found:?}"
        );
    }
}
