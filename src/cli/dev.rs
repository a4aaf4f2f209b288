//! `junokv storage`, `junokv proxy` and `junokv dev`: running servers until Ctrl-C or
//! SIGTERM.

use super::CliResult;
use junokv::admin::{AdminConfig, AdminServer, Health};
use junokv::at_rest::{KeyFile, SlotCodec};
use junokv::certs::{DevCerts, CA_CERT};
use junokv::clock::Clock;
use junokv::cluster::{Node, ShardMap, Zone};
use junokv::engine::RocksEngine;
use junokv::engine::{Engine, VolatileEngine};
use junokv::proxy::{Proxy, ProxyConfig};
use junokv::storage::{
    EngineKind, MemoryConfig, StorageConfig, StorageServer, SweepConfig, META_PREFIX,
};
use junokv::transport::{Acceptor, TlsFiles};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the storage servers keep their data (one directory per zone), and the
    /// development certificates (`tls/`).
    #[arg(long, default_value = "junokv-data")]
    data_dir: PathBuf,
    /// Plain-text client address of the proxy (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// TLS client address of the proxy.
    #[arg(long, default_value = "127.0.0.1:5080")]
    tls_listen: String,
    /// Number of zones (replicas).
    #[arg(long, default_value_t = 3)]
    zones: usize,
    /// How long destroyed and expired records are kept before they are purged
    /// [default: the config's timeouts.purge_grace_secs, 3600].
    #[arg(long)]
    purge_grace_secs: Option<u32>,
    /// Pause between the storage servers' sweeps for dead records.
    #[arg(long, default_value_t = 60_000)]
    sweep_interval_ms: u64,
    /// Plain-HTTP admin address (/metrics, /healthz, /readyz), e.g. 127.0.0.1:9080.
    #[arg(long)]
    admin_listen: Option<String>,
    /// Proxy settings ([limits], [timeouts], [connections], [leases]) as in a proxy's
    /// config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Store records in clear instead of sealed with the data key in `DATA_DIR/keys.toml`
    /// (made on first start).
    #[arg(long)]
    clear_at_rest: bool,
    /// Where the storage servers keep records: `memory` makes a cache cluster, whose
    /// records are lost when it stops.
    #[arg(long, value_enum, default_value_t = EngineKind::Rocksdb)]
    engine: EngineKind,
    /// With `--engine memory`: each storage server's cap, in MiB (eviction of the
    /// soonest-expiring records starts at 90% of it).
    #[arg(long, default_value_t = MemoryConfig::default().limit_mb)]
    memory_limit_mb: u64,
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

async fn bind(addr: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listen on {addr}: {e}"))
}

