//! Hubs and a real PostgreSQL with TLS on (`testkit::Postgres::start_tls`): the `sslmode` of
//! `database_url` and the CA of `database_ca_file` / `sslrootcert` decide whether a hub connects,
//! and `pg_stat_ssl` shows what its sessions really are.

use crate::bin;
use proto::api::{Health, HubRole};
use std::path::Path;
use testkit::{eventually, Hub, Postgres};

type R = anyhow::Result<()>;

/// A hub on `database_url`, with `extra` settings, in its own temp dir.
fn hub(database_url: &str, name: &str, extra: &str) -> anyhow::Result<(Hub, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let own = format!(
        "database_url = {}\nhub_id = {}\nlease_ms = 1000\n{extra}",
        testkit::toml_string(database_url),
        testkit::toml_string(name)
    );
    let hub = Hub::start_in(bin(), &dir.path().join("hub"), &testkit::merge_config(&testkit::fast_config(), &own))?;
    Ok((hub, dir))
}

fn ca_setting(path: &Path) -> String {
    format!("database_ca_file = {}\n", testkit::toml_string(&path.display().to_string()))
}

async fn health(hub: &Hub) -> anyhow::Result<Health> {
    Ok(reqwest::get(format!("{}/health", hub.url())).await?.error_for_status()?.json().await?)
}

async fn leads(hub: &Hub) -> R {
    eventually("the hub to lead", || async {
        match health(hub).await {
            Ok(h) if h.role == Some(HubRole::Leader) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The first log line of `hub` at `level` that contains every one of `needles`.
async fn logged(hub: &Hub, level: &str, needles: &[&str]) -> anyhow::Result<String> {
    eventually(&format!("a {level} log line with {needles:?}"), || async {
        hub.logs()
            .into_iter()
            .find(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["level"] == level)
                    && needles.iter().all(|n| l.contains(n))
            })
            .ok_or_else(|| format!("not yet; the log:\n{}", hub.logs().join("\n")))
    })
    .await
}

/// The first column of every row of `sql` with `args`, run on the admin URL off the runtime
/// (the blocking client drives a runtime of its own).
async fn admin_query<T>(admin_url: &str, sql: &str, args: &[&str]) -> anyhow::Result<Vec<T>>
where
    T: for<'a> postgres::types::FromSql<'a> + Send + 'static,
{
    let (url, sql) = (admin_url.to_string(), sql.to_string());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn postgres::types::ToSql + Sync)).collect();
        Ok(c.query(&sql, &params)?.iter().map(|r| r.get(0)).collect())
    })
    .await?
}

async fn admin_batch(admin_url: &str, sql: &str) -> R {
    let (url, sql) = (admin_url.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || Ok(postgres::Client::connect(&url, postgres::NoTls)?.batch_execute(&sql)?))
        .await?
}

/// Each session the hubs hold in `db_name`: its TLS version, or `plaintext`.
async fn hub_sessions(pg: &Postgres, db_name: &str) -> anyhow::Result<Vec<String>> {
    admin_query(
        pg.admin_url(),
        "SELECT CASE WHEN s.ssl THEN s.version ELSE 'plaintext' END FROM pg_stat_activity a
         JOIN pg_stat_ssl s ON s.pid = a.pid
         WHERE a.application_name = 'agentcom-hub' AND a.datname = $1",
        &[db_name],
    )
    .await
}

fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().split('?').next().unwrap().to_string()
}

/// The URL with the host `localhost`, the name the server's certificate gives.
fn as_localhost(url: &str) -> String {
    url.replace("@127.0.0.1:", "@localhost:")
}

#[tokio::test]
async fn verify_full_with_the_ca_connects_over_tls_and_every_session_is_encrypted() -> R {
    let pg = Postgres::start_tls()?;
    let ca = pg.ca_file().unwrap().to_path_buf();
    let url = as_localhost(&pg.database()?);
    // One hub names the CA in its config, the other in the URL, as libpq's sslrootcert.
    let (a, _a) = hub(&format!("{url}?sslmode=verify-full"), "hub-a", &ca_setting(&ca))?;
    let b_url = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let (b, _b) = hub(&b_url, "hub-b", "")?;
    let (leader, _standby) = eventually("one leader and a standby behind it", || async {
        let (ha, hb) = (health(&a).await.map_err(|e| e.to_string())?, health(&b).await.map_err(|e| e.to_string())?);
        match (ha.role, hb.role) {
            (Some(HubRole::Leader), Some(HubRole::Standby)) if hb.leader == Some(a.url()) => Ok((&a, &b)),
            (Some(HubRole::Standby), Some(HubRole::Leader)) if ha.leader == Some(b.url()) => Ok((&b, &a)),
            _ => Err(format!("{ha:?} / {hb:?}")),
        }
    })
    .await?;

    // It serves: a submission is committed through its writer and read back through its readers.
    let id = leader.submit_text("over TLS").await?;
    assert_eq!(leader.task(&id).await?.task.description, "over TLS");

    // The lease connections of both hubs, the leader's writer and readers: all TLS.
    let sessions = hub_sessions(&pg, &db_name(&url)).await?;
    assert!(sessions.len() >= 4, "{sessions:?}");
    assert!(sessions.iter().all(|v| v.starts_with("TLSv1.")), "{sessions:?}");
    Ok(())
}

