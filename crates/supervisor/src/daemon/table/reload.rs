//! `reload`: a successor with the same spec is started beside the running process; once it has
//! stayed up `min_uptime_ms` and (with a health command) passed a health check, the old group is
//! stopped and the successor becomes the process, so one of them always runs. A successor that
//! exits first, cannot start, or is not healthy within the bound is stopped and the old process
//! is left as it was. The successor is a generation of its own: its spawn, exit, health and stop
//! reports are told apart from the running process's by `gen` alone.

use super::{err, ok, Action, Now, ReqId, State, Table, Timer};
use proto::control::Response;

/// A reload's successor, until it becomes the process or is given up.
#[derive(Debug)]
pub(super) struct Successor {
    gen: u64,
    /// Its spawn is out.
    spawning: bool,
    pid: Option<u32>,
    pgid: Option<i32>,
    /// Monotonic and wall ms of its start.
    started: Option<u64>,
    started_at_ms: Option<u64>,
    /// What the last failed health check said.
    last_health: Option<String>,
    timeout_ms: u64,
    /// The `reload` requests, answered once it is over.
    waiters: Vec<ReqId>,
}

/// A group on its way out, and the answer its requests get once it is gone.
#[derive(Debug)]
pub(super) struct Retiring {
    name: String,
    /// `None` while its spawn is out: it is stopped as soon as it has a group.
    pgid: Option<i32>,
    signal: String,
    timeout_ms: u64,
    waiters: Vec<ReqId>,
    answer: Response,
}

/// How often a successor's health command is tried again while it fails (bounded by the
/// reload's timeout, not by `health_failures`: a server may take a while to listen).
const RETRY_MS: u64 = 500;

impl Table {
    /// Starts a reload of `name` (a process that is not running is started instead, as pm2's
    /// `reload` does).
    pub(super) fn reload(&mut self, id: ReqId, name: &str, timeout_ms: u64, now: Now) {
        let Some(p) = self.procs.get(name) else {
            return self.reply(id, err(format!("no process named {name}")));
        };
        if p.spec.tmux {
            return self.reply(
                id,
                err(format!(
                    "{name} runs in tmux, where its terminal holds one program: reload needs two at once; use restart"
                )),
            );
        }
        if p.reload.is_some() {
            return self.reply(id, err(format!("{name} is already being reloaded")));
        }
        match p.state {
            State::Online => {}
            State::Stopped | State::Errored | State::WaitingRestart => return self.start_existing(id, name, now),
            State::Launching | State::Stopping => {
                return self.reply(id, err(format!("{name} is {}: reload it once it is online", p.state.as_str())))
            }
        }
        if timeout_ms <= p.spec.min_uptime_ms {
            return self.reply(
                id,
                err(format!(
                    "the reload timeout ({timeout_ms} ms) must be longer than {name}'s min_uptime_ms ({} ms)",
                    p.spec.min_uptime_ms
                )),
            );
        }
        let gen = self.next_gen();
        let Some(p) = self.procs.get_mut(name) else { return };
        p.reload = Some(Successor {
            gen,
            spawning: true,
            pid: None,
            pgid: None,
            started: None,
            started_at_ms: None,
            last_health: None,
            timeout_ms,
            waiters: vec![id],
        });
        let spec = Box::new(p.spec.clone());
        tracing::info!(name, "reload: starting a successor beside the running process");
        self.arm(now, timeout_ms, Timer::ReloadTimeout { name: name.into(), gen });
        self.out.push(Action::Spawn { name: name.into(), gen, spec });
    }

    /// The groups of `name` besides its own that run: for `state.json`.
    pub(super) fn extra_groups(&self, name: &str) -> Vec<i32> {
        let successor = self.procs.get(name).and_then(|p| p.reload.as_ref()).and_then(|r| r.pgid);
        let retiring = self.retiring.values().filter(|r| r.name == name).filter_map(|r| r.pgid);
        successor.into_iter().chain(retiring).collect()
    }

    /// A spawn of a successor (or of one given up meanwhile) came back; false when `gen` is
    /// neither.
    pub(super) fn reload_spawned(&mut self, name: &str, gen: u64, result: &Result<u32, String>, now: Now) -> bool {
        if let Some(r) = self.retiring.get_mut(&gen).filter(|r| r.name == name && r.pgid.is_none()) {
            match result {
                Ok(pid) => {
                    r.pgid = Some(*pid as i32);
                    self.stop_retiring(gen);
                    self.dirty = true;
                }
                Err(_) => {
                    self.retired(name, gen);
                }
            }
            return true;
        }
        let Some(p) = self.procs.get_mut(name) else { return false };
        let Some(r) = p.reload.as_mut().filter(|r| r.gen == gen && r.spawning) else { return false };
        r.spawning = false;
        match result {
            Ok(pid) => {
                r.pid = Some(*pid);
                r.pgid = Some(*pid as i32);
                r.started = Some(now.mono_ms);
                r.started_at_ms = Some(now.wall_ms);
                let min_uptime = p.spec.min_uptime_ms;
                tracing::info!(name, pid, "reload: successor started");
                self.dirty = true;
                self.arm(now, min_uptime, Timer::ReloadCheck { name: name.into(), gen });
            }
            Err(why) => self.fail_reload(name, format!("cannot start the new process: {why}")),
        }
        true
    }

    /// The successor's leader exited before it became the process; false when `gen` is not a
    /// successor's.
    pub(super) fn reload_exited(&mut self, name: &str, gen: u64, desc: &str) -> bool {
        if self.retiring.get(&gen).is_some_and(|r| r.name == name) {
            return true; // its stop reports when the whole group is gone
        }
        let ours = self.procs.get(name).and_then(|p| p.reload.as_ref()).is_some_and(|r| r.gen == gen);
        if ours {
            self.fail_reload(name, format!("the new process exited ({desc}) before it was healthy"));
        }
        ours
    }

