//! `junokv`: storage server, proxy, local dev cluster, client commands and benchmark.

#[cfg(not(madsim))]
mod cli;

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    cli::main()
}

/// The simulator runs the library's code on simulated nodes; the binary, with RocksDB
/// and real signals, exists only in normal builds.
#[cfg(madsim)]
fn main() {
    eprintln!("junokv: this binary is built for the simulator; use sim/run");
}
