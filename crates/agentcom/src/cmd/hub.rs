//! `agentcom hub`.

use crate::logging::{self, LogArgs};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct HubArgs {
    /// Address to listen on [default: 127.0.0.1:4000]
    #[arg(long, env = "AGENTCOM_LISTEN")]
    listen: Option<String>,
    /// Data directory [default: ./agentcom-data/hub]
    #[arg(long, env = "AGENTCOM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "AGENTCOM_CONFIG")]
    config: Option<PathBuf>,
    /// Admin token (otherwise read from or generated into <data-dir>/admin.token). On the
    /// command line it is visible to every local user in the process list: prefer --admin-token-file.
    #[arg(long, env = "AGENTCOM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A file holding the admin token.
    #[arg(long, env = "AGENTCOM_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve https:// and wss:// (needs --tls-key).
    #[arg(long, env = "AGENTCOM_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "AGENTCOM_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Keep the queue in PostgreSQL (postgres://user:password@host/db) instead of SQLite; several
    /// hubs on one database elect a leader (docs/ha.md). A password here is visible to every local
    /// user in the process list: prefer AGENTCOM_DATABASE_URL or `database_url` in --config.
    #[arg(long, env = "AGENTCOM_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// PEM CA certificates that sign PostgreSQL's certificate, for sslmode=verify-full (or
    /// verify-ca) in --database-url; Mozilla's roots are trusted too.
    #[arg(long, env = "AGENTCOM_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
    /// This hub's URL as agents and clients reach it (http://10.0.0.5:4000), sent to them by
    /// standbys; with --database-url [default: from --listen]
    #[arg(long, env = "AGENTCOM_ADVERTISE_URL")]
    advertise_url: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

pub async fn run(a: HubArgs) -> anyhow::Result<u8> {
    logging::init(a.log.log_format, "info");
    if std::env::args().any(|arg| arg == "--admin-token" || arg.starts_with("--admin-token=")) {
        tracing::warn!("--admin-token on the command line is visible to every local user in /proc/<pid>/cmdline; use --admin-token-file or AGENTCOM_ADMIN_TOKEN");
    }
    if std::env::args().any(|arg| arg == "--database-url" || arg.starts_with("--database-url=")) {
        tracing::warn!("--database-url on the command line is visible to every local user in /proc/<pid>/cmdline; use AGENTCOM_DATABASE_URL or database_url in the config file");
    }
    let overrides = hub::Overrides {
        config: a.config,
        listen: a.listen,
        data_dir: a.data_dir,
        admin_token: a.admin_token,
        admin_token_file: a.admin_token_file,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        database_url: a.database_url,
        database_ca_file: a.database_ca_file,
        advertise_url: a.advertise_url,
    };
    let cfg = hub::HubConfig::load(overrides)?;
    let shutdown = crate::shutdown_on_signals()?;
    hub::run(cfg, shutdown).await?;
    Ok(0)
}
