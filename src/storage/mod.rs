//! The storage server: hosts one replica of every shard the map gives it, answers the
//! internal protocol, and persists through group commit.

mod durability_check;
mod evictor;
mod group_commit;
mod recovery;
mod replica_actor;
mod replica_sync;
mod shard_digest;
mod sweeper;

pub use replica_actor::{is_record_key, META_PREFIX};
pub use sweeper::{SweepConfig, Swept};

use crate::at_rest::{KeyFile, SlotCodec};
use crate::clock::Clock;
use crate::cluster::ShardMap;
use crate::engine::Engine;
use crate::listener::serve_until_stopped;
use crate::proxy::Proxy;
use crate::replica::ReplicaRequest;
use crate::rpc::{frame_reader, read_frame, write_frames};
use crate::transport::{Acceptor, TlsFiles};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// `junokv storage --config F`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Address the internal protocol listens on.
    pub listen: String,
    /// This server's node in `[cluster]` (its id there, or its address): what an
    /// in-memory server's recovery finds its shards by. Default: `listen`.
    /// `junokv storage --id` overrides it, for a config several servers share (a
    /// Kubernetes ConfigMap, where `listen` is `0.0.0.0:…`).
    #[serde(default)]
    pub id: Option<String>,
    /// Where RocksDB keeps its files.
    pub data_dir: PathBuf,
    /// The cluster map (as the proxies have it). Without it the server cannot ask
    /// the other replicas of its keys, so it runs no sweeper: dead records are then
    /// removed only when clients read them.
    #[serde(default)]
    pub cluster: Option<ShardMap>,
    /// Where the map lives and changes (etcd): the server follows it, and `[cluster]`
    /// only seeds an empty source.
    #[serde(default)]
    pub map_source: Option<crate::map_change::MapSourceConfig>,
    /// Mutual TLS: this server's cluster certificate, and the cluster CA (`ca`,
    /// required) whose certificates alone may connect. Revoked ones go in `crl`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Serve the internal port in plain text, to anyone who reaches it: only where
    /// the network itself is trusted. Needed when there is no `[tls]`.
    #[serde(default)]
    pub plaintext: bool,
    #[serde(default)]
    pub sweeper: SweepConfig,
    /// Where records are kept: `rocksdb` (durable, the default) or `memory`.
    #[serde(default)]
    pub engine: EngineKind,
    /// The in-memory engine's cap and recovery (with `engine = "memory"` only).
    #[serde(default)]
    pub memory: Option<MemoryConfig>,
    /// Encryption at rest: without it, records are stored in clear.
    #[serde(default)]
    pub encryption: Option<EncryptionConfig>,
    /// The admin HTTP port (metrics, health, readiness), if any.
    #[serde(default)]
    pub admin: Option<crate::admin::AdminConfig>,
}

/// `[encryption]` in a storage server's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The data keys (`junokv keys add FILE` makes and rotates it), mode 0600. The
    /// same file on every storage server: a repair copies records between them.
    pub key_file: PathBuf,
}

/// A running storage server.
pub struct StorageServer {
    addr: SocketAddr,
    engine: Arc<dyn Engine>,
    codec: SlotCodec,
    inbox: mpsc::UnboundedSender<replica_actor::Envelope>,
    stop: watch::Sender<bool>,
    accepting: tokio::task::JoinHandle<()>,
    replica: tokio::task::JoinHandle<()>,
    /// What runs through a proxy: the sweeper, eviction, recovery.
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Whether the first of `background` follows a map source.
    following: bool,
    /// Set while an in-memory replica has not recovered the records it lost in a
    /// restart (see `recovery.rs`).
    recovering: Arc<std::sync::atomic::AtomicBool>,
}

/// `engine` in a storage server's config.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// RocksDB: durable.
    #[default]
    Rocksdb,
    /// Records in memory, lost when the process stops (a cache cluster).
    Memory,
}

/// `[memory]` in a storage server's config: the in-memory engine's settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// The cap on what the engine holds (keys, records and their headers), in MiB:
    /// past 90% of it the soonest-expiring records are evicted, at 100% new records
    /// are refused.
    pub limit_mb: u64,
    /// How long a restarted replica waits before it recovers (see `recovery.rs`):
    /// longer than any proxy request can last (the proxies' `timeouts.request_ms`), so
    /// that every write it took before the restart is acknowledged or over.
    pub recovery_delay_ms: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            limit_mb: 1024,
            recovery_delay_ms: 5000,
        }
    }
}

