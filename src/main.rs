//! `junokv`: storage server, proxy, local dev cluster, client commands and benchmark.

#[cfg(not(madsim))]
mod cli;

/// mimalloc: the proxy and storage servers allocate a buffer or two per message, and
/// glibc's malloc took about 12% of a loaded cluster's CPU.
#[cfg(not(madsim))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
