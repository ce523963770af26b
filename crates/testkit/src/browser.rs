//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`,
//! which `scripts/test` installs): each [`Browser`] starts its own chromedriver on a free port,
//! with a fresh profile inside the caller's temp dir, and kills its whole process group at the end.

pub use fantoccini;

use crate::{eventually, Owned};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where Debian puts them; `AGENTCOM_CHROMIUM` / `AGENTCOM_CHROMEDRIVER` override.
fn chromium() -> PathBuf {
    std::env::var_os("AGENTCOM_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into())
}
fn chromedriver() -> PathBuf {
    std::env::var_os("AGENTCOM_CHROMEDRIVER").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromedriver".into())
}

/// How long a page load or a script may take.
const PAGE_LOAD: std::time::Duration = std::time::Duration::from_secs(120);

/// A port nobody listens on now (chromedriver cannot be told port 0; a clash is retried).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Browser {
    pub client: fantoccini::Client,
    driver: Owned,
    /// chromedriver's process group: it and every browser process it started.
    pgid: i32,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium whose profile lives in `dir`.
    pub async fn start(dir: &Path) -> Result<Browser> {
        for path in [chromium(), chromedriver()] {
            if !path.exists() {
                bail!("{} is missing: scripts/test installs chromium and chromium-driver with apt", path.display());
            }
        }
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new(chromedriver());
            cmd.arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0);
            let child = cmd.spawn().context("start chromedriver")?;
            let pgid = child.id() as i32;
            let mut driver = Owned::new(child, "chromedriver");
            let url = format!("http://127.0.0.1:{port}");
            let up = eventually("chromedriver to listen", || async {
                match std::net::TcpStream::connect(("127.0.0.1", port)) {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
            if let Err(e) = up {
                driver.kill9();
                last = Some(e);
                continue;
            }
            let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium().display().to_string(),
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--no-default-browser-check", "--disable-extensions", "--window-size=1440,900",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
            }))?;
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector).capabilities(caps).connect(&url).await {
                Ok(client) => {
                    // A page load bounded well below WebDriver's 300 s, yet far above what a
                    // starved renderer on a loaded two-core machine takes.
                    let t = fantoccini::wd::TimeoutConfiguration::new(Some(PAGE_LOAD), Some(PAGE_LOAD), None);
                    client.update_timeouts(t).await?;
                    return Ok(Browser { client, driver, pgid });
                }
                Err(e) => {
                    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::SIGKILL);
                    driver.kill9();
                    last = Some(anyhow::anyhow!("chromedriver session: {e}"));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("chromedriver did not start")))
    }

    /// Ends the browser session, then chromedriver and anything left in its group.
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        self.kill();
    }

    fn kill(&mut self) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pgid), nix::sys::signal::SIGKILL);
        self.driver.kill9();
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client.goto(url).await.with_context(|| format!("open {url}"))
    }

    /// Runs a script in the page and returns its value.
    pub async fn js(&self, script: &str) -> Result<Value> {
        Ok(self.client.execute(script, vec![]).await?)
    }

    /// The text of the first element matching `css`, `None` when there is none.
    pub async fn text(&self, css: &str) -> Result<Option<String>> {
        match self.client.find(fantoccini::Locator::Css(css)).await {
            Ok(e) => Ok(Some(e.text().await?)),
            Err(e) if e.is_no_such_element() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until the element matching `css` exists and its text contains `want`.
    pub async fn wait_text(&self, css: &str, want: &str) -> Result<String> {
        eventually(&format!("{css} to show {want:?}"), || async {
            match self.text(css).await {
                Ok(Some(t)) if t.contains(want) => Ok(t),
                Ok(other) => Err(format!("{other:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    /// Types into the field matching `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self.client.find(fantoccini::Locator::Css(css)).await.with_context(|| format!("find {css}"))?;
        e.clear().await?;
        e.send_keys(text).await?;
        Ok(())
    }

    pub async fn click(&self, css: &str) -> Result<()> {
        self.client.find(fantoccini::Locator::Css(css)).await.with_context(|| format!("find {css}"))?.click().await?;
        Ok(())
    }

    /// Logs in through the dashboard's form at `base` (the hub's URL) with `token`, and waits
    /// for the fleet page; a failure says what the page shows instead.
    pub async fn login(&self, base: &str, token: &str) -> Result<()> {
        self.goto(&format!("{base}/")).await?;
        self.fill("#token", token).await?;
        self.click("#login button").await?;
        if let Err(e) = self.wait_text("h1", "Fleet").await {
            bail!("{e}: {:?}", self.text("main").await?);
        }
        Ok(())
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        Ok(self.client.screenshot().await?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}
