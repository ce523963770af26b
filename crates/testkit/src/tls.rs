//! Certificates for TLS tests: a throwaway CA and a hub certificate it signed, for
//! `localhost` and `127.0.0.1`, written as PEM files the way a user would have them.

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};

pub struct TlsFiles {
    /// The CA certificate clients must trust.
    pub ca: PathBuf,
    /// The hub's certificate chain (leaf, then the CA).
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `ca.pem`, `hub.pem` and `hub.key` into `dir`.
pub fn tls_files(dir: &Path) -> Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "agentcom test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let hub_key = KeyPair::generate()?;
    let mut hub_params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    hub_params.distinguished_name.push(DnType::CommonName, "agentcom test hub");
    let hub = hub_params.signed_by(&hub_key, &ca, &ca_key)?;
    let files = TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("hub.pem"), key: dir.join("hub.key") };
    std::fs::write(&files.ca, ca.pem())?;
    std::fs::write(&files.cert, format!("{}{}", hub.pem(), ca.pem()))?;
    std::fs::write(&files.key, hub_key.serialize_pem())?;
    Ok(files)
}
