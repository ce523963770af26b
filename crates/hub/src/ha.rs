//! Several hubs on one PostgreSQL: exactly one leads (runs the core, the timers and the agents'
//! sockets); the others stand by and send agents and clients to it.
//!
//! Leadership is a row (`leader`: term, holder, its URLs, an expiry in the database's clock) plus
//! a session advisory lock held by the leader's lease connection. A standby takes over when it
//! can take the lock: the leader's session is gone (its process died, or its connection to the
//! database did), which PostgreSQL notices at once. A leader that is alive but silent (paused,
//! hung) keeps its lock; once its lease expires a standby terminates its database sessions, which
//! frees the lock, and takes over. Every takeover increments the term, and every commit of a
//! leader checks its term in the same transaction (`store/pg.rs`): a deposed leader cannot
//! assign, complete or requeue anything, so two hubs never hand out the same task. A leader that
//! cannot renew its lease steps down on its own well before it could expire.

use crate::clock::SystemClock;
use crate::config::{Limits, Timings};
use crate::core::{self, CoreHandle};
use crate::events::EventBus;
use crate::store::{pg, PgReader, PgStore, Reader, StoreError};
use postgres::Client;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The advisory lock the leader's lease connection holds.
const LEADER_LOCK: i64 = 0x6167_656e_7402;

/// What this hub does now.
#[derive(Clone)]
pub enum Role {
    Leader(Serving),
    Standby { leader: Option<LeaderInfo> },
}

/// The leader's core and reader: what the HTTP and WebSocket layers serve from.
#[derive(Clone)]
pub struct Serving {
    pub core: CoreHandle,
    pub reader: Arc<dyn Reader>,
    /// 0 for a single hub on SQLite.
    pub term: u64,
}

/// Where the leader is, as a standby knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderInfo {
    pub url: String,
    pub ws_url: String,
    pub term: u64,
}

pub type RoleRx = watch::Receiver<Role>;

#[derive(Debug, Clone)]
pub struct HaConfig {
    /// `database_url` and `database_ca_file`: every connection is opened from it.
    pub database: crate::store::Database,
    /// This hub's base URL as agents and clients reach it (`http://10.0.0.5:4000`).
    pub advertise_url: String,
    pub lease: Duration,
    pub hub_id: String,
    /// How long a standby that knows no leader holds an agent's socket before saying so.
    pub election_wait: Duration,
}

impl HaConfig {
    /// The WebSocket URL agents use for this hub.
    pub fn ws_url(&self) -> String {
        let base = self.advertise_url.trim_end_matches('/');
        let ws = base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| base.strip_prefix("http://").map(|r| format!("ws://{r}")));
        format!("{}/ws", ws.unwrap_or_else(|| base.to_string()))
    }
    fn renew_every(&self) -> Duration {
        self.lease / 4
    }
    fn poll_every(&self) -> Duration {
        (self.lease / 10).clamp(Duration::from_millis(20), Duration::from_millis(500))
    }
    /// A leader that has not renewed for this long steps down: well before its lease expires.
    fn give_up_after(&self) -> Duration {
        self.lease * 2 / 3
    }
}

/// What a new core needs.
pub struct CoreParts {
    pub timings: Timings,
    pub limits: Limits,
    pub admin_token: String,
    pub bus: Arc<EventBus>,
    pub reader_connections: usize,
}

/// Starts the keeper thread; the role channel says what this hub does. It ends, stepping down
/// cleanly, when `shutdown` is cancelled.
pub fn start(cfg: HaConfig, parts: CoreParts, shutdown: CancellationToken) -> (RoleRx, std::thread::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Role::Standby { leader: None });
    let handle = std::thread::Builder::new()
        .name("hub-lease".into())
        .spawn(move || Keeper { cfg, parts, tx, lease: None, leading: None, shutdown }.run())
        .expect("spawn the lease keeper");
    (rx, handle)
}

struct Leading {
    term: u64,
    core: CoreHandle,
    thread: std::thread::JoinHandle<()>,
    last_renewed: Instant,
}

struct Keeper {
    cfg: HaConfig,
    parts: CoreParts,
    tx: watch::Sender<Role>,
    /// The connection that holds (or tries to take) the leader lock.
    lease: Option<Client>,
    leading: Option<Leading>,
    shutdown: CancellationToken,
}

