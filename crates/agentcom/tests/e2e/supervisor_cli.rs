//! The process commands as a new user meets them: `logs` in the order lines were written, a
//! command that cannot run is refused by `start` (and explained by `ps` and `logs` when it
//! fails later), `kill` stops everything, and `--help` describes every argument.

use crate::bin;
use serde_json::Value;
use testkit::{eventually, Supervised};

type R = anyhow::Result<()>;

#[tokio::test]
async fn logs_keep_the_order_the_process_wrote_even_within_one_millisecond() -> R {
    let s = Supervised::new(bin())?;
    // 300 lines in a few writes: many share a millisecond, and "line 10" sorts before "line 9".
    s.ok(&["start", "burst", "--restart", "never", "--", "sh", "-c", "seq 1 300 | sed 's/^/line /'; echo bye >&2"])?;
    s.wait_for("burst", "done", |p| p["status"] == "stopped").await?;
    let out = s.ok(&["logs", "burst", "--lines", "400"])?;
    let nums: Vec<u32> = out
        .lines()
        .filter(|l| l.starts_with("[out] "))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(nums, (1..=300).collect::<Vec<_>>(), "{out}");
    assert!(out.lines().last().unwrap().starts_with("[err] ") && out.ends_with("bye\n"), "{out}");
    Ok(())
}

