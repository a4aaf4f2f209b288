//! TLS for clients and mutual TLS inside the cluster, on real tokio and rustls:
//! certificates from `junokv::certs`, the same code `junokv certs` and `junokv dev`
//! use.

use junokv::at_rest::SlotCodec;
use junokv::certs::{issue_to, Ca, Usage, CA_CERT};
use junokv::client::Client;
use junokv::clock::Clock;
use junokv::cluster::{Node, ShardMap, Zone};
use junokv::engine::MemoryEngine;
use junokv::key::StoreKey;
use junokv::proxy::{Proxy, ProxyConfig, ProxyServer};
use junokv::replica::{ReplicaReply, ReplicaRequest};
use junokv::rpc::Peer;
use junokv::storage::StorageServer;
use junokv::transport::{Acceptor, Connector, TlsFiles};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOOPBACK: &str = "127.0.0.1";

/// A CA in `dir` and a member certificate `name` for 127.0.0.1 issued by it.
fn member(dir: &Path, ca: &Ca, name: &str, days: i64) -> TlsFiles {
    issue_to(ca, dir, name, &[LOOPBACK.into()], Usage::Member, days).unwrap();
    TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        ca: Some(dir.join(CA_CERT)),
        crl: None,
    }
}

/// A temporary directory with a CA and its member certificate `node`.
fn setup() -> (tempfile::TempDir, Ca, TlsFiles) {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    let node = member(dir.path(), &ca, "node", 30);
    (dir, ca, node)
}

/// `files` as a client port serving it to clients that present no certificate.
fn server_only(files: &TlsFiles) -> TlsFiles {
    TlsFiles {
        ca: None,
        ..files.clone()
    }
}

/// Asserts that a write through `connector` succeeds.
async fn assert_served(cluster: &Secure, connector: &Connector) {
    let c = cluster.client(connector).await.unwrap();
    c.set(b"k", b"v", 0).await.unwrap();
}

fn new_ca(dir: &Path) -> Ca {
    let ca = Ca::create("test CA", 30).unwrap();
    ca.save(dir).unwrap();
    ca
}

/// Three storage servers requiring cluster certificates (`storage_tls`), and a proxy
/// presenting `proxy_tls` to them and serving clients through `client_port`.
struct Secure {
    storages: Vec<StorageServer>,
    proxy: ProxyServer,
}

impl Secure {
    async fn start(storage_tls: &TlsFiles, proxy_tls: &TlsFiles, client_port: Acceptor) -> Self {
        let mut storages = Vec::new();
        let mut zones = Vec::new();
        for _ in 0..3 {
            let s = StorageServer::start(
                TcpListener::bind("127.0.0.1:0").await.unwrap(),
                Arc::new(MemoryEngine::default()),
                SlotCodec::clear(),
                Acceptor::new(Some(storage_tls)).unwrap(),
            )
            .unwrap();
            zones.push(Zone {
                datacenter: "dc1".into(),
                nodes: vec![Node::at(s.addr().to_string())],
            });
            storages.push(s);
        }
        let mut config = ProxyConfig::new(ShardMap {
            epoch: 1,
            num_shards: 16,
            zones,
            previous: None,
        });
        config.cluster_tls = Some(proxy_tls.clone());
        config.timeouts.request_ms = 500;
        let proxy = Proxy::new(config, Clock::default())
            .unwrap()
            .serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), client_port)
            .unwrap();
        Secure { storages, proxy }
    }

    fn addr(&self) -> String {
        self.proxy.addr().to_string()
    }

    async fn client(&self, connector: &Connector) -> std::io::Result<Client> {
        Client::connect_with(&self.addr(), "tls", connector).await
    }

    async fn stop(self) {
        self.proxy.stop().await;
        for s in self.storages {
            s.stop().await;
        }
    }
}

