//! `.worktreeinclude`: ignored files of `repo_dir` (`.env`, local config) that each new worktree
//! gets a copy of, named in gitignore syntax, as Claude Code and Orca read the file. The copy
//! never follows a link (in `repo_dir` or in the worktree, whose folders came from commits an
//! agent made), never overwrites, and is bounded in files and bytes.

use gitops::Git;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

pub const FILE: &str = ".worktreeinclude";
/// Files copied at most, and bytes in all.
const MAX_FILES: usize = 10_000;
const MAX_BYTES: u64 = 1 << 30;

/// Copies what `.worktreeinclude` names from `repo` into `worktree`; returns how many files.
pub fn copy(repo: &Git, worktree: &Path) -> Result<usize, String> {
    let list = repo.dir.join(FILE);
    if std::fs::symlink_metadata(&list).map(|m| !m.is_file()).unwrap_or(true) {
        return Ok(0);
    }
    let from = format!("--exclude-from={}", list.display());
    let names = repo
        .run_with(&["ls-files", "-z", "--others", "--ignored", &from], &[])
        .map_err(|e| format!("cannot list the files {FILE} names: {e}"))?;
    let (mut files, mut bytes) = (0usize, 0u64);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(rel) = std::str::from_utf8(name) else { continue };
        let rel = Path::new(rel);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            continue;
        }
        let src = repo.dir.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&src) else { continue };
        if !meta.is_file() {
            continue;
        }
        if files >= MAX_FILES || bytes + meta.len() > MAX_BYTES {
            return Err(format!("{FILE} names more than {MAX_FILES} files or {MAX_BYTES} bytes"));
        }
        let Some(dest) = safe_dest(worktree, rel)? else { continue };
        copy_file(&src, &dest, meta.len())
            .map_err(|e| format!("cannot copy {} into the worktree: {e}", rel.display()))?;
        files += 1;
        bytes += meta.len();
    }
    Ok(files)
}

/// Where `rel` goes under `root`: its folders made one by one, none of them a link; `None` when
/// a file is already there (it is left as it is).
fn safe_dest(root: &Path, rel: &Path) -> Result<Option<PathBuf>, String> {
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let last = i + 1 == parts.len();
        match std::fs::symlink_metadata(&at) {
            Ok(_) if last => return Ok(None),
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!("{} in the worktree is not a folder (a link?): not copied into", at.display()))
            }
            Err(_) if last => return Ok(Some(at)),
            Err(_) => std::fs::create_dir(&at).map_err(|e| format!("cannot create {}: {e}", at.display()))?,
        }
    }
    Ok(None)
}

fn copy_file(src: &Path, dest: &Path, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let input = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(src)?;
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dest)?;
    std::io::copy(&mut input.take(len), &mut out)?;
    Ok(())
}