    /// The successor stayed up `min_uptime_ms` (or its health command failed a while ago):
    /// check its health, or take it if it has no health command.
    pub(super) fn reload_check(&mut self, name: &str, gen: u64, now: Now) {
        let Some(p) = self.procs.get(name) else { return };
        let Some(r) = p.reload.as_ref().filter(|r| r.gen == gen && r.pid.is_some()) else { return };
        match p.spec.health_cmd.clone() {
            Some(cmd) => {
                let timeout_ms = p.spec.health_interval_ms.clamp(100, 30_000).min(r.timeout_ms);
                self.out.push(Action::Health { name: name.into(), gen, cmd, timeout_ms });
            }
            None => self.promote(name, now),
        }
    }

    /// A health result of a successor; false when `gen` is not a successor's.
    pub(super) fn reload_health(&mut self, name: &str, gen: u64, healthy: bool, detail: &str, now: Now) -> bool {
        let Some(p) = self.procs.get_mut(name) else { return false };
        let Some(r) = p.reload.as_mut().filter(|r| r.gen == gen) else { return false };
        if healthy {
            self.promote(name, now);
        } else {
            r.last_health = Some(detail.to_string());
            tracing::info!(name, detail, "reload: the successor is not healthy yet");
            let retry = p.spec.health_interval_ms.min(RETRY_MS);
            self.arm(now, retry, Timer::ReloadCheck { name: name.into(), gen });
        }
        true
    }

    pub(super) fn reload_timeout(&mut self, name: &str, gen: u64) {
        let Some(r) = self.procs.get(name).and_then(|p| p.reload.as_ref()).filter(|r| r.gen == gen) else { return };
        let why = match &r.last_health {
            Some(h) => format!("the new process was not healthy within {} ms (health check: {h})", r.timeout_ms),
            None => format!("the new process was not healthy within {} ms", r.timeout_ms),
        };
        self.fail_reload(name, why);
    }

    /// The successor becomes the process: same name and id, one more restart; the old group is
    /// stopped, and the `reload` is answered once it is gone.
    fn promote(&mut self, name: &str, now: Now) {
        let Some(p) = self.procs.get_mut(name) else { return };
        let Some(r) = p.reload.take() else { return };
        let (old_gen, old_pgid, old_pid) = (p.gen, p.pgid, p.pid);
        p.gen = r.gen;
        p.pid = r.pid;
        p.pgid = r.pgid;
        p.started = r.started;
        p.started_at_ms = r.started_at_ms;
        p.state = State::Online;
        p.restart_count += 1;
        p.unstable_restarts = 0;
        p.health_failures = 0;
        p.cpu_sample = None;
        p.cpu_percent = 0.0;
        p.last_reason = Some("reloaded".into());
        let (signal, timeout_ms) = (p.spec.kill_signal.clone(), p.spec.kill_timeout_ms);
        let health = p.spec.health_cmd.as_ref().map(|_| p.spec.health_interval_ms);
        tracing::info!(name, old = ?old_pid, new = ?r.pid, "reload: the successor is the process; stopping the old one");
        self.dirty = true;
        let answer = ok(format!("reloaded {name}"));
        match old_pgid {
            Some(pgid) => {
                let (name, pgid) = (name.to_string(), Some(pgid));
                self.retiring.insert(old_gen, Retiring { name, pgid, signal, timeout_ms, waiters: r.waiters, answer });
                self.stop_retiring(old_gen);
            }
            None => {
                for id in r.waiters {
                    self.reply(id, answer.clone());
                }
            }
        }
        if let Some(interval) = health {
            // Its regular checks go on from here, as for any process that came online.
            self.arm(now, interval, Timer::HealthDue { name: name.into(), gen: r.gen });
        }
    }

    /// Gives the reload of `name` up (if one is in progress): the successor is stopped, and its
    /// requests are answered with `why` once it is gone. The running process is not touched.
    pub(super) fn fail_reload(&mut self, name: &str, why: String) {
        let Some(p) = self.procs.get_mut(name) else { return };
        let Some(r) = p.reload.take() else { return };
        tracing::warn!(name, reason = %why, "reload failed");
        let answer = err(format!("cannot reload {name}: {why}"));
        let (signal, timeout_ms) = (p.spec.kill_signal.clone(), p.spec.kill_timeout_ms);
        let retiring = Retiring { name: name.into(), pgid: r.pgid, signal, timeout_ms, waiters: r.waiters, answer };
        self.retiring.insert(r.gen, retiring);
        self.dirty = true;
        if !r.spawning {
            if r.pgid.is_some() {
                self.stop_retiring(r.gen);
            } else {
                self.retired(name, r.gen);
            }
        }
    }

    fn stop_retiring(&mut self, gen: u64) {
        let Some(r) = self.retiring.get(&gen) else { return };
        let Some(pgid) = r.pgid else { return };
        let (name, signal, timeout_ms) = (r.name.clone(), r.signal.clone(), r.timeout_ms);
        self.out.push(Action::StopGroup { name, gen, pgid, signal, timeout_ms, report: true });
    }

    /// A retiring group is gone: its requests get their answer. False when `gen` is not one.
    pub(super) fn retired(&mut self, name: &str, gen: u64) -> bool {
        let Some(r) = self.retiring.remove(&gen) else { return false };
        if r.name != name {
            self.retiring.insert(gen, r);
            return false;
        }
        self.dirty = true;
        for id in r.waiters {
            self.reply(id, r.answer.clone());
        }
        true
    }
}
