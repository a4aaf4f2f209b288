//! The cluster map in etcd (v3), as JunoDB keeps its cluster info: one key holds the
//! map as TOML; every proxy and storage server reads it at start and watches it, and a
//! change of the map replaces it by compare-and-set (see `map_change`).

use crate::cluster::ShardMap;
use crate::map_change::{MapSourceConfig, MapStore};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, WatchOptions};
use futures::future::BoxFuture;
use std::time::Duration;
use tokio::sync::watch;

/// How long a follower waits before connecting again after losing etcd.
const RECONNECT: Duration = Duration::from_secs(1);

/// The map's key in an etcd cluster.
#[derive(Clone)]
pub struct EtcdMaps {
    client: Client,
    key: String,
}

impl EtcdMaps {
    pub async fn connect(source: &MapSourceConfig) -> Result<Self, String> {
        let client = Client::connect(&source.etcd, None)
            .await
            .map_err(|e| format!("etcd {}: {e}", source.etcd.join(",")))?;
        Ok(EtcdMaps {
            client,
            key: source.key.clone(),
        })
    }

    /// The map the key holds, and the revision that wrote it.
    async fn read(&self) -> Result<Option<(ShardMap, i64)>, String> {
        let mut client = self.client.clone();
        let got = (client.get(self.key.as_str(), None).await)
            .map_err(|e| format!("etcd get {}: {e}", self.key))?;
        match got.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some((self.decode(kv.value())?, kv.mod_revision()))),
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<ShardMap, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("etcd {}: {e}", self.key))?;
        let map: ShardMap = toml::from_str(text).map_err(|e| format!("etcd {}: {e}", self.key))?;
        map.validate()
            .map_err(|e| format!("etcd {}: {e}", self.key))?;
        Ok(map)
    }

    /// The map the key holds; if it holds none, `seed` stored there first (the first
    /// start of a cluster).
    pub async fn get_or_seed(&self, seed: &ShardMap) -> Result<ShardMap, String> {
        if let Some((map, _)) = self.read().await? {
            return Ok(map);
        }
        let text = toml::to_string(seed).map_err(|e| e.to_string())?;
        let absent = Compare::version(self.key.as_str(), CompareOp::Equal, 0);
        let txn = Txn::new()
            .when([absent])
            .and_then([TxnOp::put(self.key.as_str(), text, None)]);
        let mut client = self.client.clone();
        (client.txn(txn).await).map_err(|e| format!("etcd txn {}: {e}", self.key))?;
        // Whoever seeded first won: read what is there.
        let (map, _) = self.read().await?.ok_or("the map vanished from etcd")?;
        Ok(map)
    }

    /// Follows the key from `first` on: the receiver holds the newest map it held (a
    /// map that fails to decode is logged and skipped), through losses of etcd.
    pub fn follow(self, first: ShardMap) -> watch::Receiver<ShardMap> {
        let (tx, rx) = watch::channel(first);
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.watch_into(&tx).await {
                    tracing::warn!(error = %e, "lost the map's watch on etcd: reconnecting");
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(RECONNECT).await;
            }
        });
        rx
    }

    /// Brings `tx` up to date, then passes on every change until the watch fails.
    async fn watch_into(&self, tx: &watch::Sender<ShardMap>) -> Result<(), String> {
        let newer = |map: ShardMap| {
            tx.send_if_modified(|held| {
                let newer = map.epoch > held.epoch;
                if newer {
                    *held = map;
                }
                newer
            });
        };
        let revision = match self.read().await? {
            Some((map, revision)) => {
                newer(map);
                revision
            }
            None => 0,
        };
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let (_watcher, mut stream) = (client.watch(self.key.as_str(), Some(options)).await)
            .map_err(|e| format!("etcd watch {}: {e}", self.key))?;
        while let Some(message) = stream.message().await.map_err(|e| e.to_string())? {
            for event in message.events() {
                match event.kv().map(|kv| self.decode(kv.value())) {
                    Some(Ok(map)) => newer(map),
                    Some(Err(e)) => tracing::error!(error = %e, "a map in etcd was refused"),
                    None => {}
                }
            }
            if tx.is_closed() {
                return Ok(());
            }
        }
        Err("the watch ended".into())
    }
}

impl MapStore for EtcdMaps {
    fn current(&self) -> BoxFuture<'_, Result<ShardMap, String>> {
        Box::pin(async move {
            let (map, _) = self.read().await?.ok_or("etcd holds no map")?;
            Ok(map)
        })
    }

    fn publish(&self, map: ShardMap, over: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (held, revision) = self.read().await?.ok_or("etcd holds no map")?;
            if held.epoch != over {
                return Err(format!(
                    "the map is at epoch {}, not {over}: another change went first",
                    held.epoch
                ));
            }
            let text = toml::to_string(&map).map_err(|e| e.to_string())?;
            let unchanged = Compare::mod_revision(self.key.as_str(), CompareOp::Equal, revision);
            let txn =
                Txn::new()
                    .when([unchanged])
                    .and_then([TxnOp::put(self.key.as_str(), text, None)]);
            let mut client = self.client.clone();
            let done = (client.txn(txn).await).map_err(|e| format!("etcd txn: {e}"))?;
            match done.succeeded() {
                true => Ok(()),
                false => Err("the map in etcd changed meanwhile: another change went first".into()),
            }
        })
    }
}

/// A one-member etcd on loopback, its data under `dir` and its log in
/// `dir/etcd.log`, for tests and chaos runs: the child process and its client URL.
/// (`etcd` must be on the PATH: Debian's `etcd-server`.)
pub fn start_local(dir: &std::path::Path) -> std::io::Result<(std::process::Child, String)> {
    let port = || -> std::io::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let url = format!("http://127.0.0.1:{}", port()?);
    let peer = format!("http://127.0.0.1:{}", port()?);
    let child = std::process::Command::new("etcd")
        .args(["--name", "local", "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("local={peer}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log"))?)
        .spawn()?;
    Ok((child, url))
}
