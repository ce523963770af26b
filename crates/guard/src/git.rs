//! The few git operations the guard needs, through [`gitops`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use gitops::GitError;

/// The agent's repository, through [`gitops`]: nothing its config names runs, and every call is
/// bounded in time and output.
pub struct Repo {
    pub dir: PathBuf,
    git: gitops::Git,
}

impl Repo {
    pub fn open(dir: &Path) -> Result<Repo, GitError> {
        Ok(Repo { dir: dir.to_path_buf(), git: gitops::Git::open(dir)? })
    }

    pub fn git(&self, args: &[&str]) -> Result<String, GitError> {
        self.git.run(args)
    }

    /// The `.git` folder (for the journal: outside the work tree, so it never dirties it).
    pub fn git_dir(&self) -> Result<PathBuf, GitError> {
        self.git.git_dir()
    }

    /// Runs a git command that writes commits (merge, stash). A machine with no git identity
    /// still gets them, signed as agentcom.
    pub fn git_committing(&self, args: &[&str]) -> Result<String, GitError> {
        let mut all: Vec<&str> = Vec::new();
        if self.git(&["config", "user.email"]).is_err() {
            all.extend(["-c", "user.name=agentcom", "-c", "user.email=agentcom@localhost"]);
        }
        all.extend_from_slice(args);
        self.git(&all)
    }

    pub fn head(&self) -> Result<String, GitError> {
        self.git(&["rev-parse", "HEAD"])
    }

    /// The checked-out branch, or None on a detached HEAD.
    pub fn branch(&self) -> Result<Option<String>, GitError> {
        let b = self.git(&["rev-parse", "--abbrev-ref", "HEAD"])?;
        Ok((b != "HEAD").then_some(b))
    }

    pub fn is_clean(&self) -> Result<bool, GitError> {
        Ok(self.git(&["status", "--porcelain", "--untracked-files=normal"])?.is_empty())
    }

    pub fn resolve(&self, rev: &str) -> Option<String> {
        self.git.resolve(rev)
    }

    pub fn tag_good(&self, sha: &str) -> Result<String, GitError> {
        let base = format!(
            "agentcom/good/{}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "-")
        );
        let mut tag = base.clone();
        let mut n = 1;
        while self.resolve(&tag).is_some() {
            n += 1;
            tag = format!("{base}.{n}");
        }
        self.git(&["tag", &tag, sha])?;
        Ok(tag)
    }

    /// Good tags, newest first, with their commits.
    pub fn good_tags(&self) -> Vec<(String, String)> {
        let out = self
            .git(&[
                "for-each-ref",
                "--sort=-creatordate",
                "--sort=-refname",
                "--format=%(refname:short) %(objectname)",
                "refs/tags/agentcom/good/",
            ])
            .unwrap_or_default();
        out.lines().filter_map(|l| l.split_once(' ').map(|(t, c)| (t.to_string(), c.to_string()))).collect()
    }
}

/// Why a command run by the guard (the tests, a health command) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot create {path}: {source}")]
    Log { path: String, source: std::io::Error },
    #[error("cannot run {cmd:?}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{status}{}", if .last_line.is_empty() { String::new() } else { format!(": {}", .last_line) })]
    Failed { status: std::process::ExitStatus, last_line: String },
    #[error("timed out after {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("cannot wait for it: {0}")]
    Wait(std::io::Error),
}

/// Creates `path` afresh for us alone: whatever is there (an old log, or a link planted to send
/// our writes elsewhere) is removed, never followed, and the new file is created exclusively.
pub fn fresh_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path)
}

/// Runs `sh -c cmd` in `dir` with a time limit, its output going to `log` (so a chatty test
/// suite never fills a pipe; created by [`fresh_log`]). The error carries why it failed, with
/// the output's last line.
pub fn run_with_timeout(cmd: &str, dir: &Path, limit: Duration, log: &Path) -> Result<(), CommandError> {
    let out = fresh_log(log).map_err(|source| CommandError::Log { path: log.display().to_string(), source })?;
    let mut read_back = out.try_clone().map_err(CommandError::Wait)?;
    let err = out.try_clone().map_err(CommandError::Wait)?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| CommandError::Spawn { cmd: cmd.to_string(), source })?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(CommandError::Wait)? {
            if status.success() {
                return Ok(());
            }
            // Read through our own descriptor, not the name (which a command could replace).
            let mut text = String::new();
            {
                use std::io::{Read, Seek};
                let _ = read_back.seek(std::io::SeekFrom::Start(0));
                let _ = read_back.by_ref().take(1 << 20).read_to_string(&mut text);
            }
            let last_line = text.trim().lines().last().unwrap_or("").to_string();
            return Err(CommandError::Failed { status, last_line });
        }
        if std::time::Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            return Err(CommandError::TimedOut(limit));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

use std::os::unix::process::CommandExt;
