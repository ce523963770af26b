//! One pm2 app (the object of an ecosystem file's `apps`) into a supervisor `ProcSpec`, the way
//! pm2 reads it. Every key is either mapped or named in a warning: pm2 drops unknown keys
//! silently; we say which ones we ignore, and why. The table is in docs/daemons.md.

use crate::ecosystem::App;
use crate::spec::DefError;
use proto::control::{ProcSpec, RestartPolicy};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where relative paths resolve and which `env_<name>` applies.
pub struct Ctx<'a> {
    pub file: &'a Path,
    /// pm2 resolves a relative `cwd` (and log paths) against the folder it runs in: for us, the
    /// workspace root (`--workdir`).
    pub workdir: &'a Path,
    /// `env_<name>` merged over `env`, as `pm2 start --env <name>`.
    pub env_name: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct Mapped {
    /// Named after the app (the caller may prefix it).
    pub spec: ProcSpec,
    /// `autostart: false` keeps it stopped.
    pub enabled: bool,
    pub warnings: Vec<String>,
}

/// pm2 keys we do not carry out, with why. Anything neither mapped nor here is unknown to pm2.
const IGNORED: &[(&str, &str)] = &[
    ("namespace", "agentcom keeps daemons in its own namespace (agentcom-daemons under pm2)"),
    ("wait_ready", "agentcom does not wait for process.send('ready'); use health_cmd in a daemon.toml"),
    ("listen_timeout", "it goes with wait_ready, which agentcom does not carry out"),
    ("shutdown_with_message", "a stop sends the kill signal (SIGINT for pm2 apps) to the whole group"),
    ("instance_var", "the instance number is always in NODE_APP_INSTANCE"),
    ("increment_var", "not carried out"),
    ("treekill", "the whole process group is always stopped"),
    ("kill_retry_time", "a stop escalates to SIGKILL after kill_timeout"),
    ("uid", "processes run as the supervisor's user"),
    ("gid", "processes run as the supervisor's group"),
    ("user", "processes run as the supervisor's user"),
    ("node_version", "node is taken from PATH (or interpreter)"),
    ("source_map_support", "a pm2 node wrapper feature"),
    ("disable_source_map_support", "a pm2 node wrapper feature"),
    ("vizion", "pm2's version metadata"),
    ("post_update", "pm2's deploy hooks"),
    ("automation", "pm2.io monitoring"),
    ("pmx", "pm2.io monitoring"),
    ("trace", "pm2.io tracing"),
    ("deep_monitoring", "pm2.io monitoring"),
    ("disable_trace", "pm2.io tracing"),
    ("force", "the plan decides what to start"),
    ("append_env_to_name", "process names come from name alone"),
    ("filter_env", "the environment is the supervisor's plus env"),
    ("disable_logs", "output always goes to the log files"),
    ("pid_file", "the supervisor keeps pids in its state"),
    ("max_memory_restart_check", "memory is checked every few seconds (--memory-check-ms)"),
    ("windowsHide", "Windows only"),
];

fn str_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// pm2's split of a string of arguments: `a "b c" d='e f'` → `a`, `b c`, `d='e f'`.
pub fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' || c == '\'' {
            chars.next();
            for c2 in chars.by_ref() {
                if c2 == c {
                    break;
                }
                word.push(c2);
            }
            if !word.trim().is_empty() {
                out.push(word);
            }
            continue;
        }
        while let Some(&c2) = chars.peek() {
            if c2.is_whitespace() {
                break;
            }
            chars.next();
            word.push(c2);
            // key="value with spaces" stays one word, quotes included, as pm2 keeps it.
            if c2 == '=' && matches!(chars.peek(), Some('"') | Some('\'')) {
                let q = chars.next().expect("peeked");
                word.push(q);
                for c3 in chars.by_ref() {
                    word.push(c3);
                    if c3 == q {
                        break;
                    }
                }
            }
        }
        out.push(word);
    }
    out
}