impl Keeper {
    fn run(mut self) {
        tracing::info!(hub_id = %self.cfg.hub_id, url = %self.cfg.advertise_url, lease_ms = self.cfg.lease.as_millis() as u64, "joining the hubs on PostgreSQL as a standby");
        while !self.shutdown.is_cancelled() {
            let wait = if self.leading.is_some() { self.lead() } else { self.stand_by() };
            // Sleep in small steps so shutdown is prompt.
            let until = Instant::now() + wait;
            while Instant::now() < until && !self.shutdown.is_cancelled() {
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
            }
        }
        self.step_down("the hub is shutting down");
        tracing::info!("lease keeper stopped");
    }

    fn connection(&mut self) -> Result<&mut Client, StoreError> {
        if self.lease.as_ref().is_none_or(Client::is_closed) {
            let mut c = pg::connect(&self.cfg.database, self.cfg.lease)?;
            pg::migrate(&mut c)?;
            self.lease = Some(c);
        }
        Ok(self.lease.as_mut().expect("connected above"))
    }

    /// One standby round: take the lock if the leader's session is gone; fence off a leader
    /// whose lease expired; otherwise note who leads.
    fn stand_by(&mut self) -> Duration {
        let poll = self.cfg.poll_every();
        match self.try_take_over() {
            Ok(Some(term)) => {
                if let Err(e) = self.become_leader(term) {
                    tracing::error!(error = %e, term, "took the lease but could not start leading; standing by again");
                    self.lease = None; // releases the lock
                }
                Duration::ZERO
            }
            Ok(None) => poll,
            Err(e) => {
                tracing::warn!(error = %e, "the lease round failed; standing by");
                self.lease = None;
                self.publish_standby(None);
                poll.max(Duration::from_millis(200))
            }
        }
    }