#[tokio::test]
async fn a_command_that_cannot_run_fails_start_with_the_reason() -> R {
    let s = Supervised::new(bin())?;
    let out = s.run(&["start", "claude-1", "--", "agentcom-not-installed", "sidecar", "--config", "x.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert_eq!(err.trim(), "error: cannot start claude-1: agentcom-not-installed: command not found in PATH");
    assert!(out.stdout.is_empty(), "nothing claims it started");
    assert!(s.ps()?.is_empty(), "nothing registered");
    // A working directory that does not exist says so.
    let out = s.run(&["start", "lost", "--cwd", "/nonexistent/dir", "--", "sleep", "1"]);
    assert_eq!(
        String::from_utf8(out.stderr)?.trim(),
        "error: cannot start lost: working directory /nonexistent/dir does not exist"
    );
    Ok(())
}

#[tokio::test]
async fn a_command_that_later_fails_to_exec_is_explained_by_ps_and_logs() -> R {
    let s = Supervised::new(bin())?;
    let dir = tempfile::tempdir()?;
    let exe = dir.path().join("my-agent");
    std::fs::copy("/bin/sleep", &exe)?;
    s.ok(&["start", "agent", "--max-restarts", "1", "--", exe.to_str().unwrap(), "1000"])?;
    let p = s.wait_for("agent", "online", |p| p["status"] == "online").await?;
    // The binary goes away (an upgrade gone wrong), then the process dies.
    std::fs::remove_file(&exe)?;
    testkit::signal(p["pid"].as_u64().unwrap() as u32, nix::sys::signal::Signal::SIGKILL)?;
    let p = s.wait_for("agent", "errored", |p| p["status"] == "errored").await?;
    let want = format!("{}: no such file", exe.display());
    assert!(p["reason"].as_str().unwrap().contains(&want), "{p}");
    let table = s.ok(&["ps"])?;
    assert!(table.lines().next().unwrap().ends_with("REASON") && table.contains(&want), "{table}");
    let logs = s.ok(&["logs", "agent"])?;
    let line = format!("agentcom: cannot start agent: {want}");
    assert!(logs.lines().any(|l| l.starts_with("[err] ") && l.ends_with(&line)), "{logs}");
    Ok(())
}

#[tokio::test]
async fn kill_stops_every_process_then_the_supervisor() -> R {
    let s = Supervised::new(bin())?;
    s.ok(&["start", "a", "--", "sleep", "1000"])?;
    s.ok(&["start", "b", "--", "sh", "-c", "sleep 1000 & sleep 1000 & wait"])?;
    let a = s.wait_for("a", "online", |p| p["status"] == "online").await?["pid"].as_i64().unwrap() as i32;
    let b = s.wait_for("b", "online", |p| p["status"] == "online").await?["pid"].as_i64().unwrap() as i32;
    let b_group = eventually("b's children", || async {
        let g = Supervised::group(b);
        if g.len() >= 3 {
            Ok(g)
        } else {
            Err(format!("{g:?}"))
        }
    })
    .await?;
    let sup = s.supervisor_pid().unwrap();
    let out = s.ok(&["kill"])?;
    assert_eq!(out.trim(), "stopped 2 processes; the supervisor exits");
    // Answered only once everything was gone, the supervisor included.
    assert!(!testkit::alive(sup), "the supervisor exited");
    assert!(!testkit::alive(a) && b_group.iter().all(|p| !testkit::alive(*p)), "every process of every group stopped");
    assert!(!s.dir().join("supervisor.sock").exists() && !s.dir().join("supervisor.pid").exists());
    let ps = s.run(&["ps"]);
    assert!(String::from_utf8(ps.stderr)?.starts_with("error: no supervisor running"));
    // Killing again is harmless; a new start finds the others listed as stopped.
    assert_eq!(s.ok(&["kill"])?.trim(), "no supervisor running; nothing to stop");
    s.ok(&["start", "c", "--", "sleep", "1000"])?;
    let list = s.ps()?;
    let status = |n: &str| list.iter().find(|p| p["name"] == n).map(|p| p["status"].clone()).unwrap_or(Value::Null);
    assert_eq!((status("a"), status("b")), ("stopped".into(), "stopped".into()));
    Ok(())
}

#[tokio::test]
async fn kill_under_pm2_runs_pm2_kill() -> R {
    let pm2 = testkit::Pm2Home::new()?;
    let mut s = Supervised::new(bin())?;
    pm2.apply(&mut s);
    s.ok(&["start", "napper", "--backend", "pm2", "--", "sleep", "1000"])?;
    let pid = s.ok(&["ps", "--json", "--backend", "pm2"])?;
    let pid = serde_json::from_str::<Vec<Value>>(&pid)?[0]["pid"].as_i64().unwrap() as i32;
    let daemon: i32 = std::fs::read_to_string(pm2.path().join("pm2.pid"))?.trim().parse()?;
    assert!(s.ok(&["kill", "--backend", "pm2"])?.starts_with("pm2 killed"));
    eventually("pm2 and its process to be gone", || async {
        if testkit::alive(pid) || testkit::alive(daemon) {
            Err("alive".into())
        } else {
            Ok(())
        }
    })
    .await
}

/// Every argument of the process, daemons and guard commands has a description, flattened
/// ones included: read from `--help` as a user would.
#[test]
fn help_describes_every_argument() {
    let commands: &[&[&str]] = &[
        &["supervisor"],
        &["start"],
        &["stop"],
        &["restart"],
        &["reload"],
        &["delete"],
        &["flush"],
        &["top"],
        &["startup"],
        &["kill"],
        &["attach"],
        &["send"],
        &["ps"],
        &["describe"],
        &["logs"],
        &["daemons", "plan"],
        &["daemons", "apply"],
        &["daemons", "watch"],
        &["daemons", "install-watcher"],
        &["checkpoint", "save"],
        &["checkpoint", "show"],
        &["checkpoint", "load"],
        &["upgrade"],
        &["rollback"],
        &["guard", "watch"],
    ];
    for cmd in commands {
        let out = std::process::Command::new(bin()).args(*cmd).arg("--help").output().unwrap();
        assert!(out.status.success(), "{cmd:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = help.lines().collect();
        let mut section = "";
        for (i, line) in lines.iter().enumerate() {
            if !line.starts_with(' ') && line.ends_with(':') {
                section = line;
                continue;
            }
            if !(section == "Arguments:" || section == "Options:") {
                continue;
            }
            let entry = line.trim_start();
            let indent = line.len() - entry.len();
            // An entry line: `-x, --flag <V>  Description` or `<NAME>  Description`; clap puts the
            // description on the next, deeper-indented line when the entries are long.
            if indent <= 4 && (entry.starts_with('-') || entry.starts_with('<') || entry.starts_with('[')) {
                let inline = entry.split_once("  ").is_some_and(|(_, d)| !d.trim().is_empty());
                let next = lines.get(i + 1).copied().unwrap_or("");
                let next_line = next.len() - next.trim_start().len() > indent
                    && !next.trim().is_empty()
                    && !next.trim_start().starts_with('[')
                    && !next.trim_start().starts_with('-');
                assert!(inline || next_line, "agentcom {} --help: no description for `{entry}`\n{help}", cmd.join(" "));
            }
        }
    }
}

/// Supervisors started at once on one folder (two commands each launching one): one serves,
/// the others say a supervisor already runs and exit; the pid file names the one that serves,
/// so stopping it stops the folder's supervisor (none is left running unseen).
#[tokio::test]
async fn supervisors_started_at_once_leave_exactly_one_serving() -> R {
    let s = Supervised::new(bin())?;
    let mut children: Vec<std::process::Child> = (0..6)
        .map(|_| {
            s.cmd(&["supervisor"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut refused = 0;
    let mut alive = Vec::new();
    for c in &mut children {
        // The losers exit at once; the winner runs until it is stopped.
        let out = eventually("a started supervisor to serve or give up", || {
            let seen = match c.try_wait() {
                Ok(Some(status)) => Ok(Some(status)),
                Ok(None) if s.supervisor_pid() == Some(c.id() as i32) && s.ps().is_ok() => Ok(None),
                Ok(None) => Err("still starting".to_string()),
                Err(e) => Err(e.to_string()),
            };
            async move { seen }
        })
        .await?;
        match out {
            Some(status) => {
                let mut err = String::new();
                std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err)?;
                assert!(!status.success() && err.contains("already running"), "{status}: {err}");
                refused += 1;
            }
            None => alive.push(c.id()),
        }
    }
    assert_eq!((alive.len(), refused), (1, 5), "{alive:?}");
    s.ok(&["start", "one", "--", "sleep", "300"])?;
    assert_eq!(s.ps()?.len(), 1);
    drop(s);
    for c in &mut children {
        assert!(c.wait()?.code().is_some(), "the supervisor exited when stopped");
    }
    Ok(())
}

/// Ctrl-C twice: a shutdown that waits on a child ignoring its stop signal (for a kill timeout
/// of ten minutes) ends at the second signal, with 128 + its number, and the child is left
/// running for the next supervisor, as after a crash.
#[tokio::test]
async fn a_second_signal_ends_a_slow_shutdown_at_once() -> R {
    use nix::sys::signal::Signal;
    let s = Supervised::new(bin())?;
    let mut daemon = s
        .cmd(&["supervisor", "--log-format", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stderr = daemon.stderr.take().unwrap();
    let pid = daemon.id() as i32;
    eventually("the supervisor to serve", || {
        let up = s.supervisor_pid() == Some(pid) && s.ps().is_ok();
        async move {
            if up {
                Ok(())
            } else {
                Err("starting".to_string())
            }
        }
    })
    .await?;
    s.ok(&["start", "stubborn", "--kill-timeout-ms", "600000", "--", "sh", "-c", "trap '' TERM; sleep 1000"])?;
    let child = s.wait_for("stubborn", "online", |p| p["status"] == "online").await?["pid"].as_i64().unwrap() as i32;

    testkit::signal(pid as u32, Signal::SIGINT)?;
    let first = tokio::task::spawn_blocking(move || testkit::watch_logs(stderr, logs, "shutting down", "signal"));
    assert_eq!(first.await??, "SIGINT");
    assert!(testkit::alive(child), "the child ignores SIGTERM: the shutdown waits on it");
    testkit::signal(pid as u32, Signal::SIGINT)?;
    let status = testkit::wait_exit(&mut daemon)?;
    let left = testkit::alive(child);
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child), Signal::SIGKILL)?;
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(left, "a forced exit leaves the child for the next supervisor");
    Ok(())
}
