//! The upgrade transaction, as update systems do it (Mender, greenboot, Erlang release_handler):
//! the intent and the last good commit are journaled durably before anything changes; the new
//! code runs as a trial; it is committed only after a health signal held for `stable_for`
//! within `health_timeout`; otherwise the guard rolls back by itself. An interrupted upgrade is
//! finished or rolled back by `--resume`.

use crate::checkpoint::{self, Checkpoint};
use crate::git::{run_with_timeout, GitError, Repo};
use crate::health::{health_window, HealthError, Window};
use crate::GuardError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use supervisor::backend::{Backend, Kind};

pub const JOURNAL: &str = "agentcom-upgrade.json";
/// One line per committed upgrade, for the watchdog: `{"from", "to", "at"}`.
pub const HISTORY: &str = "agentcom-upgrades.jsonl";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Intent and last good recorded; the main branch not touched yet.
    Prepared,
    /// The branch is merged into the main branch; the process not restarted yet.
    Merged,
    /// The new code was restarted; in its health window.
    Restarted,
    /// Going back to the last good commit.
    RollingBack,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub phase: Phase,
    pub process: String,
    pub branch: String,
    pub main_branch: String,
    pub last_good: String,
    pub new_commit: Option<String>,
    pub health: String,
    /// Extra CA certificates for an `https://` health URL.
    #[serde(default)]
    pub health_ca_file: Option<PathBuf>,
    pub health_timeout_ms: u64,
    pub stable_for_ms: u64,
    pub backend: String,
    pub started_at: String,
    pub reason: Option<String>,
    /// Where the agent's checkpoint was saved, so `--resume` knows it too.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub repo: PathBuf,
    pub process: String,
    pub branch: String,
    pub test: String,
    pub health: String,
    pub health_ca_file: Option<PathBuf>,
    pub health_timeout: Duration,
    pub stable_for: Duration,
    pub test_timeout: Duration,
    pub check_interval: Duration,
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: String,
    pub ok: bool,
    pub detail: String,
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// upgraded, rolled-back, rollback-failed, tests-failed, refused, resumed-nothing, aborted
    pub outcome: String,
    pub repo: String,
    pub process: String,
    pub old_commit: Option<String>,
    pub new_commit: Option<String>,
    pub good_tag: Option<String>,
    pub error: Option<String>,
    pub steps: Vec<Step>,
}

impl Report {
    pub fn ok(&self) -> bool {
        matches!(self.outcome.as_str(), "upgraded" | "resumed-nothing" | "aborted")
    }
}

/// Step-by-step progress: printed as it happens, kept for the final report.
pub struct Progress<'a> {
    steps: Vec<Step>,
    print: &'a mut dyn FnMut(&Step),
}

impl<'a> Progress<'a> {
    pub fn new(print: &'a mut dyn FnMut(&Step)) -> Self {
        Progress { steps: Vec::new(), print }
    }
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<(T, String), GuardError>) -> Result<T, GuardError> {
        let t0 = Instant::now();
        let r = f();
        let (ok, detail) = match &r {
            Ok((_, d)) => (true, d.clone()),
            Err(e) => (false, e.to_string()),
        };
        let step = Step { step: name.into(), ok, detail, ms: t0.elapsed().as_millis() as u64 };
        (self.print)(&step);
        self.steps.push(step);
        r.map(|(v, _)| v)
    }
}

fn journal_path(repo: &Repo) -> Result<PathBuf, GitError> {
    Ok(repo.git_dir()?.join(JOURNAL))
}

