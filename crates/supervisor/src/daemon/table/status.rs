//! What `ps` and `describe` show of the table, from a scan of `/proc` the shell made for them.

use super::{Now, Table};
use crate::daemon::{spawn::log_paths, tmux};
use osutil::procfs::GroupUsage;
use proto::control::{Describe, ProcStatus, TmuxTarget, ENV_INSTANCE_OF};
use std::collections::HashMap;

impl Table {
    pub(super) fn statuses(&mut self, groups: &HashMap<i32, GroupUsage>, now: Now) -> Vec<ProcStatus> {
        let ticks = self.cfg.clock_ticks.max(1) as f64;
        self.procs
            .iter_mut()
            .map(|(name, p)| {
                let usage = p.pgid.and_then(|pg| groups.get(&pg));
                let (rss, cpu) = usage.map(|g| (g.rss_bytes, g.cpu_ticks)).unwrap_or((0, 0));
                if let Some((last, at)) = p.cpu_sample {
                    let ms = now.mono_ms.saturating_sub(at);
                    // Too short an interval says nothing but noise.
                    if ms > 50 {
                        p.cpu_percent = (cpu.saturating_sub(last) as f64 / ticks) / (ms as f64 / 1000.0) * 100.0;
                        p.cpu_sample = Some((cpu, now.mono_ms));
                    }
                } else if usage.is_some() {
                    p.cpu_sample = Some((cpu, now.mono_ms));
                }
                let running = p.state.running();
                let uptime_ms = p.started.filter(|_| running).map_or(0, |s| now.mono_ms.saturating_sub(s));
                ProcStatus {
                    id: p.id,
                    name: name.clone(),
                    pid: if running { p.pid.unwrap_or(0) } else { 0 },
                    status: p.state.as_str().into(),
                    uptime_ms,
                    restart_count: p.restart_count,
                    memory_bytes: rss,
                    cpu_percent: (p.cpu_percent * 10.0).round() / 10.0,
                    exit_code: p.exit_code,
                    unstable_restarts: p.unstable_restarts,
                    spec_hash: p.spec.env.get("AGENTCOM_SPEC_HASH").cloned(),
                    daemon_root: p.spec.env.get("AGENTCOM_DAEMON_ROOT").cloned(),
                    // Why it is not running: shown while it is not.
                    reason: if running || p.user_stopped { None } else { p.last_reason.clone() },
                    tmux: p.spec.tmux,
                    instance_of: p.spec.env.get(ENV_INSTANCE_OF).cloned(),
                }
            })
            .collect()
    }

    pub(super) fn describe(&mut self, name: &str, groups: &HashMap<i32, GroupUsage>, now: Now) -> Option<Describe> {
        let status = self.statuses(groups, now).into_iter().find(|s| s.name == name)?;
        let p = self.procs.get(name)?;
        let (out, err) = log_paths(&self.cfg.dir, &p.spec);
        Some(Describe {
            status,
            spec: p.spec.clone(),
            pgid: p.pgid,
            out_log: out.display().to_string(),
            err_log: err.display().to_string(),
            last_restart_reason: p.last_reason.clone(),
            started_at_ms: p.started_at_ms,
            tmux: p.spec.tmux.then(|| TmuxTarget {
                socket: tmux::socket(&self.cfg.dir).display().to_string(),
                session: tmux::session_name(name),
            }),
        })
    }
}
