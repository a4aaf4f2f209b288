//! `junokv certs`: a cluster CA, member and client certificates, revocation lists.

use super::CliResult;
use junokv::certs::{issue_to, Ca, Usage, CA_CERT};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CA (ca.crt, ca.key) in --dir.
    Ca {
        /// Where the CA is kept (keep ca.key secret; it signs everything).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "JunoKV cluster CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue NAME.crt and NAME.key, signed by the CA in --dir.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// The certificate's common name, and its files' names.
        #[arg(long)]
        name: String,
        /// A DNS name or IP address the holder serves on (repeatable): what peers
        /// check against the address they connected to.
        #[arg(long)]
        host: Vec<String>,
        /// A client-only certificate (default: a cluster member's, for serving and
        /// for mutual TLS between proxies and storage servers).
        #[arg(long)]
        client: bool,
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Where to write the files [default: --dir].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a revocation list (PEM) of the given serials; give it to servers as `crl`.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        /// A serial `issue` printed (repeatable).
        #[arg(long, required = true)]
        serial: Vec<String>,
        /// Until when the list is valid: issue a fresh one before then.
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: CertsCommand) -> CliResult {
    match command {
        CertsCommand::Ca { dir, name, days } => {
            if dir.join(CA_CERT).exists() {
                return Err(format!(
                    "{} exists: not replacing a CA",
                    dir.join(CA_CERT).display()
                ));
            }
            Ca::create(&name, days)?.save(&dir)?;
            println!("CA in {}", dir.display());
        }
        CertsCommand::Issue {
            dir,
            name,
            host,
            client,
            days,
            out,
        } => {
            if !client && host.is_empty() {
                return Err("a member certificate needs at least one --host".into());
            }
            let usage = if client { Usage::Client } else { Usage::Member };
            let out = out.unwrap_or_else(|| dir.clone());
            let serial = issue_to(&Ca::load(&dir)?, &out, &name, &host, usage, days)?;
            println!(
                "{name}.crt and {name}.key in {}, serial {serial}",
                out.display()
            );
        }
        CertsCommand::Revoke {
            dir,
            serial,
            days,
            out,
        } => {
            let crl = Ca::load(&dir)?.revocation_list(&serial, days)?;
            std::fs::write(&out, crl).map_err(|e| format!("{}: {e}", out.display()))?;
            println!("revocation list in {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
