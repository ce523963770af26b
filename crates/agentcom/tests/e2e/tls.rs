//! End-to-end tests of TLS: a hub serving `https://` and `wss://` with a certificate from a
//! private CA, the CLI and a sidecar that trust that CA, and clear refusals for those that do not.

use crate::bin;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use testkit::{Hub, Sidecar};

type R = anyhow::Result<()>;

struct Env {
    hub: Hub,
    root: tempfile::TempDir,
}

impl Env {
    fn new() -> anyhow::Result<Env> {
        Ok(Env { hub: Hub::start_tls(bin(), "")?, root: tempfile::tempdir()? })
    }
    fn tls(&self) -> &testkit::tls::TlsFiles {
        self.hub.tls.as_ref().expect("a TLS hub")
    }
    /// Runs a client command against `url`, trusting `ca` when given.
    fn cli(&self, url: &str, ca: Option<&Path>, args: &[&str]) -> Output {
        let mut c = Command::new(bin());
        c.args(args)
            .env("AGENTCOM_URL", url)
            .env("AGENTCOM_TOKEN", &self.hub.admin_token)
            .env_remove("AGENTCOM_CA_FILE");
        if let Some(ca) = ca {
            c.env("AGENTCOM_CA_FILE", ca);
        }
        c.output().expect("the agentcom binary runs")
    }
    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(&self.hub.url(), Some(&self.tls().ca), args);
        anyhow::ensure!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    }
    fn sidecar(&self, agent: &str, token: &str, ca: Option<&Path>) -> anyhow::Result<Sidecar> {
        let wake = format!("{} sample-agent --work-ms 20", bin().display());
        let mut cfg = testkit::sidecar_config(agent, token, &self.hub.ws_url(), Some(&wake));
        if let Some(ca) = ca {
            cfg.push_str(&format!("tls_ca_file = {}\n", testkit::toml_string(&ca.display().to_string())));
        }
        Sidecar::start(bin(), &self.root.path().join(agent), &cfg)
    }
}

