//! The cluster map in a real etcd: `junokv storage` and `junokv proxy` processes take
//! it from etcd and follow it, and `junokv map change` grows the cluster from three
//! zones of one node to three of two and shrinks it back while a client writes, then
//! `junokv map add`, `replace` and `remove` change one node at a time.

mod common;

use junokv::client::Client;
use junokv::map_change::{MapSourceConfig, MapStore};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn junokv(args: &[&str], log: &Path) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_junokv"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Running(child)
}

/// `[cluster]` of three zones of `per_zone` of the nodes at `addrs` (zone `z` holds
/// nodes `z` and `z + 3`).
fn cluster_toml(addrs: &[String], per_zone: usize) -> String {
    let mut out = String::from("[cluster]\nnum_shards = 64\n");
    for z in 0..3 {
        let nodes: Vec<String> = (0..per_zone)
            .map(|i| format!("\"{}\"", addrs[z + 3 * i]))
            .collect();
        out += &format!(
            "[[cluster.zones]]\ndatacenter = \"dc{z}\"\nnodes = [{}]\n",
            nodes.join(", ")
        );
    }
    out
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Runs `junokv map ARGS --config PROXY_CONFIG` (a change of the map), which must
/// succeed; returns what it printed.
async fn change_map(dir: &Path, proxy_config: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_junokv"))
        .arg("map")
        .args(args)
        .arg("--config")
        .arg(proxy_config)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(dir.join("change.log")).unwrap())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "junokv map {args:?} failed: {stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junokv_map_change_grows_and_shrinks_a_running_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (etcd, url) = junokv::etcd_map::start_local(d)
        .expect("etcd must be installed (scripts/test installs etcd-server)");
    let _etcd = Running(etcd);
    let source = MapSourceConfig {
        etcd: vec![url.clone()],
        key: "/junokv/test-map".into(),
    };
    let source_toml = format!(
        "[map_source]\netcd = [\"{url}\"]\nkey = \"{}\"\n",
        source.key
    );
    // (The servers would wait for etcd; the test waits first, to start them together.)
    let mut etcd = None;
    for _ in 0..300 {
        if let Ok(e) = junokv::etcd_map::EtcdMaps::connect(&source).await {
            if e.current().await.is_err_and(|e| e.contains("no map")) {
                etcd = Some(e);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let etcd = etcd.expect("etcd serves within 30 s");
    let addrs: Vec<String> = (0..6)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let seed = cluster_toml(&addrs, 1);
    let mut procs = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let config = write(
            &d.join(format!("storage-{i}.toml")),
            &format!(
                "listen = \"{addr}\"\ndata_dir = \"{}\"\nplaintext = true\nid = \"{addr}\"\n{source_toml}{seed}",
                d.join(format!("data-{i}")).display()
            ),
        );
        let log = d.join(format!("storage-{i}.log"));
        procs.push(junokv(
            &["storage", "--config", config.to_str().unwrap()],
            &log,
        ));
    }
    let client_addr = format!("127.0.0.1:{}", free_port());
    let proxy_config = write(
        &d.join("proxy.toml"),
        &format!("plain_listen = \"{client_addr}\"\n{source_toml}{seed}"),
    );
    procs.push(junokv(
        &["proxy", "--config", proxy_config.to_str().unwrap()],
        &d.join("proxy.log"),
    ));

    // The proxy is up, and serves, once the servers are.
    let mut client = None;
    for _ in 0..300 {
        if let Ok(c) = Client::connect(&client_addr, "test").await {
            if c.set(b"probe", b"1", 0).await.is_ok() {
                client = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = || {
        let tail = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
        format!(
            "proxy:\n{}\nstorage-0:\n{}\netcd:\n{}",
            tail("proxy.log"),
            tail("storage-0.log"),
            tail("etcd.log")
        )
    };
    let client = client.unwrap_or_else(|| panic!("the cluster serves within 30 s\n{}", logs()));
    assert_eq!(
        etcd.current().await.unwrap().epoch,
        0,
        "seeded from [cluster]"
    );

    let writer = common::Writer::start(client, 100);
    let grown = write(&d.join("grown.toml"), &cluster_toml(&addrs, 2));
    let said = change_map(d, &proxy_config, &["change", grown.to_str().unwrap()]).await;
    assert!(said.contains("map epoch 2: done"), "{said}");
    assert!(said.contains("records ("), "the copy is told: {said}");
    assert!(said.contains("data to move: about"), "{said}");
    assert!(
        said.contains("(added)"),
        "the plan names the added nodes: {said}"
    );
    let shrunk = write(&d.join("shrunk.toml"), &cluster_toml(&addrs, 1));
    let said = change_map(d, &proxy_config, &["change", shrunk.to_str().unwrap()]).await;
    assert!(said.contains("map epoch 4: done"), "{said}");
    // The named changes: zone 0 gains its spare, zone 1's node is replaced by its
    // spare, then zone 0's first node is drained and removed.
    let (a, spare) = (&addrs[0], &addrs[3]);
    let add = ["add", spare, "--addr", spare, "--zone", "0"];
    let said = change_map(d, &proxy_config, &add).await;
    assert!(said.contains(&format!("{spare} (added)")) && said.contains("map epoch 6: done"));
    let replace = ["replace", &addrs[1], "--id", &addrs[4], "--addr", &addrs[4]];
    let said = change_map(d, &proxy_config, &replace).await;
    assert!(
        said.contains("(removed)") && said.contains("map epoch 8: done"),
        "{said}"
    );
    let said = change_map(d, &proxy_config, &["remove", a]).await;
    assert!(said.contains(&format!("{a} (removed)")) && said.contains("map epoch 10: done"));
    let refused = Command::new(env!("CARGO_BIN_EXE_junokv"))
        .args(["map", "remove", &addrs[2], "--config"])
        .arg(&proxy_config)
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a zone's last node cannot be removed"
    );
    let shown = Command::new(env!("CARGO_BIN_EXE_junokv"))
        .args(["map", "show"])
        .arg(&proxy_config)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("from etcd /junokv/test-map") && shown.contains("map epoch 10,"),
        "junokv map show reads the map in etcd: {shown}"
    );
    writer.stop_and_check().await;
    let map = etcd.current().await.unwrap();
    assert_eq!((map.epoch, map.previous.is_none()), (10, true));
    let nodes: Vec<&str> = map
        .zones
        .iter()
        .flat_map(|z| &z.nodes)
        .map(|n| n.addr.as_str())
        .collect();
    assert_eq!(nodes, [spare, &addrs[4], &addrs[2]]);
    drop(procs);
}
