//! The supervisor's control socket under hostile input, against the real daemon: a 300 MiB
//! line, bytes that are not UTF-8, idle connections, too many connections. Each is answered
//! with an error (or closed, for idleness), memory stays small, and `ps` keeps working.

use crate::bin;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use testkit::Supervised;

type R = anyhow::Result<()>;

fn rss_mb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb / 1024
}

struct Conn {
    reader: BufReader<UnixStream>,
}

impl Conn {
    fn open(s: &Supervised) -> anyhow::Result<Conn> {
        let stream = UnixStream::connect(s.dir().join("supervisor.sock"))?;
        stream.set_read_timeout(Some(testkit::WAIT))?;
        Ok(Conn { reader: BufReader::new(stream) })
    }
    fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        Ok(self.reader.get_mut().write_all(bytes)?)
    }
    fn answer(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }
}

fn started(env: &[(&str, &str)]) -> anyhow::Result<Supervised> {
    let mut s = Supervised::new(bin())?;
    for (k, v) in env {
        s.env.push((k.to_string(), v.to_string()));
    }
    s.ok(&["start", "keep", "--", "sleep", "1000"])?;
    Ok(s)
}

#[tokio::test]
async fn a_300_mib_line_is_refused_without_buffering_and_the_connection_goes_on() -> R {
    let s = started(&[])?;
    let sup = s.supervisor_pid().unwrap();
    let before = rss_mb(sup);
    let mut c = Conn::open(&s)?;
    let chunk = vec![b'x'; 1 << 20];
    let mut writer = c.reader.get_ref().try_clone()?;
    // Written from another thread: the supervisor answers as soon as the line is too long.
    let w = std::thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..300 {
            writer.write_all(&chunk)?;
        }
        writer.write_all(b"\n")
    });
    let a = c.answer()?;
    assert_eq!(a["result"], "error");
    assert_eq!(a["error"], format!("bad request: line longer than {} bytes", 1 << 20));
    // Meanwhile everyone else is served.
    assert_eq!(s.proc("keep")?["status"], "online");
    w.join().unwrap()?;
    let after = rss_mb(sup);
    assert!(after < before + 16, "RSS grew from {before} MB to {after} MB");
    // The same connection still works after the skipped line.
    c.send(b"{\"cmd\":\"ps\"}\n")?;
    assert_eq!(c.answer()?["result"], "list");
    Ok(())
}

#[tokio::test]
async fn bad_bytes_are_answered_with_an_error_and_the_connection_is_kept() -> R {
    let s = started(&[])?;
    let mut c = Conn::open(&s)?;
    c.send(b"{\"cmd\":\"ps\xff\xfe\"}\n")?;
    let a = c.answer()?;
    assert_eq!(
        (a["result"].as_str(), a["error"].as_str()),
        (Some("error"), Some("bad request: not UTF-8 (invalid byte at offset 10)"))
    );
    c.send(b"not json\n")?;
    assert!(c.answer()?["error"].as_str().unwrap().starts_with("bad request: expected"));
    c.send(b"{\"cmd\":\"start\",\"spec\":{\"name\":\"x\",\"command\":\"true\",\"evil\":1}}\n")?;
    assert!(c.answer()?["error"].as_str().unwrap().contains("unknown field `evil`"));
    c.send(b"{\"cmd\":\"ps\"}\n")?;
    assert_eq!(c.answer()?["result"], "list");
    Ok(())
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_others_are_served_meanwhile() -> R {
    let s = started(&[("AGENTCOM_SUPERVISOR_CONTROL_IDLE_MS", "300")])?;
    let mut idle = Conn::open(&s)?;
    // Half a request, then nothing.
    idle.send(b"{\"cmd\":")?;
    assert_eq!(s.proc("keep")?["status"], "online", "ps works while a connection idles");
    let a = idle.answer()?;
    assert_eq!(a["error"], "closing a connection idle for 300 ms");
    let mut rest = Vec::new();
    assert_eq!(idle.reader.read_to_end(&mut rest)?, 0, "closed after saying why");
    Ok(())
}

#[tokio::test]
async fn connections_beyond_the_limit_are_told_so_and_the_rest_keep_working() -> R {
    let s = started(&[("AGENTCOM_SUPERVISOR_MAX_CONNECTIONS", "4")])?;
    let mut held: Vec<Conn> = Vec::new();
    for _ in 0..4 {
        let mut c = Conn::open(&s)?;
        c.send(b"{\"cmd\":\"ping\"}\n")?;
        assert_eq!(c.answer()?["result"], "pong");
        held.push(c);
    }
    let mut extra = Conn::open(&s)?;
    assert_eq!(extra.answer()?["error"], "too many control connections (limit 4); try again");
    // The held ones still work; one closed frees a place.
    held[0].send(b"{\"cmd\":\"ps\"}\n")?;
    assert_eq!(held[0].answer()?["result"], "list");
    held.pop();
    testkit::eventually("a freed place to be usable", || async {
        s.proc("keep").map(|_| ()).map_err(|e| e.to_string())
    })
    .await?;
    let _ = Duration::ZERO;
    Ok(())
}
