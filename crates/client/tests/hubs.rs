//! A client of several hubs, against small local HTTP servers that play a leader and standbys
//! the way the hub answers: a standby's `307` naming the leader, or `503 not_leader`.

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use client::{Client, ClientError, Skipped};
use futures_util::StreamExt;
use proto::api::{EventKind, GetHealth, SubmitTask};
use serde_json::json;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;

const TOKEN: &str = "secret-token-0123456789";

#[derive(Clone, Debug)]
enum Role {
    Leader,
    /// A standby naming this leader URL (`None`: it knows none yet).
    Standby(Option<String>),
}

/// One request a fake hub saw.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
}

#[derive(Clone)]
struct Shared {
    url: String,
    role: Arc<Mutex<Role>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A hub played by a small axum server on a loopback port.
struct Fake {
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    async fn start(role: Role) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Shared { url, role: Arc::new(Mutex::new(role)), seen: Arc::default() };
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Fake { shared, task }
    }

    fn url(&self) -> String {
        self.shared.url.clone()
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    fn become_(&self, role: Role) {
        *self.shared.role.lock().unwrap() = role;
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(s): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: String) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    s.seen.lock().unwrap().push(Seen { method: method.to_string(), path: path.clone(), authorization, body });
    let role = s.role.lock().unwrap().clone();
    match role {
        Role::Standby(Some(leader)) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("{leader}{path}"))],
            axum::Json(json!({"error": "not_leader", "message": "this hub is a standby", "leader": leader})),
        )
            .into_response(),
        Role::Standby(None) => {
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "not_leader", "message": "no leader yet"})))
                .into_response()
        }
        Role::Leader => match (method.as_str(), uri.path()) {
            ("GET", "/health") => {
                axum::Json(json!({"status": "ok", "version": s.url, "role": "leader"})).into_response()
            }
            ("POST", "/api/tasks") => axum::Json(json!({
                "status": "queued", "task_id": "task-1", "priority": "normal", "created_at": 1
            }))
            .into_response(),
            ("GET", "/api/events") => (
                [(header::CONTENT_TYPE, "text/event-stream")],
                format!("id: e-1\ndata: {}\n\n", json!({"id": "e-1", "at": 1, "type": "resync", "reason": s.url})),
            )
                .into_response(),
            _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": "not_found"}))).into_response(),
        },
    }
}

/// A URL where nothing listens (bound, then released).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

/// A hub that accepts a connection, reads the request and hangs up without an answer (it died
/// while serving): whether the request was carried out cannot be known.
async fn hangs_up() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
        }
    });
    url
}

fn client(urls: &[String]) -> Client {
    Client::new(&urls.join(","), Some(TOKEN.into()), None).unwrap()
}

fn version(h: proto::api::Health) -> String {
    h.version
}

#[tokio::test]
async fn a_standby_naming_a_configured_leader_is_followed_and_the_leader_sticks() {
    let leader = Fake::start(Role::Leader).await;
    let standby = Fake::start(Role::Standby(Some(leader.url()))).await;
    let lost = Fake::start(Role::Standby(None)).await;
    // The named leader is tried next, before the hub listed between them.
    let c = client(&[standby.url(), lost.url(), leader.url()]);
    let submitted = c.call(&SubmitTask::new("build it")).await.unwrap();
    assert_eq!(submitted.task_id, "task-1");
    let got = leader.seen();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].method.as_str(), got[0].path.as_str()), ("POST", "/api/tasks"));
    assert_eq!(got[0].authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    assert!(got[0].body.contains("build it"), "the body goes to the leader too: {}", got[0].body);
    assert_eq!(standby.seen().len(), 1);
    assert!(lost.seen().is_empty(), "{:?}", lost.seen());
    // Later requests, from this client and its clones, go straight to the leader.
    assert_eq!(c.base(), leader.url());
    let clone = c.clone();
    assert_eq!(version(clone.call(&GetHealth).await.unwrap()), leader.url());
    assert_eq!(version(c.call(&GetHealth).await.unwrap()), leader.url());
    assert_eq!((standby.seen().len(), leader.seen().len()), (1, 3));
}

#[tokio::test]
async fn a_standby_naming_a_leader_that_is_not_configured_is_not_followed() {
    let elsewhere = Fake::start(Role::Leader).await;
    let standby = Fake::start(Role::Standby(Some(elsewhere.url()))).await;
    let c = client(&[standby.url()]);
    let err = c.call(&GetHealth).await.unwrap_err();
    let ClientError::NoHub { attempts } = &err else { panic!("expected NoHub, got {err:?}") };
    assert_eq!(attempts[0].skipped, Skipped::UnlistedLeader(elsewhere.url()));
    let text = err.to_string();
    assert!(text.contains(&standby.url()) && text.contains(&elsewhere.url()), "{text}");
    assert!(text.contains("not one of the configured hub URLs") && text.contains("AGENTCOM_URL"), "{text}");
    // Neither the client nor its HTTP library followed the redirect: the token stayed home.
    assert!(elsewhere.seen().is_empty(), "{:?}", elsewhere.seen());
    // With a configured leader after it, that one serves.
    let leader = Fake::start(Role::Leader).await;
    let c = client(&[standby.url(), leader.url()]);
    assert_eq!(version(c.call(&GetHealth).await.unwrap()), leader.url());
    assert!(elsewhere.seen().is_empty());
}

