//! One integration, as the integrator's sidecar wakes it (`agentcom integrate-run`): the task's
//! change (and, with `batch_max`, the next ones queued for the same target) replayed on the
//! target in a scratch worktree, checked, and pushed with a compare-and-swap on the target's
//! old commit. Every step may be cut short (a SIGKILL, a power cut) and run again: scratch
//! worktrees left over are removed first, and a change already on the target (its commits'
//! patches there, or its head an ancestor) is reported merged, never merged twice. Every git
//! call goes through `gitops`; the task's fields are hostile input, checked before use.

use crate::bisect::Bisect;
use crate::check;
use crate::config::{IntegrateConfig, Strategy};
use gitops::Git;
use proto::api::{IntegrationReport, IntegrationStatus};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A change to integrate: the task it is from, its branch and the commit the agent left.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub task_id: String,
    pub branch: String,
    pub head_sha: Option<String>,
}

/// What the hub's integration task says (from `AGENTCOM_TASK_FILE`).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub change: Change,
    pub target: String,
    pub attempt: u32,
    pub approved: bool,
    pub review: bool,
}

/// Times the target may move under us before the integration gives up for now.
const LEASE_TRIES: usize = 5;

fn ref_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        && !s.starts_with(['-', '/', '.'])
        && !s.contains("..")
        && !s.contains("//")
        && !s.ends_with(".lock")
}

