//! pm2's ecosystem files as daemon definitions: `ecosystem.edn` and any `*.edn` whose top level
//! is a map with `:apps`, and `ecosystem.config.{js,cjs,mjs,json}`. A JS file is evaluated the
//! way pm2 does it, by `require` in `node` (a clear error when node is missing); EDN is read
//! with [`crate::edn`], keeping each key's line for errors.

use crate::edn::{self, Edn, Node};
use crate::spec::DefError;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// One app of a file: its fields as JSON, and the line of each key when the format has lines.
#[derive(Debug, Clone)]
pub struct App {
    pub fields: Map<String, Value>,
    pub line: Option<usize>,
    pub lines: HashMap<String, usize>,
    /// Its place in `apps`, for messages about a file without lines.
    pub index: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Edn,
    Js,
    Json,
}

/// Whether a file name is one we read, and how.
pub fn format_of(file_name: &str) -> Option<Format> {
    match file_name {
        "ecosystem.config.js" | "ecosystem.config.cjs" | "ecosystem.config.mjs" => Some(Format::Js),
        "ecosystem.config.json" | "ecosystem.json" => Some(Format::Json),
        n if n.ends_with(".edn") => Some(Format::Edn),
        _ => None,
    }
}

/// The most a definition file may hold.
const MAX_FILE: u64 = 4 * 1024 * 1024;
/// How long `node` may take to evaluate a JS file.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);

fn def_err(file: &Path, line: Option<usize>, message: impl Into<String>) -> DefError {
    DefError { file: file.display().to_string(), line, message: message.into() }
}

