//! `agentcom daemons plan|apply|watch|install-watcher`.

use super::process::Sup;
use crate::logging::{self, LogArgs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum DaemonsCmd {
    /// What apply would do: start, recreate (with the changed fields), unchanged, stop-and-delete, error.
    Plan {
        #[command(flatten)]
        root: DaemonsRoot,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Carry the plan out, touching nothing else.
    Apply {
        #[command(flatten)]
        root: DaemonsRoot,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Apply on every change (debounced), and fully every minute.
    Watch {
        #[command(flatten)]
        root: DaemonsRoot,
        /// Quiet time after a file event before applying.
        #[arg(long, default_value_t = 200)]
        debounce_ms: u64,
        /// A full apply this often, whatever the events.
        #[arg(long, default_value_t = 60000)]
        full_every_ms: u64,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Put the watcher itself under the supervisor.
    InstallWatcher {
        #[command(flatten)]
        root: DaemonsRoot,
    },
}

#[derive(clap::Args, Clone)]
pub struct DaemonsRoot {
    /// The folder holding the definitions: `**/daemon.toml`, `**/ecosystem.edn` and other `*.edn`
    /// with `:apps`, `**/ecosystem.config.{js,cjs,mjs,json}`.
    #[arg(long)]
    root: PathBuf,
    /// Where relative `cwd` and log paths of pm2 definitions resolve, as pm2 run from there
    /// [default: the top of the git work tree holding --root, else the current folder].
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Merge each pm2 app's `env_<NAME>` over its `env`, as `pm2 start --env NAME`.
    #[arg(long, value_name = "NAME")]
    env_name: Option<String>,
    #[command(flatten)]
    sup: Sup,
    /// Leave processes whose definition is gone running.
    #[arg(long)]
    no_prune: bool,
}

impl DaemonsRoot {
    /// The workspace root, absolute: given, else found from the root.
    fn workdir(&self) -> anyhow::Result<PathBuf> {
        let dir = match &self.workdir {
            Some(w) => w.clone(),
            None => daemons::default_workdir(&daemons::canonical_root(&self.root)?),
        };
        Ok(std::fs::canonicalize(&dir).unwrap_or(dir))
    }

    fn options(&self) -> anyhow::Result<daemons::Options> {
        Ok(daemons::Options {
            prune: !self.no_prune,
            context: daemons::discover::Context { workdir: self.workdir()?, env_name: self.env_name.clone() },
        })
    }
}

/// One row per daemon; an error's whole message (file:line: what) is printed under the table,
/// on its own lines, never cut.
struct Row {
    action: String,
    daemon: String,
    process: String,
    details: String,
    error: Option<String>,
}

fn print_plan(rows: &[Row], warnings: &[String]) -> std::io::Result<()> {
    if rows.is_empty() {
        return crate::out::println("no daemons");
    }
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| vec![r.action.clone(), r.daemon.clone(), r.process.clone(), r.details.clone()]).collect();
    let mut text = client::table(&["ACTION", "DAEMON", "PROCESS", "DETAILS"], &cells, usize::MAX);
    for r in rows {
        if let Some(e) = &r.error {
            text.push_str(&format!("\nerror: {}\n", client::printable(&format!("{}: {e}", r.daemon))));
        }
    }
    for w in warnings {
        text.push_str(&format!("\nwarning: {}\n", client::printable(w)));
    }
    crate::out::print(text)
}

fn plan_row(it: &daemons::PlanItem) -> Row {
    let place = format!("{}{}", it.file.as_deref().unwrap_or(""), it.line.map(|l| format!(":{l}")).unwrap_or_default());
    let (details, error) = match (it.action, &it.message) {
        (daemons::Action::Error, Some(m)) => (format!("{place} (see below)"), Some(format!("{place}: {m}"))),
        _ => (it.changed.join(", "), None),
    };
    Row { action: it.action.as_str().into(), daemon: it.daemon.clone(), process: it.process.clone(), details, error }
}

pub async fn run(cmd: DaemonsCmd) -> anyhow::Result<u8> {
    match cmd {
        DaemonsCmd::Plan { root, json } => {
            // A plan changes nothing: without a supervisor running, nothing runs (none is launched).
            let items = daemons::plan(&root.root, &root.sup.backend()?, &root.options()?)?;
            if json {
                crate::out::println(serde_json::to_string_pretty(&items)?)?;
            } else {
                let warnings: Vec<String> = items.iter().flat_map(|i| i.warnings.clone()).collect();
                print_plan(&items.iter().map(plan_row).collect::<Vec<_>>(), &warnings)?;
            }
            if items.iter().any(|i| i.action == daemons::Action::Error) {
                return Ok(1);
            }
        }
        DaemonsCmd::Apply { root, json } => {
            // The table says it all; logs only when asked for (AGENTCOM_LOG).
            logging::init(logging::LogFormat::Human, "off");
            let done = daemons::apply(&root.root, &root.sup.launching_backend()?, &root.options()?)?;
            if json {
                crate::out::println(serde_json::to_string_pretty(&done)?)?;
            } else {
                let rows: Vec<_> = done
                    .iter()
                    .map(|a| {
                        let mut r = plan_row(&a.item);
                        if let Some(e) = &a.error {
                            r.details = "FAILED (see below)".into();
                            r.error = Some(e.clone());
                        }
                        r
                    })
                    .collect();
                let warnings: Vec<String> = done.iter().flat_map(|a| a.item.warnings.clone()).collect();
                print_plan(&rows, &warnings)?;
            }
            if done.iter().any(|a| !a.ok || a.item.action == daemons::Action::Error) {
                return Ok(1);
            }
        }
        DaemonsCmd::Watch { root, debounce_ms, full_every_ms, log } => {
            logging::init(log.log_format, "info");
            let shutdown = crate::shutdown_on_signals()?;
            let opts = daemons::WatchOptions {
                debounce: Duration::from_millis(debounce_ms),
                full_every: Duration::from_millis(full_every_ms.max(1)),
                apply: root.options()?,
            };
            // A watcher that runs under the supervisor (install-watcher) must never launch one:
            // while that supervisor shuts down, a reconcile would start a second one.
            let supervised = std::env::var_os(supervisor::daemon::ENV_SOCKET).is_some();
            let backend = if supervised { root.sup.backend()? } else { root.sup.launching_backend()? };
            daemons::watch(root.root.clone(), backend, opts, shutdown).await?;
        }
        DaemonsCmd::InstallWatcher { root } => {
            let backend = root.sup.launching_backend()?;
            let abs = daemons::canonical_root(&root.root)?;
            let exe = std::env::current_exe()?.display().to_string();
            let tag: String = abs
                .display()
                .to_string()
                .bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
                .to_string();
            let mut args = vec!["daemons".to_string(), "watch".into(), "--root".into(), abs.display().to_string()];
            args.extend(["--backend".into(), root.sup.backend.as_str().into()]);
            // Recorded, so a restarted watcher resolves relative paths the same way.
            args.extend(["--workdir".into(), root.workdir()?.display().to_string()]);
            if let Some(env) = &root.env_name {
                args.extend(["--env-name".into(), env.clone()]);
            }
            if root.no_prune {
                args.push("--no-prune".into());
            }
            let mut spec = proto::control::ProcSpec::new(&format!("daemons-watcher.{tag}"), &exe, args);
            if backend.kind == supervisor::backend::Kind::Native {
                let dir = std::fs::canonicalize(&backend.dir).unwrap_or(backend.dir.clone());
                spec.env.insert("AGENTCOM_SUPERVISOR_DIR".into(), dir.display().to_string());
            }
            if let Ok(h) = std::env::var("PM2_HOME") {
                spec.env.insert("PM2_HOME".into(), h);
            }
            crate::out::println(backend.start(&spec)?)?;
        }
    }
    Ok(0)
}
