//! Starting one child: its own process group, its environment markers, its output into the
//! log sink. A command that cannot be executed is an error that says why, in words, and the
//! same words whether it runs natively or in tmux ([`check_exec`]).

use super::{ENV_NAME, ENV_SOCKET};
use crate::logs::{self, LogFile, LogSink, SharedSink, Stamp, StampFormat, Stream};
use proto::control::ProcSpec;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The log files of a process: its `out_file` and `error_file`, by default
/// `<dir>/logs/<name>-out.log` and `-err.log`.
pub fn log_paths(dir: &Path, spec: &ProcSpec) -> (PathBuf, PathBuf) {
    let logs = dir.join("logs");
    let name = &spec.name;
    (
        spec.out_file.as_ref().map(PathBuf::from).unwrap_or_else(|| logs.join(format!("{name}-out.log"))),
        spec.error_file.as_ref().map(PathBuf::from).unwrap_or_else(|| logs.join(format!("{name}-err.log"))),
    )
}

/// Opens every log file of a process behind one sink.
pub fn open_sink(dir: &Path, spec: &ProcSpec) -> std::io::Result<SharedSink> {
    let (out, err) = log_paths(dir, spec);
    let out = LogFile::open(&out, spec.log_max_bytes, spec.log_keep)?;
    let err = LogFile::open(&err, spec.log_max_bytes, spec.log_keep)?;
    let combined =
        spec.log_file.as_ref().map(|f| LogFile::open(Path::new(f), spec.log_max_bytes, spec.log_keep)).transpose()?;
    Ok(LogSink::new(out, err, combined, Stamp::new(StampFormat::of(spec))).shared())
}

/// Why a spawn failed, as a person would say it.
pub fn exec_error(spec: &ProcSpec, e: &std::io::Error) -> String {
    if let Some(cwd) = &spec.cwd {
        if !Path::new(cwd).is_dir() {
            return format!("working directory {cwd} does not exist");
        }
    }
    let cmd = &spec.command;
    match e.kind() {
        std::io::ErrorKind::NotFound if cmd.contains('/') => format!("{cmd}: no such file"),
        std::io::ErrorKind::NotFound => format!("{cmd}: command not found in PATH"),
        std::io::ErrorKind::PermissionDenied => format!("{cmd}: permission denied (not executable?)"),
        _ => format!("{cmd}: {e}"),
    }
}

/// Whether the command would execute, found as `execvp` finds it (through the `PATH` of its
/// environment unless it holds a `/`, then relative to its working directory), with
/// [`exec_error`]'s words when not. A process that only a shell could start (one word with a
/// space in it, say) does not start, in tmux as natively.
pub fn check_exec(spec: &ProcSpec) -> Result<(), String> {
    let error = |kind: std::io::ErrorKind| Err(exec_error(spec, &kind.into()));
    if spec.cwd.as_ref().is_some_and(|c| !Path::new(c).is_dir()) {
        return error(std::io::ErrorKind::NotFound);
    }
    let executable = |p: &Path| p.is_file() && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok();
    let cmd = Path::new(&spec.command);
    if spec.command.contains('/') {
        let path = match &spec.cwd {
            Some(cwd) if cmd.is_relative() => Path::new(cwd).join(cmd),
            _ => cmd.to_path_buf(),
        };
        return match (path.exists(), executable(&path)) {
            (_, true) => Ok(()),
            (true, false) => error(std::io::ErrorKind::PermissionDenied),
            (false, _) => error(std::io::ErrorKind::NotFound),
        };
    }
    let path = spec.env.get("PATH").cloned().or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
    let base = spec.cwd.as_deref().map(PathBuf::from).unwrap_or_default();
    let mut found = false;
    for dir in path.split(':') {
        // An empty entry is the working directory, as for `execvp`.
        let candidate = if dir.is_empty() { base.join(cmd) } else { Path::new(dir).join(cmd) };
        if executable(&candidate) {
            return Ok(());
        }
        found |= candidate.exists();
    }
    error(if found { std::io::ErrorKind::PermissionDenied } else { std::io::ErrorKind::NotFound })
}

/// Spawns the process in its own group and pumps its output into `sink`; the caller waits for
/// the child. Must run within the runtime (the pumps are tasks).
pub fn spawn_fork(spec: &ProcSpec, socket: &Path, sink: &SharedSink) -> Result<tokio::process::Child, String> {
    let mut c = tokio::process::Command::new(&spec.command);
    c.args(&spec.args)
        .envs(&spec.env)
        .env(ENV_NAME, &spec.name)
        .env(ENV_SOCKET, socket)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    if let Some(cwd) = &spec.cwd {
        c.current_dir(cwd);
    }
    let mut child = c.spawn().map_err(|e| exec_error(spec, &e))?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(logs::pump(out, sink.clone(), Stream::Out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(logs::pump(err, sink.clone(), Stream::Err));
    }
    Ok(child)
}

/// A child's end as the table takes it: the code (128 + signal when killed) and words.
pub async fn wait(mut child: tokio::process::Child) -> (Option<i32>, String) {
    match child.wait().await {
        Ok(s) => {
            (s.code().or_else(|| std::os::unix::process::ExitStatusExt::signal(&s).map(|sig| 128 + sig)), s.to_string())
        }
        Err(e) => (None, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_exec_says_what_a_native_spawn_would() {
        let mut s = ProcSpec::new("x", "sh", vec![]);
        assert_eq!(check_exec(&s), Ok(()));
        // One word with a space is one (missing) program, as `execvp` takes it.
        s.command = "touch x".into();
        assert_eq!(check_exec(&s), Err("touch x: command not found in PATH".into()));
        s.command = "touch /tmp/x".into();
        assert_eq!(check_exec(&s), Err("touch /tmp/x: no such file".into()));
        s.command = "/nonexistent/bin".into();
        assert_eq!(check_exec(&s), Err("/nonexistent/bin: no such file".into()));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "data").unwrap();
        s.command = plain.display().to_string();
        assert_eq!(check_exec(&s), Err(format!("{}: permission denied (not executable?)", plain.display())));
        // Relative to its working directory, as after the `chdir` of a native spawn.
        s.command = "./plain".into();
        s.cwd = Some(dir.path().display().to_string());
        assert_eq!(check_exec(&s), Err("./plain: permission denied (not executable?)".into()));
        s.cwd = None;
        s.command = "sh".into();
        s.env.insert("PATH".into(), "/nonexistent".into());
        assert_eq!(check_exec(&s), Err("sh: command not found in PATH".into()));
        s.env.clear();
        s.cwd = Some("/nonexistent".into());
        assert_eq!(check_exec(&s), Err("working directory /nonexistent does not exist".into()));
    }
}
