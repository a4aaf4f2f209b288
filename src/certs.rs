//! Issuing the cluster's certificates (`junokv certs`, and `junokv dev` on its first
//! start): a cluster CA, certificates for its members (server and client use: proxies
//! and storage servers authenticate each other with them) and for clients, and
//! revocation lists. Keys are ECDSA P-256; private keys are written readable by their
//! owner only.

use crate::secret_file::write;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Names of the CA's files in its directory.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

/// What a certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A cluster member: serves TLS and connects with mutual TLS.
    Member,
    /// A client only.
    Client,
}

/// A loaded CA, able to sign.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn err(what: impl std::fmt::Display) -> impl FnOnce(rcgen::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Valid from an hour ago (slack for clocks behind the issuer's) for `days` (fewer
/// than one: already expired, which only tests want).
fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_after = now + Duration::days(days);
    params.not_before = (now - Duration::hours(1)).min(params.not_after - Duration::hours(1));
}

fn serial() -> SerialNumber {
    SerialNumber::from_slice(&rand::random::<[u8; 16]>()[..])
}

impl Ca {
    /// A new CA named `name`, valid for `days`.
    pub fn create(name: &str, days: i64) -> Result<Ca, String> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial());
        validity(&mut params, days);
        let key = KeyPair::generate().map_err(err("generate CA key"))?;
        let cert = params.self_signed(&key).map_err(err("sign CA"))?;
        Ok(Ca { cert, key })
    }

    /// Writes `ca.crt` and `ca.key` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write(&dir.join(CA_CERT), &self.cert.pem(), false)?;
        write(&dir.join(CA_KEY), &self.key.serialize_pem(), true)
    }

    /// The CA kept in `dir`.
    pub fn load(dir: &Path) -> Result<Ca, String> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(err(CA_KEY))?;
        let params = CertificateParams::from_ca_cert_pem(&read(CA_CERT)?).map_err(err(CA_CERT))?;
        // Re-signing yields an equivalent issuer (same name, same key): what signing
        // children needs.
        let cert = params.self_signed(&key).map_err(err("load CA"))?;
        Ok(Ca { cert, key })
    }

    /// A certificate and key for `name`, naming `hosts` (DNS names or IP addresses)
    /// as subject alternative names, valid for `days`: (certificate PEM, key PEM,
    /// serial in hex, for revocation).
    pub fn issue(
        &self,
        name: &str,
        hosts: &[String],
        usage: Usage,
        days: i64,
    ) -> Result<(String, String, String), String> {
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(err("hosts"))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match usage {
            Usage::Member => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let serial = serial();
        params.serial_number = Some(serial.clone());
        validity(&mut params, days);
        let key = KeyPair::generate().map_err(err("generate key"))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(err("sign certificate"))?;
        let hex: String = serial.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Ok((cert.pem(), key.serialize_pem(), hex))
    }

    /// A revocation list of the certificates with these serials (hex), valid for
    /// `days`; servers given it (`crl`) refuse those certificates.
    pub fn revocation_list(&self, serials: &[String], days: i64) -> Result<String, String> {
        let now = OffsetDateTime::now_utc();
        let revoked = serials
            .iter()
            .map(|hex| {
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("x"), 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| format!("not a hex serial: {hex}"))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let params = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(days),
            crl_number: serial(),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .and_then(|crl| crl.pem())
            .map_err(err("sign revocation list"))
    }
}

/// Issues `name` into `out` (NAME.crt, NAME.key); returns the serial (hex).
pub fn issue_to(
    ca: &Ca,
    out: &Path,
    name: &str,
    hosts: &[String],
    usage: Usage,
    days: i64,
) -> Result<String, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let (cert, key, serial) = ca.issue(name, hosts, usage, days)?;
    write(&out.join(format!("{name}.crt")), &cert, false)?;
    write(&out.join(format!("{name}.key")), &key, true)?;
    Ok(serial)
}

/// The certificates `junokv dev` uses, under its data directory: made on first start,
/// kept after.
pub struct DevCerts {
    pub dir: PathBuf,
}

impl DevCerts {
    /// Makes the development CA, a member certificate for 127.0.0.1/localhost (the
    /// proxy's TLS port and mutual TLS inside the cluster) and a client certificate,
    /// unless they exist.
    pub fn ensure(dir: &Path) -> Result<DevCerts, String> {
        let made = [
            CA_CERT,
            CA_KEY,
            "node.crt",
            "node.key",
            "client.crt",
            "client.key",
        ]
        .iter()
        .all(|f| dir.join(f).exists());
        if !made {
            let ca = Ca::create("JunoKV development CA", 3650)?;
            ca.save(dir)?;
            let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
            issue_to(&ca, dir, "node", &hosts, Usage::Member, 3650)?;
            issue_to(&ca, dir, "client", &[], Usage::Client, 3650)?;
        }
        Ok(DevCerts { dir: dir.into() })
    }

    /// The member identity, trusting the development CA.
    pub fn member(&self) -> crate::transport::TlsFiles {
        crate::transport::TlsFiles {
            cert: self.dir.join("node.crt"),
            key: self.dir.join("node.key"),
            ca: Some(self.dir.join(CA_CERT)),
            crl: None,
        }
    }
}
