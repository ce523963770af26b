//! Several real hub processes on one fresh PostgreSQL database, for the HA tests and the HA
//! benchmark: start them, ask each one's `/health` who leads, SIGKILL one and start it again on
//! its port (it rejoins as a standby).

use crate::{eventually, fast_config, merge_config, toml_string, Hub, Postgres};
use anyhow::{Context, Result};
use proto::api::{Health, HubRole};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Hubs sharing one database. A slot is `None` while its hub is down. Fields drop in order: the
/// hubs stop before their database goes.
pub struct HubCluster {
    hubs: Vec<Option<Hub>>,
    addrs: Vec<SocketAddr>,
    /// The URL each hub reaches the database by (the cluster's, or another way to it: a proxy).
    reached_by: Vec<String>,
    bin: PathBuf,
    extra: String,
    http: reqwest::Client,
    pub database_url: String,
    root: tempfile::TempDir,
    pg: Postgres,
}

impl HubCluster {
    /// `n` hubs on a fresh database of the test cluster, each with [`fast_config`], then
    /// `extra` (for example `lease_ms = 1000`), then its own `database_url` and `hub_id`.
    pub fn start(bin: &Path, n: usize, extra: &str) -> Result<HubCluster> {
        HubCluster::start_on(bin, Postgres::start()?, n, extra)
    }

    /// Like [`HubCluster::start`], on a fresh database of `pg` (a durable one, for benchmarks).
    pub fn start_on(bin: &Path, pg: Postgres, n: usize, extra: &str) -> Result<HubCluster> {
        let database_url = pg.database()?;
        let mut c = HubCluster {
            hubs: Vec::new(),
            addrs: Vec::new(),
            reached_by: Vec::new(),
            bin: bin.to_path_buf(),
            extra: extra.to_string(),
            // Short: a paused or dying hub must not hold up the question "who leads?".
            http: reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?,
            database_url,
            root: tempfile::tempdir()?,
            pg,
        };
        for _ in 0..n {
            c.add(None)?;
        }
        Ok(c)
    }

    /// Starts one more hub; it reaches the database by `database_url` when given (the same
    /// database by another way, such as a proxy that can be cut), else by the cluster's URL.
    /// Returns its index.
    pub fn add(&mut self, database_url: Option<&str>) -> Result<usize> {
        let i = self.hubs.len();
        self.reached_by.push(database_url.unwrap_or(&self.database_url).to_string());
        let hub = Hub::start_in(&self.bin, &self.dir(i), &self.config(i))?;
        self.addrs.push(hub.addr);
        self.hubs.push(Some(hub));
        Ok(i)
    }

    /// The PostgreSQL handle the database came from.
    pub fn postgres(&self) -> &Postgres {
        &self.pg
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    fn dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("hub-{i}"))
    }

    fn config(&self, i: usize) -> String {
        let own = format!("database_url = {}\nhub_id = \"hub-{i}\"\n", toml_string(&self.reached_by[i]));
        merge_config(&merge_config(&fast_config(), &self.extra), &own)
    }

    /// Hub `i`, which must be running.
    pub fn hub(&self, i: usize) -> &Hub {
        self.hubs[i].as_ref().expect("this hub is running")
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.hubs[i].is_some()
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }

    pub fn ws_url(&self, i: usize) -> String {
        format!("ws://{}/ws", self.addrs[i])
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    pub fn ws_urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.ws_url(i)).collect()
    }

    /// Which hub a base URL names.
    pub fn index_of(&self, url: &str) -> Option<usize> {
        let url = url.trim_end_matches('/');
        (0..self.len()).find(|i| self.url(*i) == url)
    }

    pub async fn health(&self, i: usize) -> Result<Health> {
        let url = format!("{}/health", self.url(i));
        self.http.get(&url).send().await?.error_for_status()?.json().await.with_context(|| url)
    }

    /// Hub `i`'s term if it says it leads now.
    pub async fn leads(&self, i: usize) -> Option<u64> {
        match self.health(i).await {
            Ok(h) if h.role == Some(HubRole::Leader) => h.term,
            _ => None,
        }
    }

    /// Waits until a running hub leads in a term after `after`; returns (its index, term).
    pub async fn wait_leader_after(&self, after: u64) -> Result<(usize, u64)> {
        eventually(&format!("a hub to lead in a term after {after}"), || async {
            let mut seen = Vec::new();
            for i in (0..self.len()).filter(|i| self.is_running(*i)) {
                match self.health(i).await {
                    Ok(h) if h.role == Some(HubRole::Leader) && h.term.is_some_and(|t| t > after) => {
                        return Ok((i, h.term.unwrap_or_default()))
                    }
                    other => seen.push(format!("hub {i}: {other:?}")),
                }
            }
            Err(seen.join("; "))
        })
        .await
    }

    /// Waits until exactly one running hub leads and every other running hub stands by naming
    /// it in the same term; returns (leader index, term).
    pub async fn settled(&self) -> Result<(usize, u64)> {
        eventually("one leader, the rest standing by behind it", || async {
            let mut leader = None;
            let mut seen = Vec::new();
            for i in (0..self.len()).filter(|i| self.is_running(*i)) {
                let h = self.health(i).await.map_err(|e| format!("hub {i}: {e:#}"))?;
                if h.role == Some(HubRole::Leader) {
                    if leader.is_some() {
                        return Err(format!("two leaders: {seen:?} and hub {i}"));
                    }
                    leader = Some((i, h.term.ok_or("a leader without a term")?));
                }
                seen.push((i, h));
            }
            let (l, term) = leader.ok_or_else(|| format!("no leader yet: {seen:?}"))?;
            for (i, h) in &seen {
                if *i != l
                    && (h.role != Some(HubRole::Standby) || h.leader != Some(self.url(l)) || h.term != Some(term))
                {
                    return Err(format!("hub {i} does not yet stand by behind hub {l} in term {term}: {h:?}"));
                }
            }
            Ok((l, term))
        })
        .await
    }

    /// SIGKILLs hub `i` (and reaps it); returns the log lines it wrote.
    pub fn kill9(&mut self, i: usize) -> Vec<String> {
        match self.hubs[i].take() {
            Some(mut hub) => {
                hub.kill9();
                hub.logs()
            }
            None => Vec::new(),
        }
    }

    /// Starts hub `i` again on its port and data dir.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let hub = Hub::start_at(&self.bin, &self.dir(i), &self.config(i), &self.addrs[i].to_string())?;
        self.hubs[i] = Some(hub);
        Ok(())
    }
}
