//! `junokv bench`: a closed-loop load generator with a live progress line and latency
//! percentiles from an HDR histogram; against a JunoKV proxy, or against another store
//! (`--peer`) for side-by-side figures.

mod peer;

use super::CliResult;
use hdrhistogram::Histogram;
use junokv::client::{Client, ClientError};
use madsim::rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    proxy: super::ProxyArgs,
    /// Operation mix as weights, e.g. `create:10,get:60,update:20,destroy:10`.
    #[arg(long, default_value = "get:50,set:50")]
    mix: String,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Concurrent requests (each worker keeps one in flight).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Connections the workers share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Threads of the load generator. One, as redis-benchmark: on a machine shared
    /// with the servers measured, a second one mostly wakes the first.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// TTL in seconds of every record the benchmark writes (0: the proxy's default).
    #[arg(long, default_value_t = 0)]
    ttl: u32,
    /// Set every key once before measuring, so that gets find data.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    preload: bool,
    /// Drive another store instead of a JunoKV proxy, with the same workload:
    /// `redis://HOST:PORT` or `etcd://HOST:PORT` (its v3 JSON gateway); gets, sets and
    /// destroys only, one connection per worker.
    #[arg(long)]
    peer: Option<String>,
}

impl BenchArgs {
    /// The runtime the load generator runs on, `--client-threads` wide.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        match self.client_threads {
            0 | 1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        }
        .enable_all()
        .build()
    }
}

/// Where one worker sends its operations.
enum Target {
    Junokv(Client),
    Peer(peer::Connection),
}

