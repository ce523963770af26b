//! The git side of a task's worktree, each step idempotent so a crash at any point is mended by
//! running it again: prepare (create or adopt the worktree, copy `.worktreeinclude`, run the
//! setup command), commit what the agent left (and push), release it (remove, or keep a failed
//! one for a while), and the janitor, which saves whatever a worktree no task holds still has
//! uncommitted to `refs/agentcom/orphans/<name>` before removing it. Nothing uncommitted is ever
//! deleted; every git call goes through [`gitops`] (no code the repository names runs).

use super::{include, Workspace, WorktreeConfig};
use gitops::Git;
use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Changed files looked at most in one commit (beyond it the attempt is refused, not hung).
const MAX_CHANGED_FILES: usize = 200_000;

/// The lock file in `worktrees_dir` that makes it one sidecar's own (the janitor removes what
/// no task of *this* sidecar holds).
const LOCK_FILE: &str = ".agentcom-lock";

/// What a step needs beyond the config: the branch tasks start from, and the sidecar's hold on
/// its worktrees.
#[derive(Debug)]
pub struct Runtime {
    pub cfg: WorktreeConfig,
    pub base_branch: String,
    /// `state_dir/worktrees.json`: failed attempts' worktrees kept, and until when.
    pub kept_file: PathBuf,
    /// One step at a time (a step and the janitor never meet on a worktree); inside, the task
    /// whose worktree is being made or held (the janitor leaves it alone).
    steps: Mutex<Option<String>>,
    /// Held while the sidecar runs: a second sidecar on the same `worktrees_dir` is refused.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

fn err(context: &str) -> impl Fn(gitops::GitError) -> String + '_ {
    move |e| format!("{context}: {e}")
}

