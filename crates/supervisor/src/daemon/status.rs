//! What `ps` and `describe` show of the table.

use super::spawn::log_paths;
use super::table::Daemon;
use super::tmux;
use osutil::procfs;
use proto::control::{Describe, ProcStatus, TmuxTarget, ENV_INSTANCE_OF};
use std::time::Instant;

impl Daemon {
    pub(super) fn statuses(&mut self) -> Vec<ProcStatus> {
        let groups = procfs::scan_groups();
        let ticks = procfs::clock_ticks() as f64;
        let now = Instant::now();
        self.procs
            .iter_mut()
            .map(|(name, p)| {
                let usage = p.pgid.and_then(|pg| groups.get(&pg));
                let (rss, cpu) = usage.map(|g| (g.rss_bytes, g.cpu_ticks)).unwrap_or((0, 0));
                if let Some((last, at)) = p.cpu_sample {
                    let secs = now.duration_since(at).as_secs_f64();
                    if secs > 0.05 {
                        p.cpu_percent = (cpu.saturating_sub(last) as f64 / ticks) / secs * 100.0;
                        p.cpu_sample = Some((cpu, now));
                    }
                } else if usage.is_some() {
                    p.cpu_sample = Some((cpu, now));
                }
                let running = p.state.running();
                ProcStatus {
                    name: name.clone(),
                    pid: if running { p.pid.unwrap_or(0) } else { 0 },
                    status: p.state.as_str().into(),
                    uptime_ms: if running { p.started.map(|s| s.elapsed().as_millis() as u64).unwrap_or(0) } else { 0 },
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

    pub(super) fn describe(&mut self, name: &str) -> Option<Describe> {
        let status = self.statuses().into_iter().find(|s| s.name == name)?;
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
