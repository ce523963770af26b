//! The local socket as `agentcom mcp` (or any process of the user) reaches it: private, bounded,
//! scoped to the held task and attempt, and a question asked through the agent's files that a
//! repeated call waits for instead of asking again.

use super::wire::{Request, Response, Scope};
use super::*;
use std::os::unix::fs::PermissionsExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    dir: tempfile::TempDir,
    socket: PathBuf,
    holding: watch::Sender<Holding>,
    _stop: tokio_util::sync::DropGuard,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "agent_id = \"a\"\ntoken = \"secret\"\nhub_url = \"ws://127.0.0.1:9/ws\"\nresults_dir = \"{0}/results\"\nstate_dir = \"{0}/state\"\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("s.toml"), toml).unwrap();
    let cfg = Arc::new(SidecarConfig::load(&dir.path().join("s.toml")).unwrap());
    std::fs::create_dir_all(&cfg.results_dir).unwrap();
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    let (tx, rx) = watch::channel(Holding { task: Some(("task-1".into(), 2)), answers: 0 });
    let stop = CancellationToken::new();
    let socket = start(cfg, rx, stop.clone()).unwrap();
    Setup { dir, socket, holding: tx, _stop: stop.drop_guard() }
}

async fn send_line(socket: &Path, line: &[u8]) -> Response {
    let mut s = UnixStream::connect(socket).await.unwrap();
    // The server may answer (and close) before it read everything we send.
    let _ = s.write_all(line).await;
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    serde_json::from_str(out.trim_end()).unwrap()
}

async fn call(socket: &Path, r: &Request) -> Response {
    let mut line = serde_json::to_vec(r).unwrap();
    line.push(b'\n');
    send_line(socket, &line).await
}

fn ask(task: &str, generation: u64, wait_ms: u64) -> Request {
    Request::Ask {
        scope: Scope { task_id: task.into(), generation },
        question: "Deploy?".into(),
        options: vec!["yes".into(), "no".into()],
        wait_ms,
    }
}

fn error(r: Response) -> String {
    match r {
        Response::Error { error } => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_socket_is_private_bounded_and_scoped_to_the_held_attempt() {
    let s = setup();
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stale = error(call(&s.socket, &ask("task-0", 2, 0)).await);
    assert!(stale.contains("holds task task-1, not task-0") && stale.contains("stale"), "{stale}");
    let earlier = error(call(&s.socket, &ask("task-1", 1, 0)).await);
    assert!(earlier.contains("earlier attempt"), "{earlier}");
    let bad = error(send_line(&s.socket, b"{\"op\":\"rm\",\"path\":\"/\"}\n").await);
    assert!(bad.starts_with("not a request"), "{bad}");
    let huge = vec![b'x'; wire::MAX_REQUEST_BYTES + 10];
    let over = error(send_line(&s.socket, &huge).await);
    assert!(over.contains("over 262144 bytes"), "{over}");
    let checked = Request::Progress { scope: Scope { task_id: "task-1".into(), generation: 2 }, message: " ".into() };
    assert_eq!(error(call(&s.socket, &checked).await), "message: must not be empty");
    s.holding.send_modify(|h| h.task = None);
    let none = error(call(&s.socket, &ask("task-1", 2, 0)).await);
    assert!(none.contains("holds no task"), "{none}");
}

#[tokio::test]
async fn a_question_is_asked_once_through_the_files_and_a_repeated_call_gets_its_answer() {
    let s = setup();
    let results = s.dir.path().join("results");
    // The wait runs out: the question stays open, written once.
    assert_eq!(call(&s.socket, &ask("task-1", 2, 0)).await, Response::Pending { request_id: None });
    let q = results.join("task-1.needs-input");
    let first = std::fs::read(&q).unwrap();
    let asked: serde_json::Value = serde_json::from_slice(&std::fs::read(&q).unwrap()).unwrap();
    assert_eq!(asked, serde_json::json!({"question": "Deploy?", "options": ["yes", "no"]}));
    // Asked again while it waits: the same file (not a second question), and this call gets
    // the answer when the sidecar writes it.
    let socket = s.socket.clone();
    let waiting = tokio::spawn(async move { call(&socket, &ask("task-1", 2, 60_000)).await });
    std::fs::write(results.join("task-1.input"), "yes, ship it\n").unwrap();
    std::fs::remove_file(&q).unwrap();
    s.holding.send_modify(|h| h.answers += 1);
    assert_eq!(waiting.await.unwrap(), Response::Answer { answer: "yes, ship it".into() });
    assert!(!first.is_empty());
    // Once more (the reply was lost on its way): the same answer, nothing asked.
    assert_eq!(call(&s.socket, &ask("task-1", 2, 0)).await, Response::Answer { answer: "yes, ship it".into() });
    assert!(!q.exists(), "not asked a second time");
    // Another question while one is open is refused.
    std::fs::write(&q, "{\"question\":\"Other?\"}").unwrap();
    let other = error(call(&s.socket, &ask("task-1", 2, 0)).await);
    assert!(other.contains("another question is open"), "{other}");
}

#[tokio::test]
async fn progress_is_a_line_in_the_progress_file() {
    let s = setup();
    let r = Request::Progress { scope: Scope { task_id: "task-1".into(), generation: 2 }, message: "half\nway".into() };
    assert!(matches!(call(&s.socket, &r).await, Response::Done { .. }));
    let text = std::fs::read_to_string(s.dir.path().join("results/task-1.progress")).unwrap();
    assert_eq!(text, "half way\n");
}
