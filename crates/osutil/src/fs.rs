//! Atomic, durable file writes: temp file, fsync, rename, fsync the directory.
//!
//! Every component that promises durability (hub tokens, sidecar queue, supervisor state)
//! goes through [`write_atomic`], so "nothing is acked before it is fsynced" has one implementation.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `data` to `path` so that after return the file holds either the old or the new
/// content in full, and the new content survives a power cut.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, None)
}

/// Like [`write_atomic`], creating the file with the given Unix permission bits.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: Option<u32>) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A random name opened with O_EXCL: in a folder others can write to (an agent's results),
    // a link planted at a predictable temp name would redirect the write. The mode goes
    // through the umask, as for any new file.
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode.unwrap_or(0o666)))
        .tempfile_in(&dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    // On error the temp file is removed when dropped.
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(&dir)
}

/// Fsyncs a directory so that a rename or unlink inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a file and makes the removal durable. A missing file is not an error.
pub fn remove_durable(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(&parent_dir(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "only the target file remains: {names:?}");
    }

    #[cfg(unix)]
    #[test]
    fn mode_is_applied() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_atomic_mode(&p, b"x", Some(0o600)).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn a_link_planted_in_the_folder_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        // At the name the old code used, and at the target: the rename replaces the link.
        std::os::unix::fs::symlink(&victim, dir.path().join(format!(".r.json.tmp-{}", std::process::id()))).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("r.json")).unwrap();
        write_atomic(&dir.path().join("r.json"), b"result").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(fs::read(dir.path().join("r.json")).unwrap(), b"result");
        assert!(!fs::symlink_metadata(dir.path().join("r.json")).unwrap().file_type().is_symlink());
    }

    #[test]
    fn failed_write_keeps_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("f");
        assert!(write_atomic(&p, b"x").is_err());
        let ok = dir.path().join("f");
        write_atomic(&ok, b"old").unwrap();
        remove_durable(&ok).unwrap();
        remove_durable(&ok).unwrap();
        assert!(!ok.exists());
    }
}
