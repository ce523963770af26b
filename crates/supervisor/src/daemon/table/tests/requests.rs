//! Requests and stops: who is answered when, stops that take their time, a crash during a stop,
//! a stop while a spawn is out, `start` with instances, `kill`, restore and shutdown.

use super::*;
use State::*;

fn stop_groups(actions: &[Action]) -> Vec<(String, i32, String, u64, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StopGroup { name, pgid, signal, timeout_ms, report, .. } => {
                Some((name.clone(), *pgid, signal.clone(), *timeout_ms, *report))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_stop_carries_its_signal_and_timeout_and_answers_when_the_group_is_gone() {
    let mut s = spec("p");
    s.kill_signal = "SIGINT".into();
    s.kill_timeout_ms = 1_500;
    let mut w = World::with(s);
    let pgid = w.t.procs["p"].pgid.unwrap();
    w.hold_stops = true;
    let mark = w.log.len();
    let stop = w.request(Request::Stop { name: "p".into() });
    let restart = w.request(Request::Restart { name: "p".into() });
    assert_eq!(stop_groups(w.since(mark)), [("p".to_string(), pgid, "SIGINT".to_string(), 1_500, true)], "one stop");
    assert!(matches!(w.since(mark)[0], Action::Persist(ref s) if !s.processes[0].desired), "on disk before the stop");
    assert_eq!(w.state("p"), Stopping);
    assert!(w.replies.is_empty(), "nobody is answered before the group is gone");
    // The leader dies during the stop: the stop still waits for the whole group.
    w.advance(1_600);
    w.exit("p", Some(130));
    assert_eq!(w.state("p"), Stopping, "a crash during a stop is part of the stop");
    assert_eq!(w.restart_in("p"), None);
    let gen = w.gen("p");
    w.hold_stops = false;
    w.feed(Input::StopDone { name: "p".into(), gen });
    // The restart asked for meanwhile is what the stop ends in; both are answered.
    assert_eq!(message(&w.replies.remove(&stop)), "ok: restarted p");
    assert_eq!(message(&w.replies.remove(&restart)), "ok: restarted p");
    assert_eq!((w.state("p"), w.restarts("p")), (Online, 1));
    // A late completion of the old stop changes nothing.
    w.feed(Input::StopDone { name: "p".into(), gen });
    assert_eq!(w.state("p"), Online);
}

#[test]
fn a_crash_during_a_stop_is_not_restarted() {
    let mut w = World::with(spec("p"));
    w.hold_stops = true;
    let stop = w.request(Request::Stop { name: "p".into() });
    w.exit("p", Some(1));
    assert_eq!((w.state("p"), w.restart_in("p")), (Stopping, None));
    assert_eq!(w.t.procs["p"].exit_code, Some(1));
    let gen = w.gen("p");
    w.feed(Input::StopDone { name: "p".into(), gen });
    assert_eq!(message(&w.replies.remove(&stop)), "ok: stopped p");
    assert_eq!((w.state("p"), w.restarts("p")), (Stopped, 0));
    w.advance(60_000);
    assert_eq!(w.state("p"), Stopped);
}

#[test]
fn an_exit_takes_the_rest_of_its_group_without_waiting_for_it() {
    let mut w = World::with(spec("p"));
    let pgid = w.t.procs["p"].pgid.unwrap();
    let mark = w.log.len();
    w.exit("p", Some(1));
    assert_eq!(stop_groups(w.since(mark)), [("p".to_string(), pgid, "SIGTERM".to_string(), 5_000, false)]);
}

#[test]
fn a_stop_while_the_spawn_is_out_goes_out_when_the_spawn_comes_back() {
    let mut w = World::new();
    w.hold_spawns = true;
    let start = w.request(Request::Start { spec: Box::new(spec("p")) });
    assert_eq!(w.state("p"), Launching);
    let stop = w.request(Request::Stop { name: "p".into() });
    assert_eq!(w.state("p"), Stopping);
    assert!(stop_groups(&w.log).is_empty(), "no group to stop yet");
    let gen = w.gen("p");
    w.hold_spawns = false;
    let mark = w.log.len();
    w.feed(Input::Spawned { name: "p".into(), gen, result: Ok(777) });
    assert_eq!(message(&w.replies.remove(&start)), "ok: started p");
    assert_eq!(stop_groups(w.since(mark)), [("p".to_string(), 777, "SIGTERM".to_string(), 5_000, true)]);
    assert_eq!(message(&w.replies.remove(&stop)), "ok: stopped p");
    assert_eq!(w.state("p"), Stopped);
}

#[test]
fn start_answers_when_every_instance_runs_and_undoes_itself_when_one_cannot() {
    let mut s = spec("web");
    s.instances = 3;
    let mut w = World::new();
    let r = w.ask(Request::Start { spec: Box::new(s.clone()) });
    assert_eq!(message(&r), "ok: started web-0, web-1, web-2");
    assert!(["web-0", "web-1", "web-2"].iter().all(|n| w.state(n) == Online));
    // A second start of a running name is refused.
    let r = w.ask(Request::Start { spec: Box::new(s.clone()) });
    assert_eq!(message(&r), "error: web-0 already exists (online); stop or delete it first");
    // The second instance cannot start: the first is stopped again and nothing is registered.
    let mut w = World::new();
    w.hold_spawns = true;
    let id = w.request(Request::Start { spec: Box::new(s) });
    let spawned = |w: &mut World, name: &str, result| {
        let gen = w.gen(name);
        w.feed(Input::Spawned { name: name.into(), gen, result });
    };
    spawned(&mut w, "web-0", Ok(500));
    assert_eq!(w.state("web-1"), Launching, "one after the other");
    let mark = w.log.len();
    spawned(&mut w, "web-1", Err("server: command not found in PATH".into()));
    assert_eq!(message(&w.replies.remove(&id)), "error: cannot start web-1: server: command not found in PATH");
    assert_eq!(w.t.len(), 0);
    assert_eq!(stop_groups(w.since(mark)), [("web-0".to_string(), 500, "SIGTERM".to_string(), 5_000, false)]);
    assert!(w.since(mark).iter().any(|a| matches!(a, Action::Persist(s) if s.processes.is_empty())));
}

#[test]
fn invalid_specs_and_too_many_processes_are_refused_with_every_reason() {
    let mut w = World::new();
    let mut s = spec("bad name");
    s.cron_restart = Some("soon".into());
    let r = message(&w.ask(Request::Start { spec: Box::new(s) }));
    assert!(r.starts_with("error: name: ") && r.contains("; cron_restart: \"soon\" is not a cron schedule"), "{r}");
    w.t.cfg.max_processes = 2;
    let mut s = spec("many");
    s.instances = 3;
    let r = message(&w.ask(Request::Start { spec: Box::new(s) }));
    assert_eq!(r, "error: the supervisor holds 0 processes and its limit is 2 (--max-processes)");
}

#[test]
fn delete_restart_and_send_answer_by_state() {
    let mut s = spec("t");
    s.tmux = true;
    let mut w = World::with(s);
    let id = w.request(Request::Send { name: "t".into(), text: "hi".into(), enter: true });
    assert!(matches!(w.log.last(), Some(Action::TmuxSend { id: i, .. }) if *i == id));
    w.feed(Input::Sent { id, result: Ok("sent 2 bytes to t".into()) });
    assert_eq!(message(&w.replies.remove(&id)), "ok: sent 2 bytes to t");
    assert_eq!(message(&w.ask(Request::Stop { name: "t".into() })), "ok: stopped t");
    let r = w.ask(Request::Send { name: "t".into(), text: "hi".into(), enter: true });
    assert_eq!(message(&r), "error: t is stopped");
    assert_eq!(message(&w.ask(Request::Restart { name: "t".into() })), "ok: restarted t");
    assert_eq!(message(&w.ask(Request::Delete { name: "t".into() })), "ok: deleted t");
    assert!(
        matches!(w.log.iter().rev().find(|a| matches!(a, Action::Forget { .. })), Some(Action::Forget { name }) if name == "t")
    );
    assert_eq!(message(&w.ask(Request::Delete { name: "t".into() })), "error: no process named t");
    let r = w.ask(Request::Ping);
    assert!(matches!(r, Some(Response::Pong { pid: 42, .. })), "{r:?}");
}

#[test]
fn kill_answers_once_every_group_is_gone_then_exits() {
    let mut w = World::with(spec("a"));
    let r = w.ask(Request::Start { spec: Box::new(spec("b")) });
    assert_eq!(message(&r), "ok: started b");
    w.exit("b", Some(1)); // waiting to restart: the kill cancels it
    w.hold_stops = true;
    let kill = w.request(Request::Kill);
    assert!(!w.log.iter().any(|a| matches!(a, Action::Exit)));
    let gen = w.gen("a");
    w.hold_stops = false;
    w.feed(Input::StopDone { name: "a".into(), gen });
    assert_eq!(message(&w.replies.remove(&kill)), "ok: stopped 2 processes; the supervisor exits");
    assert!(matches!(w.log.last(), Some(Action::Exit)));
    w.advance(60_000);
    assert_eq!((w.state("a"), w.state("b")), (Stopped, Stopped));
    assert!(w.t.procs.values().all(|p| !p.desired), "the next supervisor starts nothing");
}

#[test]
fn restore_starts_what_should_run_and_shutdown_stops_it_keeping_the_desired_state() {
    use crate::daemon::persist::PersistedProc;
    let mut w = World::new();
    let pp = |name: &str, desired| PersistedProc {
        id: None,
        spec: spec(name),
        desired,
        pgid: Some(9),
        restart_count: 4,
        extra_pgids: vec![],
    };
    w.feed(Input::Restore { procs: vec![pp("up", true), pp("down", false)] });
    assert_eq!((w.state("up"), w.restarts("up")), (Online, 4));
    assert_eq!(w.state("down"), Stopped);
    w.hold_stops = true;
    w.feed(Input::Shutdown);
    assert!(w.t.stopping());
    assert_eq!(w.t.next_deadline(), None, "no timer fires while shutting down");
    let r = w.ask(Request::Ps);
    assert_eq!(message(&r), "error: supervisor shutting down");
    let gen = w.gen("up");
    w.feed(Input::StopDone { name: "up".into(), gen });
    assert!(!w.t.stopping());
    assert!(w.t.procs["up"].desired, "brought back by the next supervisor");
}

#[test]
fn ps_and_describe_read_an_injected_scan() {
    let mut w = World::with(spec("p"));
    let id = w.request(Request::Ps);
    assert!(matches!(w.log.last(), Some(Action::Scan(crate::daemon::table::Scan::Status { describe: None, .. }))));
    let pgid = w.t.procs["p"].pgid.unwrap();
    let usage = |cpu_ticks| {
        std::collections::HashMap::from([(
            pgid,
            osutil::procfs::GroupUsage { pids: vec![pgid], rss_bytes: 4096, cpu_ticks },
        )])
    };
    w.advance(2_000);
    w.feed(Input::Scanned { scan: crate::daemon::table::Scan::Status { id, describe: None }, groups: usage(10) });
    let Some(Response::List { processes }) = w.replies.remove(&id) else { panic!("no list") };
    assert_eq!(
        (processes[0].uptime_ms, processes[0].memory_bytes, processes[0].status.as_str()),
        (2_000, 4096, "online")
    );
    // 50 ticks of 100 per second in one second: half a core.
    w.advance(1_000);
    let id = w.request(Request::Describe { name: "p".into() });
    w.feed(Input::Scanned {
        scan: crate::daemon::table::Scan::Status { id, describe: Some("p".into()) },
        groups: usage(60),
    });
    let Some(Response::Described(d)) = w.replies.remove(&id) else { panic!("no description") };
    assert_eq!((d.status.cpu_percent, d.started_at_ms, d.pgid), (50.0, Some(WALL0), Some(pgid)));
    assert_eq!(d.out_log, "/sup/logs/p-out.log");
}
