//! What the benchmarks read of processes in `/proc` beyond RSS and CPU (in `main.rs`): the named
//! daemons' CPU over a window, memory from `smaps_rollup` (RSS, PSS, private), the CPU of reaped
//! children (git, wakes), a process's descendants, and processes a run left behind.

use crate::cpu_secs;
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;

/// A daemon the benchmark watches, by name.
pub struct Daemon {
    pub name: String,
    pub pid: u32,
}

impl Daemon {
    pub fn new(name: impl Into<String>, pid: u32) -> Daemon {
        Daemon { name: name.into(), pid }
    }
}

/// Each daemon's CPU seconds so far (0 for one that is gone).
pub fn cpu_now(daemons: &[Daemon]) -> Vec<f64> {
    daemons.iter().map(|d| cpu_secs(Some(d.pid)).unwrap_or(0.0)).collect()
}

/// CPU seconds each daemon used over a window, per minute.
pub fn cpu_per_minute(daemons: &[Daemon], before: &[f64], window: Duration) -> Vec<f64> {
    daemons
        .iter()
        .zip(before)
        .map(|(d, b)| (cpu_secs(Some(d.pid)).unwrap_or(*b) - b) * 60.0 / window.as_secs_f64())
        .collect()
}

/// Memory of a process from `/proc/PID/smaps_rollup`, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss: u64,
    /// Proportional set size: each shared page divided by the processes that map it.
    pub pss: u64,
    /// Pages only this process maps (`Private_Clean` + `Private_Dirty`).
    pub private: u64,
    /// Of the PSS, what is file-backed (the binary's code) and anonymous (heap, stacks).
    pub pss_file: u64,
    pub pss_anon: u64,
}

impl Memory {
    pub fn max(self, o: Memory) -> Memory {
        Memory {
            rss: self.rss.max(o.rss),
            pss: self.pss.max(o.pss),
            private: self.private.max(o.private),
            pss_file: self.pss_file.max(o.pss_file),
            pss_anon: self.pss_anon.max(o.pss_anon),
        }
    }

    /// `RSS 9.1 MB, PSS 4.6 MB (file 3.1, anon 1.5), private 1.8 MB`.
    pub fn show(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        format!(
            "RSS {:.1} MB, PSS {:.1} MB (file {:.1}, anon {:.1}), private {:.1} MB",
            mb(self.rss),
            mb(self.pss),
            mb(self.pss_file),
            mb(self.pss_anon),
            mb(self.private)
        )
    }
}

pub fn memory(pid: u32) -> Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).context("smaps_rollup")?;
    let mut m = Memory::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(kb)) = (words.next(), words.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        let b = kb * 1024;
        match key {
            "Rss:" => m.rss = b,
            "Pss:" => m.pss = b,
            "Pss_File:" => m.pss_file = b,
            "Pss_Anon:" => m.pss_anon = b,
            "Private_Clean:" | "Private_Dirty:" => m.private += b,
            _ => {}
        }
    }
    Ok(m)
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn ticks_per_sec() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64
}

/// CPU seconds of a process's children it has waited for (`cutime` + `cstime`): the git
/// commands and wakes a sidecar ran.
pub fn children_cpu_secs(pid: u32) -> f64 {
    let Some(f) = stat_fields(pid) else { return 0.0 };
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // cutime and cstime are fields 16 and 17 of the line: 13 and 14 after the name.
    (t(13) + t(14)) / ticks_per_sec()
}

/// Every live process (pid, parent pid).
fn all_processes() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let f = stat_fields(pid)?;
            // state is field 3 (0 after the name), ppid field 4; zombies are not running.
            (f.first()? != "Z").then_some(())?;
            Some((pid, f.get(1)?.parse().ok()?))
        })
        .collect()
}

/// The live descendants of `pid` (children, their children, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let all = all_processes();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, _) in all.iter().filter(|(_, parent)| *parent == p) {
            out.push(*child);
            frontier.push(*child);
        }
    }
    out
}

/// The command line of a process, for messages.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
        .unwrap_or_default()
}

/// Processes whose working directory or command line is under `root` (what a run started there
/// and left running), with their command lines. Only this user's processes can be read.
pub fn left_under(root: &Path) -> Vec<(u32, String)> {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let shown = root.display().to_string();
    let me = std::process::id();
    all_processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
            cwd.is_some_and(|c| c.starts_with(&root)) || cmdline(*pid).contains(&shown)
        })
        .map(|pid| (pid, cmdline(pid)))
        .collect()
}

/// Kills (SIGKILL) what a run left under `root` and says so; returns how many there were.
pub fn reap_left_under(root: &Path) -> usize {
    let left = left_under(root);
    for (pid, cmd) in &left {
        println!("LEFT BEHIND: pid {pid}: {cmd} (killed)");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
    left.len()
}
