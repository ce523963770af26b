//! Serving `https://` and `wss://`: the certificate and key, re-read when renewed. Handshakes
//! run in each connection's own task, bounded like a request head (see `server.rs`).

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Builds the server's TLS configuration from PEM files: the certificate chain (leaf first) and
/// its private key (PKCS#8, PKCS#1 or SEC1). Errors name the file and what is wrong with it.
/// The files are watched: a renewed certificate is served from the next handshake on.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = ReloadingCert::new(cert, key, provider.clone())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("tls_cert: {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("tls_cert: {}: no PEM certificate in the file", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key: {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, key_der, provider)
        .map_err(|e| format!("tls_key: {} does not fit {}: {e}", key.display(), cert.display()))
}

/// What identifies a version of the two files without reading them.
type Stamp = [Option<(SystemTime, u64, u64)>; 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len(), m.ino()));
    [one(cert), one(key)]
}

/// Serves the certificate and key from their files, re-read when either changes, so a renewal
/// (certbot, an internal CA) needs no restart. A pair that does not load (half written, key
/// not matching yet) is logged once and the previous certificate is kept.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    /// The stamp last looked at, loaded or not, so a bad pair is tried (and logged) once.
    seen: Stamp,
}

impl ReloadingCert {
    fn new(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let seen = stamp(cert, key);
        let loaded = Arc::new(load(cert, key, &provider)?);
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: Mutex::new(Current { key: loaded, seen }),
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Two stats per handshake: nothing next to the handshake's own cryptography.
        let now = stamp(&self.cert, &self.key);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if now != current.seen {
            current.seen = now;
            match load(&self.cert, &self.key, &self.provider) {
                Ok(k) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    current.key = Arc::new(k);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate changed but does not load; keeping the previous one")
                }
            }
        }
        Some(current.key.clone())
    }
}