impl Runtime {
    /// Checks `repo_dir` is a git repository and finds the base branch (the checked-out one
    /// when none is set): at start, so a mistake is one clear error before anything runs.
    pub fn start(cfg: WorktreeConfig, state_dir: &Path) -> Result<Runtime, String> {
        let repo = Git::open(&cfg.repo_dir).map_err(|_| {
            format!("repo_dir: {} is not a git repository (workspace = \"worktree\" needs one)", cfg.repo_dir.display())
        })?;
        let base_branch = match &cfg.base_branch {
            Some(b) => b.clone(),
            None => repo.run(&["symbolic-ref", "--short", "-q", "HEAD"]).ok().filter(|b| !b.is_empty()).ok_or_else(
                || {
                    format!(
                        "base_branch: {} has no branch checked out (a detached HEAD); set base_branch",
                        cfg.repo_dir.display()
                    )
                },
            )?,
        };
        if let Some(r) = &cfg.push_remote {
            repo.run(&["remote", "get-url", r])
                .map_err(|_| format!("push_remote: {r:?} is not a remote of repo_dir"))?;
        }
        std::fs::create_dir_all(&cfg.worktrees_dir)
            .map_err(|e| format!("cannot create worktrees_dir {}: {e}", cfg.worktrees_dir.display()))?;
        let lock_path = cfg.worktrees_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
            format!(
                "worktrees_dir {} is in use by another sidecar; each agent needs a worktrees_dir of its own",
                cfg.worktrees_dir.display()
            )
        })?;
        Ok(Runtime {
            cfg,
            base_branch,
            kept_file: state_dir.join("worktrees.json"),
            steps: Mutex::new(None),
            _lock: lock,
        })
    }

    /// The step lock, with the task it is for recorded as held.
    fn hold(&self, task_id: Option<&str>) -> std::sync::MutexGuard<'_, Option<String>> {
        let mut held = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = task_id {
            *held = Some(t.to_string());
        }
        held
    }

    fn repo(&self) -> Result<Git, String> {
        Git::open(&self.cfg.repo_dir)
            .map(|g| g.with_timeout(self.cfg.git_timeout))
            .map_err(|e| format!("repo_dir: {e}"))
    }

    /// The task's worktree, made or adopted, ready for its wake. `from_branch`: the task's own
    /// `branch` field; `previous`: what `queue.json` recorded of it (a step cut short).
    pub fn prepare(
        &self,
        task_id: &str,
        from_branch: Option<&str>,
        previous: Option<&Workspace>,
        env: &[(String, String)],
    ) -> Result<Workspace, String> {
        let _held = self.hold(Some(task_id));
        let repo = self.repo()?;
        let (path, branch) = self.cfg.names(task_id);
        let base_ref = from_branch.unwrap_or(&self.base_branch);
        if !super::valid_ref_part(base_ref) {
            return Err(format!("the task's branch {base_ref:?} is not a branch name"));
        }
        if !super::valid_ref_part(&branch) {
            return Err(format!("{branch:?} (branch_prefix and the task id) is not a branch name"));
        }
        let ws = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{} is a symbolic link; not followed", path.display()))
            }
            Ok(_) => self.adopt(&repo, &path, &branch, base_ref, previous)?,
            Err(_) => self.create(&repo, &path, &branch, base_ref)?,
        };
        self.forget_kept(task_id);
        include::copy(&repo, &ws.path)?;
        if let Some(cmd) = &self.cfg.setup_command {
            run_setup(cmd, &ws.path, self.cfg.setup_timeout, env)?;
        }
        Ok(ws)
    }

    /// A folder of the task's name is there (a crash, or a retry of a failed attempt kept here).
    fn adopt(
        &self,
        repo: &Git,
        path: &Path,
        branch: &str,
        base: &str,
        previous: Option<&Workspace>,
    ) -> Result<Workspace, String> {
        let g = self.open_worktree(repo, path)?;
        let on = g.run(&["symbolic-ref", "--short", "-q", "HEAD"]).unwrap_or_default();
        if on != branch {
            return Err(format!("{} is a worktree on {on:?}, not {branch}", path.display()));
        }
        let base_sha = match previous.filter(|p| p.path == path) {
            Some(p) => p.base_sha.clone(),
            None => {
                let base_sha = repo.resolve(&format!("refs/heads/{base}")).unwrap_or_default();
                g.run(&["merge-base", "HEAD", &base_sha])
                    .or_else(|_| g.run(&["rev-parse", "HEAD"]))
                    .map_err(err("HEAD"))?
            }
        };
        Ok(Workspace {
            path: path.to_path_buf(),
            branch: branch.to_string(),
            base_sha,
            base_branch: Some(base.to_string()),
        })
    }

    fn create(&self, repo: &Git, path: &Path, branch: &str, base: &str) -> Result<Workspace, String> {
        if self.count() >= self.cfg.max_worktrees {
            let task = path.file_name().and_then(|n| n.to_str());
            self.sweep(&[task], osutil::clock::epoch_ms());
            let n = self.count();
            if n >= self.cfg.max_worktrees {
                return Err(format!(
                    "max_worktrees ({}) reached: {n} worktrees in {} (failed attempts are kept {} h)",
                    self.cfg.max_worktrees,
                    self.cfg.worktrees_dir.display(),
                    self.cfg.keep_failed.as_secs() / 3600
                ));
            }
        }
        // A worktree entry whose folder is gone (a crash before it was made) is dropped first.
        let _ = repo.run(&["worktree", "prune"]);
        let shown = path.display().to_string();
        let local = format!("refs/heads/{branch}");
        let remote = self.cfg.push_remote.as_deref();
        let (start, base_sha) = if let Some(sha) = repo.resolve(&local) {
            // A retry on this machine: it goes on from where the branch is.
            let base_tip = repo.resolve(&format!("refs/heads/{base}")).unwrap_or_else(|| sha.clone());
            (None, repo.run(&["merge-base", &sha, &base_tip]).unwrap_or(sha))
        } else if let Some(sha) = remote.and_then(|r| self.fetch(repo, r, branch)) {
            // A retry after another machine pushed the branch: from there.
            let base_tip = remote.and_then(|r| self.fetch(repo, r, base)).unwrap_or_else(|| sha.clone());
            (Some(sha.clone()), repo.run(&["merge-base", &sha, &base_tip]).unwrap_or(sha))
        } else {
            let tip = match remote {
                Some(r) => self.fetch(repo, r, base),
                None => repo.resolve(&format!("refs/heads/{base}")),
            };
            let tip = tip.ok_or_else(|| format!("the base branch {base} does not exist in repo_dir"))?;
            (Some(tip.clone()), tip)
        };
        let made = match &start {
            Some(sha) => repo.run(&["worktree", "add", "-q", "-b", branch, &shown, sha]),
            None => repo.run(&["worktree", "add", "-q", &shown, branch]),
        };
        made.map_err(err("git worktree add"))?;
        Ok(Workspace {
            path: path.to_path_buf(),
            branch: branch.to_string(),
            base_sha,
            base_branch: Some(base.to_string()),
        })
    }

    /// `remote`'s `branch`, fetched into `refs/remotes/<remote>/<branch>`; `None` if it has none.
    fn fetch(&self, repo: &Git, remote: &str, branch: &str) -> Option<String> {
        let to = format!("refs/remotes/{remote}/{branch}");
        repo.run(&["fetch", "-q", "--no-tags", remote, &format!("+refs/heads/{branch}:{to}")]).ok()?;
        repo.resolve(&to)
    }

    /// The worktree at `path` as a git folder of `repo`, its `.git` link mended if an agent broke
    /// it; an error if it is anything else (it is then left alone).
    fn open_worktree(&self, repo: &Git, path: &Path) -> Result<Git, String> {
        let mine = |g: &Git| {
            g.common_dir().ok().and_then(|d| d.canonicalize().ok())
                == repo.common_dir().ok().and_then(|d| d.canonicalize().ok())
        };
        let top =
            |g: &Git| g.run(&["rev-parse", "--show-toplevel"]).ok().map(PathBuf::from) == path.canonicalize().ok();
        if let Ok(g) = Git::open(path) {
            if mine(&g) && top(&g) {
                return Ok(g.with_timeout(self.cfg.git_timeout));
            }
        }
        // The `.git` file of a linked worktree, deleted or rewritten: written again from the
        // repository's own record of where that worktree is.
        if let Some(admin) = self.admin_dir(repo, path) {
            let dotgit = path.join(".git");
            let _ = std::fs::remove_file(&dotgit);
            std::fs::write(&dotgit, format!("gitdir: {}\n", admin.display()))
                .map_err(|e| format!("cannot mend {}: {e}", dotgit.display()))?;
            if let Ok(g) = Git::open(path) {
                if mine(&g) && top(&g) {
                    return Ok(g.with_timeout(self.cfg.git_timeout));
                }
            }
        }
        Err(format!("{} exists and is not a worktree of repo_dir; left as it is", path.display()))
    }

    /// `<common>/worktrees/<id>` whose `gitdir` file names `path/.git`.
    fn admin_dir(&self, repo: &Git, path: &Path) -> Option<PathBuf> {
        let want = path.join(".git");
        let dir = repo.common_dir().ok()?.join("worktrees");
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .take(100_000)
            .map(|e| e.path())
            .find(|admin| std::fs::read_to_string(admin.join("gitdir")).is_ok_and(|t| Path::new(t.trim()) == want))
    }

    /// Commits whatever the agent left on the task's branch (and pushes it); returns what the
    /// attempt changed since the task's base, or `None` for nothing.
    pub fn commit(
        &self,
        task_id: &str,
        ws: &Workspace,
        message: &str,
        generation: u64,
    ) -> Result<Option<proto::Change>, String> {
        let _held = self.hold(Some(task_id));
        let repo = self.repo()?;
        let g = self.open_worktree(&repo, &ws.path)?;
        self.check_sizes(&g, &ws.path)?;
        g.run(&["add", "-A"]).map_err(err("git add"))?;
        if !g.check(&["diff", "--cached", "--quiet"]).map_err(err("git diff --cached"))? {
            let id = gitops::identity_env(&self.cfg.author_name, &self.cfg.author_email);
            let env: Vec<(&str, &str)> = id.iter().map(|(k, v)| (*k, v.as_str())).collect();
            g.run_with(&["commit", "-q", "--no-verify", "-m", message], &env).map_err(err("git commit"))?;
        }
        let head = g.resolve("HEAD").ok_or("the worktree has no commit")?;
        // Whatever the agent did with its branches, the task's branch is where its work is, and
        // each attempt's work stays reachable under refs/agentcom/attempts even if it is
        // rewritten later.
        repo.run(&["update-ref", &format!("refs/heads/{}", ws.branch), &head]).map_err(err("git update-ref"))?;
        repo.run(&["update-ref", &format!("refs/agentcom/attempts/{task_id}/{generation}"), &head])
            .map_err(err("git update-ref"))?;
        if let Some(remote) = &self.cfg.push_remote {
            let spec = format!("+refs/heads/{b}:refs/heads/{b}", b = ws.branch);
            repo.run(&["push", "-q", remote, &spec]).map_err(|e| format!("workspace_push_failed: {e}"))?;
        }
        if head == ws.base_sha {
            return Ok(None);
        }
        self.change(&repo, ws, &head).map(Some)
    }

    /// Refuses (with the path) a changed file over the size limit, or more files than can be
    /// looked at; never follows a link to look.
    fn check_sizes(&self, g: &Git, root: &Path) -> Result<(), String> {
        let status = g
            .clone()
            .with_max_output(64 << 20)
            .run_with(&["status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames"], &[])
            .map_err(err("git status"))?;
        for (n, entry) in status.split(|b| *b == 0).filter(|e| e.len() > 3).enumerate() {
            if n >= MAX_CHANGED_FILES {
                return Err(format!("workspace_refused: more than {MAX_CHANGED_FILES} changed files"));
            }
            let rel = String::from_utf8_lossy(&entry[3..]).into_owned();
            let Ok(meta) = std::fs::symlink_metadata(
                root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&entry[3..])),
            ) else {
                continue;
            };
            if meta.is_file() && meta.len() > self.cfg.max_commit_file_bytes {
                return Err(format!(
                    "workspace_refused: {rel} is {} bytes, over max_commit_file_bytes ({}); it stays in the worktree",
                    meta.len(),
                    self.cfg.max_commit_file_bytes
                ));
            }
        }
        Ok(())
    }

    fn change(&self, repo: &Git, ws: &Workspace, head: &str) -> Result<proto::Change, String> {
        let range = format!("{}..{head}", ws.base_sha);
        let commits = repo.run(&["rev-list", "--count", &range]).map_err(err("git rev-list"))?.parse().unwrap_or(0);
        let stat = repo.run(&["diff", "--shortstat", "--no-textconv", &ws.base_sha, head]).map_err(err("git diff"))?;
        let number = |word: &str| -> u64 {
            stat.split(',')
                .find(|p| p.contains(word))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let names = repo
            .run_capped(&["diff", "--name-only", "-z", "--no-textconv", &ws.base_sha, head], 1 << 20)
            .map_err(err("git diff"))?;
        let files = names
            .stdout
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .take(proto::MAX_CHANGE_FILES)
            .map(|n| crate::machine::clip(&String::from_utf8_lossy(n), proto::MAX_CHANGE_PATH))
            .collect();
        let patch = repo
            .run_capped(&["diff", "--no-textconv", &ws.base_sha, head], self.cfg.max_patch_bytes)
            .map_err(err("git diff"))?;
        Ok(proto::Change {
            branch: ws.branch.clone(),
            base_sha: ws.base_sha.clone(),
            head_sha: head.to_string(),
            base_branch: ws.base_branch.clone(),
            commits,
            files_changed: number("changed"),
            insertions: number("insertion"),
            deletions: number("deletion"),
            files,
            patch: Some(String::from_utf8_lossy(&patch.stdout).into_owned()),
            patch_cut: patch.cut,
        })
    }

    /// After the hub has the report: a finished task's worktree goes (its work is on the
    /// branch); a failed one is kept `keep_failed` for a person to look at.
    pub fn release(&self, task_id: &str, keep: bool) -> Result<(), String> {
        let mut held = self.hold(None);
        if held.as_deref() == Some(task_id) {
            *held = None;
        }
        let (path, _) = self.cfg.names(task_id);
        if keep {
            let mut kept = self.kept();
            kept.insert(task_id.to_string(), osutil::clock::epoch_ms() + self.cfg.keep_failed.as_millis() as u64);
            return self.save_kept(&kept);
        }
        self.save_and_remove(&self.repo()?, &path, task_id)
    }

    /// Saves what a worktree has uncommitted to `refs/agentcom/orphans/<name>` (a commit on
    /// its HEAD; its branch is not moved), then removes it. A folder that is not a worktree of
    /// `repo_dir` is left alone.
    fn save_and_remove(&self, repo: &Git, path: &Path, name: &str) -> Result<(), String> {
        if std::fs::symlink_metadata(path).is_err() {
            let _ = repo.run(&["worktree", "prune"]);
            return Ok(());
        }
        let g = self.open_worktree(repo, path)?;
        let dirty = !g.run(&["status", "--porcelain", "--untracked-files=all"]).map_err(err("git status"))?.is_empty();
        if dirty {
            self.check_sizes(&g, path)?;
            g.run(&["add", "-A"]).map_err(err("git add"))?;
            let tree = g.run(&["write-tree"]).map_err(err("git write-tree"))?;
            let id = gitops::identity_env(&self.cfg.author_name, &self.cfg.author_email);
            let env: Vec<(&str, &str)> = id.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let msg = format!("agentcom: what {name} left uncommitted\n\nagentcom-worktree: {name}");
            let mut args = vec!["commit-tree", tree.as_str(), "-m", msg.as_str()];
            let head = g.resolve("HEAD");
            if let Some(h) = head.as_deref() {
                args.extend(["-p", h]);
            }
            let sha =
                String::from_utf8_lossy(&g.run_with(&args, &env).map_err(err("git commit-tree"))?).trim().to_string();
            repo.run(&["update-ref", &format!("refs/agentcom/orphans/{name}"), &sha]).map_err(err("git update-ref"))?;
            tracing::warn!(worktree = %path.display(), commit = %sha, "saved what a worktree left uncommitted to refs/agentcom/orphans/{name}");
        }
        repo.run(&["worktree", "remove", "--force", "--force", &path.display().to_string()])
            .map_err(err("git worktree remove"))?;
        let _ = repo.run(&["worktree", "prune"]);
        Ok(())
    }

    /// Saves and removes every worktree no task holds (`active` is the one held) whose time
    /// is up; returns what it did, for the log.
    pub fn janitor(&self, active: Option<&str>, now_ms: u64) -> Vec<String> {
        let held = self.hold(None);
        self.sweep(&[active, held.as_deref()], now_ms)
    }

    /// The janitor's work, under the step lock (`create` calls it when the limit is reached).
    fn sweep(&self, held: &[Option<&str>], now_ms: u64) -> Vec<String> {
        let Ok(repo) = self.repo() else { return Vec::new() };
        let mut kept = self.kept();
        let mut done = Vec::new();
        let names: Vec<String> = match std::fs::read_dir(&self.cfg.worktrees_dir) {
            Ok(d) => d.flatten().take(100_000).filter_map(|e| e.file_name().into_string().ok()).collect(),
            Err(_) => return done,
        };
        for name in names {
            let busy = held.contains(&Some(name.as_str()));
            if name.starts_with('.') || busy || kept.get(&name).is_some_and(|until| *until > now_ms) {
                continue;
            }
            let path = self.cfg.worktrees_dir.join(&name);
            match self.save_and_remove(&repo, &path, &name) {
                Ok(()) => {
                    kept.remove(&name);
                    done.push(format!("removed {}", path.display()));
                }
                Err(e) => done.push(format!("left {}: {e}", path.display())),
            }
        }
        kept.retain(|name, _| self.cfg.worktrees_dir.join(name).exists());
        let _ = self.save_kept(&kept);
        let _ = repo.run(&["worktree", "prune"]);
        done
    }

    fn count(&self) -> usize {
        let names = |d: std::fs::ReadDir| {
            d.flatten().take(100_000).filter(|e| !e.file_name().as_encoded_bytes().starts_with(b".")).count()
        };
        std::fs::read_dir(&self.cfg.worktrees_dir).map(names).unwrap_or(0)
    }

    fn kept(&self) -> BTreeMap<String, u64> {
        match crate::files::read_small(&self.kept_file, 4 << 20) {
            crate::files::Found::Regular(f) => serde_json::from_slice(&f.bytes).unwrap_or_default(),
            _ => BTreeMap::new(),
        }
    }

    fn save_kept(&self, kept: &BTreeMap<String, u64>) -> Result<(), String> {
        osutil::fs::write_atomic(&self.kept_file, &serde_json::to_vec(kept).expect("a map serializes"))
            .map_err(|e| format!("cannot write {}: {e}", self.kept_file.display()))
    }

    fn forget_kept(&self, task_id: &str) {
        let mut kept = self.kept();
        if kept.remove(task_id).is_some() {
            let _ = self.save_kept(&kept);
        }
    }
}

/// The setup command in the new worktree, in its own process group, killed at the deadline.
fn run_setup(cmd: &str, dir: &Path, limit: Duration, env: &[(String, String)]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let log = tempfile::tempfile().map_err(|e| format!("cannot make a log for setup_command: {e}"))?;
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log.try_clone().map_err(|e| e.to_string())?)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("setup_command: cannot start: {e}"))?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    // A thread waits for it, so the deadline is a timed receive, not a polling loop.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(limit) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(format!("setup_command: {e}")),
        Err(_) => {
            // The waiter reaps it once it is killed.
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            return Err(format!("setup_command did not finish within {} ms", limit.as_millis()));
        }
    };
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    if status.success() {
        return Ok(());
    }
    use std::io::{Read, Seek};
    let mut text = String::new();
    let mut log = log;
    let _ = log.seek(std::io::SeekFrom::Start(0));
    let _ = log.take(64 * 1024).read_to_string(&mut text);
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
    Err(format!("setup_command {status}: {}", crate::machine::clip(&last, 500)))
}
