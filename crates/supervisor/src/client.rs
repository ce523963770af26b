//! Talking to a running supervisor over its Unix socket, and launching one in the background.

use crate::daemon::socket_path;
use proto::control::{Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no supervisor running (no answer on {0}); start one with `agentcom supervisor` or `agentcom start`")]
    NotRunning(String),
    #[error("supervisor connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the supervisor answered something unexpected: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
    #[error("could not launch a supervisor: {0}")]
    Launch(String),
}

pub struct Client {
    stream: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(dir: &Path) -> Result<Client, ClientError> {
        let path = socket_path(dir);
        let stream = UnixStream::connect(&path).map_err(|_| ClientError::NotRunning(path.display().to_string()))?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Client { stream: BufReader::new(stream) })
    }

    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let mut line = serde_json::to_vec(req).expect("requests serialize");
        line.push(b'\n');
        self.stream.get_mut().write_all(&line)?;
        let mut answer = String::new();
        if self.stream.read_line(&mut answer)? == 0 {
            return Err(ClientError::Protocol("connection closed".into()));
        }
        let resp: Response = serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match resp {
            Response::Error { error } => Err(ClientError::Refused(error)),
            other => Ok(other),
        }
    }
}

/// The supervisor state dir: `AGENTCOM_SUPERVISOR_DIR`, else one per user wherever a command
/// runs, as pm2 keeps `~/.pm2`: `~/.agentcom/supervisor` (`$HOME`, else the user's home in
/// the password database; only with neither, `./agentcom-data/supervisor`).
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AGENTCOM_SUPERVISOR_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match home_dir() {
        Some(home) => home.join(".agentcom").join("supervisor"),
        None => PathBuf::from("./agentcom-data/supervisor"),
    }
}

/// The name of the user we run as, and of the user whose `sudo` started us if any (`SUDO_USER`).
pub fn user_names() -> (Option<String>, Option<String>) {
    let me = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name);
    let sudo = std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty() && u != "root");
    (me, sudo)
}

/// A user's home, from the password database.
pub fn home_of(user: &str) -> Option<PathBuf> {
    nix::unistd::User::from_name(user).ok().flatten().map(|u| u.dir)
}

/// The user's home: `$HOME` when it is an absolute path, else the password database's.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_absolute())
        .or_else(|| nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.dir))
}

/// Connects to the supervisor, launching `exe supervisor` in the background first if none
/// answers (as `pm2 start` does). Its output goes to `<dir>/supervisor.log`.
pub fn connect_or_launch(dir: &Path, exe: &Path) -> Result<Client, ClientError> {
    if let Ok(c) = Client::connect(dir) {
        return Ok(c);
    }
    std::fs::create_dir_all(dir)?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("supervisor.log"))?;
    let abs = std::fs::canonicalize(dir)?;
    std::process::Command::new(exe)
        .arg("supervisor")
        .env("AGENTCOM_SUPERVISOR_DIR", &abs)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this terminal does not reach the daemon.
        .process_group(0)
        .spawn()
        .map_err(|e| ClientError::Launch(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = Client::connect(dir) {
            if c.call(&Request::Ping).is_ok() {
                return Ok(c);
            }
        }
        if Instant::now() > deadline {
            return Err(ClientError::Launch(format!(
                "no answer within 10 s; see {}",
                dir.join("supervisor.log").display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pid in `<dir>/supervisor.pid`, if any.
pub fn supervisor_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("supervisor.pid")).ok()?.trim().parse().ok()
}

/// Waits until `pid` is gone (or a zombie), at most `limit`.
pub fn wait_gone(pid: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while osutil::procfs::stat(pid).is_some_and(|s| s.state != 'Z') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}
