//! `reload` as a state machine: the successor runs beside the old process until it has stayed
//! up `min_uptime_ms` (and passed its health command), then the old group is stopped; a
//! successor that exits, cannot start or is not healthy in time is stopped and the old process
//! is left as it was; a stop, an exit of the old one or the supervisor's shutdown give the
//! reload up.

use super::*;
use State::*;

fn stop_of(actions: &[Action], gen: u64) -> Option<(i32, bool)> {
    actions.iter().find_map(|a| match a {
        Action::StopGroup { gen: g, pgid, report, .. } if *g == gen => Some((*pgid, *report)),
        _ => None,
    })
}

fn successor(w: &World) -> u64 {
    w.log
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::Spawn { gen, .. } => Some(*gen),
            _ => None,
        })
        .unwrap()
}

fn reload(w: &mut World) -> ReqId {
    w.request(Request::Reload { name: "p".into(), timeout_ms: None })
}

#[test]
fn the_old_process_runs_until_the_successor_has_stayed_up_then_it_is_stopped() {
    let mut w = World::with(spec("p"));
    let (old_gen, old_pid, id) = (w.gen("p"), w.t.procs["p"].pid, w.t.procs["p"].id);
    w.hold_stops = true;
    let mark = w.log.len();
    let r = reload(&mut w);
    let new_gen = successor(&w);
    assert_ne!(new_gen, old_gen, "a generation of its own");
    let persisted = w.since(mark).iter().rev().find_map(|a| match a {
        Action::Persist(s) => Some(s.processes[0].extra_pgids.clone()),
        _ => None,
    });
    assert_eq!(persisted, Some(vec![1002]), "state.json knows the successor's group");
    w.advance(999);
    assert_eq!(stop_of(w.since(mark), old_gen), None, "no gap: the old one still runs");
    assert_eq!((w.state("p"), w.t.procs["p"].pid), (Online, old_pid));
    w.advance(1);
    assert_eq!(stop_of(w.since(mark), old_gen), Some((old_pid.unwrap() as i32, true)));
    let p = &w.t.procs["p"];
    assert_eq!((p.state, p.pid, p.gen, p.id, p.restart_count), (Online, Some(1002), new_gen, id, 1));
    assert_eq!(p.last_reason.as_deref(), Some("reloaded"));
    assert!(w.replies.is_empty(), "answered once the old group is gone");
    w.feed(Input::StopDone { name: "p".into(), gen: old_gen });
    assert_eq!(message(&w.replies.remove(&r)), "ok: reloaded p");
    assert!(!w.t.stopping());
    // The old leader's exit, reported late, is not the process's.
    w.feed(Input::Exited { name: "p".into(), gen: old_gen, code: None, desc: "signal: 15".into() });
    assert_eq!((w.state("p"), w.t.procs["p"].pid, w.restart_in("p")), (Online, Some(1002), None));
}

#[test]
fn a_health_command_must_pass_and_is_tried_again_until_it_does() {
    let mut s = spec("p");
    s.health_cmd = Some("curl -f localhost:8080".into());
    let mut w = World::with(s);
    let old_gen = w.gen("p");
    let r = reload(&mut w);
    let new_gen = successor(&w);
    let checks =
        |w: &World| w.log.iter().filter(|a| matches!(a, Action::Health { gen, .. } if *gen == new_gen)).count();
    w.advance(1_000);
    assert_eq!(checks(&w), 1, "checked once it stayed up min_uptime_ms");
    w.feed(Input::Health { name: "p".into(), gen: new_gen, ok: false, detail: "refused".into() });
    assert_eq!(w.gen("p"), old_gen, "not healthy: the old one stays the process");
    w.advance(499);
    assert_eq!(checks(&w), 1);
    w.advance(1);
    assert_eq!(checks(&w), 2, "tried again soon, not after a whole health interval");
    w.feed(Input::Health { name: "p".into(), gen: new_gen, ok: true, detail: String::new() });
    assert_eq!(w.gen("p"), new_gen);
    assert_eq!(message(&w.replies.remove(&r)), "ok: reloaded p");
}

#[test]
fn a_successor_that_exits_first_is_given_up_and_the_old_one_keeps_running() {
    let mut w = World::with(spec("p"));
    let (old_gen, old_pid) = (w.gen("p"), w.t.procs["p"].pid);
    let r = reload(&mut w);
    let new_gen = successor(&w);
    w.advance(300);
    let mark = w.log.len();
    w.feed(Input::Exited { name: "p".into(), gen: new_gen, code: Some(3), desc: "exit status: 3".into() });
    assert_eq!(stop_of(w.since(mark), new_gen), Some((1002, true)), "the rest of its group goes too");
    assert_eq!(
        message(&w.replies.remove(&r)),
        "error: cannot reload p: the new process exited (exit status: 3) before it was healthy"
    );
    let p = &w.t.procs["p"];
    assert_eq!((p.state, p.pid, p.gen, p.restart_count, p.reload.is_none()), (Online, old_pid, old_gen, 0, true));
    assert_eq!(stop_of(w.since(mark), old_gen), None, "untouched");
    w.advance(60_000);
    assert_eq!((w.state("p"), w.t.procs["p"].pid), (Online, old_pid));
}