async fn start_storage(
    listen: &str,
    dir: &Path,
    engine: (EngineKind, &MemoryConfig),
    codec: SlotCodec,
    acceptor: Acceptor,
) -> Result<StorageServer, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let opened: std::io::Result<Arc<dyn Engine>> = match engine {
        (EngineKind::Rocksdb, _) => RocksEngine::open(dir).map(|e| Arc::new(e) as _),
        (EngineKind::Memory, memory) => {
            VolatileEngine::open(dir, META_PREFIX, memory.limit_bytes()).map(|e| Arc::new(e) as _)
        }
    };
    let engine = opened.map_err(|e| format!("open {}: {e}", dir.display()))?;
    StorageServer::start(bind(listen).await?, engine, codec, acceptor)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Starts the admin port `cfg` asks for: HTTPS with `tls` (the server's certificate,
/// no client certificates asked for) unless it is `plaintext`.
async fn start_admin(
    cfg: Option<&AdminConfig>,
    tls: Option<&TlsFiles>,
    health: Arc<dyn Health>,
) -> Result<Option<AdminServer>, String> {
    let Some(cfg) = cfg else {
        return Ok(None);
    };
    cfg.validate(tls.is_some())?;
    let acceptor = match tls.filter(|_| !cfg.plaintext) {
        None => Acceptor::Plain,
        Some(tls) => Acceptor::new(Some(&TlsFiles {
            ca: None,
            crl: None,
            ..tls.clone()
        }))?,
    };
    let server = AdminServer::start(bind(&cfg.listen).await?, acceptor, health);
    server.map(Some).map_err(|e| e.to_string())
}

/// A proxy's config file, read and checked (certificate files are loaded as it starts).
pub fn proxy_config(path: &Path) -> Result<ProxyConfig, String> {
    let cfg: ProxyConfig = read_toml(path)?;
    cfg.validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(cfg)
}

/// A storage server's config file, read and checked (its certificate and key files
/// are loaded as it starts).
pub fn storage_config(path: &Path) -> Result<StorageConfig, String> {
    let cfg: StorageConfig = read_toml(path)?;
    cfg.validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(cfg)
}

/// `junokv config check FILE`: a storage server's config (it has `data_dir`) or a
/// proxy's, checked as the server would at start, certificate and key files loaded.
pub fn check_config(path: &Path) -> CliResult {
    let table: toml::Table = read_toml(path)?;
    let bad = |e: String| format!("{}: {e}", path.display());
    let kind = if table.contains_key("data_dir") {
        let cfg = storage_config(path)?;
        cfg.acceptor().map_err(bad)?;
        cfg.codec().map_err(bad)?;
        "storage server"
    } else {
        let cfg = proxy_config(path)?;
        Acceptor::new(cfg.tls.as_ref()).map_err(bad)?;
        junokv::transport::Connector::member(cfg.cluster_tls.as_ref()).map_err(bad)?;
        "proxy"
    };
    println!("{}: a valid {kind} config", path.display());
    Ok(ExitCode::SUCCESS)
}

/// The proxy settings `junokv dev --config` takes: a real proxy's, but for the ports,
/// certificates and cluster map, which `junokv dev` makes itself.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DevConfig {
    #[serde(default)]
    limits: junokv::proxy::Limits,
    #[serde(default)]
    timeouts: junokv::proxy::Timeouts,
    #[serde(default)]
    connections: junokv::proxy::ConnectionLimits,
    #[serde(default)]
    leases: junokv::proxy::LeaseConfig,
}

/// Runs until Ctrl-C or SIGTERM; on SIGHUP calls `reload` (certificate and key files).
async fn run_until_shutdown(reload: impl Fn() -> Result<(), String>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => match reload() {
                Ok(()) => tracing::info!("SIGHUP: certificates and keys reloaded"),
                Err(e) => tracing::warn!(error = %e, "SIGHUP: not reloaded, the old certificates and keys stay"),
            },
        }
    }
    tracing::info!("shutting down");
}

