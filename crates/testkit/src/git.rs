//! Real git repositories for the worktree tests: a project with a commit, a look at its
//! branches, worktrees and files, and a `git` that crashes its caller at a chosen step (the
//! sidecar's crash points inside a git step).

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
