//! pm2's habits, as someone who knows pm2 reaches for them: one supervisor per user wherever a
//! command runs, `ls`/`list`/`status`, `all` and numeric ids, `start` of a known name, `reload`
//! without a gap, `logs --err/--out` and `logs all`, `flush`, `describe` as a table, and a `ps`
//! that shows no stale exit code and no figures for a stopped process. Also the client's admin
//! token found in the user's home.

use crate::bin;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use testkit::{eventually, Supervised};

type R = anyhow::Result<()>;

/// A user of their own: a temp `HOME`, commands run from any folder with no
/// `AGENTCOM_SUPERVISOR_DIR`; their supervisor is killed when dropped.
struct User {
    home: tempfile::TempDir,
}

impl User {
    fn new() -> anyhow::Result<User> {
        Ok(User { home: tempfile::tempdir()? })
    }

    fn run_in(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .current_dir(cwd)
            .env("HOME", self.home.path())
            .env_remove("AGENTCOM_SUPERVISOR_DIR")
            .env_remove("AGENTCOM_DATA_DIR")
            .env_remove("AGENTCOM_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run agentcom")
    }

    fn sup_dir(&self) -> PathBuf {
        self.home.path().join(".agentcom/supervisor")
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = self.run_in(self.home.path(), &["kill"]);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn one_supervisor_per_user_wherever_a_command_runs() -> R {
    let user = User::new()?;
    let (here, there) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let out = user.run_in(here.path(), &["start", "napper", "--", "sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(user.sup_dir().join("supervisor.sock").exists(), "in ~/.agentcom/supervisor");
    assert!(!here.path().join("agentcom-data").exists(), "nothing in the folder it ran from");
    // From another folder, the same supervisor answers.
    let out = user.run_in(there.path(), &["ps", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(list.len(), 1, "{}", text(&out.stderr));
    assert_eq!(list[0]["name"], "napper");
    // AGENTCOM_SUPERVISOR_DIR still says otherwise.
    let other = there.path().join("sup");
    let out = Command::new(bin())
        .args(["ps"])
        .env("HOME", user.home.path())
        .env("AGENTCOM_SUPERVISOR_DIR", &other)
        .output()?;
    assert!(text(&out.stderr).starts_with("error: no supervisor running"), "{}", text(&out.stderr));
    Ok(())
}

#[tokio::test]
async fn a_local_hubs_admin_token_is_found_in_the_users_home() -> R {
    let user = User::new()?;
    let data = user.home.path().join(".agentcom/hub");
    let hub = testkit::Hub::start_in(bin(), &data, &testkit::fast_config())?;
    std::fs::write(data.join("admin.token"), format!("{}\n", hub.admin_token))?;
    let elsewhere = tempfile::tempdir()?;
    let mut c = Command::new(bin());
    c.args(["agents", "--url", &hub.url()]).current_dir(elsewhere.path()).env("HOME", user.home.path());
    let out = c.env_remove("AGENTCOM_TOKEN").env_remove("AGENTCOM_DATA_DIR").output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    Ok(())
}

#[tokio::test]
async fn ls_list_and_status_are_ps() -> R {
    let s = Supervised::new(bin())?;
    s.ok(&["start", "a", "--", "sleep", "1000"])?;
    let ps: Vec<Value> = serde_json::from_str(&s.ok(&["ps", "--json"])?)?;
    for alias in ["ls", "list", "status"] {
        let got: Vec<Value> = serde_json::from_str(&s.ok(&[alias, "--json"])?)?;
        assert_eq!((got.len(), &got[0]["name"], &got[0]["id"]), (1, &ps[0]["name"], &ps[0]["id"]), "{alias}");
        assert!(s.ok(&[alias])?.starts_with("ID  NAME"), "{alias}");
    }
    Ok(())
}

async fn online(s: &Supervised, name: &str) -> anyhow::Result<Value> {
    s.wait_for(name, "online", |p| p["status"] == "online").await
}

#[tokio::test]
async fn all_and_numeric_ids_name_processes_and_ids_survive_a_supervisor_restart() -> R {
    let s = Supervised::new(bin())?;
    for name in ["a", "b", "c"] {
        s.ok(&["start", name, "--", "sh", "-c", &format!("echo {name}-out; echo {name}-err >&2; exec sleep 1000")])?;
    }
    let ids: Vec<(String, u64)> =
        s.ps()?.iter().map(|p| (p["name"].as_str().unwrap().to_string(), p["id"].as_u64().unwrap())).collect();
    assert_eq!(ids, [("a".into(), 0), ("b".into(), 1), ("c".into(), 2)]);
    let table = s.ok(&["ps"])?;
    assert!(table.lines().nth(2).unwrap().starts_with("1   b "), "{table}");
    assert_eq!(s.ok(&["stop", "1"])?.trim(), "stopped b");
    assert_eq!(s.proc("b")?["status"], "stopped");
    // Every process's log, each line with its name.
    for name in ["a", "c"] {
        online(&s, name).await?;
    }
    let logs = eventually("every process's lines", || async {
        let out = s.ok(&["logs", "all"]).map_err(|e| e.to_string())?;
        let want = ["a | [out]", "a | [err]", "b | [out]", "c | [out]", "c | [err]"];
        if want.iter().all(|w| out.lines().any(|l| l.starts_with(w))) {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await?;
    assert!(logs.lines().all(|l| l.contains(" | [")), "{logs}");
    let err_only = s.ok(&["logs", "0", "--err"])?;
    assert!(err_only.lines().count() == 1 && err_only.trim_end().ends_with("a-err"), "{err_only}");
    let out_only = s.ok(&["logs", "a", "--out"])?;
    assert!(out_only.lines().count() == 1 && out_only.trim_end().ends_with("a-out"), "{out_only}");
    // `restart all` starts every process again, b included; ids stay after a supervisor restart.
    s.ok(&["restart", "all"])?;
    let sup = s.supervisor_pid().unwrap();
    s.ok(&["kill"])?;
    assert!(!testkit::alive(sup));
    s.ok(&["start", "d", "--", "sleep", "1000"])?;
    let ids: Vec<(String, u64)> =
        s.ps()?.iter().map(|p| (p["name"].as_str().unwrap().to_string(), p["id"].as_u64().unwrap())).collect();
    assert_eq!(ids, [("a".into(), 0), ("b".into(), 1), ("c".into(), 2), ("d".into(), 3)]);
    // Deleted, an id is free again; a number that is no id is refused, as a name.
    s.ok(&["delete", "0"])?;
    s.ok(&["start", "e", "--", "sleep", "1000"])?;
    assert_eq!(s.proc("e")?["id"], 0);
    let out = s.run(&["stop", "99999999999999999999"]);
    assert_eq!(text(&out.stderr).trim(), "error: no process named 99999999999999999999");
    let out = s.run(&["start", "all", "--", "sleep", "1"]);
    assert!(text(&out.stderr).contains("\"all\" means every process"), "{}", text(&out.stderr));
    assert_eq!(s.ok(&["delete", "all"])?.lines().count(), 4);
    assert!(s.ps()?.is_empty());
    Ok(())
}

#[tokio::test]
async fn start_of_a_known_name_starts_it_unless_it_is_online() -> R {
    let s = Supervised::new(bin())?;
    s.ok(&["start", "napper", "--", "sleep", "1000"])?;
    let pid = online(&s, "napper").await?["pid"].clone();
    assert_eq!(s.ok(&["start", "napper"])?.trim(), "napper is already online");
    assert_eq!(s.proc("napper")?["pid"], pid, "left alone");
    s.ok(&["stop", "napper"])?;
    assert_eq!(s.ok(&["start", "napper"])?.trim(), "started napper");
    assert_ne!(online(&s, "napper").await?["pid"], pid);
    s.ok(&["stop", "0"])?;
    assert_eq!(s.ok(&["start", "0"])?.trim(), "started napper", "by id too");
    // A name nobody has, without a command: what start needs.
    let out = s.run(&["start", "fresh"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: give the command after `--`"), "{}", text(&out.stderr));
    Ok(())
}

/// Lines `PID NANOSECONDS` appended every 20 ms by whichever process runs.
fn ticks(file: &Path) -> Vec<(u64, u128)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (pid, t) = l.split_once(' ')?;
            Some((pid.parse().ok()?, t.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn reload_replaces_a_process_without_a_gap() -> R {
    let s = Supervised::new(bin())?;
    let file = s.dir().with_file_name("ticks");
    let script = format!("while :; do echo \"$$ $(date +%s%N)\" >> '{}'; sleep 0.02; done", file.display());
    s.ok(&["start", "ticker", "--min-uptime-ms", "500", "--", "sh", "-c", &script])?;
    let old = online(&s, "ticker").await?["pid"].as_u64().unwrap();
    eventually("the old process to tick", || async {
        (ticks(&file).iter().filter(|(p, _)| *p == old).count() > 3).then_some(()).ok_or("not yet".to_string())
    })
    .await?;
    assert_eq!(s.ok(&["reload", "ticker"])?.trim(), "reloaded ticker");
    let p = s.proc("ticker")?;
    let new = p["pid"].as_u64().unwrap();
    assert_ne!(new, old);
    assert_eq!((&p["status"], &p["id"], &p["restart_count"]), (&"online".into(), &0.into(), &1.into()));
    assert!(!testkit::alive(old as i32), "the old one is stopped once the reload is answered");
    eventually("the new process to tick", || async {
        (ticks(&file).iter().any(|(p, _)| *p == new)).then_some(()).ok_or("not yet".to_string())
    })
    .await?;
    let t = ticks(&file);
    let last_old = t.iter().filter(|(p, _)| *p == old).map(|(_, t)| *t).max().unwrap();
    let first_new = t.iter().filter(|(p, _)| *p == new).map(|(_, t)| *t).min().unwrap();
    // No gap: the old one ticked on for the successor's min uptime after the new one started.
    assert!(last_old > first_new + 400_000_000, "old until {last_old}, new from {first_new}");
    let d = s.ok(&["describe", "ticker"])?;
    assert!(d.lines().any(|l| l.starts_with("last reason") && l.ends_with("reloaded")), "{d}");
    Ok(())
}

#[tokio::test]
async fn a_reload_whose_new_process_fails_leaves_the_old_one_running() -> R {
    let s = Supervised::new(bin())?;
    let broken = s.dir().with_file_name("broken");
    let script = format!("if [ -e '{}' ]; then echo cannot bind >&2; exit 3; fi; exec sleep 1000", broken.display());
    s.ok(&["start", "svc", "--", "sh", "-c", &script])?;
    let old = online(&s, "svc").await?["pid"].clone();
    std::fs::write(&broken, "")?;
    let out = s.run(&["reload", "svc"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "error: cannot reload svc: the new process exited (exit status: 3) before it was healthy"
    );
    let p = s.proc("svc")?;
    assert_eq!((&p["pid"], &p["status"], &p["restart_count"]), (&old, &"online".into(), &0.into()));
    Ok(())
}

#[tokio::test]
async fn flush_empties_the_logs_and_logging_goes_on() -> R {
    let s = Supervised::new(bin())?;
    let go = s.dir().with_file_name("go");
    let script =
        format!("echo before; while [ ! -e '{}' ]; do sleep 0.02; done; echo after; exec sleep 1000", go.display());
    s.ok(&["start", "talker", "--", "sh", "-c", &script])?;
    let out_log = s.dir().join("logs/talker-out.log");
    eventually("the first line", || async {
        let t = std::fs::read_to_string(&out_log).unwrap_or_default();
        t.contains("before").then_some(()).ok_or(t)
    })
    .await?;
    assert_eq!(s.ok(&["flush"])?.trim(), "flushed the logs of talker", "all by default, as pm2 flush");
    assert_eq!(std::fs::metadata(&out_log)?.len(), 0);
    std::fs::write(&go, "")?;
    let logs = eventually("the next line", || async {
        let t = s.ok(&["logs", "talker"]).map_err(|e| e.to_string())?;
        t.contains("after").then_some(t.clone()).ok_or(t)
    })
    .await?;
    assert!(!logs.contains("before"), "{logs}");
    Ok(())
}

#[tokio::test]
async fn describe_is_a_table_and_ps_shows_no_stale_exit_code_nor_figures_of_a_stopped_process() -> R {
    let s = Supervised::new(bin())?;
    let once = s.dir().with_file_name("once");
    let script = format!("if [ -e '{0}' ]; then exec sleep 1000; fi; touch '{0}'; exit 3", once.display());
    s.ok(&["start", "flaky", "--env", "SECRET=hunter2", "--", "sh", "-c", &script])?;
    let p = s.wait_for("flaky", "online again", |p| p["status"] == "online" && p["restart_count"] == 1).await?;
    assert_eq!(p["exit_code"], 3, "the JSON keeps the last exit");
    let row = |t: &str| {
        t.lines().find(|l| l.contains("flaky")).unwrap().split_whitespace().map(String::from).collect::<Vec<_>>()
    };
    let online_row = row(&s.ok(&["ps"])?);
    assert_eq!(online_row.last().map(String::as_str), Some("-"), "no stale exit code: {online_row:?}");
    let d = s.ok(&["describe", "flaky"])?;
    for (k, v) in [("name", "flaky"), ("id", "0"), ("status", "online"), ("restarts", "1"), ("last exit", "3")] {
        assert!(d.lines().any(|l| l.starts_with(k) && l[k.len()..].trim() == v), "{k} {v} in\n{d}");
    }
    assert!(d.contains("SECRET") && !d.contains("hunter2"), "env names, not values:\n{d}");
    let json: Value = serde_json::from_str(&s.ok(&["describe", "flaky", "--json"])?)?;
    assert_eq!(json["spec"]["name"], "flaky", "--json keeps the data for scripts");
    s.ok(&["stop", "flaky"])?;
    let stopped = row(&s.ok(&["ps"])?);
    assert_eq!(&stopped[7..9], ["—", "—"], "no memory nor CPU for a stopped process: {stopped:?}");
    Ok(())
}

#[tokio::test]
async fn under_pm2_ids_reload_flush_and_all_drive_pm2_and_leave_its_other_processes_alone() -> R {
    let pm2 = testkit::Pm2Home::new()?;
    let mut s = Supervised::new(bin())?;
    pm2.apply(&mut s);
    s.env.push(("AGENTCOM_BACKEND".into(), "pm2".into()));
    s.ok(&["start", "a", "--", "sleep", "1000"])?;
    s.ok(&["start", "b", "--", "sleep", "1000"])?;
    // A process of the user's own in the same pm2: `all` is not about it.
    let foreign = Command::new("pm2")
        .args(["start", "sleep", "--name", "foreign", "--", "1000"])
        .env("PM2_HOME", pm2.path())
        .output()?;
    assert!(foreign.status.success(), "{}", text(&foreign.stderr));
    let a = s.wait_for("a", "online", |p| p["status"] == "online").await?;
    assert_eq!(a["id"], 0, "pm2's pm_id");
    s.ok(&["reload", "0"])?;
    let reloaded = s.wait_for("a", "reloaded", |p| p["status"] == "online" && p["restart_count"] == 1).await?;
    assert_ne!(reloaded["pid"], a["pid"]);
    s.ok(&["flush", "a"])?;
    assert_eq!(s.ok(&["stop", "all"])?.lines().count(), 2);
    for name in ["a", "b"] {
        s.wait_for(name, "stopped", |p| p["status"] == "stopped").await?;
    }
    assert_eq!(s.proc("foreign")?["status"], "online");
    assert_eq!(s.ok(&["start", "b"])?.trim(), "started b");
    s.wait_for("b", "online", |p| p["status"] == "online").await?;
    assert!(s.ok(&["describe", "b"])?.lines().any(|l| l.starts_with("status") && l.ends_with("online")));
    Ok(())
}