/// With `[map_source]`: the map the source holds (seeded with `seed` when it holds
/// none), and a receiver that follows it from then on.
async fn map_from_source(
    source: &junokv::map_change::MapSourceConfig,
    seed: Option<&ShardMap>,
) -> (ShardMap, tokio::sync::watch::Receiver<ShardMap>) {
    // etcd may come up after the servers (a whole datacentre restarting): wait for it.
    let (etcd, map) = loop {
        let got = async {
            let etcd = junokv::etcd_map::EtcdMaps::connect(source).await?;
            let map = match seed {
                Some(seed) => etcd.get_or_seed(seed).await?,
                None => junokv::map_change::MapStore::current(&etcd).await?,
            };
            Ok::<_, String>((etcd, map))
        };
        match got.await {
            Ok(got) => break got,
            Err(e) => tracing::warn!(error = %e, "no cluster map from etcd yet: retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    tracing::info!(epoch = map.epoch, key = %source.key, "cluster map from etcd");
    let follow = etcd.follow(map.clone());
    (map, follow)
}

pub async fn run_storage(config: &Path, id: Option<&str>) -> CliResult {
    let mut cfg = storage_config(config)?;
    let bad = |e: String| format!("{}: {e}", config.display());
    let maps = match &cfg.map_source {
        Some(source) => {
            let (map, maps) = map_from_source(source, cfg.cluster.as_ref()).await;
            cfg.cluster = Some(map);
            Some(maps)
        }
        None => None,
    };
    let me = cfg.address_in_map(id).map_err(bad)?;
    let acceptor = cfg.acceptor().map_err(bad)?;
    let codec = cfg.codec().map_err(bad)?;
    let memory = cfg.memory.clone().unwrap_or_default();
    let engine = (cfg.engine, &memory);
    let mut server =
        start_storage(&cfg.listen, &cfg.data_dir, engine, codec, acceptor.clone()).await?;
    let health = Arc::new(server.health());
    let admin = start_admin(cfg.admin.as_ref(), cfg.tls.as_ref(), health).await?;
    let sweeping = match cfg.cluster {
        Some(map) => {
            let proxy = StorageServer::sweeping_proxy(
                map,
                &cfg.sweeper,
                cfg.tls.as_ref(),
                Clock::default(),
            )?;
            match (&me, &maps) {
                (Some(me), Some(maps)) => {
                    server.follow(maps.clone(), me);
                    proxy.follow(maps.clone());
                }
                (Some(me), None) => server.own(&proxy.map(), me),
                (None, _) => {}
            }
            let me = me.unwrap_or_else(|| cfg.listen.clone());
            server.start_background(&me, proxy.clone(), Clock::default(), cfg.sweeper, &memory);
            Some(proxy)
        }
        None => {
            tracing::warn!(
                "no [cluster] in the storage config: no sweeper, dead records go only when read"
            );
            None
        }
    };
    run_until_shutdown(|| {
        acceptor.reload()?;
        server.reload_data_keys()?;
        sweeping.as_ref().map_or(Ok(()), |p| p.reload_tls())
    })
    .await;
    if let Some(admin) = admin {
        admin.stop().await;
    }
    server.stop().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn run_proxy(config: &Path) -> CliResult {
    let mut cfg = proxy_config(config)?;
    let bad = |e: &str| format!("{}: {e}", config.display());
    let maps = match &cfg.map_source {
        Some(source) => {
            let (map, maps) = map_from_source(source, Some(&cfg.cluster)).await;
            cfg.cluster = map;
            Some(maps)
        }
        None => None,
    };
    let proxy = Proxy::new(cfg.clone(), Clock::default()).map_err(|e| bad(&e))?;
    if let Some(maps) = maps {
        proxy.follow(maps);
    }
    let tls = Acceptor::new(cfg.tls.as_ref()).map_err(|e| bad(&e))?;
    let admin = start_admin(cfg.admin.as_ref(), cfg.tls.as_ref(), proxy.clone())
        .await
        .map_err(|e| bad(&e))?;
    let mut servers = Vec::new();
    for (addr, acceptor) in [(&cfg.listen, &tls), (&cfg.plain_listen, &Acceptor::Plain)] {
        if let Some(addr) = addr {
            let listener = bind(addr).await?;
            servers.push(
                proxy
                    .serve(listener, acceptor.clone())
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    run_until_shutdown(|| {
        tls.reload()?;
        proxy.reload_tls()
    })
    .await;
    for s in servers {
        s.stop().await;
    }
    if let Some(admin) = admin {
        admin.stop().await;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_dev(a: DevArgs) -> CliResult {
    if a.zones == 0 {
        return Err("--zones must be at least 1".into());
    }
    let dev: DevConfig = match &a.config {
        Some(path) => read_toml(path)?,
        None => DevConfig::default(),
    };
    let checked = (dev.limits.validate())
        .and_then(|()| dev.timeouts.validate())
        .and_then(|()| dev.connections.validate());
    if let Some(path) = &a.config {
        checked.map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // Secure by default: a development CA and certificates, made on first start;
    // mutual TLS between the proxy and the storage servers, TLS for clients.
    let certs = DevCerts::ensure(&a.data_dir.join("tls"))?;
    let member = certs.member();
    // Encrypted at rest by default too, with a data key made on first start.
    let key_file = a.data_dir.join("keys.toml");
    if !a.clear_at_rest && !key_file.exists() {
        KeyFile::add_key(&key_file)?;
    }
    let codec = || match a.clear_at_rest {
        true => Ok(SlotCodec::clear()),
        false => SlotCodec::sealed(Box::new(KeyFile {
            path: key_file.clone(),
        })),
    };
    let memory = MemoryConfig {
        limit_mb: a.memory_limit_mb,
        ..MemoryConfig::default()
    };
    memory
        .validate()
        .map_err(|e| format!("--memory-limit-mb: {e}"))?;
    let mut storages = Vec::new();
    let mut zones = Vec::new();
    for z in 0..a.zones {
        let dir = a.data_dir.join(format!("zone-{z}"));
        let acceptor = Acceptor::new(Some(&member))?;
        let engine = (a.engine, &memory);
        let server = start_storage("127.0.0.1:0", &dir, engine, codec()?, acceptor).await?;
        zones.push(Zone {
            datacenter: "dc1".into(),
            nodes: vec![Node::at(server.addr().to_string())],
        });
        storages.push(server);
    }
    let mut cfg = ProxyConfig::new(ShardMap {
        epoch: 1,
        num_shards: 1024,
        zones,
        previous: None,
    });
    (cfg.limits, cfg.timeouts, cfg.connections) = (dev.limits, dev.timeouts, dev.connections);
    cfg.leases = dev.leases;
    if let Some(grace) = a.purge_grace_secs {
        cfg.timeouts.purge_grace_secs = grace;
        cfg.timeouts
            .validate()
            .map_err(|e| format!("--purge-grace-secs: {e}"))?;
    }
    let purge_grace_secs = cfg.timeouts.purge_grace_secs;
    cfg.cluster_tls = Some(member.clone());
    let shared = Proxy::new(cfg, Clock::default())?;
    let sweep = SweepConfig {
        interval_ms: a.sweep_interval_ms,
        purge_grace_secs,
        ..SweepConfig::default()
    };
    for s in &mut storages {
        let me = s.addr().to_string();
        s.own(&shared.map(), &me);
        s.start_background(
            &me,
            shared.clone(),
            Clock::default(),
            sweep.clone(),
            &memory,
        );
    }
    // Clients need no certificate of their own here.
    let client_port = TlsFiles {
        ca: None,
        ..member.clone()
    };
    let plain = shared
        .serve(bind(&a.listen).await?, Acceptor::Plain)
        .map_err(|e| e.to_string())?;
    let tls = shared
        .serve(
            bind(&a.tls_listen).await?,
            Acceptor::new(Some(&client_port))?,
        )
        .map_err(|e| e.to_string())?;
    let admin_cfg = a.admin_listen.clone().map(|listen| AdminConfig {
        listen,
        plaintext: true,
    });
    let admin = start_admin(admin_cfg.as_ref(), None, shared.clone()).await?;
    println!(
        "junokv dev: {} zones, data in {}, clients connect to {} (plain text) or {} (TLS, CA {})",
        a.zones,
        a.data_dir.display(),
        plain.addr(),
        tls.addr(),
        certs.dir.join(CA_CERT).display()
    );
    if let Some(admin) = &admin {
        println!("junokv dev: admin port http://{}", admin.addr());
    }
    run_until_shutdown(|| {
        storages
            .iter()
            .try_for_each(StorageServer::reload_data_keys)
    })
    .await;
    plain.stop().await;
    tls.stop().await;
    if let Some(admin) = admin {
        admin.stop().await;
    }
    for s in storages {
        s.stop().await;
    }
    Ok(ExitCode::SUCCESS)
}
