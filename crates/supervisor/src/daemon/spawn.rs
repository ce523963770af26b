//! Starting one child: its own process group, its environment markers, its output into the
//! log sink. A command that cannot be executed is an error that says why, in words.

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