impl MemoryConfig {
    /// The cap in the unit the engine counts in.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_mb.saturating_mul(1 << 20)
    }

    /// What the storage server checks of `[memory]` before it starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.limit_mb == 0 {
            return Err("memory.limit_mb must be at least 1".into());
        }
        Ok(())
    }
}

impl StorageConfig {
    /// How the internal port accepts connections: mutual TLS, or plain text only when
    /// asked for in so many words.
    pub fn acceptor(&self) -> Result<Acceptor, String> {
        match (&self.tls, self.plaintext) {
            (Some(tls), false) if tls.ca.is_some() => Acceptor::new(Some(tls)),
            (Some(_), false) => {
                Err("[tls] needs `ca`: storage servers accept only cluster certificates".into())
            }
            (None, true) => Ok(Acceptor::Plain),
            (Some(_), true) => Err("set either [tls] or plaintext = true, not both".into()),
            (None, false) => Err(
                "no [tls]: give the server a cluster certificate (mutual TLS), or set \
                 plaintext = true to serve the internal port unauthenticated"
                    .into(),
            ),
        }
    }

    /// The settings a storage server checks before it starts: its cluster map and
    /// sweeper settings make sense. (Its certificate and key files are loaded by
    /// [`StorageConfig::acceptor`] and [`StorageConfig::codec`].)
    pub fn validate(&self) -> Result<(), String> {
        if let Some(admin) = &self.admin {
            admin.validate(self.tls.is_some())?;
        }
        if let Some(map) = &self.cluster {
            map.validate().map_err(|e| format!("[cluster]: {e}"))?;
        }
        if self.id.is_some() && self.map_source.is_none() {
            self.address_in_map(None)?;
        }
        match (&self.engine, &self.memory, &self.cluster) {
            (EngineKind::Rocksdb, Some(_), _) => {
                return Err("[memory] is for engine = \"memory\" only".into())
            }
            (EngineKind::Memory, _, None) => {
                return Err(
                    "engine = \"memory\" needs [cluster]: a restarted in-memory replica \
                     recovers its records from the other replicas"
                        .into(),
                )
            }
            (_, Some(memory), _) => memory.validate()?,
            _ => {}
        }
        let s = &self.sweeper;
        if s.interval_ms == 0 || s.concurrency == 0 || s.purge_grace_secs == 0 {
            return Err(
                "sweeper.interval_ms, sweeper.concurrency and sweeper.purge_grace_secs must be \
                 at least 1"
                    .into(),
            );
        }
        Ok(())
    }

    /// This server's address in `[cluster]`: that of the node named `id` (else the
    /// config's `id`, else `listen`) by its id or its address. `None` without a map,
    /// or when a RocksDB server is not in it (nothing it runs needs to know); an error
    /// when a named id is not in the map (unless the map comes from a map source, where
    /// it may be added later), or an in-memory server is not (its recovery would find
    /// no shards of its own and it would never serve).
    pub fn address_in_map(&self, id: Option<&str>) -> Result<Option<String>, String> {
        let Some(map) = &self.cluster else {
            return Ok(None);
        };
        let named = id.or(self.id.as_deref());
        let name = named.unwrap_or(&self.listen);
        let node =
            (map.zones.iter().flat_map(|z| &z.nodes)).find(|n| n.id == name || n.addr == name);
        match (node, named, &self.engine) {
            (Some(node), _, _) => Ok(Some(node.addr.clone())),
            // A node the map source does not have yet: it joins when a change of the
            // map names it (by this id or address).
            (None, Some(named), _) if self.map_source.is_some() => Ok(Some(named.to_string())),
            (None, None, EngineKind::Rocksdb) => Ok(None),
            (None, _, _) => Err(format!(
                "this server ({name}) is not a node of [cluster]: name it by its id or address \
                 there, with `id = \"...\"` or `junokv storage --id`"
            )),
        }
    }

    /// How records are stored: sealed with the key file's data keys, or in clear.
    pub fn codec(&self) -> Result<SlotCodec, String> {
        match &self.encryption {
            Some(e) => SlotCodec::sealed(Box::new(KeyFile {
                path: e.key_file.clone(),
            })),
            None => Ok(SlotCodec::clear()),
        }
    }
}

