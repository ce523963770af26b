//! Control requests: each is answered by an [`Action::Reply`] with its id, at once or when what
//! it asked for is done (a stop completed, a spawn came back, a scan was read).

use super::{err, new_proc, ok, Action, Now, ReqId, Scan, Starting, State, Table, Then};
use crate::daemon::spawn::log_paths;
use proto::control::{ProcSpec, Request, Response};
use std::path::PathBuf;

impl Table {
    pub(super) fn on_request(&mut self, id: ReqId, req: Request, now: Now) {
        if self.closing {
            return self.reply(id, err("supervisor shutting down".into()));
        }
        let resp = match req {
            Request::Ping => Response::Pong { pid: self.cfg.pid, version: env!("CARGO_PKG_VERSION").into() },
            Request::Ps => return self.out.push(Action::Scan(Scan::Status { id, describe: None })),
            Request::Describe { name } => {
                if !self.procs.contains_key(&name) {
                    return self.reply(id, err(format!("no process named {name}")));
                }
                return self.out.push(Action::Scan(Scan::Status { id, describe: Some(name) }));
            }
            Request::Start { spec } => match self.start(id, *spec, now) {
                Some(r) => r,
                None => return,
            },
            Request::Stop { name } => {
                let gen = self.next_gen();
                let Some(p) = self.procs.get_mut(&name) else {
                    return self.reply(id, err(format!("no process named {name}")));
                };
                p.desired = false;
                p.user_stopped = true;
                self.dirty = true;
                if p.state.running() {
                    return self.begin_stop(&name, Then::Stay, Some(id), now);
                }
                p.state = State::Stopped;
                p.gen = gen; // cancels a pending restart
                ok(format!("stopped {name}"))
            }
            Request::Restart { name } => {
                let Some(p) = self.procs.get_mut(&name) else {
                    return self.reply(id, err(format!("no process named {name}")));
                };
                p.desired = true;
                p.user_stopped = false;
                p.unstable_restarts = 0;
                p.consecutive = 0;
                self.dirty = true;
                if p.state.running() {
                    p.restart_count += 1;
                    p.last_reason = Some("restarted on request".into());
                    return self.begin_stop(&name, Then::Restart, Some(id), now);
                }
                if p.state == State::WaitingRestart || p.pid.is_some() {
                    p.restart_count += 1;
                }
                p.spawn_waiters.push((id, "restarted"));
                return self.spawn(&name, now);
            }
            Request::StartExisting { name } => return self.start_existing(id, &name, now),
            Request::Reload { name, timeout_ms } => {
                let timeout_ms = timeout_ms.unwrap_or(proto::control::RELOAD_TIMEOUT_MS);
                return self.reload(id, &name, timeout_ms, now);
            }
            Request::Flush { name } => match self.procs.get(&name) {
                None => err(format!("no process named {name}")),
                Some(p) => {
                    let (out, error) = log_paths(&self.cfg.dir, &p.spec);
                    let mut files = vec![out, error];
                    files.extend(p.spec.log_file.as_ref().map(PathBuf::from));
                    let keep = p.spec.log_keep;
                    return self.out.push(Action::Flush { id, name, files, keep });
                }
            },
            Request::Delete { name } => {
                let Some(p) = self.procs.get_mut(&name) else {
                    return self.reply(id, err(format!("no process named {name}")));
                };
                p.desired = false;
                if p.state.running() {
                    return self.begin_stop(&name, Then::Delete, Some(id), now);
                }
                self.procs.remove(&name);
                self.out.push(Action::Forget { name: name.clone() });
                self.sync_watches();
                self.dirty = true;
                ok(format!("deleted {name}"))
            }
            Request::Kill => {
                let running: Vec<String> =
                    self.procs.iter().filter(|(_, p)| p.state.running()).map(|(n, _)| n.clone()).collect();
                let names: Vec<String> = self.procs.keys().cloned().collect();
                for name in names {
                    let gen = self.next_gen();
                    let Some(p) = self.procs.get_mut(&name) else { continue };
                    p.desired = false;
                    p.user_stopped = true;
                    if !p.state.running() {
                        p.state = State::Stopped;
                        p.gen = gen;
                    }
                }
                self.dirty = true;
                tracing::info!(count = running.len(), "kill: stopping every process, then the supervisor");
                for name in &running {
                    self.begin_stop(name, Then::Stay, None, now);
                }
                self.killing = Some(id);
                return;
            }
            Request::Send { name, text, enter } => match self.procs.get(&name) {
                None => err(format!("no process named {name}")),
                Some(p) if !p.spec.tmux => err(format!("{name} does not run in tmux (start it with --tmux)")),
                Some(p) if p.state != State::Online => err(format!("{name} is {}", p.state.as_str())),
                Some(_) => return self.out.push(Action::TmuxSend { id, name, text, enter }),
            },
        };
        self.reply(id, resp);
    }

