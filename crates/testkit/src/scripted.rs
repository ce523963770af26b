//! What the scripted model APIs ([`crate::anthropic`], [`crate::openai`]) share: a loopback
//! server that reads each request into what its script sees, keeps it (up to a bound), and
//! answers with the script's turn: an error status with headers, or server-sent events.

use anyhow::Result;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// Requests kept at most: a CLI in a loop must not grow a test without end.
const KEPT: usize = 10_000;

/// The server and the requests it kept; stops when dropped.
pub(crate) struct Server<S> {
    seen: Arc<Mutex<Vec<S>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<S> Drop for Server<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: Clone + Send + 'static> Server<S> {
    /// Serves POST `path` on loopback; returns its base URL too. `read` makes a JSON request
    /// what the script sees, or gives the turn for a request the script is not asked about
    /// (nor kept); `answer` writes the turn.
    pub(crate) async fn start<T: Send + 'static>(
        path: &str,
        read: fn(&HeaderMap, &Value) -> Result<S, T>,
        script: impl Fn(&S) -> T + Send + Sync + 'static,
        answer: fn(T) -> Response,
    ) -> Result<(String, Server<S>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (script, kept) = (Arc::new(script), seen.clone());
        let handle = move |headers: HeaderMap, body: Bytes| {
            let (script, kept) = (script.clone(), kept.clone());
            async move {
                let Ok(req) = serde_json::from_slice::<Value>(&body) else {
                    return StatusCode::BAD_REQUEST.into_response();
                };
                let turn = match read(&headers, &req) {
                    Ok(s) => {
                        let turn = script(&s);
                        let mut kept = kept.lock().unwrap();
                        if kept.len() < KEPT {
                            kept.push(s);
                        }
                        turn
                    }
                    Err(turn) => turn,
                };
                answer(turn)
            }
        };
        let app = axum::Router::new().route(path, post(handle)).fallback(|| async { StatusCode::NOT_FOUND });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((url, Server { seen, task }))
    }

    /// Every request kept so far.
    pub(crate) fn requests(&self) -> Vec<S> {
        self.seen.lock().unwrap().clone()
    }
}

/// An HTTP error as the API sends it: `status` (500 if it is none), the JSON `body`, `headers`.
pub(crate) fn error(status: u16, body: Value, headers: Vec<(String, String)>) -> Response {
    let mut r =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (k.parse::<HeaderName>(), v.parse()) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

/// `events` as one `text/event-stream` body, each named by its `type`.
pub(crate) fn events(events: impl IntoIterator<Item = Value>) -> Response {
    let mut text = String::new();
    for e in events {
        text.push_str(&format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")));
    }
    ([("content-type", "text/event-stream")], Body::from(text)).into_response()
}

/// A random id part: each message and call its own, as the APIs give.
pub(crate) fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random");
    u64::from_le_bytes(b)
}