impl StorageServer {
    /// Serves `engine` on `listener` (through `acceptor`: mutual TLS or plain text)
    /// until [`StorageServer::stop`], storing slots through `codec`. Fails if `codec`'s
    /// data keys are not the ones the store was sealed with.
    pub fn start(
        listener: TcpListener,
        engine: Arc<dyn Engine>,
        codec: SlotCodec,
        acceptor: Acceptor,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        crate::metrics::metrics().watch_engine(&engine);
        let started = replica_actor::start(engine.clone(), codec.clone(), addr.to_string())?;
        let (inbox, replica) = (started.inbox, started.task);
        let (stop, stopped) = watch::channel(false);
        let connections = inbox.clone();
        let accepting = tokio::spawn(serve_until_stopped(listener, stopped, move |stream| {
            serve_connection(stream, acceptor.clone(), connections.clone())
        }));
        tracing::info!(%addr, "storage server listening");
        Ok(StorageServer {
            addr,
            engine,
            codec,
            inbox,
            stop,
            accepting,
            replica,
            background: Vec::new(),
            following: false,
            recovering: started.recovering,
        })
    }

    /// Whether this is an in-memory replica that lost its records in a restart and has
    /// not recovered them (see [`StorageServer::start_background`]): until then, keys
    /// it lacks count as damaged.
    pub fn needs_recovery(&self) -> bool {
        self.recovering.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What its admin port's `/readyz` tells: not ready while it recovers.
    pub fn health(&self) -> crate::admin::Serving {
        crate::admin::Serving {
            recovering: self.recovering.clone(),
        }
    }

    /// Starts the background work done through `proxy` (`clock` judges expiry): the
    /// sweeper; for a capped engine, eviction; for a restarted in-memory replica,
    /// recovery after `memory.recovery_delay_ms`. Replaces what was started before.
    pub fn start_background(
        &mut self,
        me: &str,
        proxy: Arc<Proxy>,
        clock: Clock,
        sweep: SweepConfig,
        memory: &MemoryConfig,
    ) {
        // (The task following the map source, first of all, stays.)
        let kept = usize::from(self.following);
        self.background.drain(kept..).for_each(|t| t.abort());
        let sweeper = self.make_sweeper(proxy.clone(), clock.clone(), sweep);
        self.background.push(tokio::spawn(sweeper.run()));
        if let Some(limit) = self.engine.size_limit() {
            let evictor = evictor::Evictor {
                engine: self.engine.clone(),
                limit,
                codec: self.codec.clone(),
                proxy: proxy.clone(),
                clock: clock.clone(),
            };
            self.background.push(tokio::spawn(evictor.run()));
        }
        if self.needs_recovery() {
            let recovery = recovery::Recovery {
                me: me.to_string(),
                replica: self.inbox.clone(),
                proxy,
                clock,
                delay: std::time::Duration::from_millis(memory.recovery_delay_ms),
            };
            self.background.push(tokio::spawn(recovery.run()));
        }
    }

    /// From now on, refuses requests about shards `map` does not place on `me` (this
    /// server's address in it), answering [`ReplicaReply::NotOwner`] with the map's
    /// epoch: a proxy on another map can then not write through it.
    ///
    /// [`ReplicaReply::NotOwner`]: crate::replica::ReplicaReply::NotOwner
    pub fn own(&self, map: &ShardMap, me: &str) {
        send_ownership(&self.inbox, map, me);
    }

    /// Serves every map `maps` brings, as [`StorageServer::own`] does with one, for as
    /// long as the server runs: how a storage server follows the cluster's map source.
    pub fn follow(&mut self, mut maps: tokio::sync::watch::Receiver<ShardMap>, me: &str) {
        let (inbox, me) = (self.inbox.clone(), me.to_string());
        assert!(!self.following, "a server follows one map source");
        self.following = true;
        self.background.insert(
            0,
            tokio::spawn(async move {
                loop {
                    if !send_ownership(&inbox, &maps.borrow_and_update(), &me) {
                        return;
                    }
                    if maps.changed().await.is_err() {
                        return;
                    }
                }
            }),
        );
    }

    /// One sweep pass right now, through `proxy`'s read path (what the background
    /// sweeper does every interval). The removals and repairs it starts land
    /// shortly after it returns.
    pub async fn sweep_once(
        &self,
        proxy: Arc<Proxy>,
        clock: Clock,
        config: SweepConfig,
    ) -> std::io::Result<Swept> {
        self.make_sweeper(proxy, clock, config).pass().await
    }

    fn make_sweeper(
        &self,
        proxy: Arc<Proxy>,
        clock: Clock,
        config: SweepConfig,
    ) -> sweeper::Sweeper {
        let map = proxy.map();
        let me = self.addr.to_string();
        sweeper::Sweeper {
            zone: map
                .zones
                .iter()
                .position(|z| z.nodes.iter().any(|n| n.addr == me)),
            zones: map.zones.len(),
            me,
            engine: self.engine.clone(),
            codec: self.codec.clone(),
            replica: self.inbox.clone(),
            proxy,
            clock,
            config,
        }
    }

    /// The proxy a sweeper of this server's own uses: the cluster's map, default
    /// limits, the sweeper's grace period, and this server's cluster certificate.
    pub fn sweeping_proxy(
        map: ShardMap,
        config: &SweepConfig,
        tls: Option<&TlsFiles>,
        clock: Clock,
    ) -> Result<Arc<Proxy>, String> {
        let mut proxy = crate::proxy::ProxyConfig::new(map);
        proxy.cluster_tls = tls.cloned();
        proxy.timeouts.purge_grace_secs = config.purge_grace_secs;
        Proxy::new(proxy, clock)
    }

    /// Reads the data keys again (a rotation): new writes are sealed with the newest,
    /// and the sweeper re-seals older records. Refused if a key differs from the one
    /// its id stood for before.
    pub fn reload_data_keys(&self) -> Result<(), String> {
        self.codec
            .reload(|keys| replica_actor::record_data_keys(&*self.engine, keys))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the sweeper and accepting, closes every connection and waits until the
    /// engine is released (so that its files can be reopened).
    pub async fn stop(self) {
        for task in self.background {
            task.abort();
            let _ = task.await;
        }
        drop(self.inbox);
        let _ = self.stop.send(true);
        let _ = self.accepting.await;
        let _ = self.replica.await;
    }
}

/// Tells the replica what `map` places on `me`; false once the replica has stopped.
fn send_ownership(
    inbox: &mpsc::UnboundedSender<replica_actor::Envelope>,
    map: &ShardMap,
    me: &str,
) -> bool {
    let owns = replica_actor::Ownership::of(map, me);
    inbox.send(replica_actor::Envelope::Own(owns)).is_ok()
}

async fn serve_connection(
    stream: TcpStream,
    acceptor: Acceptor,
    replica: mpsc::UnboundedSender<replica_actor::Envelope>,
) {
    let ends = (stream.local_addr(), stream.peer_addr());
    let Ok(stream) = acceptor.accept(stream).await else {
        return;
    };
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = frame_reader(rd);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    if let (Ok(local), Ok(peer)) = ends {
        out_rx = crate::fault::delayed(out_rx, local, peer);
    }
    let writer = tokio::spawn(write_frames(wr, out_rx, None));
    loop {
        let (id, (request_id, epoch, req)) =
            match read_frame::<(Option<[u8; 16]>, u64, ReplicaRequest), _>(&mut rd).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "closing internal connection");
                    break;
                }
            };
        let reply_to = replica_actor::ReplyTo {
            id,
            out: out_tx.clone(),
        };
        if replica
            .send(replica_actor::Envelope::Request(
                req,
                (request_id, Some(epoch)),
                reply_to,
            ))
            .is_err()
        {
            break;
        }
    }
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> StorageConfig {
        let text = format!(
            "listen = \"0.0.0.0:7001\"\ndata_dir = \"d\"\nplaintext = true\n{extra}\n\
             [cluster]\nzones = [{{ datacenter = \"a\", nodes = [\"s-0.a:7001\", \
             {{ id = \"s-1\", addr = \"10.0.0.2:7001\" }}] }}]\n"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn a_server_finds_itself_in_the_map_by_id_or_address() {
        let disk = config("");
        assert_eq!(
            disk.address_in_map(Some("s-0.a:7001")),
            Ok(Some("s-0.a:7001".into()))
        );
        assert_eq!(
            disk.address_in_map(Some("s-1")),
            Ok(Some("10.0.0.2:7001".into()))
        );
        // Listening on 0.0.0.0, a RocksDB server need not know itself...
        assert_eq!(disk.address_in_map(None), Ok(None));
        // ...an in-memory one must, and a name given must be in the map.
        let memory = config("engine = \"memory\"");
        assert!(memory.address_in_map(None).unwrap_err().contains("--id"));
        assert!(disk.address_in_map(Some("s-2")).is_err());
        assert_eq!(
            config("id = \"s-1\"").address_in_map(None),
            Ok(Some("10.0.0.2:7001".into()))
        );
        assert!(config("id = \"s-9\"").validate().is_err());
    }
}
