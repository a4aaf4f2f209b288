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
    /// Keep the map in an etcd the harness starts, begin with the first node of each
    /// zone only, and grow the cluster to every node and shrink it back while the
    /// faults go on (`junokv map change`, itself killed and run again now and then).
    #[arg(long)]
    grow_shrink: bool,
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
        map_in_etcd: args.grow_shrink,
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
    let mut map = cluster.map.clone();
    let member = Connector::member(Some(&cluster.tls)).map_err(std::io::Error::other)?;
    let etcd = cluster.etcd.as_ref().map(|(_, url)| url.clone());
    let cluster = tokio::sync::Mutex::new(cluster);
    let origin = Instant::now();
    let faults_end = origin + Duration::from_secs_f64(args.duration * 0.7);
    let w = workload.clone();
    let clients = tokio::spawn(async move { run(&w, origin).await });
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let changes = etcd.is_some().then(|| {
        let rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 0x6d6f7665);
        let (bin, dir, all) = (args.bin.clone(), dir.clone(), map.clone());
        tokio::spawn(async move { grow_and_shrink(&bin, &dir, &all, rng, faults_end).await })
    });
    let faults = nemesis::run(&cluster, &mut rng, origin, faults_end).await?;
    cluster.lock().await.heal()?;
    let mut problems = Vec::new();
    if let (Some(changes), Some(url)) = (changes, &etcd) {
        // The change under way when the faults stopped finishes on the healed cluster;
        // the replicas to compare are those of the map it leaves.
        match tokio::time::timeout(Duration::from_secs(120), changes).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => problems.push(format!("changing the map: {e}")),
            Ok(Err(e)) => problems.push(format!("the map driver task: {e}")),
            Err(_) => problems.push("the changes of the map did not finish after the heal".into()),
        }
        let source = junokv::map_change::MapSourceConfig {
            etcd: vec![url.clone()],
            key: cluster::MAP_KEY.into(),
        };
        let etcd = junokv::etcd_map::EtcdMaps::connect(&source).await;
        match etcd.map(|e| async move { junokv::map_change::MapStore::current(&e).await }) {
            Ok(current) => match current.await {
                Ok(now)
                    if now.previous.is_none() && now.zones.iter().all(|z| z.nodes.len() == 1) =>
                {
                    map = now
                }
                Ok(now) => problems.push(format!("the map did not end shrunk back: {now:?}")),
                Err(e) => problems.push(format!("reading the final map: {e}")),
            },
            Err(e) => problems.push(format!("reading the final map: {e}")),
        }
    }
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

/// Grows the map to every node of `all` and shrinks it back to the first node of each
/// zone with `junokv map change` (a proxy's config names the etcd), again and again
/// until `until`, then once more to end shrunk; before `until`, kills the command now
/// and then mid-change and runs it again (it resumes the change).
async fn grow_and_shrink(
    bin: &std::path::Path,
    dir: &std::path::Path,
    all: &junokv::cluster::ShardMap,
    mut rng: rand::rngs::SmallRng,
    until: Instant,
) -> Result<(), String> {
    use rand::Rng;
    let zones = |per_zone: usize| {
        let mut map = all.clone();
        map.zones
            .iter_mut()
            .for_each(|z| z.nodes.truncate(per_zone));
        map
    };
    let mut targets = Vec::new();
    for (name, map) in [("grown", zones(usize::MAX)), ("shrunk", zones(1))] {
        let target = dir.join(format!("{name}.toml"));
        std::fs::write(&target, toml::to_string(&map).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        targets.push(target);
    }
    let mut changes = 0;
    while Instant::now() < until || changes % 2 == 1 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..3000))).await;
        let target = &targets[changes % 2];
        changes += 1;
        loop {
            let log = std::fs::File::options()
                .create(true)
                .append(true)
                .open(dir.join("map-change.log"))
                .map_err(|e| e.to_string())?;
            let mut driver = tokio::process::Command::new(bin)
                .args(["map", "change"])
                .arg(target)
                .arg("--config")
                .arg(dir.join("proxy-0.toml"))
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| e.to_string())?;
            let crash = (Instant::now() < until && rng.gen_bool(0.5))
                .then(|| Duration::from_millis(rng.gen_range(10..400)));
            let ended = match crash {
                Some(after) => tokio::time::timeout(after, driver.wait()).await.ok(),
                None => Some(driver.wait().await),
            };
            match ended {
                Some(Ok(status)) if status.success() => break,
                Some(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                None => {
                    // kill -9 mid-change: the next run finishes what this one left.
                    let _ = driver.kill().await;
                }
            }
        }
    }
    Ok(())
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
        for addr in map.replicas(key.shard()) {
            let peer = std::sync::Arc::new(Peer::new(
                addr.to_string(),
                connector.clone(),
                Duration::from_secs(1),
            ));
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