    /// Registers the spec's processes and spawns the first; the answer comes when the last is
    /// up (`None` here), or at once when the request is refused.
    fn start(&mut self, id: ReqId, spec: ProcSpec, now: Now) -> Option<Response> {
        let mut problems = spec.validate();
        problems.extend(super::checks::problems(&spec));
        if !problems.is_empty() {
            return Some(err(problems.join("; ")));
        }
        let all = spec.expand_instances();
        for s in &all {
            if let Some(p) = self.procs.get(&s.name).filter(|p| !matches!(p.state, State::Stopped | State::Errored)) {
                return Some(err(format!("{} already exists ({}); stop or delete it first", s.name, p.state.as_str())));
            }
            if self.starts.values().any(|b| b.names.contains(&s.name)) {
                return Some(err(format!("{} is being started", s.name)));
            }
        }
        let new = all.iter().filter(|s| !self.procs.contains_key(&s.name)).count();
        if self.procs.len() + new > self.cfg.max_processes {
            return Some(err(format!(
                "the supervisor holds {} processes and its limit is {} (--max-processes)",
                self.procs.len(),
                self.cfg.max_processes
            )));
        }
        let mut previous = Vec::new();
        for s in &all {
            let old = self.procs.remove(&s.name);
            // A new spec for a name keeps the name's id; a new name takes the smallest free one.
            let id = old.as_ref().map_or_else(|| self.free_id(), |o| o.id);
            let mut p = new_proc(s.clone(), id);
            if let Some(old) = &old {
                p.restart_count = old.restart_count;
                p.cron_seq = old.cron_seq + 1;
                // A new spec: its log files (perhaps other ones) are opened afresh.
                self.out.push(Action::Forget { name: s.name.clone() });
            }
            previous.push((s.name.clone(), old));
            self.procs.insert(s.name.clone(), p);
        }
        let names: Vec<String> = all.iter().map(|s| s.name.clone()).collect();
        let first = names[0].clone();
        self.starts.insert(id, Starting { names, next: 0, previous });
        if let Some(p) = self.procs.get_mut(&first) {
            p.batch = Some(id);
        }
        self.spawn(&first, now);
        None
    }
}

impl Table {
    /// `start NAME` of a process the table holds, as pm2 takes it: one that is not running is
    /// started (answered when its spawn comes back), one that runs is left alone and that is
    /// said.
    pub(super) fn start_existing(&mut self, id: ReqId, name: &str, now: Now) {
        let Some(p) = self.procs.get_mut(name) else {
            return self.reply(id, err(format!("no process named {name}")));
        };
        match p.state {
            State::Online | State::Launching => {
                let message = format!("{name} is already {}", p.state.as_str());
                self.reply(id, ok(message));
            }
            State::Stopping if p.then == Then::Delete => self.reply(id, err(format!("{name} is being deleted"))),
            State::Stopping => {
                p.desired = true;
                p.user_stopped = false;
                self.dirty = true;
                self.begin_stop(name, Then::Restart, Some(id), now);
            }
            State::Stopped | State::Errored | State::WaitingRestart => {
                p.desired = true;
                p.user_stopped = false;
                p.unstable_restarts = 0;
                p.consecutive = 0;
                p.spawn_waiters.push((id, "started"));
                self.dirty = true;
                self.spawn(name, now);
            }
        }
    }
}
