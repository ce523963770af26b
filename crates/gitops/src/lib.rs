//! Git through the `git` command, for the guard, the sidecar's workspaces and the integrator,
//! safely. A repository an agent works in is hostile input: its config (`.git/config`, and any
//! file it includes) may name hooks, an fsmonitor, clean/smudge filters, diff and merge drivers
//! or a credential helper, all of them programs git would run for us. Every call here runs with
//! the system and global config off, hooks pointed at nothing, no fsmonitor, no pager, editor,
//! prompt or credential helper, and every driver the repository's config names neutralized; and
//! each call is bounded in time (its process group killed at the deadline) and in output.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{0} is not a git repository")]
    NotARepo(String),
    #[error("`git {args}` failed: {message}")]
    Failed { args: String, code: Option<i32>, message: String },
    #[error("cannot run git: {0}")]
    Spawn(String),
    #[error("`git {args}` did not finish within {}s", .after.as_secs_f64())]
    TimedOut { args: String, after: Duration },
    #[error("`git {args}` wrote more than {limit} bytes")]
    TooMuchOutput { args: String, limit: usize },
}

impl GitError {
    /// The exit code of a git that ran and failed.
    pub fn code(&self) -> Option<i32> {
        match self {
            GitError::Failed { code, .. } => *code,
            _ => None,
        }
    }
}

/// How long one git command may take, and how much it may write, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;
/// What is kept of stderr for messages.
const MAX_STDERR: usize = 64 * 1024;

/// Settings that keep git from running anything but itself, whatever the repository says.
const SAFE: &[&str] = &[
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.pager=cat",
    "core.editor=true",
    "core.askPass=",
    "core.sshCommand=ssh -o BatchMode=yes",
    "core.attributesFile=/dev/null",
    "credential.helper=",
    "protocol.ext.allow=never",
    "gc.auto=0",
    "maintenance.auto=false",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "push.gpgSign=false",
    "sequence.editor=true",
    "advice.detachedHead=false",
];

/// A repository (or any folder in one) and the bounds of the calls made in it.
#[derive(Debug, Clone)]
pub struct Git {
    pub dir: PathBuf,
    timeout: Duration,
    max_output: usize,
    /// `-c` settings that neutralize the drivers this repository's config names.
    neutralized: Vec<String>,
}

/// What a call wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    /// `stdout` was cut at the limit (only for calls that allow it).
    pub cut: bool,
}

