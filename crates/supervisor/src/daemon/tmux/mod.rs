//! Processes with a real terminal: each runs in a session of a tmux server private to the
//! supervisor (`<dir>/tmux.sock`, no user config), so a person can attach to it and an
//! operator can type into it.
//!
//! tmux is told nothing of the user's: it parses its arguments (a word ending in `;` ends a
//! command) and expands formats in a start directory (`#(...)` runs a command). So the pane
//! runs a fixed trampoline, `/bin/sh -c TRAMPOLINE`, which sources an exec file the supervisor
//! wrote in its private folder: `cd` to the working directory and `exec` the argv, every word
//! single-quoted. The command is checked first as a native spawn would find it
//! ([`spawn::check_exec`]), so the same command means the same thing with and without tmux.
//!
//! tmux owns the pane's process: its death is reported by tmux itself (the `pane-died` hook,
//! [`died`]) with the status tmux read; the pane's output reaches the usual log files through
//! `pipe-pane` and a FIFO.

pub mod died;

use super::spawn;
use super::{ENV_NAME, ENV_SOCKET};
use crate::logs::{self, SharedSink, Stream};
use proto::control::ProcSpec;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The pane's environment names the exec file here; the trampoline unsets it.
const ENV_EXEC: &str = "AGENTCOM_TMUX_EXEC";
/// Runs the exec file, without a trace of our own variables.
const TRAMPOLINE: &str = "f=$AGENTCOM_TMUX_EXEC; unset AGENTCOM_TMUX_EXEC AGENTCOM_TMUX_EVENTS; . \"$f\"";

pub fn socket(dir: &Path) -> PathBuf {
    dir.join("tmux.sock")
}

/// tmux session names may not hold `.` or `:`; a hash of the real name keeps them distinct.
pub fn session_name(name: &str) -> String {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    format!("{safe}_{:08x}", hash as u32)
}

/// `s` as one word of `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `s` as literal text in a tmux format (`pipe-pane` expands formats and `strftime` sequences).
fn literal_in_format(s: &str) -> String {
    s.replace('#', "##").replace('%', "%%")
}

fn tmux(dir: &Path) -> std::process::Command {
    let mut c = std::process::Command::new("tmux");
    c.arg("-S").arg(socket(dir)).arg("-f").arg("/dev/null");
    c.stdin(std::process::Stdio::null());
    c
}

