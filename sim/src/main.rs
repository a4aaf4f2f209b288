//! `junokv-sim [--faults] [--history-dir DIR] SEED...`: runs a whole JunoKV cluster —
//! the real storage-server and proxy code on simulated nodes, over madsim's simulated
//! network and clock — under the checker's workload, one seed at a time; checks each
//! history, and checks that a second fresh process replaying the seed produces the very
//! same history.
//!
//! Built only with `RUSTFLAGS="--cfg madsim"`. First steps of the simulator: `--faults`
//! turns on a small nemesis (crashes, partitions); the fault-free runs are what CI gates
//! on for now.

#[cfg(madsim)]
mod cluster;

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let faults = take_flag(&mut args, "--faults");
    let history_dir = take_value(&mut args, "--history-dir");
    // `--once SEED`: run one seed in this process; print its history hash, its
    // operation count, then the checker's report.
    if take_flag(&mut args, "--once") {
        let seed = args
            .first()
            .and_then(|s| s.parse().ok())
            .expect("--once SEED");
        let run = cluster::run_seed(seed, faults, history_dir.as_deref());
        print!(
            "{:016x}\n{}\n{}",
            run.history_hash, run.operations, run.report
        );
        return std::process::ExitCode::SUCCESS;
    }
    let seeds: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let seeds = if seeds.is_empty() { vec![1] } else { seeds };
    let mut failed = 0;
    for &seed in &seeds {
        // Each seed runs in a fresh process, twice: the second run must reproduce the
        // first bit for bit. (Runs inside one process diverge: some process-wide state
        // survives a run. Not yet found.)
        let run = run_in_child(seed, faults, history_dir.as_deref());
        let replay = run_in_child(seed, faults, None);
        let deterministic = run.0 == replay.0;
        println!(
            "seed {seed}: {} operations, {}, history {}{}",
            run.1,
            run.2.lines().next().unwrap_or(""),
            run.0,
            if deterministic {
                ""
            } else {
                ", NOT DETERMINISTIC"
            }
        );
        if !run.2.starts_with("valid") || !deterministic {
            print!("{}", run.2);
            let flag = if faults { " --faults" } else { "" };
            println!("replay: RUSTFLAGS=\"--cfg madsim\" cargo run -p junokv-sim --{flag} {seed}");
            failed += 1;
        }
    }
    println!(
        "{} seeds: {} passed, {failed} failed",
        seeds.len(),
        seeds.len() - failed
    );
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(madsim)]
fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}

#[cfg(madsim)]
fn take_value(args: &mut Vec<String>, flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    let value = args.get(i + 1).cloned();
    args.drain(i..(i + 2).min(args.len()));
    value
}

/// Runs `seed` in a fresh process: (history hash, operations, report).
#[cfg(madsim)]
fn run_in_child(seed: u64, faults: bool, history_dir: Option<&str>) -> (String, String, String) {
    let exe = std::env::current_exe().expect("own executable");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--once", &seed.to_string()]);
    if faults {
        cmd.arg("--faults");
    }
    if let Some(dir) = history_dir {
        cmd.args(["--history-dir", dir]);
    }
    let out = cmd.output().expect("run a seed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.splitn(3, '\n');
    let hash = parts.next().unwrap_or("").to_string();
    let ops = parts.next().unwrap_or("0").to_string();
    let report = parts.next().map(str::to_string).unwrap_or_else(|| {
        format!(
            "error\nseed {seed} crashed: {}\n",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (hash, ops, report)
}

#[cfg(not(madsim))]
fn main() {
    eprintln!("junokv-sim runs only in a simulator build: RUSTFLAGS=\"--cfg madsim\"");
}