pub fn read_journal(repo: &Repo) -> Option<Journal> {
    let p = journal_path(repo).ok()?;
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn write_journal(repo: &Repo, j: &Journal) -> Result<(), GuardError> {
    let p = journal_path(repo)?;
    osutil::fs::write_atomic(&p, &serde_json::to_vec_pretty(j).expect("json"))
        .map_err(|source| GuardError::Journal { path: p.display().to_string(), source })
}

fn clear_journal(repo: &Repo) {
    if let Ok(p) = journal_path(repo) {
        let _ = osutil::fs::remove_durable(&p);
    }
}

pub(crate) fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Runs the whole transaction. Never leaves a half-applied state: on any failure after the
/// merge, the main branch is reset to the last good commit and the process restarted.
pub fn upgrade(opts: &Options, backend: &Backend, print: &mut dyn FnMut(&Step)) -> Report {
    let mut p = Progress::new(print);
    let mut report = Report {
        outcome: "refused".into(),
        repo: opts.repo.display().to_string(),
        process: opts.process.clone(),
        old_commit: None,
        new_commit: None,
        good_tag: None,
        error: None,
        steps: Vec::new(),
    };
    let result = run_upgrade(opts, backend, &mut p, &mut report);
    if let Err(e) = result {
        report.error = Some(e.to_string());
    }
    report.steps = p.steps;
    report
}

fn refuse(why: impl Into<String>) -> GuardError {
    GuardError::Refused(why.into())
}

fn run_upgrade(opts: &Options, backend: &Backend, p: &mut Progress<'_>, report: &mut Report) -> Result<(), GuardError> {
    // 1. Preflight: refuse before touching anything.
    let (repo, main_branch, last_good, branch_sha) = p.run("check repo, branch and supervisor", || {
        let repo = Repo::open(&opts.repo)?;
        if let Some(j) = read_journal(&repo) {
            return Err(refuse(format!(
                "an interrupted upgrade of {} is journaled ({:?}); run `agentcom upgrade --resume --repo {}` first",
                j.branch,
                j.phase,
                opts.repo.display()
            )));
        }
        let main = repo.branch()?.ok_or_else(|| refuse("detached HEAD: check out the main branch first"))?;
        if !repo.is_clean()? {
            return Err(refuse("the repo has uncommitted changes: commit or stash them first"));
        }
        let branch_sha =
            repo.resolve(&opts.branch).ok_or_else(|| refuse(format!("branch {} does not exist", opts.branch)))?;
        if opts.health.starts_with("https://") {
            osutil::tls::client_config(opts.health_ca_file.as_deref()).map_err(HealthError::CaFile)?;
        }
        let head = repo.head()?;
        let procs = backend.list()?;
        if !procs.iter().any(|s| s.name == opts.process) {
            return Err(refuse(format!("process {} is not known to the supervisor", opts.process)));
        }
        let detail = format!("{main} at {}, {} at {}", short(&head), opts.branch, short(&branch_sha));
        Ok(((repo, main, head, branch_sha), detail))
    })?;
    report.old_commit = Some(last_good.clone());
    if branch_sha == last_good {
        return Err(refuse(format!("{} has nothing new for {main_branch}", opts.branch)));
    }

    // 2. Tests on the branch, in a worktree of their own: the main branch is not touched.
    let git_dir = repo.git_dir()?;
    p.run("run the tests on the branch", || {
        let wt = git_dir.join(format!("agentcom-worktree-{}", std::process::id()));
        let _ = repo.git(&["worktree", "remove", "--force", &wt.display().to_string()]);
        repo.git(&["worktree", "add", "--detach", &wt.display().to_string(), &branch_sha])?;
        let log = git_dir.join("agentcom-test.log");
        let r = run_with_timeout(&opts.test, &wt, opts.test_timeout, &log);
        let _ = repo.git(&["worktree", "remove", "--force", &wt.display().to_string()]);
        r.map(|_| ((), format!("`{}` passed", opts.test)))
            .map_err(|source| GuardError::Tests { source, log: log.display().to_string() })
    })
    .inspect_err(|_| report.outcome = "tests-failed".into())?;

    // 3. Journal the intent and the last good commit, tag it, save a checkpoint.
    let mut journal = Journal {
        phase: Phase::Prepared,
        process: opts.process.clone(),
        branch: opts.branch.clone(),
        main_branch: main_branch.clone(),
        last_good: last_good.clone(),
        new_commit: None,
        health: opts.health.clone(),
        health_ca_file: opts.health_ca_file.clone(),
        health_timeout_ms: opts.health_timeout.as_millis() as u64,
        stable_for_ms: opts.stable_for.as_millis() as u64,
        backend: match backend.kind {
            Kind::Native => "native".into(),
            Kind::Pm2 => "pm2".into(),
        },
        started_at: now(),
        reason: None,
        state_dir: Some(opts.state_dir.clone()),
    };
    p.run("journal the intent and the last good commit", || {
        write_journal(&repo, &journal)?;
        let tagged = repo.good_tags().iter().any(|(_, c)| c == &last_good);
        let tag = if tagged { "already tagged".to_string() } else { repo.tag_good(&last_good)? };
        ensure_checkpoint(&opts.state_dir, &opts.process, &opts.branch, &last_good)?;
        Ok(((), format!("last good {} ({tag}); checkpoint in {}", short(&last_good), opts.state_dir.display())))
    })?;

    // 4. Merge, then restart through the supervisor.
    let merged = p.run("merge the branch", || {
        let msg = format!("agentcom upgrade: merge {} into {main_branch}", opts.branch);
        if let Err(source) = repo.git_committing(&["merge", "--no-ff", "--no-edit", "-m", &msg, &branch_sha]) {
            let _ = repo.git(&["merge", "--abort"]);
            let _ = repo.git(&["reset", "--hard", &last_good]);
            clear_journal(&repo);
            return Err(GuardError::Merge {
                branch: main_branch.clone(),
                commit: short(&last_good).to_string(),
                source,
            });
        }
        let new = repo.head()?;
        Ok((new.clone(), format!("{main_branch} now at {}", short(&new))))
    })?;
    report.new_commit = Some(merged.clone());
    journal.phase = Phase::Merged;
    journal.new_commit = Some(merged.clone());
    write_journal(&repo, &journal)?;
    finish(&repo, &mut journal, backend, opts.check_interval, p, report)
}

/// From `Merged`: restart, watch the health window, then commit or roll back.
fn finish(
    repo: &Repo,
    journal: &mut Journal,
    backend: &Backend,
    interval: Duration,
    p: &mut Progress<'_>,
    report: &mut Report,
) -> Result<(), GuardError> {
    let restarted = p.run("restart the process", || {
        backend.restart(&journal.process)?;
        Ok(((), format!("{} restarted", journal.process)))
    });
    if let Err(e) = restarted {
        return rollback(repo, journal, backend, interval, p, report, GuardError::RestartFailed(Box::new(e)));
    }
    journal.phase = Phase::Restarted;
    write_journal(repo, journal)?;
    let window = Window::of(journal, interval);
    match p.run("health window", || health_window(backend, &journal.process, &window, repo).map(|d| ((), d))) {
        Ok(()) => {
            let new = journal.new_commit.clone().unwrap_or_default();
            let tag = repo.tag_good(&new)?;
            append_history(repo, &journal.last_good, &new);
            clear_journal(repo);
            report.outcome = "upgraded".into();
            report.good_tag = Some(tag.clone());
            p.run("mark the new commit good", || Ok(((), tag)))?;
            Ok(())
        }
        Err(why) => {
            rollback(repo, journal, backend, interval, p, report, GuardError::NewVersionUnhealthy(Box::new(why)))
        }
    }
}

fn rollback(
    repo: &Repo,
    journal: &mut Journal,
    backend: &Backend,
    interval: Duration,
    p: &mut Progress<'_>,
    report: &mut Report,
    why: GuardError,
) -> Result<(), GuardError> {
    journal.phase = Phase::RollingBack;
    journal.reason = Some(why.to_string());
    write_journal(repo, journal)?;
    let last_good = journal.last_good.clone();
    p.run("roll back to the last good commit", || {
        let _ = repo.git(&["merge", "--abort"]);
        repo.git(&["reset", "--hard", &last_good])?;
        backend.restart(&journal.process)?;
        Ok(((), format!("{} reset to {} and restarted", journal.main_branch, short(&last_good))))
    })?;
    let window = Window::of(journal, interval);
    let verified =
        p.run("health of the old version", || health_window(backend, &journal.process, &window, repo).map(|d| ((), d)));
    clear_journal(repo);
    match verified {
        Ok(()) => {
            report.outcome = "rolled-back".into();
            Err(why)
        }
        Err(e) => {
            report.outcome = "rollback-failed".into();
            Err(GuardError::RollbackFailed { why: Box::new(why), after: Box::new(e) })
        }
    }
}

/// Finishes or rolls back an upgrade whose journal says it was interrupted.
pub fn resume(
    repo_dir: &Path,
    backend_for: &dyn Fn(&str) -> Backend,
    interval: Duration,
    print: &mut dyn FnMut(&Step),
) -> Report {
    let mut p = Progress::new(print);
    let mut report = Report {
        outcome: "resumed-nothing".into(),
        repo: repo_dir.display().to_string(),
        process: String::new(),
        old_commit: None,
        new_commit: None,
        good_tag: None,
        error: None,
        steps: Vec::new(),
    };
    let r = (|| -> Result<(), GuardError> {
        let repo = Repo::open(repo_dir)?;
        let Some(mut j) = read_journal(&repo) else {
            p.run("read the journal", || Ok(((), "no interrupted upgrade".to_string())))?;
            return Ok(());
        };
        report.process = j.process.clone();
        report.old_commit = Some(j.last_good.clone());
        report.new_commit = j.new_commit.clone();
        let backend = backend_for(&j.backend);
        p.run("read the journal", || {
            let checkpoint =
                j.state_dir.as_ref().map(|d| format!("; checkpoint in {}", d.display())).unwrap_or_default();
            Ok(((), format!("{:?} upgrade of {} found{checkpoint}", j.phase, j.branch)))
        })?;
        match j.phase {
            Phase::Prepared => {
                // Nothing was applied; make sure of it and drop the intent.
                p.run("abort", || {
                    let _ = repo.git(&["merge", "--abort"]);
                    repo.git(&["reset", "--hard", &j.last_good])?;
                    clear_journal(&repo);
                    Ok(((), format!("{} left at {}", j.main_branch, short(&j.last_good))))
                })?;
                report.outcome = "aborted".into();
                Ok(())
            }
            Phase::Merged | Phase::Restarted => {
                // A merge that is not the journaled one (interrupted mid-merge) is rolled back.
                let head = repo.head()?;
                if j.new_commit.as_deref() != Some(head.as_str()) {
                    return rollback(
                        &repo,
                        &mut j,
                        &backend,
                        interval,
                        &mut p,
                        &mut report,
                        GuardError::Journaled("interrupted during the merge".into()),
                    );
                }
                finish(&repo, &mut j, &backend, interval, &mut p, &mut report)
            }
            Phase::RollingBack => {
                let why =
                    GuardError::Journaled(j.reason.clone().unwrap_or_else(|| "interrupted during a rollback".into()));
                rollback(&repo, &mut j, &backend, interval, &mut p, &mut report, why)
            }
        }
    })();
    if let Err(e) = r {
        report.error = Some(e.to_string());
    }
    report.steps = p.steps;
    report
}

impl Window {
    fn of(j: &Journal, interval: Duration) -> Window {
        Window {
            health: j.health.clone(),
            ca_file: j.health_ca_file.clone(),
            timeout: Duration::from_millis(j.health_timeout_ms),
            stable_for: Duration::from_millis(j.stable_for_ms),
            interval,
        }
    }
}

/// The agent's checkpoint is kept as it is; one is created if the agent has none.
fn ensure_checkpoint(dir: &Path, process: &str, branch: &str, last_good: &str) -> Result<(), GuardError> {
    let saved = match Checkpoint::load(dir) {
        Ok(c) => c.save(dir),
        Err(_) => Checkpoint {
            objective: format!("Carry on after upgrading {process} to {branch}"),
            context: String::new(),
            pending: vec![format!("verify the upgrade of {process}")],
            state: format!("upgrade from last good commit {last_good} started at {}", now()),
            history: Vec::new(),
            saved_at: now(),
        }
        .save(dir),
    };
    saved.map_err(GuardError::SaveCheckpoint)?;
    if dir.join(checkpoint::TASK_FILE).exists() {
        Ok(())
    } else {
        Err(GuardError::Refused(format!("checkpoint missing in {} after save", dir.display())))
    }
}

fn append_history(repo: &Repo, from: &str, to: &str) {
    let Ok(dir) = repo.git_dir() else { return };
    let path = dir.join(HISTORY);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(&serde_json::json!({ "from": from, "to": to, "at": now() }).to_string());
    text.push('\n');
    let _ = osutil::fs::write_atomic(&path, text.as_bytes());
}

/// The last committed upgrade, (from, to), unless it was already rolled back.
pub fn last_upgrade(repo: &Repo) -> Option<(String, String)> {
    let text = std::fs::read_to_string(repo.git_dir().ok()?.join(HISTORY)).ok()?;
    let v: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    // After a watchdog rollback the last line records it; that is no upgrade to undo.
    if v["rolled_back"] == true {
        return None;
    }
    Some((v["from"].as_str()?.to_string(), v["to"].as_str()?.to_string()))
}

/// Manual rollback: to `to`, else the last good commit before HEAD. Restarts the process.
pub fn manual_rollback(
    repo_dir: &Path,
    process: &str,
    to: Option<&str>,
    backend: &Backend,
) -> Result<String, GuardError> {
    let repo = Repo::open(repo_dir)?;
    if read_journal(&repo).is_some() {
        return Err(refuse(format!(
            "an upgrade is in progress or interrupted; use `agentcom upgrade --resume --repo {}`",
            repo_dir.display()
        )));
    }
    if !repo.is_clean()? {
        return Err(refuse("the repo has uncommitted changes: commit or stash them first"));
    }
    let head = repo.head()?;
    let target = match to {
        Some(r) => repo.resolve(r).ok_or_else(|| refuse(format!("{r} is not a commit")))?,
        None => repo
            .good_tags()
            .into_iter()
            .map(|(_, c)| c)
            .find(|c| c != &head)
            .ok_or_else(|| refuse("no earlier good commit (agentcom/good/* tag) to roll back to"))?,
    };
    repo.git(&["reset", "--hard", &target])?;
    backend.restart(process)?;
    Ok(format!("rolled back from {} to {} and restarted {process}", short(&head), short(&target)))
}
