//! Where the hubs' PostgreSQL is and how TLS to it works: `database_url` with libpq's `sslmode`
//! and `sslrootcert`, and `database_ca_file`, checked once at start into a [`Database`] that every
//! connection of the hub is opened from (`pg::connect`).
//!
//! `prefer` (the default) and `require` mean what they mean to libpq: encrypted when the server
//! offers TLS (`require`: or no connection), with the certificate not checked, so a default
//! install's self-signed certificate works. That stops eavesdroppers, not an active attacker;
//! `verify-ca` checks the chain and `verify-full` also the host name, against Mozilla's roots and
//! the CA file. A server that offers TLS is never used in plaintext: a failed handshake is an
//! error, in every mode.

use super::StoreError;
use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values, but `allow` (plaintext first: never what a hub wants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    const NAMES: [(&'static str, SslMode); 5] = [
        ("disable", SslMode::Disable),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];

    pub fn name(self) -> &'static str {
        SslMode::NAMES.iter().find(|(_, m)| *m == self).map_or("", |(n, _)| n)
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The database the hubs share, as `database_url` and `database_ca_file` name it: its
/// connection settings and the TLS connector for it. `Debug` shows no password.
#[derive(Clone)]
pub struct Database {
    config: postgres::Config,
    mode: SslMode,
    /// `None` with `sslmode=disable`.
    tls: Option<MakeRustlsConnect>,
    /// The CA file the server's certificate is checked against, besides Mozilla's roots.
    ca_file: Option<PathBuf>,
    redacted: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.redacted)
            .field("sslmode", &self.mode.name())
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Database {
    /// Every problem found, each naming its setting (`database_url: …`, `database_ca_file: …`).
    /// Reads the CA file.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Database, Vec<String>> {
        let mut errors = Vec::new();
        let redacted = redact(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(vec!["database_url: must be a postgres:// or postgresql:// URL".into()]);
        }
        let TlsParams { rest, sslmode, sslrootcert } =
            take_tls_params(url).map_err(|e| vec![format!("database_url: {e}")])?;
        let mut config = match rest.parse::<postgres::Config>() {
            Ok(c) => c,
            Err(e) => return Err(vec![format!("database_url: {}", super::pg::describe(&e))]),
        };
        // libpq: `sslrootcert=system` trusts the usual roots and makes `verify-full` the default.
        let system = sslrootcert.as_deref() == Some("system");
        let mode = match sslmode.as_deref() {
            None if system => Some(SslMode::VerifyFull),
            None => Some(SslMode::Prefer),
            Some(name) => SslMode::NAMES.iter().find(|(n, _)| *n == name).map(|(_, m)| *m),
        };
        let ca: Option<(PathBuf, &str)> = match (sslrootcert.filter(|_| !system), ca_file) {
            (Some(_), Some(_)) => {
                errors.push("database_ca_file: the URL names a CA file too (sslrootcert): give one of the two".into());
                None
            }
            (Some(path), None) => Some((PathBuf::from(path), "database_url: sslrootcert")),
            (None, Some(path)) => Some((path.to_path_buf(), "database_ca_file")),
            (None, None) => None,
        };
        let roots = osutil::tls::roots(ca.as_ref().map(|(path, _)| path.as_path()))
            .map_err(|e| errors.push(format!("{}: {e}", ca.as_ref().map_or("database_url", |(_, s)| s))))
            .ok();
        let Some(mode) = mode else {
            errors.push(format!(
                "database_url: sslmode {:?} is not one of disable, prefer, require, verify-ca, verify-full",
                sslmode.unwrap_or_default()
            ));
            return Err(errors);
        };
        if let Some((_, setting)) = &ca {
            if !mode.verifies() {
                errors.push(format!(
                    "{setting}: the CA is only used to verify the server: set sslmode=verify-full (or verify-ca) \
                     in database_url (it is {})",
                    mode.name()
                ));
            }
        }
        if system && mode != SslMode::VerifyFull {
            errors.push(format!("database_url: sslrootcert=system needs sslmode=verify-full, not {}", mode.name()));
        }
        let socket = config.get_hosts().iter().find_map(|h| match h {
            postgres::config::Host::Unix(dir) => Some(dir),
            _ => None,
        });
        if let (Some(dir), true) = (socket, mode == SslMode::Require || mode.verifies()) {
            errors.push(format!(
                "database_url: sslmode={} needs TLS, which PostgreSQL does not speak on the Unix socket in {}",
                mode.name(),
                dir.display()
            ));
        }
        if mode == SslMode::Prefer && config.get_ssl_negotiation() == postgres::config::SslNegotiation::Direct {
            errors.push("database_url: sslnegotiation=direct needs sslmode=require or stronger".into());
        }
        let (Some(roots), true) = (roots, errors.is_empty()) else {
            return Err(errors);
        };
        let tls = match mode {
            SslMode::Disable => None,
            _ => Some(MakeRustlsConnect::new(
                client_config(mode, roots).map_err(|e| vec![format!("database_url: {e}")])?,
            )),
        };
        config.ssl_mode(match mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => postgres::config::SslMode::Require,
        });
        Ok(Database { config, mode, tls, ca_file: ca.map(|(p, _)| p), redacted })
    }

    /// The URL without its password, for messages and logs.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// A new session (no TLS, or TLS as `sslmode` says), with `config`'s timeouts set on top.
    pub(super) fn open(
        &self,
        tune: impl FnOnce(&mut postgres::Config) -> &mut postgres::Config,
    ) -> Result<postgres::Client, StoreError> {
        let mut config = self.config.clone();
        tune(&mut config);
        let result = match &self.tls {
            Some(tls) => config.connect(tls.clone()),
            None => config.connect(postgres::NoTls),
        };
        result.map_err(|e| StoreError::Open { path: self.redacted.clone(), message: self.explain(&e) })
    }

    /// The library's message, said in terms of the settings when TLS is what failed.
    fn explain(&self, e: &postgres::Error) -> String {
        let text = super::pg::describe(e);
        let trusted = match &self.ca_file {
            Some(f) => format!("Mozilla's roots and {}", f.display()),
            None => "Mozilla's roots".into(),
        };
        match rustls_error(e) {
            Some(rustls::Error::InvalidCertificate(_)) => {
                let hint = if self.ca_file.is_none() {
                    ": give the CA that signed the server's certificate in database_ca_file (or sslrootcert)"
                } else {
                    ""
                };
                format!(
                    "certificate verification failed (sslmode={}, trusting {trusted}): {text}{hint}",
                    self.mode.name()
                )
            }
            Some(_) => format!("TLS handshake failed (sslmode={}): {text}", self.mode.name()),
            None if text.contains("server does not support TLS") => format!(
                "the server does not offer TLS, and sslmode={} refuses to go on without it \
                 (turn ssl on in the server's postgresql.conf): {text}",
                self.mode.name()
            ),
            None => text,
        }
    }
}