#[tokio::test]
async fn cli_and_sidecar_work_over_https_and_wss() -> R {
    let e = Env::new()?;
    let token = e.ok(&["token", "create", "a1"])?.trim().to_string();
    assert_eq!(token.len(), 64);
    let _s = e.sidecar("a1", &token, Some(&e.tls().ca))?;
    let id = e.ok(&["task", "submit", "over TLS"])?.trim().to_string();
    let t = testkit::eventually("the task to complete over wss", || async {
        let t: Value = serde_json::from_str(&e.ok(&["task", "show", &id, "--json"]).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        (t["status"] == "completed").then(|| t.clone()).ok_or_else(|| t.to_string())
    })
    .await?;
    assert_eq!(t["assigned_to"].as_str().or(t["completed_by"].as_str()), Some("a1"), "{t}");
    let agents: Value = serde_json::from_str(&e.ok(&["agents", "--json"])?)?;
    assert_eq!(agents["agents"][0]["connected"], true);
    let mut e = e;
    assert!(e.hub.terminate()?.success(), "a TLS hub shuts down cleanly too");
    Ok(())
}

#[tokio::test]
async fn untrusted_or_plain_clients_are_refused_with_a_reason_and_the_hub_keeps_serving() -> R {
    let e = Env::new()?;
    // The CLI without the CA: a certificate error, non-zero exit, one line.
    let out = e.cli(&e.hub.url(), None, &["agents"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("cannot reach the hub") && err.to_lowercase().contains("issuer"), "{err}");
    assert!(err.contains("AGENTCOM_CA_FILE"), "the error says how to fix it: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Plain HTTP on the TLS port is refused, not half-served.
    let plain = format!("http://127.0.0.1:{}", e.hub.addr.port());
    let out = e.cli(&plain, None, &["agents"]);
    assert!(!out.status.success());
    // A CA file that is not PEM is named.
    let junk = e.root.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate")?;
    let out = e.cli(&e.hub.url(), Some(&junk), &["agents"]);
    let err = String::from_utf8(out.stderr)?;
    assert!(!out.status.success() && err.contains("junk.pem"), "{err}");
    // A sidecar without the CA cannot connect, and says why.
    let token = e.ok(&["token", "create", "a2"])?.trim().to_string();
    let s = e.sidecar("a2", &token, None)?;
    let line = s.wait_log("cannot connect to the hub").await?;
    assert!(line["error"].as_str().unwrap_or_default().to_lowercase().contains("issuer"), "{line}");
    assert!(line["hint"].as_str().unwrap_or_default().contains("tls_ca_file"), "{line}");
    // And the hub still serves those that trust it.
    let agents: Value = serde_json::from_str(&e.ok(&["agents", "--json"])?)?;
    assert!(agents["agents"].as_array().unwrap().iter().all(|a| a["connected"] != true), "{agents}");
    Ok(())
}

#[tokio::test]
async fn tls_configuration_errors_are_listed_at_start() -> R {
    let dir = tempfile::tempdir()?;
    let tls = testkit::tls::tls_files(&dir.path().join("certs"))?;
    let other = testkit::tls::tls_files(&dir.path().join("other"))?;
    let run = |cfg: &str| -> anyhow::Result<String> {
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, cfg)?;
        let out = Command::new(bin())
            .args(["hub", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&path)
            .output()?;
        anyhow::ensure!(!out.status.success(), "the hub started on {cfg}");
        Ok(String::from_utf8(out.stderr)?)
    };
    let q = |p: &Path| testkit::toml_string(&p.display().to_string());
    let err = run(&format!("tls_cert = {}\nlisten = \"nowhere\"\n", q(&tls.cert)))?;
    assert!(err.contains("tls_key: required with tls_cert") && err.contains("listen:"), "{err}");
    let err = run(&format!("tls_cert = {}\ntls_key = {}\nlisten = \"127.0.0.1:0\"\n", q(&tls.cert), q(&other.key)))?;
    assert!(err.contains("does not fit") && err.contains("hub.key"), "{err}");
    let missing = dir.path().join("missing.pem");
    let err = run(&format!("tls_cert = {}\ntls_key = {}\nlisten = \"127.0.0.1:0\"\n", q(&missing), q(&tls.key)))?;
    assert!(err.contains("tls_cert") && err.contains("missing.pem"), "{err}");
    // The sidecar checks its CA file at start too.
    let cfg = dir.path().join("sidecar.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}tls_ca_file = \"nope.pem\"\n",
            testkit::sidecar_config("a", "t", "wss://localhost:1/ws", Some("true"))
        ),
    )?;
    let out = Command::new(bin()).args(["sidecar", "--config"]).arg(&cfg).output()?;
    let err = String::from_utf8(out.stderr)?;
    assert!(!out.status.success() && err.contains("tls_ca_file") && err.contains("nope.pem"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() -> R {
    let e = Env::new()?;
    e.ok(&["agents"])?;
    let renewed = testkit::tls::tls_files(&e.root.path().join("renewed"))?;
    let replace = |from: &Path, to: &Path| -> anyhow::Result<()> {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp)?;
        std::fs::rename(&tmp, to)?;
        Ok(())
    };
    // Half way through the renewal the new key does not fit the old certificate: the hub keeps
    // serving the old pair and says why.
    replace(&renewed.key, &e.tls().key)?;
    e.ok(&["agents"])?;
    testkit::eventually("a warning about the half-renewed pair", || async {
        let warned = e.hub.logs().iter().any(|l| l.contains("does not load; keeping the previous one"));
        warned.then_some(()).ok_or_else(|| "no warning yet".to_string())
    })
    .await?;
    replace(&renewed.cert, &e.tls().cert)?;
    let out = e.cli(&e.hub.url(), Some(&renewed.ca), &["agents"]);
    assert!(out.status.success(), "the renewed certificate is served: {}", String::from_utf8_lossy(&out.stderr));
    let out = e.cli(&e.hub.url(), Some(&e.tls().ca), &["agents"]);
    assert!(!out.status.success(), "the old certificate is no longer served");
    assert!(e.hub.logs().iter().any(|l| l.contains("TLS certificate reloaded")));
    Ok(())
}