/// Milliseconds: a number, a string of digits, `"10s"`/`"5m"`/`"1h"` (pm2's units), or any
/// humantime duration (`"1500ms"`, `"1m 30s"`).
pub fn duration_ms(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64)
            .ok_or_else(|| format!("{n} is not a duration")),
        Value::String(s) => {
            let t = s.trim();
            if let Ok(n) = t.parse::<u64>() {
                return Ok(n);
            }
            humantime::parse_duration(t)
                .map(|d| d.as_millis() as u64)
                .map_err(|_| format!("{s:?} is not a duration (milliseconds, or with a unit: \"10s\", \"5m\", \"1h\")"))
        }
        other => Err(format!("{other} is not a duration")),
    }
}

/// Bytes: a number, or a string with pm2's units `K`, `M`, `G` (powers of 1024).
pub fn memory_bytes(v: &Value) -> Result<u64, String> {
    let bad = || format!("{v} is not a size (bytes, or \"500M\", \"1G\", \"200K\")");
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(bad),
        Value::String(s) => {
            let t = s.trim().to_ascii_uppercase();
            let t = t.strip_suffix('B').filter(|r| r.ends_with(['K', 'M', 'G'])).unwrap_or(&t);
            let (num, unit) = match t.char_indices().last() {
                Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
                _ => (t, ' '),
            };
            let mult: u64 = match unit {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                ' ' => 1,
                _ => return Err(bad()),
            };
            let n: f64 = num.trim().parse().map_err(|_| bad())?;
            if !(n.is_finite() && n >= 0.0) {
                return Err(bad());
            }
            Ok((n * mult as f64) as u64)
        }
        _ => Err(bad()),
    }
}

fn interpreter_for(exec: &str) -> Option<&'static str> {
    let ext = Path::new(exec).extension()?.to_str()?;
    Some(match ext {
        "js" | "cjs" | "mjs" => "node",
        "py" => "python3",
        "sh" => "bash",
        "rb" => "ruby",
        "php" => "php",
        "pl" => "perl",
        "coffee" => "coffee",
        "ls" => "lsc",
        "ts" | "tsx" => "bun",
        _ => return None,
    })
}

/// `p` against `base` when relative, without `.` components (`./logs/x` → `<base>/logs/x`).
pub fn absolute(base: &Path, p: &str) -> PathBuf {
    let joined = if Path::new(p).is_absolute() { PathBuf::from(p) } else { base.join(p) };
    joined.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect()
}

fn string_list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a.iter().map(|x| str_of(x).ok_or_else(|| format!("{x} is not a string"))).collect(),
        Value::String(s) => Ok(split_args(s)),
        other => Err(format!("expected a list or a string, got {other}")),
    }
}