/// Whether a storage server answers an internal request sent through `connector`.
async fn storage_answers(storage: &StorageServer, connector: Connector) -> bool {
    let peer = std::sync::Arc::new(Peer::new(
        storage.addr().to_string(),
        connector,
        Duration::from_secs(2),
    ));
    let read = ReplicaRequest::Read {
        key: StoreKey::new(b"tls", b"k", 16),
    };
    matches!(
        peer.call(&read, (None, 1), Duration::from_secs(2)).await,
        Ok(ReplicaReply::Value { .. })
    )
}

#[tokio::test]
async fn clients_use_tls_and_the_proxy_reaches_storage_over_mutual_tls() {
    let (_dir, _ca, node) = setup();
    let client_port = server_only(&node);
    let cluster = Secure::start(&node, &node, Acceptor::new(Some(&client_port)).unwrap()).await;
    let tls = Connector::client(node.ca.as_deref(), None).unwrap();
    let c = cluster.client(&tls).await.unwrap();
    c.set(b"k", b"secret", 0).await.unwrap();
    assert_eq!(c.get(b"k").await.unwrap().value, b"secret");
    cluster.stop().await;
}

#[tokio::test]
async fn storage_servers_refuse_peers_without_a_valid_cluster_certificate() {
    let (dir, ca, node) = setup();
    let serial = issue_to(&ca, dir.path(), "revoked", &[], Usage::Member, 30).unwrap();
    let revoked = TlsFiles {
        cert: dir.path().join("revoked.crt"),
        key: dir.path().join("revoked.key"),
        ..node.clone()
    };
    let expired = member(dir.path(), &ca, "expired", -1);
    let crl = dir.path().join("revoked.pem");
    std::fs::write(&crl, ca.revocation_list(&[serial], 30).unwrap()).unwrap();
    let storage_tls = TlsFiles {
        crl: Some(crl),
        ..node.clone()
    };
    let cluster = Secure::start(&storage_tls, &node, Acceptor::Plain).await;
    let s = &cluster.storages[0];
    assert!(storage_answers(s, Connector::member(Some(&node)).unwrap()).await);
    assert!(!storage_answers(s, Connector::Plain).await, "plain text");
    let no_cert = Connector::client(node.ca.as_deref(), None).unwrap();
    assert!(
        !storage_answers(s, no_cert).await,
        "TLS without a certificate"
    );
    assert!(
        !storage_answers(s, Connector::member(Some(&revoked)).unwrap()).await,
        "revoked"
    );
    assert!(
        !storage_answers(s, Connector::member(Some(&expired)).unwrap()).await,
        "expired"
    );
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = new_ca(other_dir.path());
    let stranger = TlsFiles {
        ca: node.ca.clone(),
        ..member(other_dir.path(), &other_ca, "stranger", 30)
    };
    assert!(
        !storage_answers(s, Connector::member(Some(&stranger)).unwrap()).await,
        "other CA"
    );
    // The proxy, with its valid certificate, still gets through.
    assert_served(&cluster, &Connector::Plain).await;
    cluster.stop().await;
}