#[test]
fn a_successor_not_healthy_in_time_is_given_up() {
    let mut s = spec("p");
    s.health_cmd = Some("false".into());
    let mut w = World::with(s);
    let old_pid = w.t.procs["p"].pid;
    let r = w.request(Request::Reload { name: "p".into(), timeout_ms: Some(5_000) });
    let new_gen = successor(&w);
    let mut t = 0;
    while w.replies.is_empty() && t < 10_000 {
        if let Some(Action::Health { gen, .. }) = w.log.last().cloned() {
            w.feed(Input::Health { name: "p".into(), gen, ok: false, detail: "exit status: 1".into() });
        }
        w.advance(100);
        t += 100;
    }
    assert_eq!(t, 5_000, "given up at the bound");
    assert_eq!(
        message(&w.replies.remove(&r)),
        "error: cannot reload p: the new process was not healthy within 5000 ms (health check: exit status: 1)"
    );
    assert!(w.log.iter().any(|a| matches!(a, Action::StopGroup { gen, .. } if *gen == new_gen)));
    assert_eq!((w.state("p"), w.t.procs["p"].pid), (Online, old_pid));
    // A bound that min_uptime_ms alone would exceed is refused at once.
    let r = w.ask(Request::Reload { name: "p".into(), timeout_ms: Some(1_000) });
    assert!(message(&r).starts_with("error: the reload timeout (1000 ms) must be longer"), "{r:?}");
}

#[test]
fn a_successor_that_cannot_start_fails_the_reload_at_once() {
    let mut w = World::with(spec("p"));
    let old_pid = w.t.procs["p"].pid;
    w.spawn_fails = Some("server: command not found in PATH".into());
    let r = w.ask(Request::Reload { name: "p".into(), timeout_ms: None });
    assert_eq!(message(&r), "error: cannot reload p: cannot start the new process: server: command not found in PATH");
    assert_eq!((w.state("p"), w.t.procs["p"].pid, w.restarts("p")), (Online, old_pid, 0));
}

#[test]
fn a_stop_during_a_reload_stops_both_and_the_reload_says_it_was_cancelled() {
    let mut w = World::with(spec("p"));
    let old_gen = w.gen("p");
    let r = reload(&mut w);
    let new_gen = successor(&w);
    let mark = w.log.len();
    let stop = w.ask(Request::Stop { name: "p".into() });
    assert_eq!(message(&stop), "ok: stopped p");
    assert!(stop_of(w.since(mark), new_gen).is_some() && stop_of(w.since(mark), old_gen).is_some());
    assert_eq!(
        message(&w.replies.remove(&r)),
        "error: cannot reload p: the reload of p was cancelled: p is being stopped"
    );
    assert_eq!(w.state("p"), Stopped);
    w.advance(5_000);
    assert!(w.t.timers.values().all(|t| !matches!(t, Timer::ReloadCheck { .. })), "nothing fires for it");
}

#[test]
fn the_old_process_exiting_during_a_reload_gives_it_up_and_its_policy_applies() {
    let mut w = World::with(spec("p"));
    let r = reload(&mut w);
    w.advance(500);
    w.exit("p", Some(1));
    assert!(message(&w.replies.remove(&r)).contains("p exited during the reload (exit status: Some(1))"));
    w.advance(0);
    assert_eq!((w.state("p"), w.restarts("p")), (Online, 1), "restarted by its policy");
}

#[test]
fn a_successor_whose_spawn_is_out_when_given_up_is_stopped_once_it_has_a_group() {
    let mut w = World::with(spec("p"));
    w.hold_spawns = true;
    let r = reload(&mut w);
    let new_gen = successor(&w);
    w.hold_stops = true;
    w.feed(Input::Shutdown);
    assert!(w.t.stopping());
    let old_gen = w.gen("p");
    w.feed(Input::StopDone { name: "p".into(), gen: old_gen });
    assert!(w.t.stopping(), "the successor's group is still to go");
    let mark = w.log.len();
    w.feed(Input::Spawned { name: "p".into(), gen: new_gen, result: Ok(4242) });
    assert_eq!(stop_of(w.since(mark), new_gen), Some((4242, true)));
    w.feed(Input::StopDone { name: "p".into(), gen: new_gen });
    assert!(!w.t.stopping());
    assert!(message(&w.replies.remove(&r)).contains("cancelled"));
}

#[test]
fn reload_of_a_stopped_process_starts_it_and_a_tmux_one_is_refused() {
    let mut w = World::with(spec("p"));
    w.ask(Request::Stop { name: "p".into() });
    assert_eq!(message(&reload_answer(&mut w)), "ok: started p");
    assert_eq!(w.state("p"), Online);
    let mut t = spec("t");
    t.tmux = true;
    w.ask(Request::Start { spec: Box::new(t) });
    let r = w.ask(Request::Reload { name: "t".into(), timeout_ms: None });
    assert!(message(&r).starts_with("error: t runs in tmux"), "{r:?}");
}

fn reload_answer(w: &mut World) -> Option<Response> {
    let id = reload(w);
    w.replies.remove(&id)
}
