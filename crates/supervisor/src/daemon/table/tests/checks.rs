//! Restarts the table decides by itself: cron schedules (from the injected wall time), memory
//! from an injected scan, failing health checks, watched changes.

use super::*;
use crate::daemon::table::Scan;
use osutil::procfs::GroupUsage;
use proto::control::RestartPolicy;
use std::collections::HashMap;
use State::*;

fn scan_with(w: &World, name: &str, rss_bytes: u64) -> HashMap<i32, GroupUsage> {
    let pgid = w.t.procs[name].pgid.unwrap();
    HashMap::from([(pgid, GroupUsage { pids: vec![pgid], rss_bytes, cpu_ticks: 0 })])
}

#[test]
fn next_cron_is_computed_from_the_given_wall_time() {
    // Every minute at second 0: whatever the local time zone, 30 s after WALL0.
    assert_eq!(next_cron("0 * * * * *", WALL0), Some(30_000));
    assert_eq!(next_cron("0 * * * * *", WALL0 + 30_000), Some(60_000), "a time that is now is not next");
    assert_eq!(next_cron("*/10 * * * * *", WALL0 + 1), Some(9_999));
    assert_eq!(next_cron("not a schedule", WALL0), None);
}

use crate::daemon::table::checks::next_cron;

#[test]
fn cron_restarts_a_running_service_at_each_time() {
    let mut s = spec("svc");
    s.cron_restart = Some("0 * * * * *".into());
    let mut w = World::with(s);
    let pid = w.t.procs["svc"].pid;
    w.advance(29_999);
    assert_eq!((w.state("svc"), w.restarts("svc")), (Online, 0));
    let mark = w.log.len();
    w.advance(1);
    assert!(w.since(mark).iter().any(|a| matches!(a, Action::StopGroup { report: true, .. })), "stopped first");
    assert_eq!((w.state("svc"), w.restarts("svc")), (Online, 1));
    assert_ne!(w.t.procs["svc"].pid, pid, "a new process");
    w.advance(60_000);
    assert_eq!(w.restarts("svc"), 2, "and again a minute later");
}

#[test]
fn cron_reruns_a_job_that_ended_and_leaves_a_stopped_one_alone() {
    let mut s = spec("job");
    s.restart = RestartPolicy::Never;
    s.cron_restart = Some("0 * * * * *".into());
    let mut w = World::with(s);
    w.advance(1_000);
    w.exit("job", Some(0));
    assert_eq!(w.state("job"), Stopped);
    w.advance(29_000);
    assert_eq!((w.state("job"), w.restarts("job")), (Online, 1), "the job runs again at its time");
    w.exit("job", Some(0));
    w.advance(60_000);
    assert_eq!((w.state("job"), w.restarts("job")), (Online, 2), "at each time");
    // A person stopped it: the schedule leaves it alone.
    assert_eq!(message(&w.ask(Request::Stop { name: "job".into() })), "ok: stopped job");
    w.advance(120_000);
    assert_eq!((w.state("job"), w.restarts("job")), (Stopped, 2));
}

#[test]
fn a_late_tick_never_fires_the_same_cron_time_twice() {
    let mut s = spec("svc");
    s.cron_restart = Some("0 * * * * *".into());
    let mut w = World::with(s);
    // The wall clock reads a little before the time when the tick comes (clocks drift apart).
    w.now.wall_ms -= 5;
    w.advance(30_000);
    assert_eq!(w.restarts("svc"), 1);
    w.advance(10);
    assert_eq!(w.restarts("svc"), 1, "the same time fired twice");
}

#[test]
fn memory_over_the_limit_restarts_from_an_injected_scan() {
    let mut s = spec("big");
    s.max_memory_bytes = Some(1_000);
    let mut w = World::with(s);
    let mark = w.log.len();
    w.advance(5_000);
    assert!(matches!(w.since(mark), [Action::Scan(Scan::Memory)]), "{:?}", w.since(mark));
    let groups = scan_with(&w, "big", 1_000);
    w.feed(Input::Scanned { scan: Scan::Memory, groups });
    assert_eq!(w.restarts("big"), 0, "at the limit is not over it");
    let groups = scan_with(&w, "big", 1_001);
    w.feed(Input::Scanned { scan: Scan::Memory, groups });
    assert_eq!((w.state("big"), w.restarts("big")), (Online, 1));
    assert_eq!(w.t.procs["big"].last_reason.as_deref(), Some("memory 1001 bytes over the limit of 1000"));
    // Without a limited process, no scan is asked for.
    let mut w = World::with(spec("small"));
    let mark = w.log.len();
    w.advance(5_000);
    assert!(w.since(mark).is_empty(), "{:?}", w.since(mark));
}

#[test]
fn more_failed_health_checks_than_allowed_restart() {
    let mut s = spec("web");
    s.health_cmd = Some("curl -f localhost".into());
    s.health_interval_ms = 1_000;
    s.health_failures = 2;
    let mut w = World::with(s);
    let check = |w: &mut World, ok: bool| {
        let mark = w.log.len();
        w.advance(1_000);
        let Some(Action::Health { name, gen, cmd, timeout_ms }) = w.since(mark).first().cloned() else {
            panic!("no health check: {:?}", w.since(mark))
        };
        assert_eq!((cmd.as_str(), timeout_ms), ("curl -f localhost", 1_000));
        w.feed(Input::Health { name, gen, ok, detail: "exit status: 22".into() });
    };
    check(&mut w, false);
    check(&mut w, false);
    check(&mut w, true);
    assert_eq!((w.restarts("web"), w.t.procs["web"].health_failures), (0, 0), "a success counts afresh");
    check(&mut w, false);
    check(&mut w, false);
    assert_eq!(w.restarts("web"), 0);
    check(&mut w, false);
    assert_eq!((w.state("web"), w.restarts("web")), (Online, 1), "the third failure in a row restarts");
    assert_eq!(w.t.procs["web"].last_reason.as_deref(), Some("health check failed 3 times: exit status: 22"));
    // A result for an earlier generation changes nothing.
    let before = w.t.procs["web"].health_failures;
    w.feed(Input::Health { name: "web".into(), gen: 1, ok: false, detail: String::new() });
    assert_eq!(w.t.procs["web"].health_failures, before);
}

#[test]
fn a_watched_change_restarts_after_the_delay_and_changes_meanwhile_join_it() {
    let mut s = spec("dev");
    s.watch = vec!["/src".into()];
    s.watch_delay_ms = 200;
    let mut w = World::with(s);
    assert!(w.log.iter().any(|a| matches!(a, Action::Watch(specs) if specs.len() == 1)));
    w.feed(Input::Watched { name: "dev".into(), path: "/src/a.rs".into() });
    w.advance(100);
    w.feed(Input::Watched { name: "dev".into(), path: "/src/b.rs".into() });
    assert_eq!(w.restarts("dev"), 0);
    let mark = w.log.len();
    w.advance(100);
    assert_eq!((w.state("dev"), w.restarts("dev")), (Online, 1));
    assert!(w.since(mark).iter().any(|a| matches!(a, Action::WatchHandled { name } if name == "dev")));
    assert_eq!(w.t.procs["dev"].last_reason.as_deref(), Some("watched path changed: /src/a.rs"));
    w.advance(1_000);
    assert_eq!(w.restarts("dev"), 1, "one restart for the burst");
}
