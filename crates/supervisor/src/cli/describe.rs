//! What `describe` prints for people: one process as a two-column table, first what it is and
//! does now, then the settings of its spec. (`describe --json` prints the data as it is.)

use proto::control::{defaults, Describe};
use serde_json::Value;

/// Two columns without a header line; every value escaped by `human::table`.
fn two_columns(rows: Vec<(&str, String)>) -> String {
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(k, v)| vec![k.to_string(), v]).collect();
    let t = human::table(&["", ""], &rows, usize::MAX);
    // The header line of an empty header is blank: the rest is the table.
    t.split_once('\n').map(|(_, rest)| rest.to_string()).unwrap_or_default()
}

/// A word as a shell would need it, so the command line reads as it runs.
fn shell_word(w: &str) -> String {
    let plain = !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

fn ms(v: u64) -> String {
    format!("{v} ms")
}

fn or_dash(v: Option<String>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into())
}

/// `describe NAME` of the native supervisor.
pub fn describe_table(d: &Describe) -> String {
    let (st, spec) = (&d.status, &d.spec);
    let up = super::running(&st.status);
    let command: Vec<String> = std::iter::once(&spec.command).chain(&spec.args).map(|w| shell_word(w)).collect();
    let mut rows = vec![
        ("name", st.name.clone()),
        ("id", st.id.to_string()),
        ("status", st.status.clone()),
        ("pid", if st.pid == 0 { "-".into() } else { st.pid.to_string() }),
        ("mode", if spec.tmux { "tmux".into() } else { "fork".into() }),
        ("command", command.join(" ")),
        ("cwd", spec.cwd.clone().unwrap_or_else(|| "(the supervisor's)".into())),
        ("restarts", st.restart_count.to_string()),
        ("unstable restarts", st.unstable_restarts.to_string()),
        ("uptime", if up { human::long_duration(st.uptime_ms) } else { "-".into() }),
        ("started at", or_dash(d.started_at_ms.map(human::utc))),
        ("memory", if up { human::bytes(st.memory_bytes) } else { super::NONE.into() }),
        ("cpu", if up { format!("{:.1}%", st.cpu_percent) } else { super::NONE.into() }),
        ("last exit", or_dash(st.exit_code.map(|c| c.to_string()))),
        ("last reason", or_dash(d.last_restart_reason.clone())),
        ("out log", d.out_log.clone()),
        ("err log", d.err_log.clone()),
    ];
    if let Some(f) = &spec.log_file {
        rows.push(("log file", f.clone()));
    }
    if let Some(t) = &d.tmux {
        rows.push(("tmux", format!("tmux -S {} attach -t {}", t.socket, t.session)));
    }
    if let Some(of) = &st.instance_of {
        rows.push(("instance of", of.clone()));
    }
    if let Some(h) = &st.spec_hash {
        rows.push(("spec hash", h.clone()));
    }
    rows.push(("restart", spec.restart.as_str().into()));
    rows.push(("kill", format!("{}, SIGKILL after {}", spec.kill_signal, ms(spec.kill_timeout_ms))));
    rows.push(("min uptime", ms(spec.min_uptime_ms)));
    rows.push(("max restarts", spec.max_restarts.to_string()));
    rows.push(("restart backoff", format!("{} to {}", ms(spec.restart_backoff_ms), ms(spec.restart_backoff_max_ms))));
    if spec.restart_delay_ms > 0 {
        rows.push(("restart delay", ms(spec.restart_delay_ms)));
    }
    if !spec.stop_exit_codes.is_empty() {
        let codes: Vec<String> = spec.stop_exit_codes.iter().map(i32::to_string).collect();
        rows.push(("stop exit codes", codes.join(", ")));
    }
    if let Some(h) = &spec.health_cmd {
        let every =
            format!("every {}, restart after {} failures", ms(spec.health_interval_ms), spec.health_failures + 1);
        rows.push(("health", format!("{h} ({every})")));
    }
    if let Some(m) = spec.max_memory_bytes {
        rows.push(("max memory", human::bytes(m)));
    }
    if !spec.watch.is_empty() {
        rows.push(("watch", format!("{} (after {})", spec.watch.join(", "), ms(spec.watch_delay_ms))));
    }
    if !spec.ignore_watch.is_empty() {
        rows.push(("ignore watch", spec.ignore_watch.join(", ")));
    }
    if let Some(c) = &spec.cron_restart {
        rows.push(("cron restart", c.clone()));
    }
    if spec.log_max_bytes != defaults::LOG_MAX_BYTES || spec.log_keep != defaults::LOG_KEEP {
        rows.push(("log rotation", format!("at {}, keep {}", human::bytes(spec.log_max_bytes), spec.log_keep)));
    }
    let stamps = match (&spec.log_date_format, spec.time) {
        (_, false) => "none".into(),
        (Some(f), true) => f.clone(),
        (None, true) => "RFC 3339".into(),
    };
    rows.push(("log stamps", stamps));
    // Values may be secrets: their names only (`--json` has them).
    let env: Vec<&str> = spec.env.keys().map(String::as_str).collect();
    rows.push(("env", if env.is_empty() { "-".into() } else { env.join(", ") }));
    two_columns(rows)
}

