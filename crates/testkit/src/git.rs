//! Real git repositories for the worktree, integration and upgrade tests: a project with a
//! commit, a bare remote, an agent with versions on branches, a look at a repository's branches,
//! worktrees and files, and a `git` that crashes its caller at a chosen step (the sidecar's crash
//! points inside a git step).

use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `git args` in `dir` with a fixed identity and no user or system config; its stdout.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .envs([
            ("GIT_AUTHOR_NAME", "t"),
            ("GIT_AUTHOR_EMAIL", "t@t"),
            ("GIT_COMMITTER_NAME", "t"),
            ("GIT_COMMITTER_EMAIL", "t@t"),
        ])
        .output()
        .context("git")?;
    ensure!(out.status.success(), "git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// A git repository on `main` with one commit holding `README.md`: the project agents work on.
pub fn project(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    std::fs::write(dir.join("README.md"), "the project\n")?;
    git(dir, &["add", "README.md"])?;
    git(dir, &["commit", "-q", "-m", "start"])?;
    Ok(dir.to_path_buf())
}

/// `root/remote.git`: a bare repository holding `main` of a [`project`] seeded under
/// `root/seed` with `shared.txt` committed, the remote the integration tests and benchmark push to.
pub fn bare_remote(root: &Path) -> Result<PathBuf> {
    let seed = project(&root.join("seed"))?;
    std::fs::write(seed.join("shared.txt"), "original\n")?;
    git(&seed, &["add", "shared.txt"])?;
    git(&seed, &["commit", "-q", "-m", "shared"])?;
    let bare = root.join("remote.git");
    git(root, &["clone", "-q", "--bare", &seed.display().to_string(), &bare.display().to_string()])?;
    Ok(bare)
}

/// A repository on `main` whose first commit (`v1`) holds `agent.sh` (`script`) and `VERSION`
/// 1: the agent the guard's tests and benchmark upgrade.
pub fn versioned_agent(repo: &Path, script: &str) -> Result<()> {
    std::fs::create_dir_all(repo)?;
    git(repo, &["init", "-q", "-b", "main"])?;
    std::fs::write(repo.join("agent.sh"), script)?;
    std::fs::write(repo.join("VERSION"), "1\n")?;
    git(repo, &["add", "."])?;
    git(repo, &["commit", "-q", "-m", "v1"])?;
    Ok(())
}

/// A branch `name` of a [`versioned_agent`] that sets `VERSION` to `version`; `main` is checked
/// out again.
pub fn version_branch(repo: &Path, name: &str, version: &str) -> Result<()> {
    git(repo, &["checkout", "-q", "-b", name])?;
    std::fs::write(repo.join("VERSION"), format!("{version}\n"))?;
    git(repo, &["commit", "-q", "-am", version])?;
    git(repo, &["checkout", "-q", "main"])?;
    Ok(())
}

/// The paths of every worktree `repo` has (itself first).
pub fn worktrees(repo: &Path) -> Result<Vec<String>> {
    let list = git(repo, &["worktree", "list", "--porcelain"])?;
    Ok(list.lines().filter_map(|l| l.strip_prefix("worktree ")).map(str::to_string).collect())
}

/// The files of `rev`'s tree.
pub fn files_at(repo: &Path, rev: &str) -> Result<Vec<String>> {
    Ok(git(repo, &["ls-tree", "-r", "--name-only", rev])?.lines().map(str::to_string).collect())
}

/// A file's content at `rev`.
pub fn show(repo: &Path, rev: &str, path: &str) -> Result<String> {
    git(repo, &["show", &format!("{rev}:{path}")])
}

/// Refs under `prefix` (`refs/agentcom/orphans/`...), by name.
pub fn refs(repo: &Path, prefix: &str) -> Result<Vec<String>> {
    Ok(git(repo, &["for-each-ref", "--format=%(refname)", prefix])?.lines().map(str::to_string).collect())
}

/// A folder holding a `git` that runs the real one, except that, once, on the git subcommand
/// `step` (`commit`, `worktree` with `worktree add`'s `add`...), it SIGKILLs its caller: before
/// the real git runs (`after` false) or after it succeeded. Put it first on the caller's `PATH`;
/// `<dir>/crashed` appears when it fired.
pub fn crashing_git(dir: &Path, step: &[&str], after: bool) -> Result<PathBuf> {
    fake_git(dir, step, if after { Fault::KillAfter } else { Fault::KillBefore })
}

/// A folder holding a `git` that runs the real one, except that, once, on the git subcommand
/// `step`, it fails as git does when another process changes the repository under it (exit 128,
/// `fatal: failed to read ...`), without running the real one; `<dir>/crashed` appears then.
pub fn failing_git(dir: &Path, step: &[&str]) -> Result<PathBuf> {
    fake_git(dir, step, Fault::FailOnce)
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    KillBefore,
    KillAfter,
    FailOnce,
}

fn fake_git(dir: &Path, step: &[&str], fault: Fault) -> Result<PathBuf> {
    let real = Command::new("sh").args(["-c", "command -v git"]).output()?;
    let real = String::from_utf8(real.stdout)?.trim().to_string();
    ensure!(!real.is_empty(), "git is not installed");
    std::fs::create_dir_all(dir)?;
    let marker = dir.join("crashed");
    // The sidecar puts `-c key=value` pairs first: the step is matched after them.
    let script = format!(
        r#"#!/bin/sh
words=""
skip=0
for a in "$@"; do
  if [ $skip = 1 ]; then skip=0; continue; fi
  if [ "$a" = "-c" ]; then skip=1; continue; fi
  words="$words $a"
done
case "$words" in
  " {step}"*) hit=1 ;;
  *) hit=0 ;;
esac
if [ $hit = 1 ] && [ ! -e '{marker}' ]; then
  if [ {fail} = 1 ]; then : > '{marker}'; echo "fatal: failed to read .git/worktrees/other/commondir: Success" >&2; exit 128; fi
  if [ {after} = 0 ]; then : > '{marker}'; kill -9 $PPID; exit 137; fi
  '{real}' "$@"; status=$?
  if [ $status = 0 ]; then : > '{marker}'; kill -9 $PPID; fi
  exit $status
fi
exec '{real}' "$@"
"#,
        step = step.join(" "),
        marker = marker.display(),
        after = u8::from(fault == Fault::KillAfter),
        fail = u8::from(fault == Fault::FailOnce),
        real = real,
    );
    let path = dir.join("git");
    std::fs::write(&path, script)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir.to_path_buf())
}
