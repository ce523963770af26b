//! Reading /proc: the processes of a group, their memory and CPU time.

use std::collections::HashMap;

#[derive(Debug, Default, Clone)]
pub struct GroupUsage {
    pub pids: Vec<i32>,
    pub rss_bytes: u64,
    /// utime + stime of every member, in clock ticks.
    pub cpu_ticks: u64,
}

pub struct Stat {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub state: char,
    pub cpu_ticks: u64,
    pub start_ticks: u64,
    pub rss_pages: u64,
}

pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64
}

pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        cpu_ticks: num(11)? + num(12)?,
        start_ticks: num(19)?,
        rss_pages: num(21)?,
    })
}

/// Every live (non-zombie) process on the machine, grouped by process group.
pub fn scan_groups() -> HashMap<i32, GroupUsage> {
    let page = page_size();
    let mut out: HashMap<i32, GroupUsage> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Some(s) = stat(pid) else { continue };
        if s.state == 'Z' {
            continue;
        }
        let g = out.entry(s.pgrp).or_default();
        g.pids.push(pid);
        g.rss_bytes += s.rss_pages * page;
        g.cpu_ticks += s.cpu_ticks;
    }
    out
}

/// Whether any process of group `pgid` is still alive. Zombies do not count: they are dead
/// and only wait for their parent (for orphans, PID 1) to collect them.
pub fn group_alive(pgid: i32) -> bool {
    if nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_err() {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else { return true };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(stat)
        .any(|s| s.pgrp == pgid && s.state != 'Z')
}

/// Whether a process of group `pgid` has `key=value` in its environment: proof that the group
/// is ours after a restart, when the pid may have been reused.
pub fn group_has_env(pgid: i32, key: &str, value: &str) -> bool {
    live_pids().any(|pid| stat(pid).is_some_and(|s| s.pgrp == pgid) && env_has(pid, &[(key, value)]))
}

/// The process groups with a live member whose environment holds every `key=value` pair: how
/// a restarted daemon finds what it started when it had no chance to record the pid.
pub fn groups_with_env(pairs: &[(&str, &str)]) -> Vec<i32> {
    let mut groups: Vec<i32> = live_pids()
        .filter(|pid| env_has(*pid, pairs))
        .filter_map(stat)
        .filter(|s| s.state != 'Z')
        .map(|s| s.pgrp)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

fn live_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
}

fn env_has(pid: i32, pairs: &[(&str, &str)]) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    pairs.iter().all(|(k, v)| {
        let needle = format!("{k}={v}");
        env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
    })
}

/// Milliseconds since process `pid` started.
pub fn uptime_ms(pid: i32) -> Option<u64> {
    let s = stat(pid)?;
    let boot_uptime: f64 = std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    let started = s.start_ticks as f64 / clock_ticks() as f64;
    Some(((boot_uptime - started).max(0.0) * 1000.0) as u64)
}

pub fn rss_bytes(pid: i32) -> Option<u64> {
    Some(stat(pid)?.rss_pages * page_size())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn sees_our_own_group() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        let groups = scan_groups();
        assert!(groups[&s.pgrp].pids.contains(&me));
        assert!(groups[&s.pgrp].rss_bytes > 0);
        assert!(group_alive(s.pgrp));
        assert!(uptime_ms(me).is_some());
    }

    #[test]
    fn finds_groups_by_environment() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .env("PROCFS_TEST_MARK", "x1")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        // `spawn` returns once exec has begun, which can be a moment before the kernel has set
        // up the new environment that /proc shows.
        testkit::eventually_blocking("the child's environment in /proc", || {
            group_has_env(pgid, "PROCFS_TEST_MARK", "x1").then_some(()).ok_or_else(|| "not yet".to_string())
        })
        .unwrap();
        assert!(!group_has_env(pgid, "PROCFS_TEST_MARK", "x2"));
        assert_eq!(groups_with_env(&[("PROCFS_TEST_MARK", "x1")]), vec![pgid]);
        assert!(groups_with_env(&[("PROCFS_TEST_MARK", "x1"), ("PROCFS_OTHER", "y")]).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(groups_with_env(&[("PROCFS_TEST_MARK", "x1")]).is_empty());
    }
}
