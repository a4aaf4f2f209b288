//! Command-line interface.

mod bench;
mod certs;
mod dev;
mod kv;
mod map;
mod status;

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
    /// Log lines as text (coloured only on a terminal) or as JSON objects, one a line,
    /// for log shippers. `RUST_LOG` sets what is logged (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr: colour codes only when stderr is a terminal, so that log files
/// hold plain text.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a storage server.
    Storage {
        #[arg(long)]
        config: PathBuf,
        /// This server's node in the config's `[cluster]` (its id or address), when
        /// that is not the config's `id` or `listen` (see the README).
        #[arg(long)]
        id: Option<String>,
    },
    /// Run a proxy.
    Proxy {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a complete local cluster (storage servers in 3 zones and a proxy) in one process.
    Dev(dev::DevArgs),
    /// Insert a new key.
    Create(kv::WriteArgs),
    /// Read a key.
    Get(kv::GetArgs),
    /// Replace an existing key (conditionally with --version).
    Update(kv::UpdateArgs),
    /// Insert or replace a key.
    Set(kv::WriteArgs),
    /// Remove a key.
    Destroy(kv::KeyArgs),
    /// Load generator.
    Bench(bench::BenchArgs),
    /// The cluster as a proxy sees it: every storage node up or down, its zone and
    /// shards (from the proxy's admin port); exit status 1 when a shard lacks a quorum.
    Status(status::StatusArgs),
    /// The cluster map: each node's shards, and what a change of the map moves.
    #[command(subcommand)]
    Map(map::MapCommand),
    /// Issue the cluster's certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Manage the data keys that seal stored records (encryption at rest).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (e.g. `junokv completions bash >
    /// /etc/bash_completion.d/junokv`).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a proxy's or a storage server's config (one with `data_dir`) as the server
    /// would at start, certificate and key files included, without starting it.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a fresh random key to FILE (made, mode 0600, if missing). Storage servers
    /// seal new writes with it after a reload (SIGHUP) and re-seal older records.
    Add { file: PathBuf },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    if !matches!(
        cli.command,
        Command::Storage { .. } | Command::Proxy { .. } | Command::Dev(_) | Command::Bench(_)
    ) {
        end_quietly_on_closed_stdout();
    }
    let runtime = match &cli.command {
        Command::Bench(a) => a.runtime(),
        _ => tokio::runtime::Runtime::new(),
    }
    .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Storage { config, id } => dev::run_storage(&config, id.as_deref()).await,
            Command::Proxy { config } => dev::run_proxy(&config).await,
            Command::Dev(args) => dev::run_dev(args).await,
            Command::Create(a) => kv::create(a).await,
            Command::Get(a) => kv::get(a).await,
            Command::Update(a) => kv::update(a).await,
            Command::Set(a) => kv::set(a).await,
            Command::Destroy(a) => kv::destroy(a).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Status(a) => status::run(a).await,
            Command::Certs(c) => certs::run(c),
            Command::Map(m) => map::run(m).await,
            Command::Config(ConfigCommand::Check { file }) => dev::check_config(&file),
            Command::Completions { shell } => {
                use clap::CommandFactory;
                let mut cli = Cli::command();
                clap_complete::generate(shell, &mut cli, "junokv", &mut std::io::stdout());
                Ok(ExitCode::SUCCESS)
            }
            Command::Keys(KeysCommand::Add { file }) => {
                let id = junokv::at_rest::KeyFile::add_key(&file)?;
                println!("added data key {id} to {}", file.display());
                Ok(ExitCode::SUCCESS)
            }
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

/// Where and how a client command reaches a proxy.
#[derive(clap::Args)]
pub struct ProxyArgs {
    /// Proxy client address [default: 127.0.0.1:8080, or 127.0.0.1:5080 with --tls].
    #[arg(long)]
    proxy: Option<String>,
    /// Connect with TLS.
    #[arg(long)]
    tls: bool,
    /// CA certificate (PEM) that the proxy's certificate must chain to [default:
    /// junokv dev's, junokv-data/tls/ca.crt].
    #[arg(long, requires = "tls")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM), for proxies that require one.
    #[arg(long, requires = "tls", requires = "client_key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "key", id = "client_key", requires = "cert")]
    key: Option<PathBuf>,
}

impl ProxyArgs {
    /// The proxy's address.
    pub fn addr(&self) -> String {
        let default = if self.tls {
            "127.0.0.1:5080"
        } else {
            "127.0.0.1:8080"
        };
        self.proxy.clone().unwrap_or_else(|| default.into())
    }

    /// A connection in namespace `ns`.
    pub async fn connect(&self, ns: &str) -> Result<junokv::client::Client, String> {
        let ca = self.tls.then(|| {
            self.ca
                .clone()
                .unwrap_or_else(|| PathBuf::from("junokv-data/tls/ca.crt"))
        });
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(junokv::transport::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: None,
                crl: None,
            }),
            _ => None,
        };
        let connector = junokv::transport::Connector::client(ca.as_deref(), identity)?;
        let addr = self.addr();
        junokv::client::Client::connect_with(&addr, ns, &connector)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))
    }
}

/// A client command whose output is cut short (`junokv status | head -1`) ends as Unix
/// tools do, killed by SIGPIPE, instead of panicking on a write to a closed pipe. (Rust
/// ignores SIGPIPE; the servers keep that, and sockets never raise it: writes to them
/// pass MSG_NOSIGNAL.)
fn end_quietly_on_closed_stdout() {
    // SAFETY: sets a signal's disposition back to its default, before any thread is
    // started that could depend on it.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