fn sha_ok(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Job {
    /// The integration task as the hub wrote it, each field checked.
    pub fn from_task(task: &Value) -> Result<Job, String> {
        let s = |k: &str| task.get(k).and_then(Value::as_str).map(str::to_string);
        if s("kind").as_deref() != Some("integrate") {
            return Err("not an integration task (kind is not \"integrate\")".into());
        }
        let task_id = s("integrates").filter(|t| proto::check_task_id(t).is_ok()).ok_or("integrates: not a task id")?;
        let branch = s("branch").filter(|b| ref_ok(b)).ok_or("branch: not a branch name")?;
        let target = s("target").filter(|b| ref_ok(b)).ok_or("target: not a branch name")?;
        let head_sha = s("head_sha").filter(|h| sha_ok(h));
        let attempt = task.get("attempt").and_then(Value::as_u64).unwrap_or(1).min(1000) as u32;
        let flag = |k: &str| task.get(k).and_then(Value::as_bool).unwrap_or(false);
        Ok(Job {
            change: Change { task_id, branch, head_sha },
            target,
            attempt,
            approved: flag("approved"),
            review: flag("review"),
        })
    }
}

/// The integration's outcome, as the hub reads it in the result (`result.integration`).
pub fn result_json(report: &IntegrationReport, merged: &[String]) -> Value {
    let text = match report.outcome {
        IntegrationStatus::Merged => format!("merged at {}", report.merged_sha.clone().unwrap_or_default()),
        IntegrationStatus::WaitingReview => "checks passed; waiting for a person's review".into(),
        IntegrationStatus::Conflict => format!("conflict on {}", report.conflicts.join(", ")),
        IntegrationStatus::CheckFailed => "the check failed".into(),
        other => other.to_string(),
    };
    json!({"status": "success", "result": text, "integration": report, "merged_tasks": merged})
}

/// The integration of `job` in the integrator's clone; `Err` for what should be tried again
/// later (git failing, the target moving too often): the task fails and the hub retries it.
pub fn integrate(
    cfg: &IntegrateConfig,
    job: &Job,
    api: &dyn Fn(&str) -> Vec<Change>,
) -> Result<(IntegrationReport, Vec<String>), String> {
    let repo = Git::open(&cfg.repo_dir).map_err(|e| e.to_string())?.with_timeout(cfg.git_timeout);
    let scratch_root = cfg.state_dir.join("scratch");
    clean_scratch(&repo, &scratch_root);
    for _ in 0..LEASE_TRIES {
        let target_sha = fetch_target(cfg, &repo, &job.target)?;
        let this = resolve_change(cfg, &repo, &job.change)?;
        if already_merged(cfg, &repo, &target_sha, &this)? {
            return Ok((report(IntegrationStatus::Merged, Some(target_sha)), vec![job.change.task_id.clone()]));
        }
        // The batch: this change, then the next ones queued for the target (not those that
        // wait for a review).
        let mut batch = vec![(job.change.clone(), this)];
        let review = cfg.require_review || job.review;
        if cfg.batch_max > 1 && !review {
            for c in api(&job.target).into_iter().filter(|c| c.task_id != job.change.task_id).take(cfg.batch_max - 1) {
                if let Ok(sha) = resolve_change(cfg, &repo, &c) {
                    if !already_merged(cfg, &repo, &target_sha, &sha)? {
                        batch.push((c, sha));
                    }
                }
            }
        }
        let scratch = scratch_root.join(&job.change.task_id);
        let outcome = test_batch(cfg, &repo, &scratch, &target_sha, &batch);
        let (k, head, tail) = match outcome {
            Err(e) => {
                remove_scratch(&repo, &scratch);
                return Err(e);
            }
            Ok(Tested::Conflict { paths }) => {
                remove_scratch(&repo, &scratch);
                let mut r = report(IntegrationStatus::Conflict, None);
                r.conflicts = paths;
                r.give_up = job.attempt >= cfg.max_integration_attempts;
                return Ok((r, vec![]));
            }
            Ok(Tested::Red { tail }) => {
                remove_scratch(&repo, &scratch);
                let mut r = report(IntegrationStatus::CheckFailed, None);
                r.output_tail = Some(tail);
                r.give_up = job.attempt >= cfg.max_integration_attempts;
                return Ok((r, vec![]));
            }
            Ok(Tested::Green { count, head, tail }) => (count, head, tail),
        };
        if review && !job.approved {
            remove_scratch(&repo, &scratch);
            let mut r = report(IntegrationStatus::WaitingReview, None);
            r.tested_sha = Some(head);
            r.output_tail = Some(tail);
            return Ok((r, vec![]));
        }
        // The compare-and-swap: the target moves only from the commit we tested on.
        let lease = format!("--force-with-lease=refs/heads/{t}:{target_sha}", t = job.target);
        let pushed = repo.at(&scratch).and_then(|g| {
            g.with_timeout(cfg.git_timeout).run(&[
                "push",
                "-q",
                "--no-verify",
                &lease,
                &cfg.remote,
                &format!("HEAD:refs/heads/{}", job.target),
            ])
        });
        remove_scratch(&repo, &scratch);
        match pushed {
            Ok(_) => {
                let _ = repo.run(&["update-ref", &format!("refs/remotes/{}/{}", cfg.remote, job.target), &head]);
                let merged: Vec<String> = batch[..k].iter().map(|(c, _)| c.task_id.clone()).collect();
                let mut r = report(IntegrationStatus::Merged, Some(head.clone()));
                r.output_tail = Some(tail);
                r.after_merge_error = after_merge(cfg, job, &head, &merged);
                return Ok((r, merged));
            }
            // The target moved since we fetched: fetch it again and test again.
            Err(e) => {
                tracing::info!(target = %job.target, error = %e, "the target moved; testing again on its new commit")
            }
        }
    }
    Err(format!("the target {} moved {LEASE_TRIES} times while this change was tested; trying again later", job.target))
}

fn report(outcome: IntegrationStatus, merged_sha: Option<String>) -> IntegrationReport {
    IntegrationReport {
        outcome,
        merged_sha,
        tested_sha: None,
        conflicts: Vec::new(),
        output_tail: None,
        give_up: false,
        after_merge_error: None,
    }
}

/// `remote`'s `target`, fetched; its commit.
fn fetch_target(cfg: &IntegrateConfig, repo: &Git, target: &str) -> Result<String, String> {
    let to = format!("refs/remotes/{}/{target}", cfg.remote);
    repo.run(&["fetch", "-q", "--no-tags", &cfg.remote, &format!("+refs/heads/{target}:{to}")])
        .map_err(|e| format!("cannot fetch {target}: {e}"))?;
    repo.resolve(&to).ok_or_else(|| format!("{} has no branch {target}", cfg.remote))
}

/// The change's commit: the one the agent left if we have it, else its branch (from the remote
/// when there, else this clone's own).
fn resolve_change(cfg: &IntegrateConfig, repo: &Git, c: &Change) -> Result<String, String> {
    let to = format!("refs/agentcom/integrate/{}", c.branch);
    let fetched =
        repo.run(&["fetch", "-q", "--no-tags", &cfg.remote, &format!("+refs/heads/{}:{to}", c.branch)]).is_ok();
    if let Some(sha) = c.head_sha.as_deref().and_then(|h| repo.resolve(h)) {
        return Ok(sha);
    }
    let branch = if fetched { to } else { format!("refs/heads/{}", c.branch) };
    repo.resolve(&branch)
        .ok_or_else(|| format!("the change's branch {} is neither on {} nor here", c.branch, cfg.remote))
}

/// Whether the change is on the target already (an earlier run pushed it): its head is an
/// ancestor (merge), or every one of its commits has its patch there (rebase).
fn already_merged(_cfg: &IntegrateConfig, repo: &Git, target: &str, change: &str) -> Result<bool, String> {
    if repo.check(&["merge-base", "--is-ancestor", change, target]).map_err(|e| e.to_string())? {
        return Ok(true);
    }
    let cherry = repo.run(&["cherry", target, change]).map_err(|e| e.to_string())?;
    Ok(!cherry.is_empty() && cherry.lines().all(|l| l.starts_with('-')))
}

enum Tested {
    /// The first `count` changes passed the check together; `head` is what they make.
    Green { count: usize, head: String, tail: String },
    /// The held change does not apply.
    Conflict { paths: Vec<String> },
    /// The held change fails the check.
    Red { tail: String },
}

/// Applies prefixes of the batch on the target in a scratch worktree and checks them, looking
/// for the longest that passes ([`Bisect`]); the scratch worktree holds it on `Green`.
fn test_batch(
    cfg: &IntegrateConfig,
    repo: &Git,
    scratch: &Path,
    target: &str,
    batch: &[(Change, String)],
) -> Result<Tested, String> {
    let mut search = Bisect::new(batch.len());
    // The best green prefix, and whether the scratch worktree still holds it.
    let mut green: Option<(usize, String, String)> = None;
    let mut holds_green = false;
    let mut red_tail = String::from("the check failed");
    while let Some(k) = search.next() {
        let g = fresh_scratch(cfg, repo, scratch, target)?;
        holds_green = false;
        match apply(cfg, &g, &batch[..k])? {
            Applied::Conflict { index: 0, paths } => return Ok(Tested::Conflict { paths }),
            Applied::Conflict { index, .. } => {
                // A later change of the batch conflicts: the batch ends before it.
                search = Bisect::new(index);
                continue;
            }
            Applied::Clean => {}
        }
        let head = g.resolve("HEAD").ok_or("the scratch worktree has no HEAD")?;
        let (ok, tail) = match &cfg.check_command {
            None => (true, String::new()),
            Some(cmd) => {
                let env = [("AGENTCOM_TARGET", cfg.target_branch.clone()), ("AGENTCOM_CHECKED_SHA", head.clone())];
                let ran = check::run(cmd, scratch, &env, cfg.check_timeout)
                    .map_err(|e| format!("cannot run check_command: {e}"))?;
                (ran.ok, format!("{} ({})", ran.tail.trim_end(), ran.status))
            }
        };
        search.record(k, ok);
        if ok && green.as_ref().is_none_or(|(c, ..)| *c < k) {
            green = Some((k, head, tail));
            holds_green = true;
        } else if !ok && k == 1 {
            red_tail = tail;
        }
    }
    let Some((count, head, tail)) = green.filter(|(c, ..)| *c == search.passing()) else {
        return Ok(Tested::Red { tail: red_tail });
    };
    if holds_green {
        return Ok(Tested::Green { count, head, tail });
    }
    // A shorter prefix passed earlier: build it again to push it (the same tree as checked).
    let g = fresh_scratch(cfg, repo, scratch, target)?;
    if let Applied::Conflict { .. } = apply(cfg, &g, &batch[..count])? {
        return Err("a change that applied does not apply again".into());
    }
    let again = g.resolve("HEAD").ok_or("the scratch worktree has no HEAD")?;
    let tree = |r: &str| g.run(&["rev-parse", &format!("{r}^{{tree}}")]).unwrap_or_default();
    if tree(&again) != tree(&head) {
        return Err("the checked tree could not be built again".into());
    }
    Ok(Tested::Green { count, head: again, tail })
}

/// A scratch worktree at the target's commit, made anew.
fn fresh_scratch(cfg: &IntegrateConfig, repo: &Git, scratch: &Path, target: &str) -> Result<Git, String> {
    remove_scratch(repo, scratch);
    std::fs::create_dir_all(scratch.parent().unwrap_or(scratch)).map_err(|e| e.to_string())?;
    repo.run(&["worktree", "add", "-q", "--detach", &scratch.display().to_string(), target])
        .map_err(|e| format!("cannot make a scratch worktree: {e}"))?;
    Ok(repo.at(scratch).map_err(|e| e.to_string())?.with_timeout(cfg.git_timeout))
}

enum Applied {
    Clean,
    Conflict { index: usize, paths: Vec<String> },
}

/// The paths git could not merge, if any.
fn unmerged(g: &Git) -> Vec<String> {
    let paths = g.run(&["diff", "--name-only", "--diff-filter=U"]).unwrap_or_default();
    paths.lines().take(proto::api::MAX_CONFLICTS).map(str::to_string).collect()
}

/// Replays (or merges) each change on the scratch worktree's HEAD, in order.
fn apply(cfg: &IntegrateConfig, g: &Git, changes: &[(Change, String)]) -> Result<Applied, String> {
    let id = gitops::identity_env(&cfg.author_name, &cfg.author_email);
    // The committer is the integrator; a replayed commit keeps its author (the agent's).
    let committer = [("GIT_COMMITTER_NAME", id[2].1.as_str()), ("GIT_COMMITTER_EMAIL", id[3].1.as_str())];
    for (index, (c, sha)) in changes.iter().enumerate() {
        let failed = match cfg.strategy {
            Strategy::Rebase => {
                let commits = g
                    .run(&["rev-list", "--reverse", "--no-merges", &format!("HEAD..{sha}")])
                    .map_err(|e| e.to_string())?;
                let mut failed = None;
                for commit in commits.lines().filter(|l| !l.is_empty()) {
                    if let Err(e) = g.run_with(&["cherry-pick", "--allow-empty", commit], &committer) {
                        // A commit whose change the target has already: nothing to keep.
                        let empty =
                            unmerged(g).is_empty() && g.check(&["diff", "--cached", "--quiet"]).unwrap_or(false);
                        if empty && g.run(&["cherry-pick", "--skip"]).is_ok() {
                            continue;
                        }
                        failed = Some(e);
                        break;
                    }
                }
                failed
            }
            Strategy::Merge => {
                let env: Vec<(&str, &str)> = id.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let msg = format!("Merge {} (agentcom-task: {})", c.branch, c.task_id);
                g.run_with(&["merge", "--no-ff", "--no-edit", "-m", &msg, sha], &env).err()
            }
        };
        if let Some(e) = failed {
            let paths = unmerged(g);
            let _ = g.run(&["cherry-pick", "--abort"]);
            let _ = g.run(&["merge", "--abort"]);
            if paths.is_empty() {
                // Not a conflict: git itself failed.
                return Err(format!("cannot apply {}: {e}", c.branch));
            }
            return Ok(Applied::Conflict { index, paths });
        }
    }
    Ok(Applied::Clean)
}

/// `after_merge_command` with the merge in its environment (and the integrator's, for its
/// credentials); its failure is reported, never undoing the merge.
fn after_merge(cfg: &IntegrateConfig, job: &Job, sha: &str, merged: &[String]) -> Option<String> {
    let cmd = cfg.after_merge_command.as_ref()?;
    let env = [
        ("AGENTCOM_MERGED_SHA", sha.to_string()),
        ("AGENTCOM_TARGET", job.target.clone()),
        ("AGENTCOM_INTEGRATED_TASK", job.change.task_id.clone()),
        ("AGENTCOM_INTEGRATED_TASKS", merged.join(" ")),
        ("AGENTCOM_BRANCH", job.change.branch.clone()),
    ];
    match check::run_as(check::Env::Operator, cmd, &cfg.repo_dir, &env, cfg.after_merge_timeout) {
        Ok(r) if r.ok => None,
        Ok(r) => Some(format!("{} ({})", r.tail.trim_end(), r.status)),
        Err(e) => Some(format!("cannot run after_merge_command: {e}")),
    }
}

fn remove_scratch(repo: &Git, scratch: &Path) {
    if scratch.exists() {
        let _ = repo.run(&["worktree", "remove", "--force", "--force", &scratch.display().to_string()]);
        let _ = std::fs::remove_dir_all(scratch);
    }
    let _ = repo.run(&["worktree", "prune"]);
}

/// Scratch worktrees an earlier run left (it was killed): removed before anything else.
pub fn clean_scratch(repo: &Git, root: &Path) {
    let left: Vec<PathBuf> =
        std::fs::read_dir(root).map(|d| d.flatten().take(10_000).map(|e| e.path()).collect()).unwrap_or_default();
    for path in left {
        remove_scratch(repo, &path);
    }
    let _ = repo.run(&["worktree", "prune"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integration_task_is_read_field_by_field_as_hostile_input() {
        let good = json!({"kind": "integrate", "integrates": "task-1", "branch": "agentcom/task-1", "target": "main",
            "head_sha": "a".repeat(40), "attempt": 2, "approved": true});
        let j = Job::from_task(&good).unwrap();
        assert_eq!(
            (j.change.branch.as_str(), j.target.as_str(), j.attempt, j.approved),
            ("agentcom/task-1", "main", 2, true)
        );
        for (k, v) in [
            ("kind", json!("work")),
            ("integrates", json!("../x")),
            ("branch", json!("--upload-pack=x")),
            ("branch", json!("a..b")),
            ("target", json!("main;rm")),
        ] {
            let mut bad = good.clone();
            bad[k] = v;
            assert!(Job::from_task(&bad).is_err(), "{k}");
        }
        let mut no_sha = good.clone();
        no_sha["head_sha"] = json!("HEAD~1");
        assert_eq!(Job::from_task(&no_sha).unwrap().change.head_sha, None, "not a commit id: the branch is used");
    }
}