fn read_text(file: &Path) -> Result<String, DefError> {
    let meta = std::fs::metadata(file).map_err(|e| def_err(file, None, format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE {
        return Err(def_err(
            file,
            None,
            format!("{} bytes: larger than the {MAX_FILE} bytes a definition may hold", meta.len()),
        ));
    }
    std::fs::read_to_string(file).map_err(|e| def_err(file, None, format!("cannot read: {e}")))
}

/// The apps of a file, or `None` for an `.edn` file that holds no `:apps` (not ours: a
/// `deps.edn`, say). `workdir` is where `node` runs, as pm2 runs from the workspace root.
pub fn read(file: &Path, workdir: &Path) -> Result<Option<Vec<App>>, DefError> {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match format_of(name) {
        None => Ok(None),
        Some(Format::Edn) => {
            let text = read_text(file)?;
            let strict = name == "ecosystem.edn";
            match edn::parse(&text) {
                Ok(node) => from_edn(file, node, strict),
                // Another .edn file that does not parse is only ours if it mentions :apps.
                Err(e) if strict || text.contains(":apps") => Err(def_err(file, Some(e.line), e.message)),
                Err(_) => Ok(None),
            }
        }
        Some(Format::Json) => {
            let text = read_text(file)?;
            let v: Value = serde_json::from_str(&text).map_err(|e| def_err(file, Some(e.line()), e.to_string()))?;
            from_json(file, v).map(Some)
        }
        Some(Format::Js) => from_json(file, eval_js(file, workdir, NODE_TIMEOUT)?).map(Some),
    }
}

fn from_edn(file: &Path, node: Node, strict: bool) -> Result<Option<Vec<App>>, DefError> {
    let apps = match &node.value {
        Edn::Map(pairs) => pairs.iter().find(|(k, _)| k.value == Edn::Keyword("apps".into())).map(|(_, v)| v),
        _ => None,
    };
    let Some(apps) = apps else {
        return if strict {
            Err(def_err(file, Some(node.line), "expected a map with :apps (a vector of app maps)"))
        } else {
            Ok(None)
        };
    };
    let (Edn::Vector(list) | Edn::List(list)) = &apps.value else {
        return Err(def_err(
            file,
            Some(apps.line),
            format!(":apps: expected a vector of maps, got {}", edn::show(&apps.value)),
        ));
    };
    let mut out = Vec::new();
    for (index, app) in list.iter().enumerate() {
        let Edn::Map(pairs) = &app.value else {
            return Err(def_err(file, Some(app.line), format!(":apps: expected a map, got {}", edn::show(&app.value))));
        };
        let mut fields = Map::new();
        let mut lines = HashMap::new();
        for (k, v) in pairs {
            let key = key_of(file, k)?;
            lines.insert(key.clone(), k.line);
            fields.insert(key, to_json(file, v)?);
        }
        out.push(App { fields, line: Some(app.line), lines, index });
    }
    Ok(Some(out))
}

fn key_of(file: &Path, k: &Node) -> Result<String, DefError> {
    match &k.value {
        Edn::Keyword(s) | Edn::Str(s) | Edn::Symbol(s) => Ok(s.clone()),
        other => {
            Err(def_err(file, Some(k.line), format!("a key must be a keyword or a string, not {}", edn::show(other))))
        }
    }
}

/// EDN into the JSON shape pm2 apps have: keywords become their names, sets and lists arrays,
/// tagged values their inner value.
fn to_json(file: &Path, n: &Node) -> Result<Value, DefError> {
    Ok(match &n.value {
        Edn::Nil => Value::Null,
        Edn::Bool(b) => Value::Bool(*b),
        Edn::Str(s) | Edn::Keyword(s) | Edn::Symbol(s) => Value::String(s.clone()),
        Edn::Char(c) => Value::String(c.to_string()),
        Edn::Int(i) => Value::from(*i),
        Edn::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number).unwrap_or(Value::Null),
        Edn::List(items) | Edn::Vector(items) | Edn::Set(items) => {
            Value::Array(items.iter().map(|i| to_json(file, i)).collect::<Result<_, _>>()?)
        }
        Edn::Map(pairs) => {
            let mut m = Map::new();
            for (k, v) in pairs {
                m.insert(key_of(file, k)?, to_json(file, v)?);
            }
            Value::Object(m)
        }
        Edn::Tagged(_, inner) => to_json(file, inner)?,
    })
}

fn from_json(file: &Path, v: Value) -> Result<Vec<App>, DefError> {
    let list = match v {
        Value::Object(mut m) => match m.remove("apps") {
            Some(Value::Array(a)) => a,
            Some(Value::Object(one)) => vec![Value::Object(one)],
            _ => return Err(def_err(file, None, "expected module.exports = { apps: [...] }")),
        },
        Value::Array(a) => a,
        _ => return Err(def_err(file, None, "expected module.exports = { apps: [...] }")),
    };
    list.into_iter()
        .enumerate()
        .map(|(index, app)| match app {
            Value::Object(fields) => Ok(App { fields, line: None, lines: HashMap::new(), index }),
            other => Err(def_err(file, None, format!("apps[{index}]: expected an object, got {other}"))),
        })
        .collect()
}

/// What `node` runs: pm2's own way to read an ecosystem file (`require`, `import()` for ES
/// modules), writing `module.exports` as JSON to the file named by its second argument and an
/// error to the third. Files, not pipes: a child the ecosystem file starts (detached or not)
/// could hold a pipe open for ever, and a read that waits for it would hang `plan` and `watch`.
const NODE_SCRIPT: &str = r#"
const fs = require('fs'), path = require('path'), url = require('url');
const f = path.resolve(process.argv[1]);
(async () => {
  let m;
  try { m = require(f); }
  catch (e) {
    if (e && (e.code === 'ERR_REQUIRE_ESM' || e.code === 'ERR_REQUIRE_ASYNC_MODULE') || /\.mjs$/.test(f)) m = await import(url.pathToFileURL(f).href);
    else throw e;
  }
  if (m && m.default && !m.apps) m = m.default;
  fs.writeFileSync(process.argv[2], JSON.stringify(m === undefined ? null : m));
  process.exit(0);
})().catch(e => { fs.writeFileSync(process.argv[3], String(e && e.stack || e)); process.exit(1); });
"#;

/// Evaluates a JS ecosystem file with `node` in `workdir`, within `limit`. `node` runs in a
/// process group of its own, killed when it is done or at the deadline: whatever the file
/// started goes with it, and nothing it does can make us wait past `limit`.
pub fn eval_js(file: &Path, workdir: &Path, limit: Duration) -> Result<Value, DefError> {
    use std::os::unix::process::CommandExt;
    let scratch = tempfile::tempdir().map_err(|e| def_err(file, None, format!("cannot make a scratch folder: {e}")))?;
    let (out_path, err_path) = (scratch.path().join("apps.json"), scratch.path().join("error.txt"));
    let mut child = std::process::Command::new("node")
        .arg("-e")
        .arg(NODE_SCRIPT)
        .arg(file)
        .arg(&out_path)
        .arg(&err_path)
        .current_dir(workdir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => def_err(
                file,
                None,
                "node is needed to read a JS ecosystem file (pm2 evaluates it with node) and is not on PATH: \
                 install Node.js, or write the apps as ecosystem.json or ecosystem.edn",
            ),
            _ => def_err(file, None, format!("cannot run node: {e}")),
        })?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let kill_group = || {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    };
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                kill_group();
                let _ = child.wait();
                return Err(def_err(file, None, format!("node did not finish within {} s", limit.as_secs())));
            }
        }
    };
    kill_group();
    let capped = |p: &Path| -> Vec<u8> {
        let mut buf = Vec::new();
        if let Ok(f) = std::fs::File::open(p) {
            let _ = f.take(MAX_FILE * 4).read_to_end(&mut buf);
        }
        buf
    };
    if !status.success() {
        let text = String::from_utf8_lossy(&capped(&err_path)).into_owned();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        let cause = text.lines().find(|l| l.contains("Error")).unwrap_or(first);
        return Err(def_err(file, None, format!("node could not evaluate it ({status}): {}", cause.trim())));
    }
    serde_json::from_slice(&capped(&out_path)).map_err(|e| def_err(file, None, format!("node printed no JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edn_apps_with_key_lines_and_other_edn_files_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ecosystem.edn");
        std::fs::write(&f, "{:apps [{:name \"a\"\n :script \"sleep\" :args [\"9\"]}\n {:name \"b\" :script \"x\"}]}")
            .unwrap();
        let apps = read(&f, dir.path()).unwrap().unwrap();
        assert_eq!(apps.len(), 2);
        assert_eq!(apps[0].fields["args"], serde_json::json!(["9"]));
        assert_eq!((apps[0].lines["name"], apps[0].lines["script"], apps[1].line), (1, 2, Some(3)));
        let deps = dir.path().join("deps.edn");
        std::fs::write(&deps, "{:deps {org.clojure/clojure {:mvn/version \"1.11\"}}}").unwrap();
        assert!(read(&deps, dir.path()).unwrap().is_none(), "not a definition");
        std::fs::write(&f, "{:apps [{:name \"a\"}\n").unwrap();
        let e = read(&f, dir.path()).unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        std::fs::write(&f, "{:services []}").unwrap();
        assert!(read(&f, dir.path()).unwrap_err().message.contains(":apps"));
    }

    #[test]
    fn json_files_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ecosystem.config.json");
        std::fs::write(&f, r#"{"apps": [{"name": "j", "script": "sleep"}]}"#).unwrap();
        assert_eq!(read(&f, dir.path()).unwrap().unwrap()[0].fields["name"], "j");
        std::fs::write(&f, "{\n\"apps\": [\n}").unwrap();
        assert_eq!(read(&f, dir.path()).unwrap_err().line, Some(3));
    }

    /// Runs `eval_js` on a thread; the generous wait only keeps a regression from hanging the
    /// suite (the old reader waited for a pipe a detached child held open for ever).
    fn eval_bounded(file: &Path, dir: &Path, limit: Duration) -> Result<Value, DefError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (f, d) = (file.to_path_buf(), dir.to_path_buf());
        std::thread::spawn(move || tx.send(eval_js(&f, &d, limit)));
        rx.recv_timeout(Duration::from_secs(120)).expect("eval_js returned")
    }

    fn processes_with(marker: &str) -> Vec<i32> {
        osutil::procfs::groups_with_env(&[("ECOSYSTEM_TEST_MARKER", marker)])
    }

    #[test]
    fn a_js_file_that_leaves_children_holding_its_output_is_read_and_its_group_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = format!("m{}", std::process::id());
        let f = dir.path().join("ecosystem.config.js");
        std::fs::write(
            &f,
            format!(
                "const cp = require('child_process');\n\
                 const env = {{...process.env, ECOSYSTEM_TEST_MARKER: '{marker}'}};\n\
                 cp.spawn('sleep', ['300'], {{detached: true, stdio: ['ignore', 'inherit', 'inherit'], env}}).unref();\n\
                 cp.spawn('sleep', ['301'], {{stdio: ['ignore', 'inherit', 'inherit'], env}}).unref();\n\
                 module.exports = {{apps: [{{name: 'a', script: 'sleep', args: '1'}}]}};\n"
            ),
        )
        .unwrap();
        let v = eval_bounded(&f, dir.path(), Duration::from_secs(30)).unwrap();
        assert_eq!(v["apps"][0]["name"], "a");
        // The child in node's own group went with it; the detached one is in a group of its own.
        let left = processes_with(&marker);
        assert_eq!(left.len(), 1, "only the detached child is left: {left:?}");
        for pg in left {
            osutil::pgroup::kill_group_now(pg, nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
        }
    }

    #[test]
    fn a_js_file_that_never_finishes_is_stopped_at_the_deadline_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = format!("n{}", std::process::id());
        let f = dir.path().join("ecosystem.config.js");
        std::fs::write(
            &f,
            format!(
                "require('child_process').spawn('sleep', ['300'], {{stdio: 'inherit', env: {{...process.env, ECOSYSTEM_TEST_MARKER: '{marker}'}}}});\n\
                 while (true) {{}}\n"
            ),
        )
        .unwrap();
        let e = eval_bounded(&f, dir.path(), Duration::from_millis(1500)).unwrap_err();
        assert!(e.message.contains("did not finish within"), "{e:?}");
        let gone = (0..1000).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            processes_with(&marker).is_empty()
        });
        assert!(gone, "the sleep node started was killed with its group");
    }
}
