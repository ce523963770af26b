//! Stopping a whole process group: the signal, then SIGKILL after a timeout, and back only when
//! no live member is left (zombies do not count).

use crate::procfs;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// Sends `signal` to group `pgid`, SIGKILL after `timeout`, and returns when no process of the
/// group is alive. A group that is already gone returns at once.
pub async fn stop_group(pgid: i32, signal: Signal, timeout: Duration) {
    let pg = Pid::from_raw(pgid);
    if killpg(pg, signal).is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut killed = false;
    while procfs::group_alive(pgid) {
        if !killed && tokio::time::Instant::now() >= deadline {
            tracing::warn!(pgid, "kill timeout passed; SIGKILL to the group");
            let _ = killpg(pg, Signal::SIGKILL);
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Blocking variant for start-up, before a runtime serves anything: `signal`, up to `timeout`
/// for the group to go, then SIGKILL.
pub fn kill_group_now(pgid: i32, signal: Signal, timeout: Duration) {
    let pg = Pid::from_raw(pgid);
    let _ = killpg(pg, signal);
    let deadline = Instant::now() + timeout;
    while procfs::group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = killpg(pg, Signal::SIGKILL);
}
