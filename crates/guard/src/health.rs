//! The health window of an upgrade: the process must stay online, without restarting, and its
//! health check pass continuously for `stable_for` within `timeout`. A check is an `http://`
//! or `https://` URL answering 2xx (reqwest, trusting the built-in roots and a CA file) or a
//! command exiting 0.

use crate::git::{run_with_timeout, CommandError, Repo};
use crate::GuardError;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use supervisor::backend::Backend;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("health URL {url}: answered {status}")]
    Status { url: String, status: u16 },
    #[error("health check `{cmd}` failed: {source}")]
    Command { cmd: String, source: CommandError },
    #[error("health CA file: {0}")]
    CaFile(String),
}

/// One health check, built once per window: an HTTP client (its TLS configuration read once)
/// or a command.
pub enum Check {
    Http {
        url: String,
        client: reqwest::blocking::Client,
        limit: Duration,
    },
    /// `logs`: the guard's own folder (the repository's git dir), where its output goes.
    Command {
        cmd: String,
        dir: PathBuf,
        logs: PathBuf,
        limit: Duration,
    },
}

impl Check {
    pub fn new(
        health: &str,
        ca_file: Option<&Path>,
        dir: &Path,
        logs: &Path,
        limit: Duration,
    ) -> Result<Check, HealthError> {
        if !(health.starts_with("http://") || health.starts_with("https://")) {
            let (cmd, dir, logs) = (health.to_string(), dir.to_path_buf(), logs.to_path_buf());
            return Ok(Check::Command { cmd, dir, logs, limit });
        }
        let tls = osutil::tls::client_config(ca_file).map_err(HealthError::CaFile)?;
        let client = reqwest::blocking::Client::builder()
            .timeout(limit)
            .connect_timeout(limit)
            .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
            .build()
            .map_err(|e| HealthError::Url { url: health.to_string(), reason: root_cause(&e) })?;
        Ok(Check::Http { url: health.to_string(), client, limit })
    }

    pub fn run(&self) -> Result<(), HealthError> {
        match self {
            Check::Http { url, client, limit } => {
                let resp = client.get(url).send().map_err(|e| {
                    let reason = if e.is_timeout() {
                        format!("no answer within {}", humantime::format_duration(*limit))
                    } else {
                        root_cause(&e)
                    };
                    HealthError::Url { url: url.clone(), reason }
                })?;
                let status = resp.status().as_u16();
                if (200..300).contains(&status) {
                    Ok(())
                } else {
                    Err(HealthError::Status { url: url.clone(), status })
                }
            }
            Check::Command { cmd, dir, logs, limit } => {
                // In the guard's own folder, never a guessable name in a shared one.
                let log = logs.join(format!("agentcom-health-{}.log", std::process::id()));
                let r = run_with_timeout(cmd, dir, *limit, &log)
                    .map_err(|source| HealthError::Command { cmd: cmd.clone(), source });
                let _ = std::fs::remove_file(&log);
                r
            }
        }
    }
}

/// The innermost cause of a reqwest error: "connection refused", not "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

pub struct Window {
    pub health: String,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub stable_for: Duration,
    pub interval: Duration,
}

/// The process must stay online, without further restarts, and the health check pass,
/// continuously for `stable_for`, within `timeout`.
pub fn health_window(backend: &Backend, process: &str, w: &Window, repo: &Repo) -> Result<String, GuardError> {
    let t0 = Instant::now();
    let limit = w.interval.max(Duration::from_millis(500)).min(Duration::from_secs(10));
    let git_dir = repo.git_dir().map_err(GuardError::from)?;
    let check = Check::new(&w.health, w.ca_file.as_deref(), &repo.dir, &git_dir, limit)?;
    let mut ok_since: Option<Instant> = None;
    let mut baseline: Option<u64> = None;
    let mut last_problem = String::from("never checked");
    while t0.elapsed() < w.timeout {
        let status = backend.list().ok().and_then(|l| l.into_iter().find(|s| s.name == process));
        let problem = match &status {
            None => Some("the process is gone from the supervisor".to_string()),
            Some(s) if s.status != "online" => {
                Some(format!("the process is {} (exit code {:?})", s.status, s.exit_code))
            }
            Some(s) => {
                let restarted = baseline.is_some_and(|b| s.restart_count > b);
                baseline = Some(s.restart_count);
                if restarted {
                    Some(format!("the process restarted again (restart count {})", s.restart_count))
                } else {
                    check.run().err().map(|e| e.to_string())
                }
            }
        };
        match problem {
            None => {
                let since = *ok_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= w.stable_for {
                    return Ok(format!(
                        "online and healthy for {} after {} ms",
                        humantime::format_duration(w.stable_for),
                        t0.elapsed().as_millis()
                    ));
                }
            }
            Some(why) => {
                ok_since = None;
                last_problem = why;
            }
        }
        std::thread::sleep(w.interval);
    }
    Err(GuardError::Unhealthy {
        stable_for: humantime::format_duration(w.stable_for).to_string(),
        timeout: humantime::format_duration(w.timeout).to_string(),
        last_problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18: the health command's output went to `/tmp/agentcom-health-<pid>.log`, a name
    /// anyone could guess and plant a link at. It goes to the guard's own folder, created anew.
    #[test]
    fn a_health_command_logs_in_the_guards_folder_and_never_through_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let (work, logs) = (dir.path().join("work"), dir.path().join("git"));
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&logs).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let name = format!("agentcom-health-{}.log", std::process::id());
        std::os::unix::fs::symlink(&victim, logs.join(&name)).unwrap();
        let check = Check::new("echo failing; exit 3", None, &work, &logs, Duration::from_secs(10)).unwrap();
        let e = check.run().unwrap_err().to_string();
        assert!(e.contains("failing"), "the output's last line is in the error: {e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me", "the link was not followed");
        assert!(!std::env::temp_dir().join(&name).exists(), "nothing in the shared temp folder");
        assert!(!logs.join(&name).exists(), "the log goes once read");
    }
}
