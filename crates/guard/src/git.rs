//! The few git operations the guard needs, through the `git` command.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{0} is not a git repository")]
    NotARepo(String),
    #[error("`git {args}` failed: {message}")]
    Failed { args: String, message: String },
    #[error("cannot run git: {0}")]
    Spawn(String),
}

pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn open(dir: &Path) -> Result<Repo, GitError> {
        if !dir.is_dir() {
            return Err(GitError::NotARepo(dir.display().to_string()));
        }
        let r = Repo { dir: dir.to_path_buf() };
        r.git(&["rev-parse", "--git-dir"]).map_err(|_| GitError::NotARepo(dir.display().to_string()))?;
        Ok(r)
    }

    pub fn git(&self, args: &[&str]) -> Result<String, GitError> {
        let out = Command::new("git")
            .args(args)
            .current_dir(&self.dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .map_err(|e| GitError::Spawn(e.to_string()))?;
        if !out.status.success() {
            let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if message.is_empty() {
                message = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            return Err(GitError::Failed {
                args: args.join(" "),
                message: message.lines().next().unwrap_or("").to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The `.git` folder (for the journal: outside the work tree, so it never dirties it).
    pub fn git_dir(&self) -> Result<PathBuf, GitError> {
        let d = PathBuf::from(self.git(&["rev-parse", "--git-dir"])?);
        Ok(if d.is_absolute() { d } else { self.dir.join(d) })
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
        self.git(&["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")]).ok()
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

/// Runs `sh -c cmd` in `dir` with a time limit, its output going to `log` (so a chatty test
/// suite never fills a pipe). Err carries why it failed, with the output's last line.
pub fn run_with_timeout(cmd: &str, dir: &Path, limit: Duration, log: &Path) -> Result<(), String> {
    let out = std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if status.success() {
                return Ok(());
            }
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let last = text.trim().lines().last().unwrap_or("").to_string();
            return Err(format!("{status}{}", if last.is_empty() { String::new() } else { format!(": {last}") }));
        }
        if std::time::Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            return Err(format!("timed out after {}", humantime::format_duration(limit)));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

use std::os::unix::process::CommandExt;
