//! `junokv-sim`: runs one seed of the whole JunoKV cluster — the real storage-server
//! and proxy code on simulated nodes, over madsim's network, clock and randomness —
//! under a randomised nemesis, then checks the run. `sim/run` runs ranges of seeds.
//!
//! Built only with `RUSTFLAGS="--cfg madsim"`.

#[cfg(madsim)]
mod cluster;
#[cfg(madsim)]
mod engine;
#[cfg(madsim)]
mod liveness;
#[cfg(madsim)]
mod mover;
#[cfg(madsim)]
mod nemesis;
#[cfg(madsim)]
mod recovery_oracle;
#[cfg(madsim)]
mod topology;
#[cfg(madsim)]
mod trace;

#[cfg(madsim)]
use clap::Parser;

/// One seed of the simulated cluster.
#[cfg(madsim)]
#[derive(Parser, Debug)]
#[command(name = "junokv-sim")]
struct Args {
    /// The seed: it decides everything, and replays bit for bit.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A fault-free run.
    #[arg(long)]
    no_faults: bool,
    /// Every fault kind, often (instead of the seed's random subset).
    #[arg(long)]
    all_faults: bool,
    /// Switch on a deliberately broken protocol variant (see `--list-bugs`).
    #[arg(long)]
    bug: Option<String>,
    #[arg(long)]
    list_bugs: bool,
    /// Simulated seconds of workload.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Client processes per client node (more make more collisions, and histories
    /// the checker may not finish with).
    #[arg(long, default_value_t = 2)]
    clients: u64,
    /// Keys (few, so that operations collide; the workload favours the first ones).
    #[arg(long, default_value_t = 8)]
    keys: u64,
    /// Zones per datacentre, comma-separated.
    #[arg(long, default_value = "2,2,1", value_delimiter = ',')]
    zones: Vec<usize>,
    /// The proxies' request deadline, in milliseconds (at most 3 s less the clock skew:
    /// records are purged 4 s after they die).
    #[arg(long, default_value_t = 1000)]
    request_ms: u64,
    #[arg(long, default_value_t = 2)]
    nodes_per_zone: usize,
    /// Percent of operations after the heal allowed to end without a definite answer
    /// (the default is derived from fault-free runs of the default workload).
    #[arg(long, default_value_t = liveness::MAX_UNAVAILABLE_SHARE * 100.0)]
    max_unavailable: f64,
    #[arg(long, default_value_t = 1)]
    proxies_per_dc: usize,
    /// Proxies write through both phases always (no one-round-trip writes), to compare.
    #[arg(long)]
    no_leases: bool,
    #[arg(long, default_value_t = 1)]
    clients_per_dc: usize,
    /// Storage nodes keep records in memory (`engine = "memory"`): a crash loses them,
    /// and the nemesis never has two zones' nodes down or recovering at once (what a
    /// cache cluster survives); with `--list-bugs`, the variants for this mode.
    #[arg(long)]
    memory: bool,
    /// The map changes all through the faults: nodes leave zones, join them and replace
    /// one another (needs two nodes a zone); with `--list-bugs`, the variants for this
    /// mode.
    #[arg(long)]
    moves: bool,
    /// Where a failing seed leaves its history, reports and trace log
    /// (`DIR/seed-N/`).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Keep the files of passing seeds too.
    #[arg(long)]
    keep: bool,
    /// What the trace log records (`RUST_LOG` syntax).
    #[arg(long, default_value = "junokv=info,junokv_sim=info")]
    log: String,
    /// Run the seed twice more, each in a fresh process, and compare the hashes of
    /// their whole traces.
    #[arg(long)]
    check_determinism: bool,
}

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    let args = Args::parse();
    if args.list_bugs {
        let mode = junokv::fault::Bug::ALL.into_iter();
        let listed = |b: &junokv::fault::Bug| {
            b.in_memory_recovery() == args.memory && b.map_change() == args.moves
        };
        for b in mode.filter(listed) {
            println!("{}", b.name());
        }
        return ExitCode::SUCCESS;
    }
    if args.check_determinism {
        return check_determinism();
    }
    let bugs = match args.bug.as_deref().map(junokv::fault::Bug::from_name) {
        None => Vec::new(),
        Some(Some(b)) => vec![b],
        Some(None) => {
            eprintln!("unknown bug; --list-bugs shows them");
            return ExitCode::from(2);
        }
    };
    junokv::fault::set_bugs(&bugs);
    let log = trace::TraceLog::install(&args.log);
    let plan = cluster::Plan {
        seed: args.seed,
        topology: topology::Topology {
            zones_per_dc: args.zones.clone(),
            nodes_per_zone: args.nodes_per_zone,
            proxies_per_dc: args.proxies_per_dc,
            clients_per_dc: args.clients_per_dc,
        },
        faults: !args.no_faults,
        all_faults: args.all_faults,
        duration: std::time::Duration::from_secs_f64(args.duration),
        clients_per_node: args.clients,
        keys: args.keys,
        request_ms: args.request_ms,
        leases: !args.no_leases,
        max_unavailable: args.max_unavailable / 100.0,
        memory: args.memory,
        moves: args.moves,
    };
    let wall = std::time::Instant::now();
    let outcome = cluster::run_seed(&plan);
    let wall = wall.elapsed();
    let trace = log.contents();
    let hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        trace.hash(&mut h);
        outcome.history.hash(&mut h);
        h.finish()
    };
    let passed = outcome.problems.is_empty();
    let (taken, refused) = junokv::metrics::metrics().lease_writes();
    println!(
        "seed {}: {} {} ops, {:.1} simulated s in {:.2} s ({:.1}x, {:.0} ops/s) leases {taken}/{refused} trace {hash:016x} [{}]",
        args.seed,
        if passed { "PASS" } else { "FAIL" },
        outcome.operations,
        outcome.simulated.as_secs_f64(),
        wall.as_secs_f64(),
        outcome.simulated.as_secs_f64() / wall.as_secs_f64(),
        outcome.operations as f64 / wall.as_secs_f64(),
        outcome.swarm,
    );
    for p in &outcome.problems {
        println!("  {p}");
    }
    if let Some(dir) = args.out.as_ref().filter(|_| !passed || args.keep) {
        let dir = dir.join(format!("seed-{}", args.seed));
        let written = std::fs::create_dir_all(&dir).and_then(|_| {
            std::fs::write(dir.join("history.jsonl"), &outcome.history)?;
            std::fs::write(dir.join("report.txt"), &outcome.report)?;
            std::fs::write(dir.join("report.html"), &outcome.html)?;
            std::fs::write(dir.join("trace.log"), &trace)
        });
        match written {
            Ok(()) => println!("  files: {}", dir.display()),
            Err(e) => println!("  could not write {}: {e}", dir.display()),
        }
    }
    if !passed {
        print!("{}", outcome.report);
        let mut replay: Vec<String> = std::env::args().skip(1).collect();
        replay.retain(|a| a != "--keep");
        println!("  replay: sim/run --replay {}", replay.join(" "));
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs this very command (without the flag) twice in fresh processes and compares
/// the trace hashes they print.
#[cfg(madsim)]
fn check_determinism() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--check-determinism")
        .collect();
    let exe = std::env::current_exe().expect("own executable");
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let out = std::process::Command::new(&exe)
            .args(&args)
            .output()
            .expect("run the seed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        let hash = text
            .split(" trace ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .unwrap_or("none")
            .to_string();
        hashes.push(hash);
    }
    if hashes[0] == hashes[1] && hashes[0] != "none" {
        println!("deterministic: both runs traced {}", hashes[0]);
        std::process::ExitCode::SUCCESS
    } else {
        println!("NOT DETERMINISTIC: {} vs {}", hashes[0], hashes[1]);
        std::process::ExitCode::FAILURE
    }
}

#[cfg(not(madsim))]
fn main() {
    eprintln!("junokv-sim runs only in a simulator build: use sim/run");
}
