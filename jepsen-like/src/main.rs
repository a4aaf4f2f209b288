//! `jepsen-like check FILE` and `jepsen-like run`.

use clap::{Parser, Subcommand};
use jepsen_like::{checker, history, model::Model, report};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "jepsen-like",
    about = "Linearizability checker and workload runner for JunoKV"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a history: prints valid / invalid / unknown first; exits 0 / 1 / 2 (3: malformed file).
    Check {
        file: PathBuf,
        /// Also write an HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Seconds before the verdict becomes `unknown`.
        #[arg(long, default_value_t = 60.0)]
        time_limit: f64,
        /// How far (ms) the store's expiry clock may be from the history's clock.
        #[arg(long, default_value_t = 1500)]
        clock_uncertainty_ms: u64,
        /// How much earlier than its TTL the store may expire a record (JunoKV keeps
        /// expiry times in whole seconds: 1000).
        #[arg(long, default_value_t = 0)]
        expiry_rounding_ms: u64,
    },
    /// Drive a live cluster with the mixed workload, record and check the history.
    Run(jepsen_like::runner::RunArgs),
    /// Print a random history that is linearizable by construction (for benchmarks).
    Synth {
        #[arg(long, default_value_t = 100_000)]
        ops: usize,
        #[arg(long, default_value_t = 1000)]
        keys: u32,
        #[arg(long, default_value_t = 16)]
        processes: u64,
        /// Fraction of operations whose outcome is unknown.
        #[arg(long, default_value_t = 0.0)]
        info: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Check random histories of one hot key, as generated and with one result
    /// changed: prints each verdict and how long it took; exits 1 if a generated
    /// (linearizable) history is judged invalid.
    HotKey {
        #[arg(long, default_value_t = 2000)]
        ops: usize,
        #[arg(long, default_value_t = 16)]
        processes: u64,
        /// Fraction of operations whose outcome is unknown.
        #[arg(long, default_value_t = 0.25)]
        info: f64,
        /// Histories to generate (seeds 1, 2, …).
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        /// Seconds per history before its verdict becomes `unknown`.
        #[arg(long, default_value_t = 10.0)]
        time_limit: f64,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check {
            file,
            html,
            time_limit,
            clock_uncertainty_ms,
            expiry_rounding_ms,
        } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    return ExitCode::from(3);
                }
            };
            let model = Model {
                clock_uncertainty_ns: clock_uncertainty_ms * 1_000_000,
                expiry_rounding_ns: expiry_rounding_ms * 1_000_000,
                ..Model::default()
            };
            check_and_report(
                &text,
                model,
                Duration::from_secs_f64(time_limit),
                html.as_deref(),
            )
        }
        Command::Run(args) => jepsen_like::runner::main(args),
        Command::Synth {
            ops,
            keys,
            processes,
            info,
            seed,
        } => {
            print!(
                "{}",
                jepsen_like::synth::random(
                    ops,
                    keys.max(1),
                    processes.max(1),
                    info.clamp(0.0, 1.0),
                    seed
                )
            );
            ExitCode::SUCCESS
        }
        Command::HotKey {
            ops,
            processes,
            info,
            seeds,
            time_limit,
        } => hot_key(
            ops,
            processes.max(1),
            info.clamp(0.0, 1.0),
            seeds,
            Duration::from_secs_f64(time_limit),
        ),
    }
}

/// See [`Command::HotKey`].
fn hot_key(ops: usize, processes: u64, info: f64, seeds: u64, limit: Duration) -> ExitCode {
    use jepsen_like::synth;
    let mut wrong = false;
    println!("seed  generated             changed");
    for seed in 1..=seeds {
        let text = synth::random(ops, 1, processes, info, seed);
        let changed = synth::mutate(&text, seed as usize * 7919, seed as u8);
        let mut cells = Vec::new();
        for (i, t) in [text, changed].iter().enumerate() {
            let history = history::parse(t).expect("a generated history parses");
            let started = std::time::Instant::now();
            let verdict = checker::check(&history, Model::default(), limit);
            let took = started.elapsed().as_secs_f64();
            let word = match verdict {
                checker::Verdict::Valid => "valid",
                checker::Verdict::Invalid(_) => {
                    wrong |= i == 0;
                    "invalid"
                }
                checker::Verdict::Unknown { .. } => "unknown",
            };
            cells.push(format!("{word:<8} {took:>7.2} s"));
        }
        println!("{seed:>4}  {}  {}", cells[0], cells[1]);
    }
    if wrong {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints the verdict of a history; the exit code says it too.
fn check_and_report(
    text: &str,
    model: Model,
    limit: Duration,
    html: Option<&std::path::Path>,
) -> ExitCode {
    let ops = match history::parse(text) {
        Ok(ops) => ops,
        Err(e) => {
            println!("malformed\n{e}");
            return ExitCode::from(3);
        }
    };
    let verdict = checker::check(&ops, model, limit);
    print!("{}", report::text(&verdict, &ops));
    if let Some(path) = html {
        if let Err(e) = std::fs::write(path, report::html(&verdict, &ops)) {
            eprintln!("{}: {e}", path.display());
        }
    }
    ExitCode::from(match verdict {
        checker::Verdict::Valid => 0,
        checker::Verdict::Invalid(_) => 1,
        checker::Verdict::Unknown { .. } => 2,
    })
}
