//! Running what the agents wrote: the check command under `sh -c` in a clean environment (no
//! token, no push credentials: only `PATH`, a throwaway `HOME`, `LANG` and what we pass); the
//! operator's after-merge command with the integrator's environment (its `gh` or deploy
//! credentials) less our own `AGENTCOM_*` variables. Each in its own process group killed at the
//! deadline, its output kept in a file of which only the tail is read.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Bytes of output kept (the end of it).
pub const TAIL_BYTES: u64 = 8 * 1024;

/// How a command ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ran {
    pub ok: bool,
    /// `exit status: 1`, `killed after 30 s`...
    pub status: String,
    /// The last [`TAIL_BYTES`] of its output (stdout and stderr together).
    pub tail: String,
}

/// Whose environment a command gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Env {
    /// What the agents wrote: only the clean basics.
    Clean,
    /// The operator's own command: the integrator's environment without `AGENTCOM_*`.
    Operator,
}

/// Runs `cmd` in `dir` with `env` beside the clean basics; never longer than `limit`.
pub fn run(cmd: &str, dir: &Path, env: &[(&str, String)], limit: Duration) -> std::io::Result<Ran> {
    run_as(Env::Clean, cmd, dir, env, limit)
}

/// [`run`] with the environment `base`.
pub fn run_as(base: Env, cmd: &str, dir: &Path, env: &[(&str, String)], limit: Duration) -> std::io::Result<Ran> {
    let home = tempfile::tempdir()?;
    let log = tempfile::tempfile()?;
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut command = Command::new("sh");
    command.arg("-c").arg(cmd).current_dir(dir);
    match base {
        Env::Clean => {
            command.env_clear().env("PATH", path).env("HOME", home.path()).env("LANG", "C.UTF-8");
        }
        Env::Operator => {
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("AGENTCOM_") {
                    command.env_remove(k);
                }
            }
        }
    }
    let mut child = command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .process_group(0)
        .spawn()?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let (ok, status) = match rx.recv_timeout(limit) {
        Ok(Ok(s)) => (s.success(), s.to_string()),
        Ok(Err(e)) => (false, format!("cannot wait for it: {e}")),
        Err(_) => (false, format!("killed after {} ms (its time limit)", limit.as_millis())),
    };
    // Whatever it left running in its group goes with it.
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    Ok(Ran { ok, status, tail: tail(log)? })
}

fn tail(mut f: std::fs::File) -> std::io::Result<String> {
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
    let mut bytes = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_command_keeps_their_credentials_but_not_ours() {
        std::env::set_var("AGENTCOM_TEST_SECRET_TOKEN", "s3cret");
        std::env::set_var("GH_TOKEN_OF_THE_OPERATOR", "gh-creds");
        let dir = tempfile::tempdir().unwrap();
        let env = [("AGENTCOM_MERGED_SHA", "abc".to_string())];
        let r = run_as(Env::Operator, "env", dir.path(), &env, Duration::from_secs(10)).unwrap();
        assert!(r.ok, "{r:?}");
        assert!(r.tail.contains("GH_TOKEN_OF_THE_OPERATOR=gh-creds"), "{}", r.tail);
        assert!(r.tail.contains("AGENTCOM_MERGED_SHA=abc") && !r.tail.contains("s3cret"), "{}", r.tail);
        let r = run("env", dir.path(), &[], Duration::from_secs(10)).unwrap();
        assert!(!r.tail.contains("gh-creds"), "the check gets none of it: {}", r.tail);
    }

    #[test]
    fn a_check_sees_no_secret_and_is_stopped_at_its_limit_with_its_children() {
        std::env::set_var("AGENTCOM_TEST_SECRET_TOKEN", "s3cret");
        let dir = tempfile::tempdir().unwrap();
        let r = run("echo start; env; exit 3", dir.path(), &[("X", "1".into())], Duration::from_secs(10)).unwrap();
        assert!(!r.ok && r.status.contains('3'), "{r:?}");
        assert!(r.tail.contains("X=1") && !r.tail.contains("s3cret"), "{}", r.tail);
        let pid_file = dir.path().join("pid");
        let r = run(
            &format!("sleep 30 & echo $! > {}; wait", pid_file.display()),
            dir.path(),
            &[],
            Duration::from_millis(300),
        )
        .unwrap();
        assert!(!r.ok && r.status.contains("killed after 300 ms"), "{r:?}");
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let gone = (0..200).any(|_| {
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z");
            if alive {
                std::thread::sleep(Duration::from_millis(10));
            }
            !alive
        });
        assert!(gone, "the check's child was killed with it");
        let big = run("yes x | head -c 100000", dir.path(), &[], Duration::from_secs(10)).unwrap();
        assert!(big.ok && big.tail.len() as u64 == TAIL_BYTES, "only the tail is kept");
    }
}