/// Maps one app. Errors name the file, the line of the key when there is one, and the key.
pub fn map_app(app: &App, ctx: &Ctx) -> Result<Mapped, DefError> {
    let f = &app.fields;
    let label = f
        .get("name")
        .and_then(Value::as_str)
        .map(|n| format!("app {n}"))
        .unwrap_or_else(|| format!("apps[{}]", app.index));
    let at = |key: &str| app.lines.get(key).copied().or(app.line);
    let err = |key: &str, msg: String| DefError {
        file: ctx.file.display().to_string(),
        line: at(key),
        message: if app.line.is_some() { format!("{key}: {msg}") } else { format!("{label}: {key}: {msg}") },
    };
    fn get<'v>(f: &'v serde_json::Map<String, Value>, keys: &[&'static str]) -> Option<(&'static str, &'v Value)> {
        keys.iter().find_map(|k| f.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
    }
    let mut warnings = Vec::new();
    let mut warn = |key: &str, msg: &str| {
        let place = at(key)
            .map(|l| format!("{}:{l}", ctx.file.display()))
            .unwrap_or_else(|| format!("{} ({label})", ctx.file.display()));
        warnings.push(format!("{place}: {key} ignored: {msg}"));
    };

    let (script_key, script) = get(f, &["script", "exec", "cmd", "command"])
        .ok_or_else(|| err("script", "missing (the program to run)".into()))?;
    let script = str_of(script)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| err(script_key, "expected a non-empty string".into()))?;
    let name = match get(f, &["name"]) {
        Some((k, v)) => str_of(v).ok_or_else(|| err(k, "expected a string".into()))?,
        None => Path::new(&script).file_stem().and_then(|s| s.to_str()).unwrap_or("app").to_string(),
    };
    let cwd = match get(f, &["cwd"]) {
        Some((k, v)) => absolute(ctx.workdir, &str_of(v).ok_or_else(|| err(k, "expected a string".into()))?),
        None => ctx.workdir.to_path_buf(),
    };
    let mut args = match get(f, &["args"]) {
        Some((k, v)) => string_list(v).map_err(|e| err(k, e))?,
        None => Vec::new(),
    };
    let interpreter_args = match get(f, &["interpreter_args", "node_args", "interpreterArgs"]) {
        Some((k, v)) => string_list(v).map_err(|e| err(k, e))?,
        None => Vec::new(),
    };
    let interpreter = match get(f, &["interpreter", "exec_interpreter"]) {
        Some((k, v)) => Some(str_of(v).ok_or_else(|| err(k, "expected a string".into()))?),
        None => None,
    };
    // As pm2: the script relative to cwd if it is there, else a command through PATH; a
    // script with spaces and no such file runs under `bash -c`.
    let on_disk = absolute(&cwd, &script);
    let exec = if on_disk.exists() {
        on_disk.display().to_string()
    } else if script.contains(' ') && interpreter.is_none() {
        args = vec!["-c".into(), script.clone()];
        "bash".to_string()
    } else if script.contains('/') {
        return Err(err(script_key, format!("script not found: {}", on_disk.display())));
    } else {
        script.clone()
    };
    let interpreter = interpreter.or_else(|| interpreter_for(&exec).map(str::to_string)).filter(|i| i != "none");
    let (command, args) = match &interpreter {
        None => (exec.clone(), args),
        Some(i) => (i.clone(), interpreter_args.into_iter().chain([exec.clone()]).chain(args).collect()),
    };

    let mut spec = ProcSpec::new(&name, &command, args);
    // pm2's own defaults where they differ from ours: a stop sends SIGINT and waits 1.6 s.
    spec.kill_signal = "SIGINT".into();
    spec.kill_timeout_ms = 1_600;
    spec.cwd = Some(cwd.display().to_string());
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut enabled = true;
    let mut exec_mode_given = false;
    let mut merge_logs = false;
    let mut keys: Vec<&String> = f.keys().collect();
    keys.sort_by_key(|k| (at(k), (*k).clone()));
    for key in keys {
        let v = &f[key.as_str()];
        if v.is_null() {
            continue;
        }
        let k = key.as_str();
        match k {
            "name" | "script" | "exec" | "cmd" | "command" | "cwd" | "args" | "interpreter" | "exec_interpreter"
            | "interpreter_args" | "node_args" | "interpreterArgs" => {}
            "env" => {
                let Value::Object(m) = v else { return Err(err(k, "expected a map of names to values".into())) };
                for (name, val) in m {
                    if let Some(s) = str_of(val) {
                        env.insert(name.clone(), s);
                    } else if !val.is_null() {
                        return Err(err(k, format!("{name}: expected a string, number or boolean")));
                    }
                }
            }
            _ if k.starts_with("env_") => {
                if ctx.env_name == Some(&k[4..]) {
                    let Value::Object(m) = v else { return Err(err(k, "expected a map of names to values".into())) };
                    for (name, val) in m {
                        if let Some(s) = str_of(val) {
                            env.insert(name.clone(), s);
                        }
                    }
                }
            }
            "instances" => {
                let cpus = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
                let n = match v {
                    Value::String(s) if s == "max" => 0,
                    _ => str_of(v)
                        .and_then(|s| s.parse::<i64>().ok())
                        .ok_or_else(|| err(k, format!("{v} is not a number")))?,
                };
                let n = match n {
                    0 => cpus,
                    n if n < 0 => (cpus + n).max(1),
                    n => n,
                };
                spec.instances = u32::try_from(n).map_err(|_| err(k, format!("{n} is out of range")))?;
            }
            "exec_mode" => {
                exec_mode_given = true;
                match v.as_str() {
                    Some("fork" | "fork_mode") => {}
                    Some("cluster" | "cluster_mode") => {
                        return Err(err(
                            k,
                            "\"cluster\" is not supported: pm2's cluster mode runs Node.js workers that share one port \
                             through pm2's built-in cluster module, which agentcom does not embed. Use fork mode (the \
                             default) with instances and a port per instance (NODE_APP_INSTANCE), or run this app under \
                             pm2 itself"
                                .into(),
                        ))
                    }
                    _ => return Err(err(k, format!("{v}: expected \"fork\""))),
                }
            }
            "autorestart" => {
                if !v.as_bool().ok_or_else(|| err(k, "expected true or false".into()))? {
                    spec.restart = RestartPolicy::Never;
                }
            }
            "autostart" => enabled = v.as_bool().ok_or_else(|| err(k, "expected true or false".into()))?,
            "restart_delay" => spec.restart_delay_ms = duration_ms(v).map_err(|e| err(k, e))?,
            "exp_backoff_restart_delay" => {
                let ms = duration_ms(v).map_err(|e| err(k, e))?.max(1);
                spec.restart_backoff_ms = ms;
                spec.restart_backoff_max_ms = ms.max(15_000);
                spec.restart_delay_ms = spec.restart_delay_ms.max(ms);
            }
            "kill_timeout" => spec.kill_timeout_ms = duration_ms(v).map_err(|e| err(k, e))?.max(1),
            "max_memory_restart" => spec.max_memory_bytes = Some(memory_bytes(v).map_err(|e| err(k, e))?),
            "min_uptime" => spec.min_uptime_ms = duration_ms(v).map_err(|e| err(k, e))?,
            "max_restarts" => {
                spec.max_restarts = v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| err(k, format!("{v} is not a count")))?
            }
            "stop_exit_codes" => {
                let list = match v {
                    Value::Array(a) => a.clone(),
                    other => vec![other.clone()],
                };
                spec.stop_exit_codes = list
                    .iter()
                    .map(|c| {
                        c.as_i64()
                            .and_then(|c| i32::try_from(c).ok())
                            .ok_or_else(|| err(k, format!("{c} is not an exit code")))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "watch" => {
                spec.watch = match v {
                    Value::Bool(true) => vec![cwd.display().to_string()],
                    Value::Bool(false) => Vec::new(),
                    other => string_list(other)
                        .map_err(|e| err(k, e))?
                        .iter()
                        .map(|p| absolute(&cwd, p).display().to_string())
                        .collect(),
                }
            }
            "ignore_watch" => spec.ignore_watch = string_list(v).map_err(|e| err(k, e))?,
            "watch_delay" => spec.watch_delay_ms = duration_ms(v).map_err(|e| err(k, e))?,
            "out_file" | "out" | "output" | "out_log" | "error_file" | "error" | "err" | "err_file" | "err_log"
            | "log_file" | "log" => {
                let path = match v {
                    Value::String(s) if s != "/dev/null" => Some(absolute(ctx.workdir, s).display().to_string()),
                    Value::String(_) | Value::Bool(false) => None,
                    Value::Bool(true) => {
                        warn(k, "true: give a path (the supervisor's own log files are used)");
                        None
                    }
                    _ => return Err(err(k, "expected a path".into())),
                };
                match k {
                    "out_file" | "out" | "output" | "out_log" => spec.out_file = path,
                    "error_file" | "error" | "err" | "err_file" | "err_log" => spec.error_file = path,
                    _ => spec.log_file = path,
                }
            }
            "merge_logs" | "combine_logs" => {
                merge_logs = v.as_bool().ok_or_else(|| err(k, "expected true or false".into()))?
            }
            "time" => spec.time = v.as_bool().ok_or_else(|| err(k, "expected true or false".into()))?,
            "log_date_format" => {
                spec.log_date_format = Some(str_of(v).ok_or_else(|| err(k, "expected a string".into()))?)
            }
            "cron_restart" | "cron" => match str_of(v) {
                Some(c) if c == "0" => spec.cron_restart = None,
                Some(c) => spec.cron_restart = Some(c),
                None => return Err(err(k, "expected a cron schedule".into())),
            },
            "port" => {
                env.entry("PORT".into()).or_insert(str_of(v).ok_or_else(|| err(k, "expected a port".into()))?);
            }
            _ => match IGNORED.iter().find(|(name, _)| *name == k) {
                Some((_, why)) => warn(k, why),
                None => warn(k, "not a pm2 app key (pm2 would drop it silently)"),
            },
        }
    }
    if spec.log_date_format.is_some() && !f.contains_key("time") {
        spec.time = true;
    }
    if spec.instances > 1 && !exec_mode_given && command.ends_with("node") {
        warnings.push(format!(
            "{}: pm2 would run these {} instances in cluster mode; agentcom runs them in fork mode ({name}-0 … {name}-{}, NODE_APP_INSTANCE set): give each its own port",
            at("instances").map(|l| format!("{}:{l}", ctx.file.display())).unwrap_or_else(|| ctx.file.display().to_string()),
            spec.instances,
            spec.instances - 1
        ));
    }
    if merge_logs && spec.instances > 1 && (spec.out_file.is_some() || spec.error_file.is_some()) {
        warnings.push(format!(
            "{}: merge_logs ignored: each instance keeps its own log files (a -N before the extension)",
            ctx.file.display()
        ));
    }
    if command.contains("python") {
        env.entry("PYTHONUNBUFFERED".into()).or_insert_with(|| "1".into());
    }
    spec.env = env;
    let problems = spec.validate();
    if let Some(p) = problems.first() {
        let key = p.split(':').next().unwrap_or("name");
        return Err(err(key, problems.join("; ").trim_start_matches(&format!("{key}: ")).to_string()));
    }
    Ok(Mapped { spec, enabled, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn app(v: Value) -> App {
        let Value::Object(fields) = v else { panic!() };
        let lines: HashMap<String, usize> = fields.keys().enumerate().map(|(i, k)| (k.clone(), i + 10)).collect();
        App { fields, line: Some(9), lines, index: 0 }
    }

    fn map(v: Value) -> Result<Mapped, DefError> {
        map_app(
            &app(v),
            &Ctx { file: Path::new("/ws/eco/ecosystem.edn"), workdir: Path::new("/ws"), env_name: Some("production") },
        )
    }

    #[test]
    fn the_seed_example_maps_key_by_key() {
        let m = map(json!({
            "name": "indexer", "script": "pnpm", "args": ["start", "--port", "9000"], "cwd": "./packages/indexer",
            "interpreter": "/usr/bin/env", "env": {"NODE_ENV": "production", "PM2_PROCESS_NAME": "indexer"},
            "autorestart": true, "restart_delay": 5000, "kill_timeout": 10000, "max_memory_restart": "1G",
            "min_uptime": 10000, "max_restarts": 10, "watch": ["./packages/indexer/dist"], "ignore_watch": ["node_modules", "logs"],
            "out_file": "./logs/indexer-out.log", "error_file": "./logs/indexer-err.log", "merge_logs": true, "time": true, "instances": 1
        }))
        .unwrap();
        let s = &m.spec;
        assert_eq!((s.name.as_str(), s.command.as_str()), ("indexer", "/usr/bin/env"));
        assert_eq!(s.args, ["pnpm", "start", "--port", "9000"]);
        assert_eq!(s.cwd.as_deref(), Some("/ws/packages/indexer"));
        assert_eq!((s.restart_delay_ms, s.kill_timeout_ms, s.min_uptime_ms, s.max_restarts), (5000, 10000, 10000, 10));
        assert_eq!(s.max_memory_bytes, Some(1 << 30));
        // As pm2 (chokidar's cwd is the app's): watch paths are below the app's cwd.
        assert_eq!(s.watch, ["/ws/packages/indexer/packages/indexer/dist"]);
        assert_eq!(s.ignore_watch, ["node_modules", "logs"]);
        assert_eq!(s.out_file.as_deref(), Some("/ws/logs/indexer-out.log"));
        assert_eq!((s.kill_signal.as_str(), s.time, s.instances), ("SIGINT", true, 1));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn interpreters_by_extension_and_scripts_through_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.js"), "").unwrap();
        std::fs::write(dir.path().join("tool.py"), "").unwrap();
        let ctx = Ctx { file: Path::new("/e.json"), workdir: dir.path(), env_name: None };
        let m = map_app(&app(json!({"script": "app.js", "node_args": "--max-old-space-size=100"})), &ctx).unwrap();
        let js = dir.path().join("app.js").display().to_string();
        assert_eq!((m.spec.name.as_str(), m.spec.command.as_str()), ("app", "node"));
        assert_eq!(m.spec.args, ["--max-old-space-size=100".to_string(), js]);
        let m = map_app(&app(json!({"name": "t", "script": "tool.py"})), &ctx).unwrap();
        assert_eq!((m.spec.command.as_str(), m.spec.env["PYTHONUNBUFFERED"].as_str()), ("python3", "1"));
        let m = map_app(&app(json!({"name": "s", "script": "sleep", "args": "10"})), &ctx).unwrap();
        assert_eq!((m.spec.command.as_str(), m.spec.args.as_slice()), ("sleep", ["10".to_string()].as_slice()));
        let m = map_app(&app(json!({"name": "b", "script": "echo hi && sleep 1"})), &ctx).unwrap();
        assert_eq!((m.spec.command.as_str(), m.spec.args[0].as_str()), ("bash", "-c"));
        let m = map_app(&app(json!({"name": "n", "script": "app.js", "interpreter": "none"})), &ctx).unwrap();
        assert!(m.spec.command.ends_with("app.js"));
        let e = map_app(&app(json!({"name": "x", "script": "./missing.sh"})), &ctx).unwrap_err();
        assert!(e.message.contains("script not found"), "{e}");
    }

    #[test]
    fn cluster_mode_is_refused_and_odd_keys_are_named() {
        let e = map(json!({"name": "c", "script": "sleep", "exec_mode": "cluster"})).unwrap_err();
        assert!(e.message.starts_with("exec_mode: \"cluster\" is not supported: pm2's cluster mode"), "{e}");
        assert_eq!(e.line, Some(10), "the line of exec_mode");
        let m = map(json!({"name": "w", "script": "sleep", "wait_ready": true, "colour": "blue", "env_production": {"A": "1"}, "env_dev": {"B": "2"}})).unwrap();
        assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
        // In the order of the file's lines, each with file:line.
        assert!(
            m.warnings[0].starts_with("/ws/eco/ecosystem.edn:10: colour ignored: not a pm2 app key"),
            "{:?}",
            m.warnings
        );
        assert!(m.warnings[1].contains("wait_ready ignored: agentcom does not wait"), "{:?}", m.warnings);
        assert_eq!(m.spec.env.get("A").map(String::as_str), Some("1"));
        assert!(!m.spec.env.contains_key("B"));
        let e = map(json!({"name": "m", "script": "sleep", "max_memory_restart": "lots"})).unwrap_err();
        assert!(e.message.starts_with("max_memory_restart: \"lots\" is not a size"), "{e}");
    }

    #[test]
    fn sizes_durations_and_argument_strings() {
        assert_eq!(memory_bytes(&json!("500M")).unwrap(), 500 << 20);
        assert_eq!(memory_bytes(&json!("200k")).unwrap(), 200 << 10);
        assert_eq!(memory_bytes(&json!(1024)).unwrap(), 1024);
        assert!(memory_bytes(&json!("1T")).is_err());
        assert_eq!(duration_ms(&json!("10s")).unwrap(), 10_000);
        assert_eq!(duration_ms(&json!("1500")).unwrap(), 1500);
        assert_eq!(duration_ms(&json!(250)).unwrap(), 250);
        assert!(duration_ms(&json!("soon")).is_err());
        assert_eq!(split_args("a \"b c\" d='e f'  g"), ["a", "b c", "d='e f'", "g"]);
    }

    #[test]
    fn instances_and_autostart() {
        let m = map(json!({"name": "i", "script": "sleep", "instances": 3, "autostart": false})).unwrap();
        assert_eq!((m.spec.instances, m.enabled), (3, false));
        let m = map(json!({"name": "i", "script": "sleep", "instances": "max"})).unwrap();
        assert!(m.spec.instances >= 1);
    }
}
