//! One interface over the native supervisor and a real pm2, for the CLI and for `daemons`.

use crate::client::{connect_or_launch, Client, ClientError};
use crate::pm2;
use proto::control::{ProcSpec, ProcStatus, Request, Response};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Native,
    Pm2,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Native(#[from] ClientError),
    #[error(transparent)]
    Pm2(#[from] pm2::Pm2Error),
    #[error("no process named {0}")]
    NotFound(String),
}

pub struct Backend {
    pub kind: Kind,
    /// Supervisor state dir (native) or where ecosystem files are written (pm2).
    pub dir: PathBuf,
    /// The agentcom binary, to launch a supervisor in the background.
    pub exe: PathBuf,
    /// Launch a native supervisor for any operation when none runs (`start` always does).
    pub launch: bool,
}

impl Backend {
    fn native(&self, req: Request, launch: bool) -> Result<Response, BackendError> {
        let mut c =
            if launch || self.launch { connect_or_launch(&self.dir, &self.exe)? } else { Client::connect(&self.dir)? };
        Ok(c.call(&req)?)
    }

    pub fn start(&self, spec: &ProcSpec) -> Result<String, BackendError> {
        match self.kind {
            Kind::Native => match self.native(Request::Start { spec: Box::new(spec.clone()) }, true)? {
                Response::Ok { message } => Ok(message),
                other => Ok(format!("{other:?}")),
            },
            Kind::Pm2 => {
                let file = pm2::start(spec, &self.dir.join("pm2"))?;
                Ok(format!("started {} in pm2 ({})", spec.name, file.display()))
            }
        }
    }

    /// The processes an argument stands for ([`resolve`]); under pm2, `all` is every process
    /// agentcom started there, never the user's others.
    pub fn targets(&self, arg: &str) -> Result<Vec<String>, BackendError> {
        if self.kind == Kind::Pm2 && arg == ALL {
            let mut ours: Vec<(u32, String)> = pm2::jlist()?
                .iter()
                .filter(|e| pm2::ours(e))
                .map(|e| {
                    let s = pm2::status(e, 0);
                    (s.id, s.name)
                })
                .collect();
            ours.sort();
            return Ok(ours.into_iter().map(|(_, n)| n).collect());
        }
        Ok(resolve(arg, &self.list()?))
    }

    fn simple(
        &self,
        name: &str,
        req: fn(String) -> Request,
        pm2_op: fn(&str) -> Result<(), pm2::Pm2Error>,
    ) -> Result<String, BackendError> {
        let mut messages = Vec::new();
        let targets = self.targets(name)?;
        if targets.is_empty() {
            return Ok("no processes".into());
        }
        for target in targets {
            messages.push(match self.kind {
                Kind::Native => match self.native(req(target), false)? {
                    Response::Ok { message } => message,
                    other => format!("{other:?}"),
                },
                Kind::Pm2 => {
                    pm2_op(&target)?;
                    format!("{target}: done")
                }
            });
        }
        Ok(messages.join("\n"))
    }

    pub fn stop(&self, name: &str) -> Result<String, BackendError> {
        self.simple(name, |name| Request::Stop { name }, pm2::stop)
    }
    pub fn restart(&self, name: &str) -> Result<String, BackendError> {
        self.simple(name, |name| Request::Restart { name }, pm2::restart)
    }
    pub fn delete(&self, name: &str) -> Result<String, BackendError> {
        self.simple(name, |name| Request::Delete { name }, pm2::delete)
    }
    /// Empties the log files (`pm2 flush`).
    pub fn flush(&self, name: &str) -> Result<String, BackendError> {
        self.simple(name, |name| Request::Flush { name }, pm2::flush)
    }

    /// Replaces each process the argument stands for with a fresh one without a moment where
    /// none runs, one after the other (instance by instance); `pm2 reload` under pm2.
    pub fn reload(&self, name: &str, timeout_ms: Option<u64>) -> Result<String, BackendError> {
        match self.kind {
            Kind::Native => {
                let mut messages = Vec::new();
                for target in self.targets(name)? {
                    match self.native(Request::Reload { name: target, timeout_ms }, false)? {
                        Response::Ok { message } => messages.push(message),
                        other => messages.push(format!("{other:?}")),
                    }
                }
                Ok(if messages.is_empty() { "no processes".into() } else { messages.join("\n") })
            }
            Kind::Pm2 => self.simple(name, |name| Request::Reload { name, timeout_ms: None }, pm2::reload),
        }
    }

    /// `start NAME` without a command, as pm2 takes it: the processes NAME (or an id) stands
    /// for are started unless they run. `None` when it stands for none, so the caller can say
    /// what `start` needs. A supervisor is launched only when one ran here before (its
    /// `state.json` may hold NAME): a mistyped name does not leave a daemon behind.
    pub fn start_existing(&self, name: &str) -> Result<Option<String>, BackendError> {
        let list = match self.kind {
            Kind::Native if self.dir.join(crate::daemon::STATE).exists() => {
                match connect_or_launch(&self.dir, &self.exe)?.call(&Request::Ps)? {
                    Response::List { processes } => processes,
                    _ => Vec::new(),
                }
            }
            _ => self.list_if_running()?.unwrap_or_default(),
        };
        let targets = resolve(name, &list);
        if !targets.iter().any(|t| list.iter().any(|p| &p.name == t)) {
            return Ok(None);
        }
        let mut messages = Vec::new();
        for target in targets {
            messages.push(match self.kind {
                Kind::Native => match self.native(Request::StartExisting { name: target }, false)? {
                    Response::Ok { message } => message,
                    other => format!("{other:?}"),
                },
                Kind::Pm2 => match list.iter().find(|p| p.name == target) {
                    Some(p) if p.status == "online" => format!("{target} is already online"),
                    _ => {
                        pm2::restart(&target)?;
                        format!("started {target}")
                    }
                },
            });
        }
        Ok(Some(messages.join("\n")))
    }

    /// Types `text` into a tmux process (native supervisor only).
    pub fn send(&self, name: &str, text: &str, enter: bool) -> Result<String, BackendError> {
        match self.kind {
            Kind::Native => match self.native(Request::Send { name: name.into(), text: text.into(), enter }, false)? {
                Response::Ok { message } => Ok(message),
                other => Ok(format!("{other:?}")),
            },
            Kind::Pm2 => Err(BackendError::Pm2(pm2::Pm2Error::Unsupported(
                "send needs the native supervisor: pm2 gives its processes no terminal".into(),
            ))),
        }
    }

    /// Stops every process, then the supervisor itself (`pm2 kill` under pm2). With no native
    /// supervisor running there is nothing to do, and that is said.
    pub fn kill(&self) -> Result<String, BackendError> {
        match self.kind {
            Kind::Native => {
                let pid = crate::client::supervisor_pid(&self.dir);
                let mut c = match Client::connect(&self.dir) {
                    Ok(c) => c,
                    Err(ClientError::NotRunning(_)) => return Ok("no supervisor running; nothing to stop".into()),
                    Err(e) => return Err(e.into()),
                };
                let message = match c.call(&Request::Kill)? {
                    Response::Ok { message } => message,
                    other => format!("{other:?}"),
                };
                if let Some(pid) = pid {
                    crate::client::wait_gone(pid, std::time::Duration::from_secs(30));
                }
                Ok(message)
            }
            Kind::Pm2 => {
                pm2::pm2(&["kill"])?;
                Ok("pm2 killed: every process and the pm2 daemon stopped".into())
            }
        }
    }

    pub fn list(&self) -> Result<Vec<ProcStatus>, BackendError> {
        match self.kind {
            Kind::Native => match self.native(Request::Ps, false)? {
                Response::List { processes } => Ok(processes),
                _ => Ok(Vec::new()),
            },
            Kind::Pm2 => {
                let now = osutil::clock::epoch_ms();
                Ok(pm2::jlist()?.iter().map(|e| pm2::status(e, now)).collect())
            }
        }
    }

    /// What runs, or `None` when no supervisor (or pm2 daemon) runs: never starts one, so a
    /// question (`daemons plan`) changes nothing.
    pub fn list_if_running(&self) -> Result<Option<Vec<ProcStatus>>, BackendError> {
        match self.kind {
            Kind::Native => {
                let Ok(mut c) = Client::connect(&self.dir) else { return Ok(None) };
                match c.call(&Request::Ps)? {
                    Response::List { processes } => Ok(Some(processes)),
                    _ => Ok(Some(Vec::new())),
                }
            }
            Kind::Pm2 if pm2::daemon_running() => self.list().map(Some),
            Kind::Pm2 => Ok(None),
        }
    }

    /// A printable description: for pm2, the jlist entry with every env value redacted.
    pub fn describe(&self, name: &str) -> Result<serde_json::Value, BackendError> {
        match self.kind {
            Kind::Native => match self.native(Request::Describe { name: name.into() }, false)? {
                Response::Described(d) => Ok(serde_json::to_value(d).expect("serializes")),
                _ => Err(BackendError::NotFound(name.into())),
            },
            Kind::Pm2 => pm2::jlist()?
                .iter()
                .find(|e| e["name"] == name)
                .map(pm2::redacted)
                .ok_or_else(|| BackendError::NotFound(name.into())),
        }
    }
}

/// The argument that means every process (pm2's `all`).
pub const ALL: &str = "all";

/// What a process argument of `stop`, `restart`, `reload`, `delete`, `logs` and `flush` stands
/// for, as pm2 reads it: `all` is every process (by id); a process's own name is that process;
/// the name of a spec with instances is its instances; a number that is no process's name is
/// the process with that id. Anything else is itself, for the supervisor to say it knows no
/// such process. A number is read only when it is a few digits, so a hostile one costs
/// nothing.
pub fn resolve(arg: &str, list: &[ProcStatus]) -> Vec<String> {
    if arg == ALL {
        let mut all: Vec<&ProcStatus> = list.iter().collect();
        all.sort_by_key(|p| p.id);
        return all.into_iter().map(|p| p.name.clone()).collect();
    }
    if list.iter().any(|p| p.name == arg) {
        return vec![arg.to_string()];
    }
    let instances: Vec<String> =
        list.iter().filter(|p| p.instance_of.as_deref() == Some(arg)).map(|p| p.name.clone()).collect();
    if !instances.is_empty() {
        return instances;
    }
    let id = (arg.len() <= 9 && !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()))
        .then(|| arg.parse::<u32>().ok())
        .flatten();
    if let Some(p) = id.and_then(|id| list.iter().find(|p| p.id == id)) {
        return vec![p.name.clone()];
    }
    vec![arg.to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(id: u32, name: &str, of: Option<&str>) -> ProcStatus {
        ProcStatus {
            id,
            name: name.into(),
            pid: 0,
            status: "online".into(),
            uptime_ms: 0,
            restart_count: 0,
            memory_bytes: 0,
            cpu_percent: 0.0,
            exit_code: None,
            unstable_restarts: 0,
            spec_hash: None,
            daemon_root: None,
            reason: None,
            tmux: false,
            instance_of: of.map(str::to_string),
        }
    }

    #[test]
    fn arguments_resolve_as_pm2_reads_them() {
        let list = [
            proc(2, "web-0", Some("web")),
            proc(3, "web-1", Some("web")),
            proc(0, "api", None),
            proc(1, "7", None),
            proc(7, "seven", None),
        ];
        let r = |a: &str| resolve(a, &list);
        assert_eq!(r("all"), ["api", "7", "web-0", "web-1", "seven"], "every process, by id");
        assert_eq!(r("api"), ["api"]);
        assert_eq!(r("web"), ["web-0", "web-1"]);
        assert_eq!(r("3"), ["web-1"], "an id");
        assert_eq!(r("7"), ["7"], "a process's own name wins over an id");
        assert_eq!(r("0"), ["api"]);
        assert_eq!(r("42"), ["42"], "no such id: the supervisor will say so");
        assert_eq!(r("0000000003"), ["0000000003"], "too long to be an id");
        assert_eq!(r("99999999999999999999"), ["99999999999999999999"]);
        assert_eq!(r("-1"), ["-1"]);
        assert!(resolve("all", &[]).is_empty());
    }
}
