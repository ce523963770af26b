//! A process's life in the table: spawned, online, exited (and the restart policy), stopped,
//! restored after a supervisor restart, and stopped for good when the supervisor goes.

use super::{err, new_proc, ok, Action, Now, PersistedProc, ReqId, State, Table, Then, Timer};
use crate::daemon::backoff;
use proto::control::RestartPolicy;

impl Table {
    /// Starts the process: the outcome comes back as `Spawned`, its end as `Exited`.
    pub(super) fn spawn(&mut self, name: &str, now: Now) {
        let gen = self.next_gen();
        let Some(p) = self.procs.get_mut(name) else { return };
        p.gen = gen;
        p.state = State::Launching;
        p.spawning = true;
        p.health_failures = 0;
        p.cpu_sample = None;
        p.cpu_percent = 0.0;
        p.started = Some(now.mono_ms);
        self.out.push(Action::Spawn { name: name.into(), gen, spec: Box::new(p.spec.clone()) });
    }

    /// A command that cannot be executed counts as an exit (the restart policy applies); the
    /// requests that waited for the spawn are answered either way.
    pub(super) fn on_spawned(&mut self, name: &str, gen: u64, result: Result<u32, String>, now: Now) {
        if self.reload_spawned(name, gen, &result, now) {
            return;
        }
        let Some(p) = self.procs.get_mut(name).filter(|p| p.gen == gen && p.spawning) else {
            if let Ok(pid) = result {
                // Nobody wants this process any more: it must not outlive its table entry.
                tracing::warn!(name, pid, "a spawn came back for a process the table no longer holds");
                let pgid = pid as i32;
                let (signal, timeout_ms) = ("SIGKILL".to_string(), 0);
                self.out.push(Action::StopGroup { name: name.into(), gen, pgid, signal, timeout_ms, report: false });
            }
            return;
        };
        p.spawning = false;
        let waiters = std::mem::take(&mut p.spawn_waiters);
        let batch = p.batch.take();
        let stopping = p.state == State::Stopping;
        let mut health = None;
        match &result {
            Ok(pid) => {
                p.pid = Some(*pid);
                p.pgid = Some(*pid as i32);
                p.started = Some(now.mono_ms);
                p.started_at_ms = Some(now.wall_ms);
                tracing::info!(name, pid, tmux = p.spec.tmux, restart_count = p.restart_count, "process started");
                if !stopping {
                    p.state = State::Online;
                    health = p.spec.health_cmd.as_ref().map(|_| p.spec.health_interval_ms);
                }
            }
            Err(why) => tracing::error!(name, error = %why, "spawn failed"),
        }
        if result.is_ok() && stopping {
            // Stopped while it was being started: the stop goes out now that it has a group.
            self.send_stop(name);
        }
        if let Some(interval) = health {
            self.arm(now, interval, Timer::HealthDue { name: name.into(), gen });
        }
        self.dirty = true;
        for (id, verb) in waiters {
            let r = match &result {
                Ok(_) => ok(format!("{verb} {name}")),
                Err(e) => err(format!("cannot start {name}: {e}")),
            };
            self.reply(id, r);
        }
        if let Some(id) = batch {
            self.batch_step(id, name, result.as_ref().map(drop).map_err(String::clone), now);
        }
        if let Err(why) = result {
            if self.procs.get(name).is_some_and(|p| p.gen == gen) {
                if stopping {
                    self.finish_stop(name, now);
                } else {
                    self.on_exit(name, gen, None, format!("cannot start: {why}"), now);
                }
            }
        }
    }