#[tokio::test]
async fn the_client_port_can_require_client_certificates() {
    let (dir, ca, node) = setup();
    issue_to(&ca, dir.path(), "app", &[], Usage::Client, 30).unwrap();
    let cluster = Secure::start(&node, &node, Acceptor::new(Some(&node)).unwrap()).await;
    let anonymous = Connector::client(node.ca.as_deref(), None).unwrap();
    let refused = match cluster.client(&anonymous).await {
        Ok(c) => c.get(b"k").await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate was served");
    let app = TlsFiles {
        cert: dir.path().join("app.crt"),
        key: dir.path().join("app.key"),
        ca: None,
        crl: None,
    };
    let with_cert = Connector::client(node.ca.as_deref(), Some(app)).unwrap();
    assert_served(&cluster, &with_cert).await;
    cluster.stop().await;
}

#[tokio::test]
async fn bad_input_at_the_tls_layer_closes_only_that_connection() {
    let (_dir, _ca, node) = setup();
    let client_port = server_only(&node);
    let cluster = Secure::start(&node, &node, Acceptor::new(Some(&client_port)).unwrap()).await;
    // Plain JunoDB frames, random bytes, and a handshake cut short: each connection is
    // closed by the proxy (read returns end of stream or an error), promptly.
    let junodb_get = [0x50, 0x48, 0x01, 0x00, 0, 0, 0, 0x18].repeat(4);
    let truncated_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00];
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for bytes in [&junodb_get[..], &random[..], &truncated_hello[..]] {
        let mut s = TcpStream::connect(cluster.addr()).await.unwrap();
        s.write_all(bytes).await.unwrap();
        if bytes.len() == truncated_hello.len() {
            s.shutdown().await.unwrap();
        }
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue, // a TLS alert, then the close
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the proxy kept a bad connection open");
    }
    // TLS to a plain-text port fails; the TLS port still serves.
    let plain = Proxy::new(
        ProxyConfig::new(ShardMap {
            epoch: 1,
            num_shards: 16,
            zones: vec![Zone {
                datacenter: "dc1".into(),
                nodes: vec![Node::at("127.0.0.1:1")],
            }],
            previous: None,
        }),
        Clock::default(),
    )
    .unwrap()
    .serve(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Acceptor::Plain,
    )
    .unwrap();
    let tls = Connector::client(node.ca.as_deref(), None).unwrap();
    let handshake = Client::connect_with(&plain.addr().to_string(), "tls", &tls).await;
    assert!(
        handshake.is_err(),
        "a TLS handshake with a plain-text port succeeded"
    );
    plain.stop().await;
    assert_served(&cluster, &tls).await;
    cluster.stop().await;
}

#[tokio::test]
async fn certificates_reload_without_dropping_established_connections() {
    let (dir, _ca, node) = setup();
    let port_files = TlsFiles {
        cert: dir.path().join("port.crt"),
        key: dir.path().join("port.key"),
        ca: None,
        crl: None,
    };
    std::fs::copy(&node.cert, &port_files.cert).unwrap();
    std::fs::copy(&node.key, &port_files.key).unwrap();
    let port = Acceptor::new(Some(&port_files)).unwrap();
    let cluster = Secure::start(&node, &node, port.clone()).await;
    let old_trust = Connector::client(node.ca.as_deref(), None).unwrap();
    let established = cluster.client(&old_trust).await.unwrap();
    established.set(b"k", b"before", 0).await.unwrap();

    // A new certificate from a new CA replaces the files; SIGHUP calls reload.
    let new_dir = tempfile::tempdir().unwrap();
    let new_ca = new_ca(new_dir.path());
    let renewed = member(new_dir.path(), &new_ca, "node", 30);
    std::fs::copy(&renewed.cert, &port_files.cert).unwrap();
    std::fs::copy(&renewed.key, &port_files.key).unwrap();
    port.reload().unwrap();

    established.set(b"k", b"after", 0).await.unwrap();
    assert!(
        cluster.client(&old_trust).await.is_err(),
        "old certificate still served"
    );
    let new_trust = Connector::client(renewed.ca.as_deref(), None).unwrap();
    let fresh = cluster.client(&new_trust).await.unwrap();
    assert_eq!(fresh.get(b"k").await.unwrap().value, b"after");
    cluster.stop().await;
}

#[tokio::test]
async fn the_admin_port_serves_https_with_the_servers_certificate() {
    use junokv::admin::{AdminServer, Serving};
    let (_dir, _ca, node) = setup();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = Acceptor::new(Some(&server_only(&node))).unwrap();
    let admin = AdminServer::start(listener, acceptor, Arc::new(Serving::default())).unwrap();
    let addr = admin.addr().to_string();
    let trusting = Connector::client(node.ca.as_deref(), None).unwrap();
    let (mut s, _) = trusting
        .connect(&addr, Duration::from_secs(2))
        .await
        .unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ready\n"),
        "{answer}"
    );
    // Plain HTTP gets no answer but a closed connection.
    let mut plain = TcpStream::connect(&addr).await.unwrap();
    plain
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut bytes)).await;
    assert!(
        !String::from_utf8_lossy(&bytes).contains("ready"),
        "{read:?}"
    );
    admin.stop().await;
}
