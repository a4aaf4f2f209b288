//! `junokv storage`, `junokv proxy` and `junokv dev`: running servers until Ctrl-C or
//! SIGTERM.

use super::CliResult;
use junokv::clock::Clock;
use junokv::cluster::{ShardMap, Zone};
use junokv::engine::RocksEngine;
use junokv::proxy::{Proxy, ProxyConfig};
use junokv::storage::{StorageConfig, StorageServer, SweepConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the storage servers keep their data (one directory per zone).
    #[arg(long, default_value = "junokv-data")]
    data_dir: PathBuf,
    /// Client address of the proxy.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Number of zones (replicas).
    #[arg(long, default_value_t = 3)]
    zones: usize,
    /// How long destroyed and expired records are kept before they are purged.
    #[arg(long, default_value_t = 3600)]
    purge_grace_secs: u32,
    /// Pause between the storage servers' sweeps for dead records.
    #[arg(long, default_value_t = 60_000)]
    sweep_interval_ms: u64,
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

async fn start_storage(listen: &str, dir: &Path) -> Result<StorageServer, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let engine = RocksEngine::open(dir).map_err(|e| format!("open {}: {e}", dir.display()))?;
    StorageServer::start(bind(listen).await?, Arc::new(engine)).map_err(|e| e.to_string())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

pub async fn run_storage(config: &Path) -> CliResult {
    let cfg: StorageConfig = read_toml(config)?;
    let mut server = start_storage(&cfg.listen, &cfg.data_dir).await?;
    match cfg.cluster {
        Some(map) => {
            let proxy = StorageServer::sweeping_proxy(map, &cfg.sweeper, Clock::default())?;
            server.start_sweeper(proxy, Clock::default(), cfg.sweeper);
        }
        None => tracing::warn!(
            "no [cluster] in the storage config: no sweeper, dead records go only when read"
        ),
    }
    shutdown_signal().await;
    server.stop().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn run_proxy(config: &Path) -> CliResult {
    let cfg: ProxyConfig = read_toml(config)?;
    let listener = bind(&cfg.listen).await?;
    let server = Proxy::new(cfg, Clock::default())?
        .serve(listener)
        .map_err(|e| e.to_string())?;
    shutdown_signal().await;
    server.stop().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn run_dev(a: DevArgs) -> CliResult {
    if a.zones == 0 {
        return Err("--zones must be at least 1".into());
    }
    let mut storages = Vec::new();
    let mut zones = Vec::new();
    for z in 0..a.zones {
        let server = start_storage("127.0.0.1:0", &a.data_dir.join(format!("zone-{z}"))).await?;
        zones.push(Zone {
            datacenter: "dc1".into(),
            nodes: vec![server.addr().to_string()],
        });
        storages.push(server);
    }
    let mut cfg = ProxyConfig::new(
        a.listen.clone(),
        ShardMap {
            epoch: 1,
            num_shards: 1024,
            zones,
        },
    );
    cfg.timeouts.purge_grace_secs = a.purge_grace_secs;
    let listener = bind(&a.listen).await?;
    let shared = Proxy::new(cfg, Clock::default())?;
    let sweep = SweepConfig {
        interval_ms: a.sweep_interval_ms,
        purge_grace_secs: a.purge_grace_secs,
        ..SweepConfig::default()
    };
    for s in &mut storages {
        s.start_sweeper(shared.clone(), Clock::default(), sweep.clone());
    }
    let proxy = shared.serve(listener).map_err(|e| e.to_string())?;
    println!(
        "junokv dev: {} zones, data in {}, clients connect to {}",
        a.zones,
        a.data_dir.display(),
        proxy.addr()
    );
    shutdown_signal().await;
    proxy.stop().await;
    for s in storages {
        s.stop().await;
    }
    Ok(ExitCode::SUCCESS)
}
