//! The upgrade transaction, as update systems do it (Mender, greenboot, Erlang release_handler):
//! the intent and the last good commit are journaled durably before anything changes; the new
//! code runs as a trial; it is committed only after a health signal held for `stable_for`
//! within `health_timeout`; otherwise the guard rolls back by itself. An interrupted upgrade is
//! finished or rolled back by `--resume`.

use crate::checkpoint::{self, Checkpoint};
use crate::git::{run_with_timeout, GitError, Repo};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{0}")]
    Refused(String),
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
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<(T, String), String>) -> Result<T, String> {
        let t0 = Instant::now();
        let r = f();
        let (ok, detail) = match &r {
            Ok((_, d)) => (true, d.clone()),
            Err(e) => (false, e.clone()),
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

fn write_journal(repo: &Repo, j: &Journal) -> Result<(), String> {
    let p = journal_path(repo).map_err(|e| e.to_string())?;
    osutil::fs::write_atomic(&p, &serde_json::to_vec_pretty(j).expect("json"))
        .map_err(|e| format!("cannot write the journal {}: {e}", p.display()))
}

fn clear_journal(repo: &Repo) {
    if let Ok(p) = journal_path(repo) {
        let _ = osutil::fs::remove_durable(&p);
    }
}

fn short(sha: &str) -> &str {
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
        report.error = Some(e);
    }
    report.steps = p.steps;
    report
}

fn run_upgrade(opts: &Options, backend: &Backend, p: &mut Progress<'_>, report: &mut Report) -> Result<(), String> {
    // 1. Preflight: refuse before touching anything.
    let (repo, main_branch, last_good, branch_sha) = p.run("check repo, branch and supervisor", || {
        let repo = Repo::open(&opts.repo).map_err(|e| e.to_string())?;
        if let Some(j) = read_journal(&repo) {
            return Err(format!(
                "an interrupted upgrade of {} is journaled ({:?}); run `agentcom upgrade --resume --repo {}` first",
                j.branch,
                j.phase,
                opts.repo.display()
            ));
        }
        let main = repo.branch().map_err(|e| e.to_string())?.ok_or("detached HEAD: check out the main branch first")?;
        if !repo.is_clean().map_err(|e| e.to_string())? {
            return Err("the repo has uncommitted changes: commit or stash them first".into());
        }
        let branch_sha = repo.resolve(&opts.branch).ok_or_else(|| format!("branch {} does not exist", opts.branch))?;
        if opts.health.starts_with("https://") {
            osutil::tls::client_config(opts.health_ca_file.as_deref()).map_err(|e| format!("health CA file: {e}"))?;
        }
        let head = repo.head().map_err(|e| e.to_string())?;
        let procs = backend.list().map_err(|e| e.to_string())?;
        if !procs.iter().any(|s| s.name == opts.process) {
            return Err(format!("process {} is not known to the supervisor", opts.process));
        }
        let detail = format!("{main} at {}, {} at {}", short(&head), opts.branch, short(&branch_sha));
        Ok(((repo, main, head, branch_sha), detail))
    })?;
    report.old_commit = Some(last_good.clone());
    if branch_sha == last_good {
        return Err(format!("{} has nothing new for {main_branch}", opts.branch));
    }

    // 2. Tests on the branch, in a worktree of their own: the main branch is not touched.
    let git_dir = repo.git_dir().map_err(|e| e.to_string())?;
    p.run("run the tests on the branch", || {
        let wt = git_dir.join(format!("agentcom-worktree-{}", std::process::id()));
        let _ = repo.git(&["worktree", "remove", "--force", &wt.display().to_string()]);
        repo.git(&["worktree", "add", "--detach", &wt.display().to_string(), &branch_sha])
            .map_err(|e| e.to_string())?;
        let log = git_dir.join("agentcom-test.log");
        let r = run_with_timeout(&opts.test, &wt, opts.test_timeout, &log);
        let _ = repo.git(&["worktree", "remove", "--force", &wt.display().to_string()]);
        r.map(|_| ((), format!("`{}` passed", opts.test)))
            .map_err(|e| format!("tests failed ({e}); log: {}", log.display()))
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
    };
    p.run("journal the intent and the last good commit", || {
        write_journal(&repo, &journal)?;
        let tagged = repo.good_tags().iter().any(|(_, c)| c == &last_good);
        let tag =
            if tagged { "already tagged".to_string() } else { repo.tag_good(&last_good).map_err(|e| e.to_string())? };
        ensure_checkpoint(&opts.state_dir, &opts.process, &opts.branch, &last_good)?;
        Ok(((), format!("last good {} ({tag}); checkpoint in {}", short(&last_good), opts.state_dir.display())))
    })?;

    // 4. Merge, then restart through the supervisor.
    let merged = p.run("merge the branch", || {
        let msg = format!("agentcom upgrade: merge {} into {main_branch}", opts.branch);
        if let Err(e) = repo.git_committing(&["merge", "--no-ff", "--no-edit", "-m", &msg, &branch_sha]) {
            let _ = repo.git(&["merge", "--abort"]);
            let _ = repo.git(&["reset", "--hard", &last_good]);
            clear_journal(&repo);
            return Err(format!("merge failed, {main_branch} left at {}: {e}", short(&last_good)));
        }
        let new = repo.head().map_err(|e| e.to_string())?;
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
) -> Result<(), String> {
    let restarted = p.run("restart the process", || {
        backend.restart(&journal.process).map_err(|e| e.to_string())?;
        Ok(((), format!("{} restarted", journal.process)))
    });
    if let Err(e) = restarted {
        return rollback(repo, journal, backend, interval, p, report, format!("restart failed: {e}"));
    }
    journal.phase = Phase::Restarted;
    write_journal(repo, journal)?;
    let window = Window::of(journal, interval);
    match p.run("health window", || health_window(backend, &journal.process, &window, repo).map(|d| ((), d))) {
        Ok(()) => {
            let new = journal.new_commit.clone().unwrap_or_default();
            let tag = repo.tag_good(&new).map_err(|e| e.to_string())?;
            append_history(repo, &journal.last_good, &new);
            clear_journal(repo);
            report.outcome = "upgraded".into();
            report.good_tag = Some(tag.clone());
            p.run("mark the new commit good", || Ok(((), tag)))?;
            Ok(())
        }
        Err(why) => rollback(repo, journal, backend, interval, p, report, format!("new version unhealthy: {why}")),
    }
}

fn rollback(
    repo: &Repo,
    journal: &mut Journal,
    backend: &Backend,
    interval: Duration,
    p: &mut Progress<'_>,
    report: &mut Report,
    why: String,
) -> Result<(), String> {
    journal.phase = Phase::RollingBack;
    journal.reason = Some(why.clone());
    write_journal(repo, journal)?;
    let last_good = journal.last_good.clone();
    p.run("roll back to the last good commit", || {
        let _ = repo.git(&["merge", "--abort"]);
        repo.git(&["reset", "--hard", &last_good]).map_err(|e| e.to_string())?;
        backend.restart(&journal.process).map_err(|e| e.to_string())?;
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
            Err(format!("{why}; after the rollback the old version is not healthy either: {e}"))
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
    let r = (|| -> Result<(), String> {
        let repo = Repo::open(repo_dir).map_err(|e| e.to_string())?;
        let Some(mut j) = read_journal(&repo) else {
            p.run("read the journal", || Ok(((), "no interrupted upgrade".to_string())))?;
            return Ok(());
        };
        report.process = j.process.clone();
        report.old_commit = Some(j.last_good.clone());
        report.new_commit = j.new_commit.clone();
        let backend = backend_for(&j.backend);
        p.run("read the journal", || Ok(((), format!("{:?} upgrade of {} found", j.phase, j.branch))))?;
        match j.phase {
            Phase::Prepared => {
                // Nothing was applied; make sure of it and drop the intent.
                p.run("abort", || {
                    let _ = repo.git(&["merge", "--abort"]);
                    repo.git(&["reset", "--hard", &j.last_good]).map_err(|e| e.to_string())?;
                    clear_journal(&repo);
                    Ok(((), format!("{} left at {}", j.main_branch, short(&j.last_good))))
                })?;
                report.outcome = "aborted".into();
                Ok(())
            }
            Phase::Merged | Phase::Restarted => {
                // A merge that is not the journaled one (interrupted mid-merge) is rolled back.
                let head = repo.head().map_err(|e| e.to_string())?;
                if j.new_commit.as_deref() != Some(head.as_str()) {
                    return rollback(
                        &repo,
                        &mut j,
                        &backend,
                        interval,
                        &mut p,
                        &mut report,
                        "interrupted during the merge".into(),
                    );
                }
                finish(&repo, &mut j, &backend, interval, &mut p, &mut report)
            }
            Phase::RollingBack => {
                let why = j.reason.clone().unwrap_or_else(|| "interrupted during a rollback".into());
                rollback(&repo, &mut j, &backend, interval, &mut p, &mut report, why)
            }
        }
    })();
    if let Err(e) = r {
        report.error = Some(e);
    }
    report.steps = p.steps;
    report
}

pub struct Window {
    pub health: String,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub stable_for: Duration,
    pub interval: Duration,
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

/// The process must stay online, without further restarts, and the health check pass,
/// continuously for `stable_for`, within `timeout`.
pub fn health_window(backend: &Backend, process: &str, w: &Window, repo: &Repo) -> Result<String, String> {
    let t0 = Instant::now();
    let mut ok_since: Option<Instant> = None;
    let mut baseline: Option<u64> = None;
    let mut last_problem = String::from("never checked");
    while t0.elapsed() < w.timeout {
        let status = backend.list().ok().and_then(|l| l.into_iter().find(|s| s.name == process));
        let problem = match &status {
            None => Some("the process is gone from the supervisor".to_string()),
            Some(s) if s.status != "online" => {
                Some(format!("the process is {} (exit code {:?})", s.status, s.exit_code))
            }
            Some(s) => {
                let restarted = baseline.is_some_and(|b| s.restart_count > b);
                baseline = Some(s.restart_count);
                if restarted {
                    Some(format!("the process restarted again (restart count {})", s.restart_count))
                } else {
                    let limit = w.interval.max(Duration::from_millis(500)).min(Duration::from_secs(10));
                    check(&w.health, w.ca_file.as_deref(), &repo.dir, limit).err()
                }
            }
        };
        match problem {
            None => {
                let since = *ok_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= w.stable_for {
                    return Ok(format!(
                        "online and healthy for {} after {}",
                        humantime::format_duration(w.stable_for),
                        fmt_ms(t0.elapsed())
                    ));
                }
            }
            Some(why) => {
                ok_since = None;
                last_problem = why;
            }
        }
        std::thread::sleep(w.interval);
    }
    Err(format!(
        "not healthy for {} within {}: {last_problem}",
        humantime::format_duration(w.stable_for),
        humantime::format_duration(w.timeout)
    ))
}

fn fmt_ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// One health check: an `http://` or `https://` URL must answer 2xx (`https://` trusting the
/// built-in roots and `ca_file`); anything else is a command that must exit 0.
pub fn check(health: &str, ca_file: Option<&Path>, dir: &Path, limit: Duration) -> Result<(), String> {
    if let Some(rest) = health.strip_prefix("http://") {
        return http_get(health, rest, None, limit);
    }
    if let Some(rest) = health.strip_prefix("https://") {
        let tls = osutil::tls::client_config(ca_file).map_err(|e| format!("health CA file: {e}"))?;
        return http_get(health, rest, Some(tls), limit);
    }
    let log = std::env::temp_dir().join(format!("agentcom-health-{}.log", std::process::id()));
    let r = run_with_timeout(health, dir, limit, &log).map_err(|e| format!("health check `{health}` failed: {e}"));
    let _ = std::fs::remove_file(&log);
    r
}

/// A minimal HTTP/1.1 GET that reads only the status line: enough for a local health endpoint.
fn http_get(url: &str, rest: &str, tls: Option<Arc<rustls::ClientConfig>>, limit: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let fail = |what: String| format!("health URL {url}: {what}");
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    // `host:port`, `host`, `[v6]:port` or `[v6]`; a bare IPv6 address has colons but no port.
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && p.parse::<u16>().is_ok() => (h, p.parse::<u16>().ok()),
        _ => (hostport, None),
    };
    let port = port.unwrap_or(if tls.is_some() { 443 } else { 80 });
    let addr = format!("{host}:{port}");
    let target =
        addr.to_socket_addrs().map_err(|e| fail(e.to_string()))?.next().ok_or_else(|| fail("no address".into()))?;
    let tcp = std::net::TcpStream::connect_timeout(&target, limit).map_err(|e| fail(e.to_string()))?;
    tcp.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(limit)).map_err(|e| e.to_string())?;
    let mut stream: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| fail(e.to_string()))?;
            let conn = rustls::ClientConnection::new(config, name).map_err(|e| fail(e.to_string()))?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")
        .map_err(|e| fail(e.to_string()))?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| fail(format!("no answer ({e})")))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 =
        line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| fail("not an HTTP answer".into()))?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(fail(format!("answered {code}")))
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// The agent's checkpoint is kept as it is; one is created if the agent has none.
fn ensure_checkpoint(dir: &Path, process: &str, branch: &str, last_good: &str) -> Result<(), String> {
    match Checkpoint::load(dir) {
        Ok(c) => c.save(dir).map_err(|e| e.to_string()),
        Err(_) => Checkpoint {
            objective: format!("Carry on after upgrading {process} to {branch}"),
            context: String::new(),
            pending: vec![format!("verify the upgrade of {process}")],
            state: format!("upgrade from last good commit {last_good} started at {}", now()),
            history: Vec::new(),
            saved_at: now(),
        }
        .save(dir)
        .map_err(|e| e.to_string()),
    }
    .map(|_| ())
    .map_err(|e| format!("cannot save the checkpoint: {e}"))
    .and_then(|_| {
        if dir.join(checkpoint::TASK_FILE).exists() {
            Ok(())
        } else {
            Err("checkpoint missing after save".into())
        }
    })
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
pub fn manual_rollback(repo_dir: &Path, process: &str, to: Option<&str>, backend: &Backend) -> Result<String, String> {
    let repo = Repo::open(repo_dir).map_err(|e| e.to_string())?;
    if read_journal(&repo).is_some() {
        return Err(format!(
            "an upgrade is in progress or interrupted; use `agentcom upgrade --resume --repo {}`",
            repo_dir.display()
        ));
    }
    if !repo.is_clean().map_err(|e| e.to_string())? {
        return Err("the repo has uncommitted changes: commit or stash them first".into());
    }
    let head = repo.head().map_err(|e| e.to_string())?;
    let target = match to {
        Some(r) => repo.resolve(r).ok_or_else(|| format!("{r} is not a commit"))?,
        None => repo
            .good_tags()
            .into_iter()
            .map(|(_, c)| c)
            .find(|c| c != &head)
            .ok_or("no earlier good commit (agentcom/good/* tag) to roll back to")?,
    };
    repo.git(&["reset", "--hard", &target]).map_err(|e| e.to_string())?;
    backend.restart(process).map_err(|e| e.to_string())?;
    Ok(format!("rolled back from {} to {} and restarted {process}", short(&head), short(&target)))
}