#[tokio::test]
async fn a_dead_first_url_moves_on_to_the_next() {
    let leader = Fake::start(Role::Leader).await;
    let dead = dead_url();
    let c = client(&[dead.clone(), leader.url()]);
    assert_eq!(c.urls(), [dead, leader.url()]);
    assert_eq!(version(c.call(&GetHealth).await.unwrap()), leader.url());
    assert_eq!(c.call(&SubmitTask::new("x")).await.unwrap().task_id, "task-1");
    assert_eq!(c.base(), leader.url());
    assert_eq!(leader.seen().len(), 2);
}

#[tokio::test]
async fn a_round_where_no_hub_serves_names_each_url_and_why() {
    let (dead1, dead2) = (dead_url(), dead_url());
    let lost = Fake::start(Role::Standby(None)).await;
    let err = client(&[dead1.clone(), lost.url(), dead2.clone()]).call(&GetHealth).await.unwrap_err();
    let ClientError::NoHub { attempts } = &err else { panic!("expected NoHub, got {err:?}") };
    let urls: Vec<&str> = attempts.iter().map(|a| a.url.as_str()).collect();
    assert_eq!(urls, [dead1.as_str(), lost.url().as_str(), dead2.as_str()]);
    assert!(matches!(attempts[0].skipped, Skipped::Unreachable(_)), "{attempts:?}");
    assert_eq!(attempts[1].skipped, Skipped::NoLeaderKnown);
    let text = err.to_string();
    assert!(text.starts_with("no hub served the request: "), "{text}");
    assert!(
        text.contains(&format!("{dead1}: unreachable")) && text.contains(&format!("{dead2}: unreachable")),
        "{text}"
    );
    assert!(text.contains("knows no leader yet"), "{text}");
    // One hub that cannot be reached is explained as before.
    let err = client(std::slice::from_ref(&dead1)).call(&GetHealth).await.unwrap_err();
    assert!(err.to_string().starts_with(&format!("cannot reach the hub at {dead1}: ")), "{err}");
    // Two that are both dead.
    let err = client(&[dead1.clone(), dead2.clone()]).call(&GetHealth).await.unwrap_err().to_string();
    assert!(err.contains(&dead1) && err.contains(&dead2), "{err}");
}

#[tokio::test]
async fn a_leader_that_steps_down_sends_the_client_to_its_successor() {
    let (one, two) = (Fake::start(Role::Leader).await, Fake::start(Role::Standby(None)).await);
    let c = client(&[one.url(), two.url()]);
    assert_eq!(version(c.call(&GetHealth).await.unwrap()), one.url());
    two.become_(Role::Leader);
    one.become_(Role::Standby(Some(two.url())));
    assert_eq!(version(c.call(&GetHealth).await.unwrap()), two.url());
    assert_eq!(version(c.call(&GetHealth).await.unwrap()), two.url());
    assert_eq!((one.seen().len(), two.seen().len()), (2, 2), "the new leader sticks");
    // Standbys naming each other (an election in flight) end the round instead of looping.
    one.become_(Role::Standby(Some(two.url())));
    two.become_(Role::Standby(Some(one.url())));
    let err = c.call(&GetHealth).await.unwrap_err();
    let ClientError::NoHub { attempts } = &err else { panic!("expected NoHub, got {err:?}") };
    assert_eq!(attempts.len(), 2, "{attempts:?}");
}

#[tokio::test]
async fn a_change_is_not_sent_again_after_a_hub_hung_up_on_it() {
    let leader = Fake::start(Role::Leader).await;
    let rude = hangs_up().await;
    let c = client(&[rude.clone(), leader.url()]);
    // The submission may have been stored before the hub died: another hub must not get it too.
    let err = c.call(&SubmitTask::new("once")).await.unwrap_err();
    assert!(matches!(&err, ClientError::Connect { url, .. } if url == &rude), "{err:?}");
    assert!(leader.seen().is_empty(), "{:?}", leader.seen());
    // A read is safe to ask again elsewhere.
    assert_eq!(version(c.call(&GetHealth).await.unwrap()), leader.url());
}

#[tokio::test]
async fn the_event_stream_connects_to_the_leader() {
    let leader = Fake::start(Role::Leader).await;
    let standby = Fake::start(Role::Standby(Some(leader.url()))).await;
    let c = client(&[dead_url(), standby.url(), leader.url()]);
    let mut events = Box::pin(c.events(None).await.unwrap());
    let first = events.next().await.expect("an event").unwrap();
    assert_eq!(first.kind, EventKind::Resync { reason: leader.url() });
    let asked = &leader.seen()[0];
    assert_eq!((asked.path.as_str(), asked.authorization.is_some()), ("/api/events", true));
    assert_eq!(c.base(), leader.url());
    // A standby whose leader is not configured: the stream does not start.
    let elsewhere = Fake::start(Role::Leader).await;
    let stray = Fake::start(Role::Standby(Some(elsewhere.url()))).await;
    let err = client(&[stray.url()]).events(None).await.err().expect("no stream");
    assert!(matches!(err, ClientError::NoHub { .. }), "{err:?}");
    assert!(elsewhere.seen().is_empty());
}

#[test]
fn malformed_lists_are_refused_naming_the_entry() {
    for (list, says) in [("http://h1:4000,,http://h2:4000", "empty"), ("http://h1:4000,h2:4000", "\"h2:4000\"")] {
        let err = Client::new(list, None, None).unwrap_err().to_string();
        assert!(err.starts_with("malformed hub URL") && err.contains(says), "{list}: {err}");
    }
}