#[tokio::test]
async fn a_password_role_authenticates_with_scram_bound_to_the_tls_channel() -> R {
    let pg = Postgres::start_tls()?;
    let ca = pg.ca_file().unwrap().to_path_buf();
    let url = pg.database()?;
    let db = db_name(&url);
    let role = format!("{db}_hub");
    admin_batch(
        pg.admin_url(),
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'pass word?&@'; ALTER DATABASE {db} OWNER TO {role}"),
    )
    .await?;
    let owner: Vec<String> =
        admin_query(pg.admin_url(), "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1", &[&db])
            .await?;
    assert_eq!(owner, std::slice::from_ref(&role));
    let with_password = as_localhost(&url).replace("postgres@", &format!("{role}:pass%20word%3F%26%40@"));
    // channel_binding=require: SCRAM-SHA-256-PLUS over the TLS session, or no login at all.
    let (h, _h) =
        hub(&format!("{with_password}?sslmode=verify-full&channel_binding=require"), "hub-scram", &ca_setting(&ca))?;
    leads(&h).await?;
    let id = h.submit_text("as a password role").await?;
    assert_eq!(h.task(&id).await?.task.description, "as a password role");
    let sessions = hub_sessions(&pg, &db).await?;
    assert!(!sessions.is_empty() && sessions.iter().all(|v| v.starts_with("TLSv1.")), "{sessions:?}");
    let logs = h.logs().join("\n");
    assert!(!logs.contains("pass%20word") && logs.contains(&format!("{role}:***@localhost")), "{logs}");

    // Without TLS there is no channel to bind to: the same role and password are refused.
    let (plain, _p) = hub(&format!("{with_password}?sslmode=disable&channel_binding=require"), "hub-plain", "")?;
    let line = logged(&plain, "WARN", &["the lease round failed"]).await?;
    assert!(line.contains("channel binding"), "{line}");
    Ok(())
}

