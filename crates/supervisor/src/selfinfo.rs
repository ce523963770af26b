//! Self-awareness for a supervised program (the sidecar): which supervisor runs it, under what
//! name, and its status, uptime, restart count and memory as that supervisor sees them.

use crate::client::Client;
use crate::pm2;
use osutil::procfs;
use proto::control::{Request, Response};
use proto::ProcessInfo;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub enum Supervisor {
    Native { name: String, socket: PathBuf },
    Pm2 { name: String },
    Systemd { unit: String },
    None,
}

impl Supervisor {
    pub fn kind(&self) -> &'static str {
        match self {
            Supervisor::Native { .. } => "native",
            Supervisor::Pm2 { .. } => "pm2",
            Supervisor::Systemd { .. } => "systemd",
            Supervisor::None => "none",
        }
    }
    /// Exiting hands the restart to the supervisor; without one, exiting would stop the agent.
    pub fn restarts_us(&self) -> bool {
        !matches!(self, Supervisor::None)
    }
}

/// Finds our supervisor: `AGENTCOM_PROCESS_NAME` (native) or `PM2_PROCESS_NAME`, else pm2's own
/// `name` / `pm_id` env, else `pm2 jlist` matched on our pid or an ancestor's, else systemd's
/// `INVOCATION_ID`, else none.
pub fn detect() -> Supervisor {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(name) = var("AGENTCOM_PROCESS_NAME") {
        if let Some(socket) = var("AGENTCOM_SUPERVISOR_SOCKET") {
            return Supervisor::Native { name, socket: socket.into() };
        }
        if var("pm_id").is_some() {
            return Supervisor::Pm2 { name };
        }
    }
    if let Some(name) = var("PM2_PROCESS_NAME") {
        return Supervisor::Pm2 { name };
    }
    if let (Some(name), Some(_)) = (var("name"), var("pm_id")) {
        return Supervisor::Pm2 { name };
    }
    if let Some(name) = pm2_by_ancestry() {
        return Supervisor::Pm2 { name };
    }
    if var("INVOCATION_ID").is_some() {
        let unit = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|c| c.lines().last().and_then(|l| l.rsplit('/').next()).map(str::to_string))
            .unwrap_or_else(|| "unknown.service".into());
        return Supervisor::Systemd { unit };
    }
    Supervisor::None
}

/// Whether a pm2 daemon runs: `pm2 jlist` would start one otherwise, as a side effect.
pub fn pm2_daemon_running() -> bool {
    let home = std::env::var_os("PM2_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pm2")));
    let Some(pid) =
        home.and_then(|h| std::fs::read_to_string(h.join("pm2.pid")).ok()).and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return false;
    };
    procfs::stat(pid).is_some_and(|s| s.state != 'Z')
}

/// pm2 may list a `bash -c` wrapper's pid rather than ours: match any ancestor.
fn pm2_by_ancestry() -> Option<String> {
    which("pm2")?;
    if !pm2_daemon_running() {
        return None;
    }
    let list = pm2::jlist().ok()?;
    let mut pid = std::process::id() as i32;
    for _ in 0..8 {
        if let Some(e) = list.iter().find(|e| e["pid"].as_i64() == Some(pid as i64)) {
            return e["name"].as_str().map(str::to_string);
        }
        pid = procfs::stat(pid)?.ppid;
        if pid <= 1 {
            break;
        }
    }
    None
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(bin)).find(|p| p.is_file())
}

/// Our process info as the supervisor reports it (falls back to our own numbers).
pub fn process_info(s: &Supervisor) -> ProcessInfo {
    let me = std::process::id() as i32;
    let mut info = ProcessInfo {
        supervisor: Some(s.kind().into()),
        name: None,
        status: Some("online".into()),
        uptime_ms: procfs::uptime_ms(me),
        restart_count: None,
        memory_bytes: procfs::rss_bytes(me),
    };
    match s {
        Supervisor::Native { name, socket } => {
            info.name = Some(name.clone());
            let dir = socket.parent().map(PathBuf::from).unwrap_or_default();
            if let Ok(Response::Described(d)) =
                Client::connect(&dir).and_then(|mut c| c.call(&Request::Describe { name: name.clone() }))
            {
                info.status = Some(d.status.status);
                info.uptime_ms = Some(d.status.uptime_ms);
                info.restart_count = Some(d.status.restart_count);
                info.memory_bytes = Some(d.status.memory_bytes);
            }
        }
        Supervisor::Pm2 { name } => {
            info.name = Some(name.clone());
            let now = osutil::clock::epoch_ms();
            if let Some(e) = pm2::jlist().ok().and_then(|l| l.into_iter().find(|e| e["name"] == name.as_str())) {
                let st = pm2::status(&e, now);
                info.status = Some(st.status);
                info.uptime_ms = Some(st.uptime_ms);
                info.restart_count = Some(st.restart_count);
                info.memory_bytes = Some(st.memory_bytes);
            }
        }
        Supervisor::Systemd { unit } => info.name = Some(unit.clone()),
        Supervisor::None => {}
    }
    info
}
