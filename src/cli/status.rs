//! `junokv status`: the cluster as a proxy sees it, from the proxy's admin port.

use super::CliResult;
use junokv::proxy::ClusterStatus;
use junokv::transport::Connector;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The proxy's admin address (its `[admin] listen`).
    #[arg(long, default_value = "127.0.0.1:9080")]
    admin: String,
    /// The admin port is HTTPS, with a certificate from this CA.
    #[arg(long)]
    ca: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = super::kv::Output::Text)]
    output: super::kv::Output,
}

/// Prints every storage node, up or down, with its zone and shard count; exit status 1
/// when a shard lacks a quorum of answering replicas.
pub async fn run(a: StatusArgs) -> CliResult {
    let connector = Connector::client(a.ca.as_deref(), None)?;
    let body = get(&connector, &a.admin, "/status").await?;
    let status: ClusterStatus =
        serde_json::from_str(&body).map_err(|e| format!("{}/status: {e}", a.admin))?;
    if a.output == super::kv::Output::Json {
        println!("{body}");
    } else {
        let zones = status
            .nodes
            .iter()
            .map(|n| n.zone)
            .max()
            .map_or(0, |z| z + 1);
        println!(
            "JunoKV {}: map epoch {}, {} shards, {} zones, quorum {}",
            status.version, status.epoch, status.shards, zones, status.quorum
        );
        let width = status.nodes.iter().map(|n| n.addr.len()).max().unwrap_or(4);
        println!(
            "{:width$}  ZONE  DATACENTER  SHARDS  STATE       EPOCH  {:>9}  VERSION",
            "NODE", "DISK"
        );
        for n in &status.nodes {
            let state = match &n.info {
                Some(i) if i.recovering => "recovering",
                Some(_) => "up",
                None => "DOWN",
            };
            let (disk, version) = match &n.info {
                Some(i) => (bytes(i.engine_bytes), i.version.as_str()),
                None => ("-".to_string(), "-"),
            };
            // The map the node serves (it serves only senders on that one).
            let epoch =
                (n.info.as_ref().and_then(|i| i.epoch)).map_or("-".to_string(), |e| e.to_string());
            println!(
                "{:width$}  {:<4}  {:<10}  {:>6}  {state:<10}  {epoch:>5}  {disk:>9}  {version}",
                n.addr, n.zone, n.datacenter, n.shards
            );
        }
        match status.shards_without_quorum {
            0 => println!("every shard has a quorum"),
            n => println!("{n} shards lack a quorum: their keys cannot be read or written"),
        }
    }
    Ok(ExitCode::from(u8::from(status.shards_without_quorum > 0)))
}

/// A size as people read it: 512 B, 3.4 MiB.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut size = n as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{size:.1} {}", UNITS[unit]),
    }
}

/// One HTTP/1.1 GET, the body of a 200 answer.
async fn get(connector: &Connector, addr: &str, path: &str) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{addr}{path}: {e}");
    let (mut stream, _) =
        (connector.connect(addr, Duration::from_secs(5)).await).map_err(|e| fail(&e))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| fail(&e))?;
    let mut response = Vec::new();
    let read = stream.read_to_end(&mut response);
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| fail(&"no answer in 10 s"))?
        .map_err(|e| fail(&e))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail(&"not HTTP"))?;
    match head.split_whitespace().nth(1) {
        Some("200") => Ok(body.to_string()),
        other => Err(fail(&format!("HTTP {}", other.unwrap_or("?")))),
    }
}