fn run(mut c: std::process::Command) -> Result<String, String> {
    let out = c.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "tmux is not installed (apt-get install tmux)".to_string(),
        _ => format!("cannot run tmux: {e}"),
    })?;
    if !out.status.success() {
        return Err(format!("tmux: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Stops a tmux server left by an earlier supervisor (its processes were stopped by group).
/// Blocking.
pub fn kill_server(dir: &Path) {
    if socket(dir).exists() {
        let mut c = tmux(dir);
        c.arg("kill-server").stderr(std::process::Stdio::null());
        let _ = c.output();
        let _ = std::fs::remove_file(socket(dir));
    }
}

/// The FIFO that `pipe-pane` writes the pane's output into (and the task that pumps it into the
/// process's log sink), and the exec file of the process. One per process for its whole life:
/// every restart's pane writes to the same FIFO. Dropping it stops the pump and removes both.
pub struct Output {
    pub fifo: PathBuf,
    pub exec: PathBuf,
    pump: tokio::task::AbortHandle,
}

impl Drop for Output {
    fn drop(&mut self) {
        self.pump.abort();
        let _ = std::fs::remove_file(&self.fifo);
        let _ = std::fs::remove_file(&self.exec);
    }
}

fn private_dir(dir: &Path) -> Result<PathBuf, String> {
    let d = dir.join("tmux");
    std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    Ok(d)
}

/// Opens the output FIFO of process `name`; the pump runs on the current runtime.
pub fn open_output(dir: &Path, name: &str, sink: &SharedSink) -> Result<Output, String> {
    let d = private_dir(dir)?;
    let fifo = d.join(format!("{}.fifo", session_name(name)));
    let exec = d.join(format!("{}.exec", session_name(name)));
    let rx = died::open_fifo(&fifo)?;
    let pump = tokio::spawn(logs::pump(rx, sink.clone(), Stream::Out)).abort_handle();
    Ok(Output { fifo, exec, pump })
}

/// The exec file: the working directory and the argv, each a single-quoted word, so the shell
/// that sources it expands none of them.
fn exec_script(spec: &ProcSpec) -> String {
    let mut s = String::new();
    if let Some(cwd) = &spec.cwd {
        s.push_str(&format!("cd -- {} || exit 126\n", quote(cwd)));
    }
    s.push_str("exec");
    for w in std::iter::once(&spec.command).chain(&spec.args) {
        s.push(' ');
        s.push_str(&quote(w));
    }
    s.push('\n');
    s
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The pane tmux started: its id (unique for the server's life) and its process.
#[derive(Debug, Clone)]
pub struct Pane {
    pub id: String,
    pub pid: u32,
    /// The process's start time, so a reused pid is never mistaken for it.
    pub start_ticks: Option<u64>,
    /// The tmux server: the pane's parent, which reaps it.
    pub server: i32,
}

/// tmux spawns are one at a time: the server's options (`update-environment` above all) are
/// set for each.
static SPAWNING: Mutex<()> = Mutex::new(());

/// Starts the command in a new session (its own process group: tmux makes each pane's process
/// a session leader). Blocking: run it off the event loop. Its death is reported to `deaths`.
pub fn spawn(
    dir: &Path,
    spec: &ProcSpec,
    supervisor_socket: &Path,
    fifo: &Path,
    exec: &Path,
    deaths: &died::Deaths,
) -> Result<Pane, String> {
    spawn::check_exec(spec)?;
    let _one = SPAWNING.lock().unwrap_or_else(|p| p.into_inner());
    let session = session_name(&spec.name);
    // A session left by an earlier run of this process is replaced.
    let mut stale = tmux(dir);
    stale.args(["kill-session", "-t", &format!("={session}")]).stderr(std::process::Stdio::null());
    let _ = stale.output();
    // The server starts with the supervisor's own environment, as a forked child would have it.
    let mut server = tmux(dir);
    server.args(["start-server", ";", "set-option", "-g", "exit-empty", "off", ";"]);
    server.args(["set-option", "-gw", "remain-on-exit", "on", ";"]);
    server.args(["set-hook", "-g", "pane-died", &died::hook(), ";"]);
    server.arg("set-environment").arg("-g").arg(died::ENV_EVENTS).arg(deaths.fifo());
    run(server)?;
    write_private(exec, &exec_script(spec))?;
    // The process's own variables travel in this client's environment, named in
    // `update-environment` so tmux copies them into the new session: never on a command line,
    // where any local user could read them.
    let mut names: Vec<&str> = spec.env.keys().map(String::as_str).collect();
    names.extend([ENV_NAME, ENV_SOCKET, ENV_EXEC]);
    let mut c = tmux(dir);
    c.envs(&spec.env).env(ENV_NAME, &spec.name).env(ENV_SOCKET, supervisor_socket).env(ENV_EXEC, exec);
    c.args(["set-option", "-g", "update-environment", &names.join(" "), ";"]);
    c.args(["new-session", "-d", "-s", &session, "-x", "200", "-y", "50", "-P", "-F", "#{pane_id} #{pane_pid} #{pid}"]);
    c.args(["--", "/bin/sh", "-c", TRAMPOLINE]);
    // In the same command queue as the new session: no output is missed before the pipe.
    let cat = format!("cat >> {}", quote(&literal_in_format(&fifo.display().to_string())));
    c.args([";", "pipe-pane", "-O", "-t", &format!("={session}:"), &cat]);
    let printed = run(c)?;
    let (id, pid, server) = printed
        .lines()
        .find_map(|l| {
            let mut w = l.split(' ');
            Some((w.next()?.to_string(), w.next()?.parse::<u32>().ok()?, w.next()?.parse::<i32>().ok()?))
        })
        .ok_or_else(|| format!("tmux did not say which process it started: {printed:?}"))?;
    let start_ticks = osutil::procfs::stat(pid as i32).map(|s| s.start_ticks);
    Ok(Pane { id, pid, start_ticks, server })
}

/// Types `text` into the session's pane, then Enter. Blocking.
pub fn send(dir: &Path, name: &str, text: &str, enter: bool) -> Result<(), String> {
    let target = format!("={}:", session_name(name));
    let mut c = tmux(dir);
    c.args(["send-keys", "-t", &target, "-l", "--", text]);
    run(c)?;
    if enter {
        let mut c = tmux(dir);
        c.args(["send-keys", "-t", &target, "Enter"]);
        run(c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_safe_and_distinct() {
        let a = session_name("daemons:web.api");
        assert!(a.starts_with("daemons_web_api_") && !a.contains(['.', ':']), "{a}");
        assert_ne!(session_name("a.b"), session_name("a_b"));
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn the_exec_file_quotes_every_word_and_tmux_sees_only_fixed_ones() {
        let mut s = ProcSpec::new("x", "sh", vec!["-c".into(), "echo \"$1\"; x".into(), ";".into(), "it's".into()]);
        s.cwd = Some("/w/#(touch p)/#{pane_pid}".into());
        assert_eq!(
            exec_script(&s),
            "cd -- '/w/#(touch p)/#{pane_pid}' || exit 126\nexec 'sh' '-c' 'echo \"$1\"; x' ';' 'it'\\''s'\n"
        );
        // The trampoline is all tmux gets: no word ends in `;`, no format.
        assert!(!TRAMPOLINE.ends_with(';') && !TRAMPOLINE.contains('#'));
        assert!(TRAMPOLINE.contains(ENV_EXEC) && TRAMPOLINE.contains(died::ENV_EVENTS));
        assert_eq!(literal_in_format("/a#{b}%Y"), "/a##{b}%%Y");
    }
}
