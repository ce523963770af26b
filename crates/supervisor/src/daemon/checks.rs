//! The table's reasons to restart a running process by itself: a failing health command,
//! group memory over its limit, a change in a watched path, a cron schedule.

use super::table::{Daemon, State, Then, Timer};
use super::{watch, Ev};
use osutil::procfs;
use proto::control::ProcSpec;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

/// What the supervisor checks beyond `ProcSpec::validate` (it has the parsers): the cron
/// schedule and the `ignore_watch` globs.
pub fn problems(spec: &ProcSpec) -> Vec<String> {
    let mut e = Vec::new();
    if let Some(c) = &spec.cron_restart {
        if let Err(why) = croner::Cron::from_str(c) {
            e.push(format!("cron_restart: {c:?} is not a cron schedule: {why}"));
        }
    }
    if let Err(why) = watch::ignore_set(spec) {
        e.push(why);
    }
    e
}

/// How long until the next time of `schedule` after now (local time).
pub fn next_cron(schedule: &str) -> Option<Duration> {
    let cron = croner::Cron::from_str(schedule).ok()?;
    let now = chrono::Local::now();
    let next = cron.find_next_occurrence(&now, false).ok()?;
    (next - now).to_std().ok()
}

impl Daemon {
    pub(super) fn health_check(&mut self, name: &str, gen: u64) {
        let Some(p) = self.procs.get(name).filter(|p| p.gen == gen && p.state == State::Online) else { return };
        let Some(cmd) = p.spec.health_cmd.clone() else { return };
        let timeout = Duration::from_millis(p.spec.health_interval_ms.clamp(100, 30_000));
        let (tx, n) = (self.tx.clone(), name.to_string());
        tokio::spawn(async move {
            let run = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .output();
            let (ok, detail) = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(o)) if o.status.success() => (true, String::new()),
                Ok(Ok(o)) => (false, format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
                Ok(Err(e)) => (false, e.to_string()),
                Err(_) => (false, format!("no answer within {}ms", timeout.as_millis())),
            };
            let _ = tx.send(Ev::Health { name: n, gen, ok, detail });
        });
    }

    pub(super) fn on_health(&mut self, name: &str, gen: u64, ok: bool, detail: String) {
        let Some(p) = self.procs.get_mut(name).filter(|p| p.gen == gen && p.state == State::Online) else { return };
        if ok {
            p.health_failures = 0;
        } else {
            p.health_failures += 1;
            tracing::warn!(name, failures = p.health_failures, detail = %detail, "health check failed");
        }
        if p.health_failures > p.spec.health_failures {
            p.restart_count += 1;
            p.last_reason = Some(format!("health check failed {} times: {detail}", p.health_failures));
            tracing::warn!(name, "restarting after failed health checks");
            return self.begin_stop(name, Then::Restart, None);
        }
        let interval = Duration::from_millis(p.spec.health_interval_ms);
        self.arm(interval, Timer::HealthDue { name: name.into(), gen });
    }

    pub(super) fn memory_check(&mut self) {
        let limited: Vec<(String, i32, u64)> = self
            .procs
            .iter()
            .filter(|(_, p)| p.state == State::Online)
            .filter_map(|(n, p)| Some((n.clone(), p.pgid?, p.spec.max_memory_bytes?)))
            .collect();
        if limited.is_empty() {
            return;
        }
        let groups = procfs::scan_groups();
        for (name, pg, max) in limited {
            let rss = groups.get(&pg).map(|g| g.rss_bytes).unwrap_or(0);
            if rss > max {
                if let Some(p) = self.procs.get_mut(&name) {
                    p.restart_count += 1;
                    p.last_reason = Some(format!("memory {rss} bytes over the limit of {max}"));
                }
                tracing::warn!(name = %name, rss, max, "memory over the limit; restarting");
                self.begin_stop(&name, Then::Restart, None);
            }
        }
    }

    /// A watched path changed: restart `watch_delay_ms` after this first change; the ones in
    /// between are part of the same restart.
    pub(super) fn on_watched(&mut self, name: &str, path: PathBuf) {
        let Some(p) = self.procs.get_mut(name) else { return self.watches.handled(name) };
        if p.watch_armed || !p.desired {
            return;
        }
        p.watch_armed = true;
        let delay = Duration::from_millis(p.spec.watch_delay_ms);
        self.arm(delay, Timer::WatchDue { name: name.into(), path });
    }

    pub(super) fn on_watch_due(&mut self, name: &str, path: &Path) {
        self.watches.handled(name);
        let Some(p) = self.procs.get_mut(name) else { return };
        p.watch_armed = false;
        if !p.desired {
            return;
        }
        p.restart_count += 1;
        p.unstable_restarts = 0;
        p.last_reason = Some(format!("watched path changed: {}", path.display()));
        tracing::info!(name, path = %path.display(), "watched path changed; restarting");
        self.restart_now(name);
    }

    /// Arms the next time of the process's `cron_restart` schedule, if it has one.
    pub(super) fn arm_cron(&mut self, name: &str) {
        let Some(p) = self.procs.get(name) else { return };
        let Some(schedule) = &p.spec.cron_restart else { return };
        let seq = p.cron_seq;
        if let Some(after) = next_cron(schedule) {
            self.arm(after, Timer::CronDue { name: name.into(), seq });
        }
    }

    /// pm2's `cron_restart`: a running process is restarted; one that exited on its own (a job
    /// with `restart = never`) runs again; one stopped by a person is left alone.
    pub(super) fn on_cron_due(&mut self, name: &str, seq: u64) {
        let Some(p) = self.procs.get_mut(name).filter(|p| p.cron_seq == seq) else { return };
        if !p.user_stopped {
            p.desired = true;
            p.restart_count += 1;
            p.unstable_restarts = 0;
            p.last_reason = Some(format!("cron_restart {}", p.spec.cron_restart.as_deref().unwrap_or("")));
            tracing::info!(name, "cron schedule: restarting");
            self.restart_now(name);
        }
        self.arm_cron(name);
    }

    /// Restarts a process whatever its state: a running one through a stop of its group.
    fn restart_now(&mut self, name: &str) {
        let Some(p) = self.procs.get(name) else { return };
        match p.state {
            State::Online | State::Launching => self.begin_stop(name, Then::Restart, None),
            State::Stopping => {}
            State::WaitingRestart | State::Stopped | State::Errored => {
                let _ = self.spawn(name);
            }
        }
    }
}
