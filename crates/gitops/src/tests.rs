//! A repository whose config names a program at every place git would run one: none runs.

use super::*;

fn sh(dir: &Path, script: &str) {
    let ok = Command::new("sh").arg("-c").arg(script).current_dir(dir).status().unwrap().success();
    assert!(ok, "{script}");
}

/// A repository with one commit, set up by its (hostile) owner with the plain git.
fn hostile_repo() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let marker = t.path().join("ran");
    let evil = t.path().join("evil.sh");
    std::fs::write(&evil, format!("#!/bin/sh\necho \"$0 $*\" >> '{}'\ncat\n", marker.display())).unwrap();
    sh(&repo, "chmod +x ../evil.sh");
    sh(&repo, "git init -q -b main && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m init");
    let e = evil.display();
    sh(
        &repo,
        &format!(
            "git config core.hooksPath '{h}' && git config core.fsmonitor '{e}' && \
             git config filter.evil.clean '{e} clean' && git config filter.evil.smudge '{e} smudge' && \
             git config filter.evil.required true && git config diff.evil.textconv '{e} textconv' && \
             git config diff.external '{e} external' && git config credential.helper '!{e} cred' && \
             git config core.pager '{e} pager' && echo '* filter=evil diff=evil' > .gitattributes",
            h = t.path().join("hooks").display()
        ),
    );
    std::fs::create_dir_all(t.path().join("hooks")).unwrap();
    for hook in ["pre-commit", "commit-msg", "post-commit", "post-checkout", "reference-transaction"] {
        std::fs::copy(&evil, t.path().join("hooks").join(hook)).unwrap();
    }
    (t, repo)
}

#[test]
fn nothing_a_repository_names_runs() {
    let (t, repo) = hostile_repo();
    let g = Git::open(&repo).unwrap();
    std::fs::write(repo.join("a.txt"), "hello\n").unwrap();
    g.run(&["add", "-A"]).unwrap();
    let id = identity_env("agentcom", "agentcom@localhost");
    let env: Vec<(&str, &str)> = id.iter().map(|(k, v)| (*k, v.as_str())).collect();
    g.run_with(&["commit", "-q", "-m", "work"], &env).unwrap();
    std::fs::write(repo.join("a.txt"), "changed\n").unwrap();
    let diff = g.run(&["diff", "HEAD"]).unwrap();
    assert!(diff.contains("+changed"), "{diff}");
    g.run(&["status", "--porcelain"]).unwrap();
    g.run(&["checkout", "-q", "-b", "other"]).unwrap();
    let marker = t.path().join("ran");
    assert!(!marker.exists(), "ran: {}", std::fs::read_to_string(&marker).unwrap_or_default());
    // The same commands with the plain git do run them: the repository is hostile for real.
    sh(&repo, "git status --porcelain > /dev/null");
    assert!(marker.exists(), "the plain git runs the planted fsmonitor");
}

#[test]
fn calls_are_bounded_in_time_and_output() {
    let (_t, repo) = hostile_repo();
    let g = Git::open(&repo).unwrap().with_timeout(Duration::from_millis(300));
    let e = g.run_with(&["ls-remote", "ssh://example.invalid/x"], &[("GIT_SSH_COMMAND", "sleep 30 #")]).unwrap_err();
    assert!(matches!(e, GitError::TimedOut { .. }), "{e}");
    let g = Git::open(&repo).unwrap();
    let big = g.run_capped(&["cat-file", "-p", "HEAD"], 10).unwrap();
    assert!(big.cut && big.stdout.len() == 10, "{big:?}");
    let e = g.clone().with_max_output(10).run(&["cat-file", "-p", "HEAD"]).unwrap_err();
    assert!(matches!(e, GitError::TooMuchOutput { limit: 10, .. }), "{e}");
    assert!(matches!(Git::open(Path::new("/")), Err(GitError::NotARepo(_))));
}