    fn try_take_over(&mut self) -> Result<Option<u64>, StoreError> {
        let (lease_ms, id, url, ws) = (
            self.cfg.lease.as_millis() as i64,
            self.cfg.hub_id.clone(),
            self.cfg.advertise_url.clone(),
            self.cfg.ws_url(),
        );
        let c = self.connection()?;
        let locked: bool = c.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])?.get(0);
        if locked {
            let row = c.query_one(
                "UPDATE leader SET term = term + 1, holder = $1, url = $2, ws_url = $3,
                        expires_at = now() + $4::bigint * interval '1 millisecond', pids = ARRAY[pg_backend_pid()]
                 WHERE id = 1 RETURNING term",
                &[&id, &url, &ws, &lease_ms],
            )?;
            return Ok(Some(row.get::<_, i64>(0) as u64));
        }
        let row =
            c.query_one("SELECT term, holder, url, ws_url, expires_at < now(), pids FROM leader WHERE id = 1", &[])?;
        let (term, holder, url, ws_url, expired, pids): (
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            bool,
            Vec<i32>,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
        let leader = match (url, ws_url) {
            (Some(url), Some(ws_url)) if !expired => Some(LeaderInfo { url, ws_url, term: term as u64 }),
            _ => None,
        };
        self.publish_standby(leader);
        if expired && !pids.is_empty() {
            // The leader is alive but silent past its lease (paused, hung): cut its sessions
            // off, which frees the lock for the next round and fences it for good.
            tracing::warn!(
                holder = holder.as_deref().unwrap_or(""),
                term,
                "the leader's lease expired; terminating its database sessions"
            );
            let c = self.connection()?;
            c.execute(
                "SELECT pg_terminate_backend(p) FROM unnest($1::int[]) AS p WHERE p <> pg_backend_pid()",
                &[&pids],
            )?;
            c.execute("UPDATE leader SET pids = '{}' WHERE id = 1 AND term = $1", &[&term])?;
        }
        Ok(None)
    }

    fn publish_standby(&self, leader: Option<LeaderInfo>) {
        let changed = match &*self.tx.borrow() {
            Role::Standby { leader: current } => current != &leader,
            Role::Leader(_) => true,
        };
        if changed {
            self.tx.send_replace(Role::Standby { leader });
        }
    }

    /// Loads the state and starts the core. Loading can take longer than the lease (many open
    /// tasks, a busy machine, slow new connections), so it runs on a thread of its own while
    /// this one keeps renewing the lease: a standby must not take over from a leader that is
    /// still loading (it would, every time, and no hub would ever serve).
    fn become_leader(&mut self, term: u64) -> Result<(), StoreError> {
        let t0 = Instant::now();
        let (database, lease, connections) = (self.cfg.database.clone(), self.cfg.lease, self.parts.reader_connections);
        let p = &self.parts;
        let (timings, limits, admin_token, bus) =
            (p.timings.clone(), p.limits.clone(), p.admin_token.clone(), p.bus.clone());
        let loading = std::thread::Builder::new()
            .name("hub-load".into())
            .spawn(move || -> Result<_, StoreError> {
                let mut store = PgStore::open(&database, term, lease)?;
                let data_pid = store.backend_pid()?;
                let reader: Arc<dyn Reader> = Arc::new(PgReader::open(&database, connections, lease)?);
                let core = core::Core::new(store, SystemClock, timings, limits, &admin_token, bus)?;
                Ok((core, reader, data_pid))
            })
            .map_err(|e| StoreError::Open { path: "the loading thread".into(), message: e.to_string() })?;
        let mut renewed = Instant::now();
        let mut kept = Ok(());
        while !loading.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
            if kept.is_err() || renewed.elapsed() < self.cfg.renew_every() {
                continue;
            }
            match self.renew(term) {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => kept = Err(StoreError::Deposed { term }),
                Err(e) if renewed.elapsed() >= self.cfg.give_up_after() => kept = Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed while loading; retrying");
                    self.lease = None;
                }
            }
        }
        let loaded = loading.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // Deposed or cut off while loading: what was loaded is dropped unused.
        kept?;
        let (core, reader, data_pid) = loaded?;
        let recorded = self.connection()?.execute(
            "UPDATE leader SET pids = array_append(pids, $1) WHERE id = 1 AND term = $2",
            &[&data_pid, &(term as i64)],
        )?;
        if recorded == 0 {
            return Err(StoreError::Deposed { term });
        }
        let open = core.open_task_count();
        let (handle, thread) = core::spawn(core);
        self.leading = Some(Leading { term, core: handle.clone(), thread, last_renewed: renewed });
        self.tx.send_replace(Role::Leader(Serving { core: handle, reader, term }));
        tracing::info!(term, open_tasks = open, took_ms = t0.elapsed().as_millis() as u64, "this hub leads now");
        Ok(())
    }

    /// Extends this hub's lease if it still holds `term`; `false` when another hub took over.
    fn renew(&mut self, term: u64) -> Result<bool, StoreError> {
        let lease_ms = self.cfg.lease.as_millis() as i64;
        let updated = self.connection()?.execute(
            "UPDATE leader SET expires_at = now() + $2::bigint * interval '1 millisecond' WHERE id = 1 AND term = $1",
            &[&(term as i64), &lease_ms],
        )?;
        Ok(updated == 1)
    }

    /// One leader round: renew the lease, or step down when that is no longer possible.
    fn lead(&mut self) -> Duration {
        let Some(l) = &self.leading else { return Duration::ZERO };
        let term = l.term;
        if l.thread.is_finished() {
            self.step_down("the core stopped (its commits were refused: another hub leads)");
            return Duration::ZERO;
        }
        let renewed = self.renew(term);
        match renewed {
            Ok(true) => {
                if let Some(l) = self.leading.as_mut() {
                    l.last_renewed = Instant::now();
                }
                self.cfg.renew_every()
            }
            Ok(false) => {
                self.step_down("deposed: another hub took over");
                Duration::ZERO
            }
            Err(e) => {
                let since = self.leading.as_ref().map(|l| l.last_renewed.elapsed()).unwrap_or_default();
                if since >= self.cfg.give_up_after() {
                    tracing::error!(error = %e, "cannot renew the lease; stepping down before it can expire");
                    self.step_down("the database cannot be reached");
                } else {
                    tracing::warn!(error = %e, "lease renewal failed; retrying");
                    self.lease = None;
                }
                self.cfg.poll_every()
            }
        }
    }

    /// Stops serving at once (sockets are told where to go), stops the core, and lets go of
    /// the lock by closing the lease connection.
    fn step_down(&mut self, why: &str) {
        let Some(l) = self.leading.take() else { return };
        self.tx.send_replace(Role::Standby { leader: None });
        tracing::warn!(term = l.term, reason = why, "stepping down");
        let _ = l.core.blocking_send(core::Event::Shutdown);
        drop(l.core);
        // The core's last commit may wait on an unreachable database for up to the lease.
        let deadline = Instant::now() + self.cfg.lease + Duration::from_secs(1);
        while !l.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if l.thread.is_finished() {
            let _ = l.thread.join();
        } else {
            tracing::error!("the core did not stop in time; leaving its thread behind");
        }
        self.lease = None;
    }
}
