//! The table's reasons to restart a running process by itself: a failing health command,
//! group memory over its limit, a change in a watched path, a cron schedule.

use super::{Action, Now, Scan, State, Table, Then, Timer};
use crate::daemon::watch;
use chrono::TimeZone;
use osutil::procfs::GroupUsage;
use proto::control::ProcSpec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// What the supervisor checks beyond `ProcSpec::validate` (it has the parsers): the cron
/// schedule and the `ignore_watch` globs; and the name `all`, which the commands read as every
/// process.
pub fn problems(spec: &ProcSpec) -> Vec<String> {
    let mut e = Vec::new();
    if spec.name == "all" {
        e.push("name: \"all\" means every process to stop, restart, delete, logs and flush: pick another".into());
    }
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

/// Milliseconds from `wall_ms` (since the Unix epoch) to the next time of `schedule`, which is
/// read in local time.
pub fn next_cron(schedule: &str, wall_ms: u64) -> Option<u64> {
    let cron = croner::Cron::from_str(schedule).ok()?;
    let now = chrono::Local.timestamp_millis_opt(i64::try_from(wall_ms).ok()?).single()?;
    let next = cron.find_next_occurrence(&now, false).ok()?;
    u64::try_from((next - now).num_milliseconds()).ok()
}

impl Table {
    pub(super) fn health_check(&mut self, name: &str, gen: u64) {
        let Some(p) = self.procs.get(name).filter(|p| p.gen == gen && p.state == State::Online) else { return };
        let Some(cmd) = p.spec.health_cmd.clone() else { return };
        let timeout_ms = p.spec.health_interval_ms.clamp(100, 30_000);
        self.out.push(Action::Health { name: name.into(), gen, cmd, timeout_ms });
    }

    pub(super) fn on_health(&mut self, name: &str, gen: u64, ok: bool, detail: String, now: Now) {
        if self.reload_health(name, gen, ok, &detail, now) {
            return;
        }
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
            self.dirty = true;
            tracing::warn!(name, "restarting after failed health checks");
            return self.begin_stop(name, Then::Restart, None, now);
        }
        let interval = p.spec.health_interval_ms;
        self.arm(now, interval, Timer::HealthDue { name: name.into(), gen });
    }

    /// Asks for a scan only when a running process has a memory limit.
    pub(super) fn memory_check(&mut self) {
        let limited = self.procs.values().any(|p| p.state == State::Online && p.spec.max_memory_bytes.is_some());
        if limited {
            self.out.push(Action::Scan(Scan::Memory));
        }
    }

    pub(super) fn on_scanned(&mut self, scan: Scan, groups: &HashMap<i32, GroupUsage>, now: Now) {
        match scan {
            Scan::Memory => self.memory_scanned(groups, now),
            Scan::Status { id, describe: None } => {
                let processes = self.statuses(groups, now);
                self.reply(id, proto::control::Response::List { processes });
            }
            Scan::Status { id, describe: Some(name) } => {
                let r = match self.describe(&name, groups, now) {
                    Some(d) => proto::control::Response::Described(Box::new(d)),
                    None => super::err(format!("no process named {name}")),
                };
                self.reply(id, r);
            }
        }
    }

    fn memory_scanned(&mut self, groups: &HashMap<i32, GroupUsage>, now: Now) {
        let limited: Vec<(String, i32, u64)> = self
            .procs
            .iter()
            .filter(|(_, p)| p.state == State::Online)
            .filter_map(|(n, p)| Some((n.clone(), p.pgid?, p.spec.max_memory_bytes?)))
            .collect();
        for (name, pg, max) in limited {
            let rss = groups.get(&pg).map(|g| g.rss_bytes).unwrap_or(0);
            if rss > max {
                if let Some(p) = self.procs.get_mut(&name) {
                    p.restart_count += 1;
                    p.last_reason = Some(format!("memory {rss} bytes over the limit of {max}"));
                }
                self.dirty = true;
                tracing::warn!(name = %name, rss, max, "memory over the limit; restarting");
                self.begin_stop(&name, Then::Restart, None, now);
            }
        }
    }

    /// A watched path changed: restart `watch_delay_ms` after this first change; the ones in
    /// between are part of the same restart.
    pub(super) fn on_watched(&mut self, name: &str, path: PathBuf, now: Now) {
        let Some(p) = self.procs.get_mut(name) else {
            return self.out.push(Action::WatchHandled { name: name.into() });
        };
        if p.watch_armed || !p.desired {
            return;
        }
        p.watch_armed = true;
        let delay = p.spec.watch_delay_ms;
        self.arm(now, delay, Timer::WatchDue { name: name.into(), path });
    }

    pub(super) fn on_watch_due(&mut self, name: &str, path: &Path, now: Now) {
        self.out.push(Action::WatchHandled { name: name.into() });
        let Some(p) = self.procs.get_mut(name) else { return };
        p.watch_armed = false;
        if !p.desired {
            return;
        }
        p.restart_count += 1;
        p.unstable_restarts = 0;
        p.last_reason = Some(format!("watched path changed: {}", path.display()));
        self.dirty = true;
        tracing::info!(name, path = %path.display(), "watched path changed; restarting");
        self.restart_now(name, now);
    }

    /// Arms the next time of the process's `cron_restart` schedule, if it has one.
    pub(super) fn arm_cron(&mut self, name: &str, now: Now) {
        self.arm_cron_after(name, now, now.wall_ms);
    }

    /// Arms the first time of the schedule after wall time `after_ms`.
    fn arm_cron_after(&mut self, name: &str, now: Now, after_ms: u64) {
        let Some(p) = self.procs.get(name) else { return };
        let Some(schedule) = &p.spec.cron_restart else { return };
        let seq = p.cron_seq;
        if let Some(next) = next_cron(schedule, after_ms) {
            let at_ms = after_ms + next;
            let delay = at_ms.saturating_sub(now.wall_ms);
            self.arm(now, delay, Timer::CronDue { name: name.into(), seq, at_ms });
        }
    }

    /// pm2's `cron_restart`: a running process is restarted; one that exited on its own (a job
    /// with `restart = never`) runs again; one stopped by a person is left alone.
    pub(super) fn on_cron_due(&mut self, name: &str, seq: u64, at_ms: u64, now: Now) {
        let Some(p) = self.procs.get_mut(name).filter(|p| p.cron_seq == seq) else { return };
        if !p.user_stopped {
            p.desired = true;
            p.restart_count += 1;
            p.unstable_restarts = 0;
            p.last_reason = Some(format!("cron_restart {}", p.spec.cron_restart.as_deref().unwrap_or("")));
            self.dirty = true;
            tracing::info!(name, "cron schedule: restarting");
            self.restart_now(name, now);
        }
        // From the time that fired, not only from the clock: the wall clock can read a little
        // before it when the tick comes (it is timed on the monotonic clock), and the same time
        // must not fire twice.
        self.arm_cron_after(name, now, now.wall_ms.max(at_ms));
    }

    /// Restarts a process whatever its state: a running one through a stop of its group.
    fn restart_now(&mut self, name: &str, now: Now) {
        let Some(p) = self.procs.get(name) else { return };
        match p.state {
            State::Online | State::Launching => self.begin_stop(name, Then::Restart, None, now),
            State::Stopping => {}
            State::WaitingRestart | State::Stopped | State::Errored => self.spawn(name, now),
        }
    }
}
