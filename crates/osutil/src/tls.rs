//! TLS client configuration shared by everything that connects out (the CLI's `https://`, the
//! sidecar's `wss://`, the guard's `https://` health checks, the hub's PostgreSQL connections):
//! Mozilla's roots built in, plus the CA certificates of a PEM file (a private CA, or a
//! self-signed server).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;

/// Errors name the file and what is wrong with it; callers prefix the setting's name.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let config = builder()?.with_root_certificates(roots(ca_file)?).with_no_client_auth();
    Ok(Arc::new(config))
}

/// The trusted roots: Mozilla's, plus every certificate of `ca_file`.
pub fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate in the file", path.display()));
        }
        for c in certs {
            roots.add(c).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

/// A client configuration on ring with the safe default protocol versions, before its roots.
pub fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))
}
