//! What pm2's keys mean in the native supervisor: `--watch`/`--ignore-watch`, `--instances`,
//! `--cron-restart`, `--log-date-format`/`--no-time`, and log files of one's own.

use crate::bin;
use serde_json::Value;
use std::path::Path;
use testkit::{eventually, Supervised};

type R = anyhow::Result<()>;

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).unwrap_or_default().lines().count()
}

#[tokio::test]
async fn a_change_below_a_watched_path_restarts_and_ignored_ones_do_not() -> R {
    let s = Supervised::new(bin())?;
    let app = tempfile::tempdir()?;
    std::fs::create_dir_all(app.path().join("src"))?;
    std::fs::create_dir_all(app.path().join("node_modules/dep"))?;
    let (watch, cwd) = (app.path().to_str().unwrap(), app.path().to_str().unwrap());
    s.ok(&[
        "start",
        "w",
        "--cwd",
        cwd,
        "--watch",
        watch,
        "--ignore-watch",
        "node_modules",
        "--ignore-watch",
        "*.log",
        "--",
        "sleep",
        "1000",
    ])?;
    let p = s.wait_for("w", "online", |p| p["status"] == "online").await?;
    // Ignored first, then a real change: the restart names the real one.
    std::fs::write(app.path().join("node_modules/dep/index.js"), "x")?;
    std::fs::write(app.path().join("debug.log"), "x")?;
    std::fs::write(app.path().join("src/main.rs"), "fn main() {}")?;
    let pid = p["pid"].as_u64();
    s.wait_for("w", "restarted", |p| p["status"] == "online" && p["pid"].as_u64() != pid).await?;
    let d: Value = serde_json::from_str(&s.ok(&["describe", "--json", "w"])?)?;
    let reason = d["last_restart_reason"].as_str().unwrap();
    assert!(reason.starts_with("watched path changed: ") && reason.ends_with("src/main.rs"), "{reason}");
    assert_eq!(d["status"]["restart_count"], 1);
    Ok(())
}

#[tokio::test]
async fn instances_run_side_by_side_and_are_handled_by_their_name() -> R {
    let s = Supervised::new(bin())?;
    let out = s.ok(&["start", "web", "--instances", "3", "--", "sleep", "1000"])?;
    assert_eq!(out.trim(), "started web-0, web-1, web-2");
    for i in 0..3 {
        let d: Value = serde_json::from_str(&s.ok(&["describe", "--json", &format!("web-{i}")])?)?;
        assert_eq!(d["spec"]["env"]["NODE_APP_INSTANCE"], i.to_string());
        assert_eq!(d["status"]["instance_of"], "web");
    }
    s.ok(&["stop", "web"])?;
    assert!(s.ps()?.iter().all(|p| p["status"] == "stopped"));
    s.ok(&["restart", "web"])?;
    assert!(s.ps()?.iter().all(|p| p["status"] == "online"));
    s.ok(&["delete", "web"])?;
    assert!(s.ps()?.is_empty());
    let e = s.run(&["start", "many", "--instances", "500", "--", "sleep", "1"]);
    assert!(String::from_utf8(e.stderr)?.contains("instances: must be 1 to 128"));
    Ok(())
}

#[tokio::test]
async fn cron_restart_restarts_a_service_and_reruns_a_job() -> R {
    let s = Supervised::new(bin())?;
    let dir = tempfile::tempdir()?;
    let (svc, job) = (dir.path().join("svc"), dir.path().join("job"));
    // Every second (six fields: seconds first).
    let every_second = "* * * * * *";
    let svc_cmd = format!("echo run >> '{}'; exec sleep 1000", svc.display());
    s.ok(&["start", "svc", "--cron-restart", every_second, "--", "sh", "-c", &svc_cmd])?;
    let job_cmd = format!("echo run >> '{}'", job.display());
    s.ok(&["start", "job", "--restart", "never", "--cron-restart", every_second, "--", "sh", "-c", &job_cmd])?;
    eventually("both to run three times", || async {
        if lines(&svc) >= 3 && lines(&job) >= 3 {
            Ok(())
        } else {
            Err(format!("svc {} job {}", lines(&svc), lines(&job)))
        }
    })
    .await?;
    let d: Value = serde_json::from_str(&s.ok(&["describe", "--json", "svc"])?)?;
    assert!(d["last_restart_reason"].as_str().unwrap().starts_with("cron_restart"), "{d}");
    // A process stopped by a person is left alone by its schedule.
    s.ok(&["stop", "job"])?;
    let n = lines(&job);
    s.wait_for("svc", "restarted twice more", |p| {
        p["restart_count"].as_u64() >= Some(d["status"]["restart_count"].as_u64().unwrap() + 2)
    })
    .await?;
    assert_eq!(lines(&job), n, "the stopped job did not run again");
    let e = s.run(&["start", "bad", "--cron-restart", "every day", "--", "sleep", "1"]);
    assert!(String::from_utf8(e.stderr)?.contains("cron_restart: \"every day\" is not a cron schedule"));
    Ok(())
}

#[tokio::test]
async fn log_timestamps_follow_time_and_log_date_format_and_files_can_be_chosen() -> R {
    let s = Supervised::new(bin())?;
    let dir = tempfile::tempdir()?;
    let (out, err, both) = (dir.path().join("o.log"), dir.path().join("e.log"), dir.path().join("all.log"));
    s.ok(&[
        "start",
        "fmt",
        "--restart",
        "never",
        "--log-date-format",
        "[day] YYYY/MM/DD",
        "--out-file",
        out.to_str().unwrap(),
        "--error-file",
        err.to_str().unwrap(),
        "--log-file",
        both.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2",
    ])?;
    s.ok(&["start", "raw", "--restart", "never", "--no-time", "--", "echo", "plain line"])?;
    s.wait_for("fmt", "done", |p| p["status"] == "stopped").await?;
    s.wait_for("raw", "done", |p| p["status"] == "stopped").await?;
    let o = std::fs::read_to_string(&out)?;
    let year = chrono_year();
    assert!(o.starts_with(&format!("day {year}/")) && o.trim_end().ends_with(" to-out"), "{o}");
    assert!(std::fs::read_to_string(&err)?.trim_end().ends_with(" to-err"));
    let all = std::fs::read_to_string(&both)?;
    assert!(all.contains("to-out") && all.contains("to-err"), "{all}");
    let d: Value = serde_json::from_str(&s.ok(&["describe", "--json", "fmt"])?)?;
    assert_eq!(d["out_log"], out.display().to_string());
    let raw = std::fs::read_to_string(s.dir().join("logs/raw-out.log"))?;
    assert_eq!(raw, "plain line\n");
    Ok(())
}

fn chrono_year() -> String {
    // The local year, as the stamp shows it (no clock crate needed: `date` is the reference).
    String::from_utf8(std::process::Command::new("date").arg("+%Y").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}