/// `describe NAME` under pm2, from its (redacted) `jlist` entry; `now_ms` for the uptime.
pub fn describe_pm2_table(e: &Value, now_ms: u64) -> String {
    let env = &e["pm2_env"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let online = env["status"] == "online";
    let mut command = vec![text(&env["pm_exec_path"])];
    command.extend(env["args"].as_array().into_iter().flatten().map(|a| shell_word(&text(a))));
    let uptime = env["pm_uptime"].as_u64().filter(|_| online).map(|t| human::long_duration(now_ms.saturating_sub(t)));
    let memory = e["monit"]["memory"].as_u64().filter(|_| online).map(human::bytes);
    let cpu = e["monit"]["cpu"].as_f64().filter(|_| online).map(|c| format!("{c:.1}%"));
    let rows = vec![
        ("name", text(&e["name"])),
        ("id", text(&e["pm_id"])),
        ("status", text(&env["status"])),
        ("pid", e["pid"].as_u64().filter(|p| *p > 0).map_or("-".into(), |p| p.to_string())),
        ("mode", text(&env["exec_mode"])),
        ("namespace", text(&env["namespace"])),
        ("command", command.join(" ")),
        ("cwd", text(&env["pm_cwd"])),
        ("restarts", text(&env["restart_time"])),
        ("unstable restarts", text(&env["unstable_restarts"])),
        ("uptime", uptime.unwrap_or_else(|| "-".into())),
        ("memory", memory.unwrap_or_else(|| super::NONE.into())),
        ("cpu", cpu.unwrap_or_else(|| super::NONE.into())),
        ("last exit", text(&env["exit_code"])),
        ("out log", text(&env["pm_out_log_path"])),
        ("err log", text(&env["pm_err_log_path"])),
        ("env", "redacted (describe --json shows pm2's names)".into()),
    ];
    two_columns(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::control::{ProcSpec, ProcStatus};

    #[test]
    fn a_description_reads_as_a_table_with_hostile_text_escaped() {
        let mut spec = ProcSpec::new("web", "node", vec!["server.js".into(), "a b".into()]);
        spec.env.insert("SECRET".into(), "hunter2".into());
        spec.health_cmd = Some("curl -f localhost".into());
        let d = Describe {
            status: ProcStatus {
                id: 4,
                name: "web".into(),
                pid: 77,
                status: "online".into(),
                uptime_ms: 65_000,
                restart_count: 2,
                memory_bytes: 3 << 20,
                cpu_percent: 12.5,
                exit_code: Some(1),
                unstable_restarts: 0,
                spec_hash: None,
                daemon_root: None,
                reason: None,
                tmux: false,
                instance_of: None,
            },
            spec,
            pgid: Some(77),
            out_log: "/sup/logs/web-out.log".into(),
            err_log: "/sup/logs/web-err.log".into(),
            last_restart_reason: Some("reloaded\u{1b}[2J".into()),
            started_at_ms: Some(1_700_000_000_000),
            tmux: None,
        };
        let t = describe_table(&d);
        let row =
            |k: &str| t.lines().find(|l| l.starts_with(&format!("{k} "))).map(|l| l[k.len()..].trim().to_string());
        assert_eq!(row("id").as_deref(), Some("4"));
        assert_eq!(row("command").as_deref(), Some("node server.js 'a b'"));
        assert_eq!(row("uptime").as_deref(), Some("1 min"));
        assert_eq!(row("memory").as_deref(), Some("3.0 MiB"));
        assert_eq!(row("started at").as_deref(), Some("2023-11-14 22:13:20 UTC"));
        assert_eq!(row("last reason").as_deref(), Some("reloaded\\u{1b}[2J"));
        assert_eq!(row("env").as_deref(), Some("SECRET"));
        assert!(!t.contains("hunter2"), "env values stay out of the table");
        assert!(row("health").unwrap().starts_with("curl -f localhost (every 10000 ms"));
        assert!(!t.starts_with('\n') && !t.contains('\u{1b}'));
    }
}
