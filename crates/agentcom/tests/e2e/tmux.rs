//! Interactive programs under the supervisor, in its private tmux server (the real tmux): a
//! program that needs a terminal runs, receives `agentcom send`, is restarted after a SIGKILL,
//! its output is in `agentcom logs`, `agentcom attach` puts a terminal on it, `ps` marks it,
//! and the guard upgrades and rolls back a tmux process like any other.

use crate::bin;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use testkit::{eventually, file_says, Supervised};

type R = anyhow::Result<()>;

/// Refuses to run without a terminal; then echoes every line it reads.
const INTERACTIVE: &str = r#"if [ -t 0 ] && [ -t 1 ]; then echo "tty: yes"; else echo "tty: no"; exit 3; fi
while read line; do echo "got: $line"; done
"#;

fn interactive(s: &Supervised) -> anyhow::Result<()> {
    let script = s.dir().with_file_name("interactive.sh");
    std::fs::write(&script, INTERACTIVE)?;
    s.ok(&["start", "chat", "--tmux", "--", "sh", script.to_str().unwrap()])?;
    Ok(())
}

async fn logs_show(s: &Supervised, name: &str, want: &str) -> anyhow::Result<String> {
    eventually(&format!("{want:?} in the logs of {name}"), || async {
        let out = s.ok(&["logs", name, "--lines", "100"]).map_err(|e| e.to_string())?;
        if out.lines().any(|l| l.ends_with(want)) {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await
}

/// What the supervisor logged, what its tmux server holds and what became of `pid`: for the
/// failure message of a restart that did not come.
fn diagnosis(s: &Supervised, pid: u64) -> String {
    let log = std::fs::read_to_string(s.dir().join("supervisor.log")).unwrap_or_default();
    let sock = s.dir().join("tmux.sock");
    let panes = Command::new("tmux")
        .args(["-S", sock.to_str().unwrap(), "list-panes", "-a", "-F"])
        .arg("#{pane_id} #{pane_pid} dead=#{pane_dead} status=#{pane_dead_status} signal=#{pane_dead_signal}")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
        .unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| e.to_string());
    format!("supervisor.log:\n{log}\ntmux panes:\n{panes}\n/proc/{pid}/stat: {stat}")
}

#[tokio::test]
async fn an_interactive_program_runs_receives_send_and_comes_back_after_sigkill() -> R {
    let s = Supervised::new(bin())?;
    interactive(&s)?;
    let p = s.wait_for("chat", "online", |p| p["status"] == "online").await?;
    assert_eq!(p["tmux"], true, "ps --json marks it");
    let table = s.ok(&["ps"])?;
    let row = table.lines().find(|l| l.split_whitespace().nth(1) == Some("chat")).unwrap();
    assert!(row.split_whitespace().nth(2) == Some("tmux"), "{table}");
    logs_show(&s, "chat", "tty: yes").await?;
    assert_eq!(s.ok(&["send", "chat", "hello there"])?.trim(), "sent 11 bytes to chat");
    logs_show(&s, "chat", "got: hello there").await?;
    // SIGKILL the program: the supervisor sees the exit (pane_dead_status) and restarts it.
    let pid = p["pid"].as_u64().unwrap();
    testkit::signal(pid as u32, nix::sys::signal::Signal::SIGKILL)?;
    let again = s
        .wait_for("chat", "restarted", |p| p["status"] == "online" && p["pid"].as_u64().is_some_and(|n| n != pid))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", diagnosis(&s, pid)))?;
    let log = std::fs::read_to_string(s.dir().join("supervisor.log")).unwrap_or_default();
    assert_eq!((again["restart_count"].as_u64(), again["exit_code"].as_i64()), (Some(1), Some(137)), "{again}\n{log}");
    s.ok(&["send", "chat", "second life"])?;
    let out = logs_show(&s, "chat", "got: second life").await?;
    assert_eq!(out.lines().filter(|l| l.ends_with("tty: yes")).count(), 2, "{out}");
    // A stop ends the program and its session.
    s.ok(&["stop", "chat"])?;
    assert!(!testkit::alive(again["pid"].as_i64().unwrap() as i32));
    let e = s.run(&["send", "chat", "x"]);
    assert!(String::from_utf8(e.stderr)?.contains("chat is stopped"));
    Ok(())
}

#[tokio::test]
async fn an_exit_status_is_read_from_the_pane_and_the_policy_applies() -> R {
    let s = Supervised::new(bin())?;
    s.ok(&["start", "quits", "--tmux", "--restart", "on-failure", "--", "sh", "-c", "echo bye; exit 0"])?;
    let p = s.wait_for("quits", "stopped", |p| p["status"] == "stopped").await?;
    assert_eq!(p["exit_code"], 0);
    logs_show(&s, "quits", "bye").await?;
    s.ok(&["start", "fails", "--tmux", "--restart", "never", "--", "sh", "-c", "exit 5"])?;
    let p = s.wait_for("fails", "stopped", |p| p["status"] == "stopped").await?;
    assert_eq!(p["exit_code"], 5);
    // Its environment reaches the pane, and never a command line another user could read.
    s.ok(&[
        "start",
        "envy",
        "--tmux",
        "--env",
        "SECRET=hunter2",
        "--",
        "sh",
        "-c",
        "echo \"$AGENTCOM_PROCESS_NAME $SECRET\"; exec sleep 1000",
    ])?;
    logs_show(&s, "envy", "envy hunter2").await?;
    let sock = s.dir().join("tmux.sock");
    let server =
        Command::new("tmux").args(["-S", sock.to_str().unwrap(), "display-message", "-p", "#{pid}"]).output()?;
    let server = String::from_utf8(server.stdout)?.trim().to_string();
    let cmdline = std::fs::read(format!("/proc/{server}/cmdline"))?;
    assert!(!String::from_utf8_lossy(&cmdline).contains("hunter2"), "{}", String::from_utf8_lossy(&cmdline));
    // Typing into a process that is not in tmux says so.
    s.ok(&["start", "plain", "--", "sleep", "1000"])?;
    let e = s.run(&["send", "plain", "x"]);
    assert_eq!(String::from_utf8(e.stderr)?.trim(), "error: plain does not run in tmux (start it with --tmux)");
    Ok(())
}

#[tokio::test]
async fn attach_puts_a_terminal_on_the_private_server() -> R {
    let s = Supervised::new(bin())?;
    interactive(&s)?;
    s.wait_for("chat", "online", |p| p["status"] == "online").await?;
    // A person's terminal: a pane of another tmux server (the test's own), running attach.
    let outer = s.dir().with_file_name("outer.sock");
    let attach = format!("AGENTCOM_SUPERVISOR_DIR='{}' {} attach chat", s.dir().display(), bin().display());
    let ok = Command::new("tmux")
        .args(["-S", outer.to_str().unwrap(), "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40", &attach])
        .status()?;
    assert!(ok.success());
    let private = s.dir().join("tmux.sock");
    let clients = eventually("a client on the supervisor's tmux server", || async {
        let out = Command::new("tmux")
            .args(["-S", private.to_str().unwrap(), "list-clients", "-F", "#{session_name}"])
            .output();
        match out {
            Ok(o) if !o.stdout.is_empty() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let _ = Command::new("tmux").args(["-S", outer.to_str().unwrap(), "kill-server"]).status();
    assert!(clients?.starts_with("chat_"), "attached to the process's session");
    let e = s.run(&["attach", "nobody"]);
    assert!(!e.status.success());
    Ok(())
}

#[tokio::test]
async fn tmux_needs_the_native_supervisor() -> R {
    let pm2 = testkit::Pm2Home::new()?;
    let mut s = Supervised::new(bin())?;
    pm2.apply(&mut s);
    let e = s.run(&["start", "t", "--tmux", "--backend", "pm2", "--", "sleep", "10"]);
    assert!(String::from_utf8(e.stderr)?.contains("tmux processes need the native supervisor"));
    Ok(())
}

#[tokio::test]
async fn the_guard_upgrades_and_rolls_back_a_tmux_process() -> R {
    let s = Supervised::new(bin())?;
    let root = tempfile::tempdir()?;
    let repo = root.path().join("repo");
    let health = root.path().join("health");
    // The agent needs its terminal; a `crash` version exits at once.
    let agent = format!(
        "[ -t 0 ] || exit 9\nV=$(cat VERSION)\ncase \"$V\" in crash*) exit 1 ;; esac\necho \"ok $V\" > '{}'\nexec sleep 100000\n",
        health.display()
    );
    testkit::git::versioned_agent(&repo, &agent)?;
    s.ok(&[
        "start",
        "agent",
        "--tmux",
        "--cwd",
        repo.to_str().unwrap(),
        "--min-uptime-ms",
        "1000",
        "--max-restarts",
        "2",
        "--",
        "sh",
        "agent.sh",
    ])?;
    let branch = |name: &str, v: &str| testkit::git::version_branch(&repo, name, v).unwrap();
    file_says("v1 healthy", &health, "ok 1").await?;
    let upgrade = |b: &str| -> anyhow::Result<Value> {
        let check = format!("grep -qx \"ok $(cat VERSION)\" '{}'", health.display());
        let out = s
            .cmd(&[
                "upgrade",
                "--repo",
                repo.to_str().unwrap(),
                "--process",
                "agent",
                "--branch",
                b,
                "--test",
                "true",
                "--health",
                &check,
                "--health-timeout",
                "4s",
                "--stable-for",
                "300ms",
                "--check-interval",
                "50ms",
                "--state-dir",
                root.path().join("state").to_str().unwrap(),
                "--json",
            ])
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    branch("feature/v2", "2");
    let r = upgrade("feature/v2")?;
    assert_eq!(r["outcome"], "upgraded", "{r:#}");
    file_says("v2 healthy", &health, "ok 2").await?;
    branch("feature/crash", "crash-3");
    let r = upgrade("feature/crash")?;
    assert_eq!(r["outcome"], "rolled-back", "{r:#}");
    file_says("v2 healthy again", &health, "ok 2").await?;
    let p = s.proc("agent")?;
    assert_eq!((p["status"].as_str(), p["tmux"].as_bool()), (Some("online"), Some(true)));
    Ok(())
}

/// Waits for `file` to hold something, and returns it.
async fn written(file: &Path) -> anyhow::Result<String> {
    eventually(&format!("{} written", file.display()), || async {
        match std::fs::read_to_string(file) {
            Ok(s) if !s.is_empty() => Ok(s),
            Ok(_) => Err("empty".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

#[tokio::test]
async fn arguments_that_end_a_tmux_command_are_only_arguments() -> R {
    let s = Supervised::new(bin())?;
    let temp = s.dir().with_file_name("work");
    std::fs::create_dir_all(&temp)?;
    let pwned = temp.join("pwned");
    let touch = format!("touch '{}'", pwned.display());
    // `;` ends a tmux command (what follows it ran as tmux commands), and so does any word
    // ending in one (`find -exec rm {} ';'` was cut short): each must reach the program as is.
    let cases: [(&str, &[&str]); 2] =
        [("semi", &["a", ";", "run-shell", &touch]), ("ends", &["{}", ";", "b;", "c\\;"])];
    for (name, words) in cases {
        let out = temp.join(name);
        let script = format!("printf '%s|' \"$@\" > '{}'; exec sleep 1000", out.display());
        let mut argv = vec!["start", name, "--tmux", "--", "sh", "-c", &script, "x"];
        argv.extend(words);
        s.ok(&argv)?;
        let got = written(&out).await?;
        let want: String = words.iter().map(|w| format!("{w}|")).collect();
        assert_eq!(got, want, "{name}: the program's arguments");
    }
    assert!(!pwned.exists(), "an argument ran as a tmux command");
    Ok(())
}

#[tokio::test]
async fn a_working_directory_is_a_path_not_a_tmux_format() -> R {
    let s = Supervised::new(bin())?;
    let temp = s.dir().with_file_name("work");
    // `#(...)` would run a command (in the supervisor's folder, the temp dir) and `#{...}` would
    // expand to something else; both are plain characters of a folder's name.
    for (name, dir) in [("job", "d#(touch pwned)"), ("fmt", "d#{pane_pid}")] {
        let cwd = temp.join(dir);
        std::fs::create_dir_all(&cwd)?;
        let out = temp.join(format!("{name}.pwd"));
        let script = format!("pwd > '{}'; exec sleep 1000", out.display());
        s.ok(&["start", name, "--tmux", "--cwd", cwd.to_str().unwrap(), "--", "sh", "-c", &script])?;
        let got = written(&out).await?;
        assert_eq!(got.trim_end(), cwd.display().to_string(), "{name} runs in its folder");
    }
    assert!(!s.dir().with_file_name("pwned").exists(), "the folder's name ran as a command");
    Ok(())
}

#[tokio::test]
async fn a_lone_command_word_means_the_same_with_and_without_tmux() -> R {
    let s = Supervised::new(bin())?;
    let temp = s.dir().with_file_name("work");
    std::fs::create_dir_all(&temp)?;
    let mut errors = Vec::new();
    for (name, tmux) in [("native", false), ("tmuxed", true)] {
        let made = temp.join(name);
        let word = format!("touch {}", made.display());
        let mut argv = vec!["start", name];
        if tmux {
            argv.push("--tmux");
        }
        argv.extend(["--", word.as_str()]);
        let out = s.run(&argv);
        assert!(!out.status.success(), "{name}: one word with a space is not a command");
        errors.push(String::from_utf8(out.stderr)?.trim().replace(name, "NAME"));
        assert!(!made.exists(), "{name}: the word went through a shell");
    }
    assert_eq!(errors[0], errors[1], "the same command fails the same way");
    assert!(errors[0].ends_with("/work/NAME: no such file"), "{}", errors[0]);
    Ok(())
}
