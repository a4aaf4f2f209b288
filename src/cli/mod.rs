//! Command-line interface.

mod bench;
mod dev;
mod kv;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "junokv",
    version,
    about = "A linearizable key-value store speaking JunoDB's wire protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a storage server.
    Storage {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a proxy.
    Proxy {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a complete local cluster (storage servers in 3 zones and a proxy) in one process.
    Dev(dev::DevArgs),
    /// Insert a new key.
    Create(kv::KvArgs),
    /// Read a key.
    Get(kv::KvArgs),
    /// Replace an existing key (conditionally with --version).
    Update(kv::KvArgs),
    /// Insert or replace a key.
    Set(kv::KvArgs),
    /// Remove a key.
    Destroy(kv::KvArgs),
    /// Load generator.
    Bench(bench::BenchArgs),
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Storage { config } => dev::run_storage(&config).await,
            Command::Proxy { config } => dev::run_proxy(&config).await,
            Command::Dev(args) => dev::run_dev(args).await,
            Command::Create(a) => kv::run(kv::Kind::Create, a).await,
            Command::Get(a) => kv::run(kv::Kind::Get, a).await,
            Command::Update(a) => kv::run(kv::Kind::Update, a).await,
            Command::Set(a) => kv::run(kv::Kind::Set, a).await,
            Command::Destroy(a) => kv::run(kv::Kind::Destroy, a).await,
            Command::Bench(a) => bench::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("junokv: {e}");
            ExitCode::from(2)
        }
    }
}

/// Errors of the CLI, printed as they are.
pub type CliResult = Result<ExitCode, String>;
