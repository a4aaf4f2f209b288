//! `junokv-chaos`: the production `junokv` binary as separate processes on loopback,
//! driven by the checker's workload while a seeded nemesis kills (-9), pauses
//! (SIGSTOP) and restarts them and cuts or slows the links between them; then heals,
//! reads every key back, and checks the history and every key's replicas. `chaos/run`
//! builds what it needs and runs this.

mod cluster;
mod nemesis;
mod relay;

use clap::Parser;
use cluster::{Cluster, Shape};
use jepsen_like::history::{parse, to_json_line, Event};
use jepsen_like::runner::{read_back, run, Workload};
use jepsen_like::{checker, model::Model, report};
use junokv::key::StoreKey;
use junokv::replica::{ReplicaReply, ReplicaRequest};
use junokv::rpc::Peer;
use junokv::transport::Connector;
use rand::SeedableRng;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "junokv-chaos")]
struct Args {
    /// The `junokv` binary to run.
    #[arg(long)]
    bin: PathBuf,
    /// Seconds of workload; faults during the first 70%, then a healing period.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Seed of the fault schedule and the workload (printed in the report).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the run's directory goes.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    #[arg(long, default_value_t = 3)]
    zones: usize,
    #[arg(long, default_value_t = 2)]
    nodes_per_zone: usize,
    #[arg(long, default_value_t = 2)]
    proxies: usize,
    /// Client processes (spread over the proxies).
    #[arg(long, default_value_t = 8)]
    clients: u64,
    #[arg(long, default_value_t = 8)]
    keys: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(chaos(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("chaos: ERROR {e}");
            ExitCode::from(3)
        }
    }
}

async fn chaos(args: Args) -> std::io::Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let dir = args.out.join(format!("seed-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    println!("chaos: seed {seed}, run directory {}", dir.display());
    let shape = Shape {
        zones: args.zones,
        nodes_per_zone: args.nodes_per_zone,
        proxies: args.proxies,
    };
    let cluster = Cluster::start(&args.bin, &dir, shape).await?;
    println!(
        "cluster: {} zones x {} storage nodes, {} proxies, a relay on every link",
        shape.zones, shape.nodes_per_zone, shape.proxies
    );
    let workload = Workload {
        proxy: cluster
            .entries
            .iter()
            .map(|r| r.listen.to_string())
            .collect(),
        clients: args.clients,
        keys: args.keys,
        duration: args.duration,
        seed,
        namespace: Some("chaos".into()),
        first_process: 0,
        tls_ca: cluster.tls.ca.clone(),
    };
    let map = cluster.map.clone();
    let member = Connector::member(Some(&cluster.tls)).map_err(std::io::Error::other)?;
    let cluster = tokio::sync::Mutex::new(cluster);
    let origin = Instant::now();
    let faults_end = origin + Duration::from_secs_f64(args.duration * 0.7);
    let w = workload.clone();
    let clients = tokio::spawn(async move { run(&w, origin).await });
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let faults = nemesis::run(&cluster, &mut rng, origin, faults_end).await?;
    cluster.lock().await.heal()?;
    let mut problems = Vec::new();
    let mut events: Vec<Event> = match clients.await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            problems.push(format!("workload: {e}"));
            Vec::new()
        }
        Err(e) => {
            problems.push(format!("workload task: {e}"));
            Vec::new()
        }
    };
    // Healed: every key must be readable, and reads repair replicas; a few passes,
    // then every key's replicas must hold the same record.
    for p in cluster.lock().await.proxies.iter() {
        cluster::wait_listening(p.addr, Duration::from_secs(30)).await?;
    }
    let mut diverged = Vec::new();
    for pass in 0..3u64 {
        match read_back(&workload, (1 << 40) + (pass << 32), origin).await {
            Ok(e) => events.extend(e),
            Err(e) => problems.push(format!("read back: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        diverged = divergent_replicas(&map, &workload, &member).await;
        if diverged.is_empty() {
            break;
        }
    }
    problems.extend(diverged);
    for name in cluster.lock().await.stop() {
        problems.push(format!(
            "{name} did not exit cleanly on SIGTERM within 10 s"
        ));
    }

    events.sort_by_key(|e| e.time);
    let history: String = events.iter().map(|e| to_json_line(e) + "\n").collect();
    let ops = parse(&history).map_err(|e| std::io::Error::other(e.to_string()))?;
    let verdict = tokio::task::spawn_blocking({
        let ops = ops.clone();
        move || checker::check(&ops, Model::default(), Duration::from_secs(120))
    })
    .await
    .map_err(std::io::Error::other)?;
    match &verdict {
        checker::Verdict::Valid => {}
        checker::Verdict::Invalid(_) => problems.push("history is not linearizable".into()),
        checker::Verdict::Unknown { .. } => problems.push("checker gave up (unknown)".into()),
    }
    let text = report::text(&verdict, &ops);
    std::fs::write(dir.join("history.jsonl"), &history)?;
    std::fs::write(dir.join("report.txt"), &text)?;
    std::fs::write(dir.join("report.html"), report::html(&verdict, &ops))?;
    let fault_lines: String = faults
        .iter()
        .map(|(t, what)| format!("{t:8.3}s  {what}\n"))
        .collect();
    std::fs::write(dir.join("faults.txt"), &fault_lines)?;

    let passed = problems.is_empty();
    let indeterminate = events
        .iter()
        .filter(|e| e.kind == jepsen_like::history::EventType::Info)
        .count();
    println!("faults (seed {seed}):");
    print!("{fault_lines}");
    println!(
        "operations: {} ({indeterminate} indeterminate); history: {}",
        ops.len(),
        text.lines().next().unwrap_or("")
    );
    for p in &problems {
        println!("problem: {p}");
    }
    if passed {
        // Keep the reports and logs; the databases are large and tell nothing more.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.path().is_dir() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    println!(
        "chaos: {} seed {seed}: {} operations, {} faults, {} (files in {})",
        if passed { "PASS" } else { "FAIL" },
        ops.len(),
        faults.len(),
        if passed {
            "history linearizable, every key read back, replicas converged"
        } else {
            "see the problems above"
        },
        dir.display()
    );
    Ok(passed)
}

/// Keys whose replicas (asked directly, past the relays) hold different records.
async fn divergent_replicas(
    map: &junokv::cluster::ShardMap,
    w: &Workload,
    connector: &Connector,
) -> Vec<String> {
    let ns = w.namespace.clone().unwrap_or_default();
    let mut problems = Vec::new();
    for k in 0..w.keys.max(1) {
        let key = StoreKey::new(ns.as_bytes(), format!("k{k}").as_bytes(), map.num_shards);
        let mut states = Vec::new();
        for addr in map.replicas(key.shard) {
            let peer = Peer::new(addr.to_string(), connector.clone(), Duration::from_secs(1));
            let req = ReplicaRequest::Read { key: key.clone() };
            states.push(
                match peer
                    .call(&req, (None, map.epoch), Duration::from_secs(2))
                    .await
                {
                    Ok(ReplicaReply::Value { accepted }) => {
                        Ok(accepted.map(|(b, r)| (b, r.version, r.tombstone)))
                    }
                    Ok(other) => Err(format!("{other:?}")),
                    Err(e) => Err(e.to_string()),
                },
            );
        }
        if states.windows(2).any(|w| w[0] != w[1]) {
            problems.push(format!("replicas of {ns}/k{k} diverge: {states:?}"));
        }
    }
    problems
}
