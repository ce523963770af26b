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

    /// The processes a name stands for: itself, or the instances `name-0` … of a spec started
    /// with `instances > 1` (as `pm2 stop app` stops every instance of app).
    fn targets(&self, name: &str) -> Result<Vec<String>, BackendError> {
        let list = self.list()?;
        if list.iter().any(|p| p.name == name) {
            return Ok(vec![name.to_string()]);
        }
        let instances: Vec<String> =
            list.into_iter().filter(|p| p.instance_of.as_deref() == Some(name)).map(|p| p.name).collect();
        if instances.is_empty() {
            return Ok(vec![name.to_string()]); // the supervisor says it does not know it
        }
        Ok(instances)
    }

    fn simple(
        &self,
        name: &str,
        req: fn(String) -> Request,
        pm2_op: fn(&str) -> Result<(), pm2::Pm2Error>,
    ) -> Result<String, BackendError> {
        let mut messages = Vec::new();
        for target in self.targets(name)? {
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
