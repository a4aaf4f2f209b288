//! The admin port on a real proxy: metrics that move as requests run, health, and a
//! readiness that follows whether every shard has a quorum of its replicas.

mod common;

use common::TestCluster;
use junokv::admin::AdminServer;
use junokv::clock::Clock;
use junokv::proxy::{Proxy, ProxyConfig};
use junokv::transport::Acceptor;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// GET `path`: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// The value of the sample `name` (with its labels, as written) in a scrape, 0 if absent.
fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn metrics_move_with_requests_and_readiness_follows_the_quorum() {
    let mut cluster = TestCluster::memory(3).await;
    let proxy = Proxy::new(ProxyConfig::new(cluster.map()), Clock::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = AdminServer::start(listener, Acceptor::Plain, proxy.clone()).unwrap();
    let addr = admin.addr();
    let server = proxy
        .serve(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Acceptor::Plain,
        )
        .unwrap();
    let c = junokv::client::Client::connect(&server.addr().to_string(), "admin")
        .await
        .unwrap();

    let sets = r#"junokv_proxy_requests_total{op="set",status="Ok"}"#;
    let misses = r#"junokv_proxy_requests_total{op="get",status="NoKey"}"#;
    let accepts = r#"junokv_storage_requests_total{kind="accept"}"#;
    let timed = r#"junokv_proxy_request_duration_seconds_count{op="set"}"#;
    let (status, before) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for i in 0..5 {
        c.set(format!("k{i}").as_bytes(), b"v", 0).await.unwrap();
    }
    assert!(c.get(b"absent").await.is_err());
    let (_, after) = get(addr, "/metrics").await;
    assert_eq!(sample(&after, sets) - sample(&before, sets), 5.0, "{after}");
    assert_eq!(sample(&after, misses) - sample(&before, misses), 1.0);
    assert_eq!(sample(&after, timed) - sample(&before, timed), 5.0);
    // Each set is accepted by at least a quorum of the three replicas.
    assert!(sample(&after, accepts) - sample(&before, accepts) >= 10.0);
    for name in [
        "junokv_proxy_client_connections 1",
        "junokv_storage_fsync_duration_seconds_count",
        "junokv_storage_engine_size_bytes",
        "junokv_process_resident_memory_bytes",
    ] {
        assert!(after.contains(name), "no {name} in\n{after}");
    }

    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
    cluster.kill(2).await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "two of three replicas are a quorum: {body}");
    assert!(body.contains("down: "), "{body}");
    cluster.kill(1).await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: 64 of 64 shards"), "{body}");
    let (status, json) = get(addr, "/status").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["shards_without_quorum"], 64, "{json}");
    let up: Vec<bool> = (json["nodes"].as_array().unwrap().iter())
        .map(|n| n["up"].as_bool().unwrap())
        .collect();
    assert_eq!(up, [true, false, false]);
    assert_eq!(json["nodes"][0]["shards"], 64);
    // The node up says what it is and holds; the ones down say nothing.
    let info = &json["nodes"][0]["info"];
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{json}");
    assert!(info["engine_bytes"].as_u64().unwrap() > 0, "{json}");
    assert!(json["nodes"][1]["info"].is_null(), "{json}");
    // `junokv status` says so, and exits 1.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_junokv"))
        .args(["status", "--admin", &addr.to_string()])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("64 shards lack a quorum"), "{text}");
    assert_eq!(text.matches("  DOWN").count(), 2, "{text}");
    cluster.restart(1).await;
    cluster.restart(2).await;
    assert_eq!(get(addr, "/readyz").await.0, 200);
    assert_eq!(get(addr, "/nowhere").await.0, 404);
    admin.stop().await;
    server.stop().await;
    cluster.stop().await;
}

/// Every metric the Grafana dashboard in `deploy/grafana/` queries is one a JunoKV
/// process exports (so a renamed metric cannot leave the dashboard blank).
#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/junokv.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exported = junokv::metrics::metrics().encode();
    let declared = |name: &str, kind: &str| exported.contains(&format!("# TYPE {name} {kind}\n"));
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("junokv_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let base = |suffix: &str| name.strip_suffix(suffix).unwrap_or("-").to_string();
                let known = declared(&name, "gauge")
                    || declared(&base("_total"), "counter")
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| declared(&base(s), "histogram"));
                assert!(known, "the dashboard queries {name}, which is not exported");
                queried += 1;
            }
        }
    }
    assert!(queried >= 15, "{queried}");
}