impl Target {
    /// Runs one operation (an error: the status or failure, as the summary names it).
    async fn run(&mut self, kind: Kind, key: &[u8], value: &[u8], ttl: u32) -> Result<(), String> {
        match self {
            Target::Junokv(c) => {
                let r: Result<(), ClientError> = match kind {
                    Kind::Create => c.create(key, value, ttl).await.map(drop),
                    Kind::Get => c.get(key).await.map(drop),
                    Kind::Update => c.update(key, value, ttl).await.map(drop),
                    Kind::Set => c.set(key, value, ttl).await.map(drop),
                    Kind::Destroy => c.destroy(key).await,
                };
                r.map_err(|e| e.to_string())
            }
            Target::Peer(c) => match kind {
                Kind::Get => match c.get(key).await {
                    Ok(peer::Found::Value) => Ok(()),
                    Ok(peer::Found::Missing) => Err("NoKey".into()),
                    Err(e) => Err(e),
                },
                Kind::Set => c.set(key, value).await,
                Kind::Destroy => c.destroy(key).await,
                Kind::Create | Kind::Update => unreachable!("refused before the run"),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Create,
    Get,
    Update,
    Set,
    Destroy,
}

fn parse_mix(s: &str) -> Result<Vec<(Kind, u32)>, String> {
    let mut mix = Vec::new();
    for part in s.split(',') {
        let (name, weight) = part
            .split_once(':')
            .ok_or(format!("bad mix entry {part:?}"))?;
        let kind = match name.trim() {
            "create" => Kind::Create,
            "get" => Kind::Get,
            "update" => Kind::Update,
            "set" => Kind::Set,
            "destroy" => Kind::Destroy,
            other => return Err(format!("unknown operation {other:?}")),
        };
        mix.push((
            kind,
            weight
                .trim()
                .parse()
                .map_err(|_| format!("bad weight in {part:?}"))?,
        ));
    }
    if mix.iter().all(|(_, w)| *w == 0) {
        return Err("the mix has no weight".into());
    }
    Ok(mix)
}

struct Stats {
    latency: Histogram<u64>,
    outcomes: BTreeMap<String, u64>,
}

pub async fn run(a: BenchArgs) -> CliResult {
    let mix = parse_mix(&a.mix)?;
    let total_weight: u32 = mix.iter().map(|(_, w)| w).sum();
    let peer = a.peer.as_deref().map(peer::Peer::parse).transpose()?;
    if peer.is_some()
        && (mix.iter()).any(|(k, w)| *w > 0 && matches!(k, Kind::Create | Kind::Update))
    {
        return Err("--peer: the mix may hold get, set and destroy only".into());
    }
    let value = vec![b'x'; a.value_size];
    let mut targets = Vec::new();
    match &peer {
        None => {
            let mut clients = Vec::new();
            for _ in 0..a.connections.max(1) {
                clients.push(a.proxy.connect(&a.namespace).await?);
            }
            for w in 0..a.concurrency {
                targets.push(Target::Junokv(clients[w % clients.len()].clone()));
            }
        }
        Some(p) => {
            for _ in 0..a.concurrency {
                targets.push(Target::Peer(p.connect().await?));
            }
        }
    }
    if a.preload {
        preload(&mut targets, a.keys, &value, a.ttl).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let stats = Arc::new(Mutex::new(Stats {
        latency: Histogram::new(3).expect("histogram"),
        outcomes: BTreeMap::new(),
    }));
    let started = Instant::now();
    let mut workers = Vec::new();
    for (w, mut target) in targets.into_iter().enumerate() {
        let (stop, done, stats, mix, value) = (
            stop.clone(),
            done.clone(),
            stats.clone(),
            mix.clone(),
            value.clone(),
        );
        let (keys, ttl) = (a.keys.max(1), a.ttl);
        workers.push(tokio::spawn(async move {
            let mut rng = madsim::rand::rngs::SmallRng::seed_from_u64(w as u64);
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", rng.gen_range(0..keys)).into_bytes();
                let mut pick = rng.gen_range(0..total_weight);
                let kind = mix
                    .iter()
                    .find(|(_, wt)| {
                        if pick < *wt {
                            true
                        } else {
                            pick -= wt;
                            false
                        }
                    })
                    .map(|(k, _)| *k)
                    .unwrap();
                let t = Instant::now();
                let outcome = target.run(kind, &key, &value, ttl).await;
                let _ = hist.record(t.elapsed().as_micros() as u64);
                let label = match &outcome {
                    Ok(()) => format!("{kind:?} Ok"),
                    Err(e) => format!("{kind:?} {e}"),
                };
                *outcomes.entry(label).or_default() += 1;
                done.fetch_add(1, Ordering::Relaxed);
                if outcome.is_err() {
                    // A closed connection fails at once, without waiting on anything:
                    // on one thread, the workers would then spin and starve the clock
                    // that ends the run (a proxy stopped mid-run hung the benchmark).
                    tokio::task::yield_now().await;
                }
            }
            let mut s = stats.lock().unwrap();
            s.latency.add(&hist).expect("histograms of one shape");
            for (k, v) in outcomes {
                *s.outcomes.entry(k).or_default() += v;
            }
        }));
    }
    let duration = Duration::from_secs(a.duration);
    let mut last = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1).min(duration.saturating_sub(started.elapsed())))
            .await;
        let now = done.load(Ordering::Relaxed);
        eprint!(
            "\r[{:>4.0}s] {:>10} ops {:>9} ops/s",
            started.elapsed().as_secs_f64(),
            now,
            now - last
        );
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!();
    let s = stats.lock().unwrap();
    let ms = |q: f64| s.latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "ops {} in {:.1}s: {:.0} ops/s",
        s.latency.len(),
        elapsed,
        s.latency.len() as f64 / elapsed
    );
    println!(
        "latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.95),
        ms(0.99),
        ms(0.999),
        s.latency.max() as f64 / 1000.0
    );
    for (k, v) in &s.outcomes {
        println!("  {k}: {v}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Sets every key once, the workers' connections sharing the keys.
/// How often the preload sends one key's set before it gives up.
const PRELOAD_TRIES: u32 = 5;

async fn preload(targets: &mut [Target], keys: u64, value: &[u8], ttl: u32) -> Result<(), String> {
    let lanes = targets.len() as u64;
    let loads = targets
        .iter_mut()
        .enumerate()
        .map(|(lane, target)| async move {
            let mut k = lane as u64;
            while k < keys {
                let key = format!("k{k}");
                // A set may be sent again: a load of millions of keys should not stop at
                // one request that ran out of time.
                let mut tries = 1;
                while let Err(e) = target.run(Kind::Set, key.as_bytes(), value, ttl).await {
                    if tries == PRELOAD_TRIES {
                        return Err(format!("preload: {e} ({tries} tries)"));
                    }
                    eprintln!("preload: {e} on {key}: trying again");
                    tries += 1;
                }
                k += lanes;
            }
            Ok::<(), String>(())
        });
    futures::future::try_join_all(loads).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn a_run_ends_on_time_when_its_proxy_closes_every_connection() {
        // A "proxy" that takes each connection and closes it at once: every request
        // then fails without waiting on anything.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
        let flags = [
            "bench",
            "--proxy",
            &addr,
            "--duration",
            "1",
            "--preload",
            "false",
        ];
        let args = Cli::parse_from(flags).bench;
        let (ended_tx, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = args.runtime().unwrap().block_on(run(args));
            let _ = ended_tx.send(result.is_ok());
        });
        let ended = ended.recv_timeout(Duration::from_secs(30));
        assert_eq!(
            ended,
            Ok(true),
            "the one-second run ends, reporting the failures"
        );
    }
}
