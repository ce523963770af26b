//! A real pm2 as the backend: the same operations through `pm2` commands, a generated
//! ecosystem file per process, and a lenient reader of `pm2 jlist`.

use proto::control::{ProcSpec, ProcStatus, RestartPolicy};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every process we start in pm2 lives in this namespace; others are never touched.
pub const NAMESPACE: &str = "agentcom";

#[derive(Debug, thiserror::Error)]
pub enum Pm2Error {
    #[error("pm2 is not installed or not on PATH ({0}); install it with `npm install -g pm2`")]
    Missing(String),
    #[error("`pm2 {args}` failed: {message}")]
    Failed { args: String, message: String },
    #[error("cannot read `pm2 jlist`: {0}")]
    Parse(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
}

pub fn pm2(args: &[&str]) -> Result<String, Pm2Error> {
    let out = Command::new("pm2").args(args).output().map_err(|e| Pm2Error::Missing(e.to_string()))?;
    if !out.status.success() {
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if message.is_empty() {
            message = String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or("").to_string();
        }
        return Err(Pm2Error::Failed { args: args.join(" "), message });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pm2 app object for a spec (`apps: [..]` entry of an ecosystem file).
pub fn app(spec: &ProcSpec) -> Value {
    let mut env = serde_json::Map::new();
    for (k, v) in &spec.env {
        env.insert(k.clone(), json!(v));
    }
    env.insert("PM2_PROCESS_NAME".into(), json!(spec.name));
    env.insert("AGENTCOM_PROCESS_NAME".into(), json!(spec.name));
    let namespace = spec.env.get("AGENTCOM_PM2_NAMESPACE").map(String::as_str).unwrap_or(NAMESPACE);
    let mut a = json!({
        "name": spec.name,
        "script": spec.command,
        "args": spec.args,
        "interpreter": "none",
        "namespace": namespace,
        "env": env,
        "autorestart": spec.restart != RestartPolicy::Never,
        "kill_timeout": spec.kill_timeout_ms,
        "min_uptime": spec.min_uptime_ms,
        "max_restarts": spec.max_restarts,
        "exp_backoff_restart_delay": spec.restart_backoff_ms,
        "stop_exit_codes": spec.stop_exit_codes,
        "merge_logs": true,
    });
    if let Some(cwd) = &spec.cwd {
        a["cwd"] = json!(cwd);
    }
    if let Some(m) = spec.max_memory_bytes {
        a["max_memory_restart"] = json!(format!("{}K", m / 1024));
    }
    if spec.restart == RestartPolicy::OnFailure && !spec.stop_exit_codes.contains(&0) {
        a["stop_exit_codes"].as_array_mut().expect("array").push(json!(0));
    }
    if spec.restart_delay_ms > 0 {
        a["restart_delay"] = json!(spec.restart_delay_ms);
    }
    if !spec.watch.is_empty() {
        a["watch"] = json!(spec.watch);
        a["ignore_watch"] = json!(spec.ignore_watch);
        a["watch_delay"] = json!(spec.watch_delay_ms);
    }
    if let Some(c) = &spec.cron_restart {
        a["cron_restart"] = json!(c);
    }
    // pm2 stamps lines only when asked; ours are stamped unless `time = false`.
    a["time"] = json!(spec.time && spec.log_date_format.is_none());
    if let Some(f) = spec.log_date_format.as_ref().filter(|_| spec.time) {
        a["log_date_format"] = json!(f);
    }
    for (key, file) in [("out_file", &spec.out_file), ("error_file", &spec.error_file), ("log_file", &spec.log_file)] {
        if let Some(f) = file {
            a[key] = json!(f);
        }
    }
    if spec.env.contains_key(proto::control::ENV_INSTANCE) {
        // Our instances are separate apps with their own number: pm2 must not overwrite it
        // with its own (always 0 for a one-instance app).
        a["instance_var"] = json!("PM2_INSTANCE_NUMBER");
    }
    a
}

/// The pm2 apps for a spec: one, or one per instance (`name-0` …), as the native supervisor
/// names them.
pub fn apps(spec: &ProcSpec) -> Result<Vec<Value>, Pm2Error> {
    if spec.tmux {
        return Err(Pm2Error::Unsupported(format!(
            "{}: tmux processes need the native supervisor (pm2 gives its processes no terminal)",
            spec.name
        )));
    }
    Ok(spec.expand_instances().iter().map(app).collect())
}

/// An ecosystem file (CommonJS) holding the apps of some specs, with a header saying where it
/// came from.
pub fn ecosystem_file(specs: &[&ProcSpec], header: &str) -> Result<String, Pm2Error> {
    let mut list = Vec::new();
    for s in specs {
        list.extend(apps(s)?);
    }
    let apps = json!({ "apps": list });
    Ok(format!("{header}\nmodule.exports = {};\n", serde_json::to_string_pretty(&apps).expect("json")))
}

pub fn start(spec: &ProcSpec, dir: &Path) -> Result<PathBuf, Pm2Error> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.config.cjs", spec.name));
    let header = format!(
        "// Generated by agentcom for pm2 process {:?}. Do not edit: it is rewritten on every start.",
        spec.name
    );
    osutil::fs::write_atomic(&path, ecosystem_file(&[spec], &header)?.as_bytes())?;
    pm2(&["start", &path.display().to_string()])?;
    Ok(path)
}

pub fn stop(name: &str) -> Result<(), Pm2Error> {
    pm2(&["stop", name]).map(drop)
}
pub fn restart(name: &str) -> Result<(), Pm2Error> {
    pm2(&["restart", name]).map(drop)
}
pub fn delete(name: &str) -> Result<(), Pm2Error> {
    pm2(&["delete", name]).map(drop)
}
pub fn reload(name: &str) -> Result<(), Pm2Error> {
    pm2(&["reload", name]).map(drop)
}
pub fn flush(name: &str) -> Result<(), Pm2Error> {
    pm2(&["flush", name]).map(drop)
}

/// Whether agentcom started this pm2 process (every app it writes carries its name in
/// `AGENTCOM_PROCESS_NAME`): `all` means these, never the user's other pm2 processes.
pub fn ours(e: &Value) -> bool {
    e["pm2_env"]["env"]["AGENTCOM_PROCESS_NAME"].is_string() || e["pm2_env"]["AGENTCOM_PROCESS_NAME"].is_string()
}

/// Whether a pm2 daemon answers in `PM2_HOME` (default `~/.pm2`): any pm2 command would
/// start one, so a question that must change nothing asks this first.
pub fn daemon_running() -> bool {
    let home = std::env::var_os("PM2_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".pm2")));
    home.is_some_and(|h| std::os::unix::net::UnixStream::connect(h.join("rpc.sock")).is_ok())
}

/// `pm2 jlist`, read leniently: text before the JSON is skipped, every field is optional,
/// modules (pm2-logrotate) are left out.
pub fn jlist() -> Result<Vec<Value>, Pm2Error> {
    parse_jlist(&pm2(&["jlist"])?)
}

pub fn parse_jlist(text: &str) -> Result<Vec<Value>, Pm2Error> {
    let start = text.find("\n[").map(|i| i + 1).or_else(|| text.starts_with('[').then_some(0));
    let Some(start) = start else { return Err(Pm2Error::Parse("no JSON array in the output".into())) };
    let v: Value = serde_json::from_str(text[start..].trim()).map_err(|e| Pm2Error::Parse(e.to_string()))?;
    let list = v.as_array().cloned().unwrap_or_default();
    Ok(list.into_iter().filter(|e| e["pm2_env"]["pmx_module"] != true).collect())
}

/// Our status shape for one jlist entry.
pub fn status(e: &Value, now_ms: u64) -> ProcStatus {
    let env = &e["pm2_env"];
    let status = env["status"].as_str().unwrap_or("unknown").replace(' ', "-");
    let online = status == "online";
    ProcStatus {
        id: e["pm_id"].as_u64().or(env["pm_id"].as_u64()).and_then(|i| u32::try_from(i).ok()).unwrap_or(0),
        name: e["name"].as_str().unwrap_or("").into(),
        pid: e["pid"].as_u64().unwrap_or(0) as u32,
        status,
        uptime_ms: if online { now_ms.saturating_sub(env["pm_uptime"].as_u64().unwrap_or(now_ms)) } else { 0 },
        restart_count: env["restart_time"].as_u64().unwrap_or(0),
        memory_bytes: e["monit"]["memory"].as_u64().unwrap_or(0),
        cpu_percent: e["monit"]["cpu"].as_f64().unwrap_or(0.0),
        exit_code: env["exit_code"].as_i64().map(|c| c as i32),
        unstable_restarts: env["unstable_restarts"].as_u64().unwrap_or(0) as u32,
        spec_hash: env["env"]["AGENTCOM_SPEC_HASH"].as_str().or(env["AGENTCOM_SPEC_HASH"].as_str()).map(str::to_string),
        daemon_root: env["env"]["AGENTCOM_DAEMON_ROOT"]
            .as_str()
            .or(env["AGENTCOM_DAEMON_ROOT"].as_str())
            .map(str::to_string),
        reason: None,
        tmux: false,
        instance_of: env["env"][proto::control::ENV_INSTANCE_OF].as_str().map(str::to_string),
    }
}

/// A jlist entry fit to print: every env value replaced, since pm2 exposes secrets there.
pub fn redacted(e: &Value) -> Value {
    let mut e = e.clone();
    fn scrub(v: &mut Value) {
        if let Some(m) = v.as_object_mut() {
            for (_, x) in m.iter_mut() {
                *x = json!("<redacted>");
            }
        }
    }
    if let Some(env) = e.get_mut("pm2_env") {
        if let Some(inner) = env.get_mut("env") {
            scrub(inner);
        }
        // pm2 also copies env vars to the top of pm2_env: keep only pm2's own keys there.
        if let Some(m) = env.as_object_mut() {
            for (k, v) in m.iter_mut() {
                if k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') && v.is_string() {
                    *v = json!("<redacted>");
                }
            }
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jlist_is_read_leniently() {
        let text = "some warning from an old pm2\n[{\"name\":\"a\",\"pid\":5,\"pm2_env\":{\"status\":\"waiting restart\",\"restart_time\":2,\"env\":{\"SECRET\":\"x\"},\"SECRET\":\"x\"}},\
                    {\"name\":\"pm2-logrotate\",\"pm2_env\":{\"pmx_module\":true}},{}]";
        let list = parse_jlist(text).unwrap();
        assert_eq!(list.len(), 2);
        let s = status(&list[0], 0);
        assert_eq!((s.name.as_str(), s.pid, s.status.as_str(), s.restart_count), ("a", 5, "waiting-restart", 2));
        assert_eq!(status(&list[1], 0).status, "unknown");
        let r = redacted(&list[0]).to_string();
        assert!(!r.contains("\"x\""), "{r}");
    }

    #[test]
    fn ecosystem_file_carries_name_and_namespace() {
        let mut spec = ProcSpec::new("web", "/bin/sleep", vec!["9".into()]);
        spec.env.insert("K".into(), "V".into());
        let f = ecosystem_file(&[&spec], "// generated").unwrap();
        assert!(f.starts_with("// generated\nmodule.exports = "));
        let a = app(&spec);
        assert_eq!(a["env"]["PM2_PROCESS_NAME"], "web");
        assert_eq!(a["namespace"], NAMESPACE);
        assert_eq!(a["env"]["K"], "V");
    }
}