#[tokio::test]
async fn without_the_ca_a_verifying_hub_refuses_the_server_and_does_not_serve() -> R {
    let pg = Postgres::start_tls()?;
    let url = as_localhost(&pg.database()?);
    let (h, _h) = hub(&format!("{url}?sslmode=verify-full"), "hub-a", "")?;
    let line = logged(&h, "WARN", &["certificate verification failed", "sslmode=verify-full", "UnknownIssuer"]).await?;
    assert!(line.contains("database_ca_file"), "the error says what to set: {line}");
    let health = health(&h).await?;
    assert_eq!((health.role, health.leader), (Some(HubRole::Standby), None));
    let r = h.admin().get("/api/tasks").await?;
    assert_eq!(r.0, 503, "{r:?}");
    assert_eq!(hub_sessions(&pg, &db_name(&url)).await?, Vec::<String>::new(), "not one session was opened");
    Ok(())
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_only_the_chain() -> R {
    let pg = Postgres::start_tls()?;
    let ca = pg.ca_file().unwrap().to_path_buf();
    let url = pg.database()?;
    // The right server and CA, reached under a name its certificate does not give.
    let renamed = format!("{}?hostaddr=127.0.0.1", url.replace("@127.0.0.1:", "@db.invalid:"));
    let (full, _full) = hub(&format!("{renamed}&sslmode=verify-full"), "hub-full", &ca_setting(&ca))?;
    let line = logged(&full, "WARN", &["certificate verification failed", "certificate not valid for name"]).await?;
    assert!(!line.contains("database_ca_file (or"), "the CA was given; the name is wrong: {line}");
    drop(full);

    let (chain, _chain) = hub(&format!("{renamed}&sslmode=verify-ca"), "hub-ca", &ca_setting(&ca))?;
    leads(&chain).await?;
    let sessions = hub_sessions(&pg, &db_name(&url)).await?;
    assert!(!sessions.is_empty() && sessions.iter().all(|v| v.starts_with("TLSv1.")), "{sessions:?}");
    drop(chain);

    // verify-ca still refuses a certificate another CA signed (one of the same name here: its
    // signature does not match).
    let certs = tempfile::tempdir()?;
    let other = testkit::tls::tls_files(certs.path())?;
    let (stranger, _s) = hub(&format!("{renamed}&sslmode=verify-ca"), "hub-other", &ca_setting(&other.ca))?;
    logged(&stranger, "WARN", &["certificate verification failed", "sslmode=verify-ca", "BadSignature"]).await?;
    assert_eq!(health(&stranger).await?.role, Some(HubRole::Standby));
    Ok(())
}

#[tokio::test]
async fn prefer_encrypts_without_verifying_and_disable_stays_plaintext() -> R {
    let pg = Postgres::start_tls()?;
    // The default: TLS, though the hub knows nothing of the CA (a default install's
    // self-signed certificate).
    let url = pg.database()?;
    let (h, _h) = hub(&url, "hub-prefer", "")?;
    leads(&h).await?;
    let sessions = hub_sessions(&pg, &db_name(&url)).await?;
    assert!(!sessions.is_empty() && sessions.iter().all(|v| v.starts_with("TLSv1.")), "{sessions:?}");
    assert!(h.logs().iter().any(|l| l.contains("storing in PostgreSQL") && l.contains("\"sslmode\":\"prefer\"")));

    let url = pg.database()?;
    let (h, _h) = hub(&format!("{url}?sslmode=disable"), "hub-disable", "")?;
    leads(&h).await?;
    let sessions = hub_sessions(&pg, &db_name(&url)).await?;
    assert!(!sessions.is_empty() && sessions.iter().all(|v| v == "plaintext"), "{sessions:?}");
    Ok(())
}

#[tokio::test]
async fn require_refuses_a_server_without_tls_where_prefer_goes_plaintext() -> R {
    let pg = Postgres::start()?;
    let ssl: Vec<String> = admin_query(pg.admin_url(), "SELECT current_setting('ssl')", &[]).await?;
    assert_eq!(ssl, ["off"], "the plain test cluster must have TLS off");
    let url = pg.database()?;
    let (h, _h) = hub(&format!("{url}?sslmode=require"), "hub-require", "")?;
    logged(&h, "WARN", &["the server does not offer TLS", "sslmode=require"]).await?;
    assert_eq!(health(&h).await?.role, Some(HubRole::Standby));
    assert_eq!(hub_sessions(&pg, &db_name(&url)).await?, Vec::<String>::new());

    let (h, _h) = hub(&url, "hub-prefer", "")?;
    leads(&h).await?;
    let sessions = hub_sessions(&pg, &db_name(&url)).await?;
    assert!(!sessions.is_empty() && sessions.iter().all(|v| v == "plaintext"), "{sessions:?}");
    Ok(())
}

#[tokio::test]
async fn database_tls_settings_are_checked_before_the_hub_starts() -> R {
    let dir = tempfile::tempdir()?;
    let run = |cfg: &str, env: Option<&Path>| -> anyhow::Result<String> {
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, format!("admin_token = \"test-admin-token-0123456789abcdef\"\n{cfg}"))?;
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["hub", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&path);
        cmd.env_remove("AGENTCOM_DATABASE_CA_FILE");
        if let Some(ca) = env {
            cmd.env("AGENTCOM_DATABASE_CA_FILE", ca);
        }
        let out = cmd.output()?;
        anyhow::ensure!(!out.status.success(), "the hub started on {cfg}");
        Ok(String::from_utf8(out.stderr)?)
    };
    let url = |mode: &str| format!("database_url = \"postgres://agentcom@127.0.0.1:1/agentcom?sslmode={mode}\"\n");

    let err = run(&format!("{}grace_period_ms = 0\n", url("verify_full")), None)?;
    assert!(err.contains("database_url: sslmode \"verify_full\" is not one of disable, prefer, require"), "{err}");
    assert!(err.contains("grace_period_ms"), "every error is listed: {err}");

    let missing = dir.path().join("missing-ca.pem");
    let err = run(&url("verify-full"), Some(&missing))?;
    assert!(err.contains("database_ca_file: ") && err.contains("missing-ca.pem"), "{err}");
    std::fs::write(
        dir.path().join("junk.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    )?;
    let err = run(&format!("{}{}", url("verify-full"), ca_setting(&dir.path().join("junk.pem"))), None)?;
    assert!(err.contains("database_ca_file: ") && err.contains("junk.pem"), "{err}");
    let certs = testkit::tls::tls_files(&dir.path().join("certs"))?;
    let err = run(&url("require"), Some(&certs.ca))?;
    assert!(err.contains("database_ca_file: the CA is only used to verify the server"), "{err}");
    Ok(())
}
