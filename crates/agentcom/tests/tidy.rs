//! Repository rules kept true by a test (rust-analyzer's `tidy.rs` is the model): every path
//! ARCHITECTURE.md names exists, status codes appear only where it says, no source file is over
//! 700 lines, every source file opens with a `//!` line saying what it is, and the sidecar's
//! symbol order was made for this Cargo.lock.

use std::path::{Path, PathBuf};

/// Paths ARCHITECTURE.md names that the programs write at run time, not files of the repository.
const RUNTIME_PATHS: &[&str] = &[".git/agentcom-upgrade.json", "dist/", "refs/agentcom/attempts/"];
const MAX_LINES: usize = 700;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root")
}

/// Every file and folder under `crates/`, as paths relative to the root (folders end with `/`).
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.join("crates")];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under the root").display().to_string();
            if path.is_dir() {
                out.push(format!("{rel}/"));
                todo.push(path);
            } else {
                out.push(rel);
            }
        }
    }
    out
}

fn sources(root: &Path) -> Vec<(String, String)> {
    tree(root)
        .into_iter()
        .filter(|p| p.ends_with(".rs"))
        .map(|p| {
            let text = std::fs::read_to_string(root.join(&p)).expect("a readable source file");
            (p, text)
        })
        .collect()
}

/// The backticked spans of `text` that look like repository paths.
fn named_paths(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.starts_with('/') && (s.contains('/') || s.ends_with(".rs")))
        .filter(|s| s.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)))
        .collect()
}

#[test]
fn every_path_architecture_names_exists() {
    let root = root();
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let tree = tree(&root);
    let missing: Vec<&str> = named_paths(&doc)
        .into_iter()
        // Git refs (`refs/agentcom/...`) are names in a repository at run time, not our files.
        .filter(|p| !RUNTIME_PATHS.contains(p) && !p.starts_with("refs/"))
        .filter(|p| !root.join(p).exists() && !tree.iter().any(|t| t.ends_with(&format!("/{p}"))))
        .collect();
    assert!(missing.is_empty(), "ARCHITECTURE.md names paths that do not exist: {missing:?}");
}

#[test]
fn status_codes_appear_only_where_architecture_allows() {
    let root = root();
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let rule = doc.lines().skip_while(|l| !l.contains("**Status codes live only in")).take(2).collect::<String>();
    let allowed = named_paths(&rule);
    assert!(!allowed.is_empty(), "the invariant names where status codes live");
    let outside: Vec<String> = sources(&root)
        .into_iter()
        // The programs' own sources; tests (and testkit's scripted servers) may play any server.
        .filter(|(p, _)| p.contains("/src/") && !p.starts_with("crates/testkit/") && !p.starts_with("crates/bench/"))
        .filter(|(p, text)| text.contains("StatusCode") && !allowed.iter().any(|a| p.starts_with(a)))
        .map(|(p, _)| p)
        .collect();
    assert!(outside.is_empty(), "StatusCode outside {allowed:?}: {outside:?}");
}

#[test]
fn no_source_file_is_over_700_lines() {
    let long: Vec<(String, usize)> = sources(&root())
        .into_iter()
        .map(|(p, text)| (p, text.lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .collect();
    assert!(long.is_empty(), "split these by concern: {long:?}");
}

#[test]
fn every_source_file_opens_with_a_doc_line() {
    let bare: Vec<String> =
        sources(&root()).into_iter().filter(|(_, text)| !text.starts_with("//!")).map(|(p, _)| p).collect();
    assert!(bare.is_empty(), "these files do not open with `//!`: {bare:?}");
}

/// The rules above would pass on an empty tree: they must see what they check.
#[test]
fn the_checks_see_the_repository() {
    let root = root();
    let sources = sources(&root);
    assert!(sources.len() > 100, "{} source files", sources.len());
    assert!(sources.iter().any(|(p, _)| p == "crates/agentcom/tests/tidy.rs"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    assert!(named_paths(&doc).len() > 50);
}

/// `sidecar.order` names functions with hashes of each crate's version and dependencies, so it
/// packs the sidecar's code only for the Cargo.lock it was made for (a stale list links fine and
/// costs each sidecar about 3 MB, silently: hence this check).
#[test]
fn the_sidecar_symbol_order_was_made_for_this_cargo_lock() {
    let root = root();
    let order = std::fs::read_to_string(root.join("crates/agentcom/sidecar.order")).expect("sidecar.order");
    let recorded = order.lines().next().and_then(|l| l.strip_prefix("# Cargo.lock ")).and_then(|l| l.split(' ').next());
    let out = std::process::Command::new("git")
        .args(["hash-object", "Cargo.lock"])
        .current_dir(&root)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git hash-object Cargo.lock: {}", String::from_utf8_lossy(&out.stderr));
    let lock = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        recorded,
        Some(lock.as_str()),
        "crates/agentcom/sidecar.order was made for another Cargo.lock: run scripts/sidecar-order (needs valgrind)"
    );
}