impl Git {
    /// `dir`, which must be in a git repository.
    pub fn open(dir: &Path) -> Result<Git, GitError> {
        if !dir.is_dir() {
            return Err(GitError::NotARepo(dir.display().to_string()));
        }
        let mut g = Git {
            dir: dir.to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
            max_output: DEFAULT_MAX_OUTPUT,
            neutralized: Vec::new(),
        };
        g.run(&["rev-parse", "--git-dir"]).map_err(|_| GitError::NotARepo(dir.display().to_string()))?;
        g.neutralized = g.drivers()?;
        Ok(g)
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Git {
        self.timeout = timeout;
        self
    }

    pub fn with_max_output(mut self, max: usize) -> Git {
        self.max_output = max;
        self
    }

    /// The same repository seen from another folder of it (a worktree), with the same bounds.
    pub fn at(&self, dir: &Path) -> Result<Git, GitError> {
        Ok(Git::open(dir)?.with_timeout(self.timeout).with_max_output(self.max_output))
    }

    /// Runs `git args`; its stdout, trimmed.
    pub fn run(&self, args: &[&str]) -> Result<String, GitError> {
        let out = self.call(args, &[], false)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `git args` with `env` added; stdout as bytes, an error past the output limit.
    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Vec<u8>, GitError> {
        Ok(self.call(args, env, false)?.stdout)
    }

    /// Runs `git args` and keeps at most `max` bytes of its stdout, saying when it cut (a diff
    /// shown to people).
    pub fn run_capped(&self, args: &[&str], max: usize) -> Result<Output, GitError> {
        Git { max_output: max, ..self.clone() }.call(args, &[], true)
    }

    /// Whether `git args` exits 0 (for `diff --quiet`, `merge-base --is-ancestor`, ...): exit 1
    /// is `false`; other failures are errors.
    pub fn check(&self, args: &[&str]) -> Result<bool, GitError> {
        match self.call(args, &[], false) {
            Ok(_) => Ok(true),
            Err(GitError::Failed { code: Some(1), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The commit `rev` names, if it names one.
    pub fn resolve(&self, rev: &str) -> Option<String> {
        self.run(&["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")]).ok().filter(|s| !s.is_empty())
    }

    /// The folder holding this repository's objects and refs (shared by its worktrees).
    pub fn common_dir(&self) -> Result<PathBuf, GitError> {
        let d = PathBuf::from(self.run(&["rev-parse", "--git-common-dir"])?);
        Ok(if d.is_absolute() { d } else { self.dir.join(d) })
    }

    /// This worktree's own git folder.
    pub fn git_dir(&self) -> Result<PathBuf, GitError> {
        let d = PathBuf::from(self.run(&["rev-parse", "--git-dir"])?);
        Ok(if d.is_absolute() { d } else { self.dir.join(d) })
    }

    /// `-c` settings emptying every filter, diff and merge driver the repository's config names
    /// (with the files it includes): those are commands git would run on our behalf.
    fn drivers(&self) -> Result<Vec<String>, GitError> {
        let listed =
            self.call(&["config", "--list", "--name-only", "-z"], &[], false).map(|o| o.stdout).unwrap_or_default();
        let mut out = Vec::new();
        for key in listed.split(|b| *b == 0).filter_map(|k| std::str::from_utf8(k).ok()) {
            let lower = key.to_ascii_lowercase();
            let (section, rest) = lower.split_once('.').unwrap_or((&lower, ""));
            let setting = rest.rsplit('.').next().unwrap_or("");
            // An empty filter is no filter at all (the content passes as it is, no process is
            // started: a worktree of thousands of files must not cost a process each); `cat`
            // where git needs a command that leaves content as it is; an empty command where
            // a failure is ignored (`required` off) or never reached (`--no-ext-diff`).
            let value = match (section, setting) {
                ("diff", "textconv") => "cat",
                ("filter", "clean" | "smudge" | "process") | ("diff", "command") | ("merge", "driver") => "",
                ("filter", "required") => "false",
                _ => continue,
            };
            out.push(format!("{key}={value}"));
        }
        Ok(out)
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new("git");
        for s in SAFE.iter().map(|s| s.to_string()).chain(self.neutralized.iter().cloned()) {
            c.arg("-c").arg(s);
        }
        c.args(args.iter().take(1));
        // External diff drivers (`diff.external`, `diff.<driver>.command`) have no setting that
        // turns them off: the diff family is asked not to use them.
        if matches!(args.first(), Some(&("diff" | "log" | "show" | "format-patch"))) {
            c.arg("--no-ext-diff");
        }
        c.args(args.iter().skip(1))
            .current_dir(&self.dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .env("SSH_ASKPASS", "/bin/false")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env("GIT_PAGER", "cat")
            .env("GIT_EDITOR", "true")
            .env("LC_ALL", "C")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        c
    }

    /// One call: bounded in time (the whole group killed at the deadline) and in output.
    fn call(&self, args: &[&str], env: &[(&str, &str)], may_cut: bool) -> Result<Output, GitError> {
        let shown = || args.join(" ");
        let mut child = self.command(args, env).spawn().map_err(|e| GitError::Spawn(e.to_string()))?;
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        let kill = || {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        };
        let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let max = self.max_output;
        let stderr = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut err).take(MAX_STDERR as u64).read_to_end(&mut buf);
            // Drain the rest so git never blocks on a full pipe.
            let _ = std::io::copy(&mut err, &mut std::io::sink());
            buf
        });
        let stdout = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut out).take(max as u64 + 1).read_to_end(&mut buf);
            let over = buf.len() > max;
            buf.truncate(max);
            let _ = std::io::copy(&mut out, &mut std::io::sink());
            (buf, over)
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Ok(None) => {
                    kill();
                    let _ = child.wait();
                    return Err(GitError::TimedOut { args: shown(), after: self.timeout });
                }
                Err(e) => {
                    kill();
                    return Err(GitError::Spawn(e.to_string()));
                }
            }
        };
        // What it started in its group (a helper it forked) goes with it.
        kill();
        let (stdout, over) = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        if !status.success() {
            let text = String::from_utf8_lossy(if stderr.is_empty() { &stdout } else { &stderr }).trim().to_string();
            let message = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            return Err(GitError::Failed { args: shown(), code: status.code(), message });
        }
        if over && !may_cut {
            return Err(GitError::TooMuchOutput { args: shown(), limit: max });
        }
        Ok(Output { stdout, cut: over })
    }
}

/// A commit identity for commands that write commits, as `-c` settings and environment.
pub fn identity_env(name: &str, email: &str) -> [(&'static str, String); 4] {
    [
        ("GIT_AUTHOR_NAME", name.to_string()),
        ("GIT_AUTHOR_EMAIL", email.to_string()),
        ("GIT_COMMITTER_NAME", name.to_string()),
        ("GIT_COMMITTER_EMAIL", email.to_string()),
    ]
}

#[cfg(test)]
mod tests;