/// The rustls error behind a failed connection, if TLS is what failed.
fn rustls_error(e: &postgres::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // tokio-rustls hands rustls' errors over inside an `io::Error`.
        if let Some(r) = c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if let Some(r) = r.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
        }
        cause = c.source();
    }
    None
}

/// The rustls configuration for `mode`, with `roots` (Mozilla's and the CA file's) where the
/// mode verifies. PostgreSQL 17 checks the ALPN name when it is sent (with
/// `sslnegotiation=direct` it must be); older servers ignore it.
fn client_config(mode: SslMode, roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let mut config = match mode {
        SslMode::VerifyFull => osutil::tls::builder()?.with_root_certificates(roots).with_no_client_auth(),
        _ => {
            let chain = mode.verifies().then_some(roots);
            let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
            osutil::tls::builder()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ServerCheck { chain, algorithms }))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The server's certificate as `prefer` and `require` see it (not checked, as libpq does), or
/// `verify-ca` (its chain, not its name). Either way the handshake's signatures are checked: the
/// server holds the key of the certificate it shows, which SCRAM's channel binding relies on.
#[derive(Debug)]
struct ServerCheck {
    chain: Option<rustls::RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.chain {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A URL with the TLS parameters the `postgres` crate does not know taken out.
#[derive(Debug, PartialEq)]
struct TlsParams {
    rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Where the query starts, found as the `postgres` crate finds it: the credentials end at the
/// first `@`, and the query starts at the first `?` after them.
fn query_start(url: &str) -> Option<usize> {
    let start = url.find("://")? + 3;
    let after_credentials = url[start..].find('@').map_or(start, |at| start + at + 1);
    url[after_credentials..].find('?').map(|q| after_credentials + q)
}

fn decode(s: &str) -> Result<Cow<'_, str>, String> {
    percent_decode_str(s).decode_utf8().map_err(|e| format!("{s:?} is not percent-encoded UTF-8: {e}"))
}

/// Takes `sslmode` and `sslrootcert` out of the query (the last of each wins, as with libpq);
/// every other parameter is left as it was written.
fn take_tls_params(url: &str) -> Result<TlsParams, String> {
    let (mut sslmode, mut sslrootcert) = (None, None);
    let Some(q) = query_start(url) else {
        return Ok(TlsParams { rest: url.to_string(), sslmode, sslrootcert });
    };
    let mut kept = Vec::new();
    for param in url[q + 1..].split('&') {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match decode(key)?.as_ref() {
            "sslmode" => sslmode = Some(decode(value)?.into_owned()),
            "sslrootcert" => sslrootcert = Some(decode(value)?.into_owned()),
            _ => kept.push(param),
        }
    }
    let rest = match kept.is_empty() {
        true => url[..q].to_string(),
        false => format!("{}?{}", &url[..q], kept.join("&")),
    };
    Ok(TlsParams { rest, sslmode, sslrootcert })
}

/// The URL without its password (in the credentials or a `password` parameter), for messages
/// and logs; found as the `postgres` crate finds it, so a URL with several hosts is covered too.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(q) = query_start(url) {
        let params: Vec<String> = url[q + 1..]
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if decode(k).is_ok_and(|k| k == "password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out = format!("{}?{}", &url[..q], params.join("&"));
    }
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let end = query_start(&out).unwrap_or(out.len());
        if let Some(at) = out[start..end].find('@').map(|a| start + a) {
            if let Some(colon) = out[start..at].find(':').map(|c| start + c) {
                out.replace_range(colon + 1..at, "***");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(url: &str, ca: Option<&Path>) -> String {
        Database::new(url, ca).unwrap_err().join("\n")
    }

    #[test]
    fn libpq_tls_parameters_are_taken_out_and_the_rest_kept_as_written() {
        let t = take_tls_params(
            "postgres://u:p%3Fw@h1:5432,h2:5433/db?application_name=a%20b&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%2B1.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(t.rest, "postgres://u:p%3Fw@h1:5432,h2:5433/db?application_name=a%20b&connect_timeout=3");
        assert_eq!(t.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(t.sslrootcert.as_deref(), Some("/etc/ca+1.pem"), "percent-decoded, a + stays a +");
        // A ? in the password is not the query; the last sslmode wins.
        let t = take_tls_params("postgresql://u:a?b@h/db?sslmode=require&sslmode=disable").unwrap();
        assert_eq!((t.rest.as_str(), t.sslmode.as_deref()), ("postgresql://u:a?b@h/db", Some("disable")));
        let t = take_tls_params("postgres://h/db").unwrap();
        assert_eq!((t.rest.as_str(), t.sslmode, t.sslrootcert), ("postgres://h/db", None, None));
    }

    #[test]
    fn sslmode_names_are_libpqs_and_prefer_is_the_default() {
        for (name, mode) in SslMode::NAMES {
            let db = Database::new(&format!("postgres://h/db?sslmode={name}"), None).unwrap();
            assert_eq!(db.ssl_mode(), mode);
            assert_eq!(db.tls.is_none(), mode == SslMode::Disable);
        }
        assert_eq!(Database::new("postgres://h/db", None).unwrap().ssl_mode(), SslMode::Prefer);
        let system = Database::new("postgres://h/db?sslrootcert=system", None).unwrap();
        assert_eq!((system.ssl_mode(), system.ca_file.as_deref()), (SslMode::VerifyFull, None));
        let e = errors("postgres://h/db?sslmode=verify_full", None);
        assert!(e.starts_with("database_url: sslmode \"verify_full\" is not one of disable, prefer"), "{e}");
        let e = errors("postgres://h/db?sslmode=allow", None);
        assert!(e.contains("\"allow\" is not one of"), "{e}");
    }

    #[test]
    fn a_ca_file_is_read_at_once_and_only_where_it_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let certs = testkit::tls::tls_files(dir.path()).unwrap();
        let url = "postgres://h/db?sslmode=verify-full";
        let db = Database::new(url, Some(&certs.ca)).unwrap();
        assert_eq!(db.ca_file.as_deref(), Some(certs.ca.as_path()));
        let in_url = format!("{url}&sslrootcert={}", certs.ca.display());
        assert_eq!(Database::new(&in_url, None).unwrap().ca_file.as_deref(), Some(certs.ca.as_path()));

        let missing = dir.path().join("missing.pem");
        let e = errors(url, Some(&missing));
        assert!(e.starts_with("database_ca_file: ") && e.contains(&missing.display().to_string()), "{e}");
        let e = errors(&format!("{url}&sslrootcert={}", missing.display()), None);
        assert!(e.starts_with("database_url: sslrootcert: ") && e.contains("missing.pem"), "{e}");
        std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
        let e = errors(url, Some(&dir.path().join("junk.pem")));
        assert!(e.contains("junk.pem") && e.contains("no PEM certificate"), "{e}");
        // A private key is not a CA certificate.
        let e = errors(url, Some(&certs.key));
        assert!(e.starts_with("database_ca_file: ") && e.contains("hub.key"), "{e}");

        for mode in ["disable", "prefer", "require"] {
            let e = errors(&format!("postgres://h/db?sslmode={mode}"), Some(&certs.ca));
            assert!(e.contains("set sslmode=verify-full") && e.contains(&format!("(it is {mode})")), "{e}");
        }
        let e = errors("postgres://h/db", Some(&certs.ca));
        assert!(e.starts_with("database_ca_file: the CA is only used to verify the server"), "{e}");
        let e = errors(&in_url, Some(&certs.ca));
        assert!(e.contains("give one of the two"), "{e}");
        let e = errors("postgres://h/db?sslrootcert=system&sslmode=require", None);
        assert!(e.contains("sslrootcert=system needs sslmode=verify-full"), "{e}");
    }

    #[test]
    fn settings_that_cannot_work_are_refused_at_start() {
        let e = errors("postgres://%2Frun%2Fpostgresql/db?sslmode=require", None);
        assert!(e.contains("Unix socket in /run/postgresql"), "{e}");
        assert!(Database::new("postgres://%2Frun%2Fpostgresql/db", None).is_ok(), "prefer: plaintext on a socket");
        let e = errors("postgres://h/db?sslnegotiation=direct", None);
        assert!(e.contains("sslnegotiation=direct needs sslmode=require"), "{e}");
        let e = errors("postgres://h/db?sslcert=client.pem", None);
        assert!(e.starts_with("database_url: invalid connection string") && e.contains("sslcert"), "{e}");
        assert!(errors("mysql://h/db", None).contains("must be a postgres://"));
    }

    #[test]
    fn passwords_are_redacted_wherever_they_are() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("postgres://u:se?c@h1:1,h2:2/db?sslmode=require"),
            "postgres://u:***@h1:1,h2:2/db?sslmode=require"
        );
        assert_eq!(redact("postgres://h/db?user=u&password=secret&x=1"), "postgres://h/db?user=u&password=***&x=1");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        let db = Database::new("postgres://u:secret@h/db", None).unwrap();
        assert!(!format!("{db:?}").contains("secret"));
    }
}