    pub(super) fn on_exit(&mut self, name: &str, gen: u64, code: Option<i32>, desc: String, now: Now) {
        let backoff_reset_ms = self.cfg.backoff_reset_ms;
        if self.reload_exited(name, gen, &desc) {
            return;
        }
        let Some(p) = self.procs.get_mut(name) else { return };
        if p.gen != gen {
            return;
        }
        p.exit_code = code;
        p.pid = None;
        let uptime = p.started.map(|s| now.mono_ms.saturating_sub(s)).unwrap_or(0);
        if !matches!(p.state, State::Online | State::Launching) {
            // Stopping or already stopped: the stop reports when the whole group is gone, and
            // the leader may be reaped after that.
            return;
        }
        if p.reload.is_some() {
            // What was to be replaced without a gap is gone already: the policy decides now.
            self.fail_reload(name, format!("{name} exited during the reload ({desc})"));
        }
        let Some(p) = self.procs.get_mut(name) else { return };
        // The leader is gone on its own: take the rest of its group with it.
        if let Some(pgid) = p.pgid.take() {
            let (signal, timeout_ms) = (p.spec.kill_signal.clone(), p.spec.kill_timeout_ms);
            self.out.push(Action::StopGroup { name: name.into(), gen, pgid, signal, timeout_ms, report: false });
        }
        self.dirty = true;
        let stop_code = code.is_some_and(|c| p.spec.stop_exit_codes.contains(&c));
        let restart = match p.spec.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => code != Some(0) && !stop_code,
            RestartPolicy::Always => !stop_code,
        };
        tracing::info!(name, code, desc = %desc, uptime_ms = uptime, restart, "process exited");
        let exited = if desc.starts_with("cannot start") { desc.clone() } else { format!("exited ({desc})") };
        if !restart {
            p.state = State::Stopped;
            p.desired = false;
            p.last_reason = Some(exited);
            return;
        }
        if uptime < p.spec.min_uptime_ms {
            p.unstable_restarts += 1;
        } else {
            p.unstable_restarts = 0;
        }
        if uptime >= backoff_reset_ms {
            p.consecutive = 0;
        }
        if p.unstable_restarts > p.spec.max_restarts {
            tracing::error!(
                name,
                unstable_restarts = p.unstable_restarts,
                "crash loop: errored (use restart to try again)"
            );
            p.state = State::Errored;
            p.last_reason = Some(format!("exited {} times within min_uptime ({exited})", p.unstable_restarts));
            return;
        }
        let delay = (backoff(p.spec.restart_backoff_ms, p.spec.restart_backoff_max_ms, p.consecutive).as_millis()
            as u64)
            .max(p.spec.restart_delay_ms);
        p.consecutive += 1;
        p.restart_count += 1;
        p.state = State::WaitingRestart;
        p.last_reason = Some(exited);
        self.arm(now, delay, Timer::RestartDue { name: name.into(), gen });
    }

    /// Sends the kill signal to the group, SIGKILL after the timeout, and completes (`StopDone`)
    /// only when no process of the group is left. A process still being spawned is stopped as
    /// soon as its spawn comes back.
    pub(super) fn begin_stop(&mut self, name: &str, then: Then, reply: Option<ReqId>, now: Now) {
        // A stop, a restart or a delete wins over a reload in progress.
        self.fail_reload(name, format!("the reload of {name} was cancelled: {name} is being stopped"));
        let Some(p) = self.procs.get_mut(name) else { return };
        p.waiters.extend(reply);
        p.then = then;
        if p.state == State::Stopping {
            return;
        }
        p.state = State::Stopping;
        if p.spawning {
            return;
        }
        if p.pgid.is_none() {
            return self.finish_stop(name, now);
        }
        self.send_stop(name);
    }

    fn send_stop(&mut self, name: &str) {
        let Some(p) = self.procs.get(name) else { return };
        let Some(pgid) = p.pgid else { return };
        let (signal, timeout_ms) = (p.spec.kill_signal.clone(), p.spec.kill_timeout_ms);
        self.out.push(Action::StopGroup { name: name.into(), gen: p.gen, pgid, signal, timeout_ms, report: true });
    }

    pub(super) fn on_stop_done(&mut self, name: &str, gen: u64, now: Now) {
        if self.retired(name, gen) {
            return;
        }
        if self.procs.get(name).is_some_and(|p| p.gen == gen && p.state == State::Stopping && !p.spawning) {
            self.finish_stop(name, now);
        }
    }

    fn finish_stop(&mut self, name: &str, now: Now) {
        let Some(p) = self.procs.get_mut(name) else { return };
        p.pgid = None;
        p.pid = None;
        p.state = State::Stopped;
        let waiters = std::mem::take(&mut p.waiters);
        tracing::info!(name, "process stopped (whole group gone)");
        self.dirty = true;
        let then = p.then;
        let message = match then {
            Then::Stay => format!("stopped {name}"),
            Then::Restart => {
                // The requests that asked for the restart are answered when the spawn comes back.
                p.spawn_waiters.extend(waiters.into_iter().map(|id| (id, "restarted")));
                return self.spawn(name, now);
            }
            Then::Delete => {
                self.procs.remove(name);
                self.out.push(Action::Forget { name: name.into() });
                self.sync_watches();
                format!("deleted {name}")
            }
        };
        for id in waiters {
            self.reply(id, ok(message.clone()));
        }
    }

    /// The next instance of a `start`, or its answer: every instance started, or the table put
    /// back as it was before the request because one could not start.
    fn batch_step(&mut self, id: ReqId, name: &str, result: Result<(), String>, now: Now) {
        let Some(mut b) = self.starts.remove(&id) else { return };
        if let Err(e) = result {
            for (n, old) in std::mem::take(&mut b.previous) {
                if let Some(p) = self.procs.remove(&n) {
                    if let (true, Some(pgid)) = (p.state.running(), p.pgid) {
                        let (signal, timeout_ms) = (p.spec.kill_signal.clone(), p.spec.kill_timeout_ms);
                        let gen = p.gen;
                        self.out.push(Action::StopGroup {
                            name: n.clone(),
                            gen,
                            pgid,
                            signal,
                            timeout_ms,
                            report: false,
                        });
                    }
                    self.out.push(Action::Forget { name: n.clone() });
                }
                if let Some(old) = old {
                    self.procs.insert(n, old);
                }
            }
            self.dirty = true;
            return self.reply(id, err(format!("cannot start {name}: {e}")));
        }
        b.next += 1;
        if let Some(next) = b.names.get(b.next).cloned() {
            if self.closing {
                self.starts.insert(id, b);
                return self.batch_step(id, &next, Err("the supervisor is shutting down".into()), now);
            }
            if let Some(p) = self.procs.get_mut(&next) {
                p.batch = Some(id);
                self.starts.insert(id, b);
                return self.spawn(&next, now);
            }
            // Gone meanwhile (deleted before its turn): the rest go on.
            self.starts.insert(id, b);
            return self.batch_step(id, &next, Ok(()), now);
        }
        for n in &b.names {
            self.arm_cron(n, now);
        }
        self.sync_watches();
        self.reply(id, ok(format!("started {}", b.names.join(", "))));
    }

    /// Loads the desired state (the shell stopped the groups left from before: we restart rather
    /// than re-adopt, because only a parent can wait for a child's exit status).
    pub(super) fn restore(&mut self, procs: Vec<PersistedProc>, now: Now) {
        // Ids from the file first (two claiming one id: the first keeps it), then new ones for
        // the rest (a file written before ids, or a clash), so none moves needlessly.
        let mut taken = std::collections::BTreeSet::new();
        let mut restored = Vec::new();
        for pp in procs {
            let id = pp.id.filter(|id| taken.insert(*id));
            restored.push((id, pp));
        }
        let mut fresh = (0u32..).filter(|i| !taken.contains(i));
        let mut names = Vec::new();
        for (id, pp) in restored {
            let name = pp.spec.name.clone();
            let id = id.or_else(|| fresh.next()).unwrap_or(u32::MAX);
            let mut p = new_proc(pp.spec, id);
            p.desired = pp.desired;
            p.restart_count = pp.restart_count;
            self.procs.insert(name.clone(), p);
            names.push((name, pp.desired));
        }
        for (name, desired) in names {
            self.arm_cron(&name, now);
            if desired {
                self.spawn(&name, now);
            }
        }
        self.sync_watches();
        self.dirty = true;
    }

    /// Stops every group for the supervisor's exit, keeping the desired state so the next start
    /// brings them back; from now on no timer fires and requests are refused.
    pub(super) fn shutdown(&mut self, now: Now) {
        self.closing = true;
        let running: Vec<String> =
            self.procs.iter().filter(|(_, p)| p.pgid.is_some() || p.spawning).map(|(n, _)| n.clone()).collect();
        tracing::info!(count = running.len(), "supervisor stopping its processes");
        for name in &running {
            self.begin_stop(name, Then::Stay, None, now);
        }
    }

    /// Answers a `kill` once no process is stopping any more, then makes the supervisor exit.
    pub(super) fn check_killed(&mut self) {
        if self.killing.is_some() && !self.stopping() {
            let n = self.procs.len();
            if let Some(id) = self.killing.take() {
                self.reply(id, ok(format!("stopped {n} processes; the supervisor exits")));
            }
            self.out.push(Action::Exit);
        }
    }
}
