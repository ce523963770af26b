//! pm2's habits in the table: every process has a small id kept across restarts and supervisor
//! restarts (free again after a delete), `start NAME` of one the table holds starts it only if
//! it is not running, and `flush` names the files to empty.

use super::*;
use crate::daemon::persist::PersistedProc;
use State::*;

fn ids(w: &World) -> Vec<(String, u32)> {
    w.t.procs.iter().map(|(n, p)| (n.clone(), p.id)).collect()
}

#[test]
fn ids_are_small_stable_and_reused_only_after_a_delete() {
    let mut w = World::with(spec("b"));
    w.ask(Request::Start { spec: Box::new(spec("a")) });
    let mut web = spec("web");
    web.instances = 2;
    w.ask(Request::Start { spec: Box::new(web) });
    let want = |v: &[(&str, u32)]| v.iter().map(|(n, i)| (n.to_string(), *i)).collect::<Vec<_>>();
    assert_eq!(ids(&w), want(&[("a", 1), ("b", 0), ("web-0", 2), ("web-1", 3)]), "in the order first started");
    // Restarts, crashes, a stop and a new spec for a stopped name keep it.
    w.ask(Request::Restart { name: "a".into() });
    w.exit("a", Some(1));
    w.advance(1_000);
    w.ask(Request::Stop { name: "a".into() });
    w.ask(Request::Start { spec: Box::new(ProcSpec::new("a", "other", vec![])) });
    assert_eq!(w.t.procs["a"].id, 1);
    // `state.json` carries them to the next supervisor, which gives them back as they were.
    let Some(Action::Persist(state)) = w.log.iter().rev().find(|a| matches!(a, Action::Persist(_))).cloned() else {
        panic!("nothing persisted")
    };
    let mut next = World::new();
    next.feed(Input::Restore { procs: state.processes });
    assert_eq!(ids(&next), ids(&w));
    // A deleted process's id is free for the next new name; nobody else's moves.
    next.ask(Request::Delete { name: "b".into() });
    next.ask(Request::Start { spec: Box::new(spec("c")) });
    assert_eq!(next.t.procs["c"].id, 0);
    assert_eq!(next.t.procs["web-1"].id, 3);
    let r = next.ask(Request::Ps);
    assert!(r.is_none(), "ps waits for its scan");
}

#[test]
fn a_state_file_without_ids_or_with_a_clash_gets_fresh_ones() {
    let pp = |name: &str, id| PersistedProc {
        id,
        spec: spec(name),
        desired: false,
        pgid: None,
        restart_count: 0,
        extra_pgids: vec![],
    };
    let mut w = World::new();
    w.feed(Input::Restore { procs: vec![pp("old", None), pp("x", Some(0)), pp("y", Some(0)), pp("z", Some(5))] });
    let got = ids(&w);
    let want: Vec<(String, u32)> =
        [("old", 1), ("x", 0), ("y", 2), ("z", 5)].iter().map(|(n, i)| (n.to_string(), *i)).collect();
    assert_eq!(got, want, "the first claim keeps its id; the others take the smallest free ones");
}

#[test]
fn start_of_a_known_name_starts_a_stopped_one_and_leaves_a_running_one() {
    let mut w = World::with(spec("p"));
    let pid = w.t.procs["p"].pid;
    let r = w.ask(Request::StartExisting { name: "p".into() });
    assert_eq!(message(&r), "ok: p is already online");
    assert_eq!(w.t.procs["p"].pid, pid, "left alone");
    w.ask(Request::Stop { name: "p".into() });
    assert_eq!(w.state("p"), Stopped);
    let r = w.ask(Request::StartExisting { name: "p".into() });
    assert_eq!(message(&r), "ok: started p");
    assert_eq!((w.state("p"), w.restarts("p")), (Online, 0));
    assert!(w.t.procs["p"].desired, "a supervisor restart brings it back");
    // An errored one too, with its crash count cleared.
    let mut s = spec("c");
    s.max_restarts = 0;
    w.ask(Request::Start { spec: Box::new(s) });
    w.exit("c", Some(1));
    assert_eq!(w.state("c"), Errored);
    assert_eq!(message(&w.ask(Request::StartExisting { name: "c".into() })), "ok: started c");
    assert_eq!((w.state("c"), w.t.procs["c"].unstable_restarts), (Online, 0));
    let r = w.ask(Request::StartExisting { name: "nope".into() });
    assert_eq!(message(&r), "error: no process named nope");
}

#[test]
fn flush_names_every_log_file_of_the_process() {
    let mut s = spec("p");
    s.log_file = Some("/var/log/p.log".into());
    s.log_keep = 5;
    let mut w = World::with(s);
    let id = w.request(Request::Flush { name: "p".into() });
    let Some(Action::Flush { files, keep, .. }) = w.log.last().cloned() else { panic!("{:?}", w.log.last()) };
    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    assert_eq!(files, ["/sup/logs/p-out.log", "/sup/logs/p-err.log", "/var/log/p.log"]);
    assert_eq!(keep, 5);
    w.feed(Input::Flushed { id, result: Ok("flushed the logs of p".into()) });
    assert_eq!(message(&w.replies.remove(&id)), "ok: flushed the logs of p");
    assert_eq!(message(&w.ask(Request::Flush { name: "q".into() })), "error: no process named q");
}
