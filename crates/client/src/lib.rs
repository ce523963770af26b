//! Typed HTTP client for the hub API (the CLI, the demo, the guard and the tests use it), and
//! plain-text tables for people.

mod hubs;

pub use hubs::{parse_hub_urls, Attempt, Skipped, MAX_HUBS};

use hubs::{Answer, Hubs};
use proto::api::{ApiError, Endpoint, Method};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_URL: &str = "http://127.0.0.1:4000";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "malformed hub URL {url:?}: {why}; expected http://HOST:PORT or https://HOST:PORT (for example {DEFAULT_URL})"
    )]
    BadUrl { url: String, why: String },
    #[error("cannot reach the hub at {url}: {message}")]
    Connect { url: String, message: String },
    /// No hub of the list served the request (each unreachable or a standby).
    #[error("no hub served the request: {}", hubs::describe(.attempts))]
    NoHub { attempts: Vec<Attempt> },
    /// The hub answered with an error body.
    #[error("{error}")]
    Api { status: u16, error: ApiError },
    #[error("unexpected answer from the hub (HTTP {status}): {body}")]
    Decode { status: u16, body: String },
    #[error("CA file {0}")]
    CaFile(String),
}

impl ClientError {
    /// The hub's error code, when the hub answered with one.
    pub fn code(&self) -> Option<proto::api::ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.error),
            _ => None,
        }
    }
}

/// Longest line of the event stream accepted (the hub's events are a few KiB at most).
const MAX_EVENT_LINE: usize = 4 << 20;

/// Longest answer read from a hub: a page of 1,000 tasks at their size limits fits.
const MAX_RESPONSE: usize = 256 * 1024 * 1024;

/// How long a connection to one hub may take before the next hub of the list is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one hub, or of several sharing PostgreSQL: requests go to the hub that served
/// last, and move on (or to the leader a standby names) when it does not serve. Clones share
/// which hub that is.
#[derive(Debug, Clone)]
pub struct Client {
    hubs: Arc<Hubs>,
    token: Option<String>,
    http: reqwest::Client,
}

/// The answer of the hub at `url`: still to be read, or read already (a 503 read to see whether
/// it came from a standby).
struct Reply {
    url: String,
    body: Body,
}

enum Body {
    Live(reqwest::Response),
    Read(u16, Vec<u8>),
}

/// Checks that `url` is an http(s) base URL with a host, and returns it without a trailing `/`.
pub fn parse_base_url(url: &str) -> Result<String, ClientError> {
    let bad = |why: &str| ClientError::BadUrl { url: url.into(), why: why.into() };
    let parsed = url::Url::parse(url).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => bad("it has no scheme (http:// or https://)"),
        other => bad(&other.to_string()),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad(&format!("the scheme is {:?}", parsed.scheme())));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("there is no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a base URL has no query or fragment"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

impl Client {
    /// A client of the hub at `base` (`http://` or `https://`), or of the hubs of a
    /// comma-separated list of such URLs (see [`parse_hub_urls`]). `https://` trusts Mozilla's
    /// roots and the PEM certificates in `ca_file` (a private CA, or a self-signed hub): the
    /// same [`osutil::tls::client_config`] as every other outgoing connection.
    pub fn new(base: &str, token: Option<String>, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let tls = osutil::tls::client_config(ca_file).map_err(ClientError::CaFile)?;
        Client::with_tls(base, token, rustls::ClientConfig::clone(&tls))
    }

    /// Like [`Client::new`], with a TLS configuration made already (a sidecar's).
    pub fn with_tls(base: &str, token: Option<String>, tls: rustls::ClientConfig) -> Result<Self, ClientError> {
        let urls = parse_hub_urls(base)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(CONNECT_TIMEOUT)
            // Never followed by reqwest: a redirect would carry the token to a hub the user did
            // not name (or drop it). A standby's redirect is handled in `route`.
            .redirect(reqwest::redirect::Policy::none())
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| ClientError::Connect { url: base.to_string(), message: root_cause(&e) })?;
        Ok(Client { hubs: Arc::new(Hubs::new(urls)), token, http })
    }

    /// The hub requests go to first: the one that served last.
    pub fn base(&self) -> &str {
        &self.hubs.urls[self.hubs.current()]
    }

    /// Every configured hub, in the given order.
    pub fn urls(&self) -> &[String] {
        &self.hubs.urls
    }

    /// Sends the request `make` builds for a hub's base URL to the hubs in turn, from the one
    /// that served last, until one that is not a standby answers; a named leader is tried next
    /// when it is configured. A change moves on only when it surely was not carried out (no
    /// connection, or a standby's refusal), so nothing is done twice; a read (`idempotent`)
    /// also moves on when a hub fails it half way.
    async fn route(
        &self,
        idempotent: bool,
        make: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Reply, ClientError> {
        let count = self.hubs.urls.len();
        let first = self.hubs.current();
        let mut queue: std::collections::VecDeque<usize> = (0..count).map(|k| (first + k) % count).collect();
        let mut tried = vec![false; count];
        let mut attempts = Vec::new();
        while let Some(i) = queue.pop_front() {
            if std::mem::replace(&mut tried[i], true) {
                continue;
            }
            let url = &self.hubs.urls[i];
            let mut req = make(url);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let skipped = match req.send().await {
                Err(e) if e.is_connect() || idempotent => Skipped::Unreachable(root_cause(&e)),
                Err(e) => return Err(ClientError::Connect { url: url.clone(), message: root_cause(&e) }),
                Ok(resp) => match self.hubs.classify(resp).await {
                    Answer::Served(resp) => {
                        self.hubs.served(i);
                        return Ok(Reply { url: url.clone(), body: Body::Live(resp) });
                    }
                    Answer::Read(status, body) => {
                        self.hubs.served(i);
                        return Ok(Reply { url: url.clone(), body: Body::Read(status, body) });
                    }
                    Answer::Standby { listed: Some(j), leader } => {
                        queue.push_front(j);
                        Skipped::Named(leader.unwrap_or_else(|| self.hubs.urls[j].clone()))
                    }
                    Answer::Standby { listed: None, leader: Some(leader) } => Skipped::UnlistedLeader(leader),
                    Answer::Standby { listed: None, leader: None } => Skipped::NoLeaderKnown,
                },
            };
            attempts.push(Attempt { url: url.clone(), skipped });
        }
        Err(match attempts.as_slice() {
            // One hub that cannot be reached says so as it always did.
            [Attempt { url, skipped: Skipped::Unreachable(message) }] => {
                ClientError::Connect { url: url.clone(), message: message.clone() }
            }
            _ => ClientError::NoHub { attempts },
        })
    }

    /// Sends one typed request and decodes its typed response (or the hub's error body).
    pub async fn call<E: Endpoint>(&self, req: &E) -> Result<E::Response, ClientError> {
        let method = match E::METHOD {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        };
        let (status, bytes) = self.send(method, &req.path(), req.body()).await?;
        decode(status, &bytes)
    }

    /// Follows `GET /api/events` from after `last_event_id` (or from now), until the hub closes
    /// the stream. Each item is one event; a stream that ends can be resumed with the last id.
    pub async fn events(
        &self,
        last_event_id: Option<String>,
    ) -> Result<impl futures_util::Stream<Item = Result<proto::api::Event, ClientError>>, ClientError> {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let path = proto::api::FollowEvents { last_event_id }.path();
        let reply = self
            .route(true, |base| self.http.get(format!("{base}{path}")).timeout(Duration::from_secs(365 * 86_400)))
            .await?;
        let base = reply.url;
        let connect = |e: &reqwest::Error| ClientError::Connect { url: base.clone(), message: root_cause(e) };
        let resp = match reply.body {
            Body::Live(resp) if resp.status().as_u16() < 400 => resp,
            Body::Live(resp) => {
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.map_err(|e| connect(&e))?;
                return Err(error_of(status, &bytes));
            }
            Body::Read(status, bytes) => return Err(error_of(status, &bytes)),
        };
        // No line may grow without end: the hub's events are small, anything else is refused.
        let mut since_newline = 0usize;
        let bytes = resp.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(|e| std::io::Error::other(root_cause(&e)))?;
            match chunk.iter().rposition(|b| *b == b'\n') {
                Some(i) => since_newline = chunk.len() - i - 1,
                None => since_newline += chunk.len(),
            }
            if since_newline > MAX_EVENT_LINE {
                return Err(std::io::Error::other(format!("an event line longer than {MAX_EVENT_LINE} bytes")));
            }
            Ok(chunk)
        });
        let events = bytes.eventsource().map(move |e| match e {
            Ok(e) => serde_json::from_str::<proto::api::Event>(&e.data)
                .map_err(|err| ClientError::Decode { status: 200, body: format!("{err}: {}", e.data) }),
            Err(err) => Err(ClientError::Connect { url: base.clone(), message: err.to_string() }),
        });
        Ok(events)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let (status, bytes) = self.send(reqwest::Method::GET, "/metrics", None).await?;
        if status >= 400 {
            return Err(error_of(status, &bytes));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let reply = self
            .route(method == reqwest::Method::GET, |base| {
                let req = self.http.request(method.clone(), format!("{base}{path}"));
                match &body {
                    Some(b) => req.json(b),
                    None => req,
                }
            })
            .await?;
        let mut resp = match reply.body {
            Body::Live(resp) => resp,
            Body::Read(status, bytes) => return Ok((status, bytes)),
        };
        let connect = |e: &reqwest::Error| ClientError::Connect { url: reply.url.clone(), message: root_cause(e) };
        let status = resp.status().as_u16();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| connect(&e))? {
            if bytes.len() + chunk.len() > MAX_RESPONSE {
                return Err(ClientError::Decode { status, body: format!("answer larger than {MAX_RESPONSE} bytes") });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, bytes))
    }
}

/// The error an answer of status 400 or more stands for.
fn error_of(status: u16, bytes: &[u8]) -> ClientError {
    decode::<()>(status, bytes).err().unwrap_or(ClientError::Decode { status, body: String::new() })
}

fn decode<T: serde::de::DeserializeOwned>(status: u16, bytes: &[u8]) -> Result<T, ClientError> {
    let shown = || String::from_utf8_lossy(&bytes[..bytes.len().min(2000)]).into_owned();
    if status >= 400 {
        return match serde_json::from_slice::<ApiError>(bytes) {
            Ok(error) => Err(ClientError::Api { status, error }),
            Err(_) => Err(ClientError::Decode { status, body: shown() }),
        };
    }
    serde_json::from_slice(bytes).map_err(|e| ClientError::Decode { status, body: format!("{e}: {}", shown()) })
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    if text.contains("invalid peer certificate") {
        format!("{text} (to trust the hub's own CA, pass --ca-file or set AGENTCOM_CA_FILE)")
    } else {
        text
    }
}

/// A left-aligned text table; cells are truncated to `max` characters.
pub use human::{age, printable, table, unsafe_for_terminal};

/// An epoch-milliseconds timestamp as ISO 8601 (UTC, milliseconds) with its age.
pub fn when(ms: Option<u64>, now_ms: u64) -> String {
    let Some(t) = ms else { return "-".into() };
    let at = std::time::UNIX_EPOCH + Duration::from_millis(t);
    format!("{} ({})", humantime::format_rfc3339_millis(at), age(Some(t), now_ms))
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

pub fn now_ms() -> u64 {
    osutil::clock::epoch_ms()
}

/// Where a client looks for a local hub's admin token when none is given, in this order: the
/// data dir named by `--data-dir` or `AGENTCOM_DATA_DIR` alone, when one is; else the hub's
/// default data dir under the current folder (`./agentcom-data/hub`, where `agentcom hub` run
/// here keeps it), then the user's (`~/.agentcom/hub`), found wherever the command runs.
pub fn admin_token_paths(data_dir: Option<&Path>, home: Option<&Path>) -> Vec<PathBuf> {
    const FILE: &str = "admin.token";
    if let Some(dir) = data_dir {
        return vec![dir.join(FILE)];
    }
    let mut paths = vec![Path::new("./agentcom-data/hub").join(FILE)];
    paths.extend(home.map(|h| h.join(".agentcom/hub").join(FILE)));
    paths
}

/// The first admin token found in [`admin_token_paths`] (with `$HOME`), with its file; or
/// every path looked at.
pub fn find_admin_token(data_dir: Option<&Path>) -> Result<(String, PathBuf), Vec<PathBuf>> {
    let home = std::env::var_os("HOME").map(PathBuf::from).filter(|h| h.is_absolute());
    let paths = admin_token_paths(data_dir, home.as_deref());
    for path in &paths {
        if let Ok(t) = std::fs::read_to_string(path) {
            if !t.trim().is_empty() {
                return Ok((t.trim().to_string(), path.clone()));
            }
        }
    }
    Err(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_truncate() {
        let t = table(&["A", "B"], &[vec!["x".into(), "a very long cell".into()]], 6);
        assert_eq!(t, "A  B\nx  a ver…\n");
    }

    #[test]
    fn times_read_as_people_read_them() {
        assert_eq!(age(Some(1000), 61_000), "1m ago");
        assert_eq!(age(None, 5), "-");
        assert_eq!(when(Some(1_700_000_000_123), 1_700_000_060_123), "2023-11-14T22:13:20.123Z (1m ago)");
    }

    #[test]
    fn the_admin_token_is_looked_for_here_then_in_the_users_home_unless_a_data_dir_is_named() {
        let home = Path::new("/home/u");
        let shown = |v: Vec<PathBuf>| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
        assert_eq!(
            shown(admin_token_paths(None, Some(home))),
            ["./agentcom-data/hub/admin.token", "/home/u/.agentcom/hub/admin.token"]
        );
        assert_eq!(shown(admin_token_paths(Some(Path::new("/srv/hub")), Some(home))), ["/srv/hub/admin.token"]);
        assert_eq!(shown(admin_token_paths(None, None)), ["./agentcom-data/hub/admin.token"]);
    }

    #[test]
    fn base_urls_are_checked_once() {
        assert_eq!(parse_base_url("http://127.0.0.1:4000/").unwrap(), "http://127.0.0.1:4000");
        for bad in ["127.0.0.1:4000", "ws://h:1", "http://", "nonsense", "http://h:1/?q"] {
            let e = parse_base_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("malformed hub URL") && e.contains("http://HOST:PORT"), "{bad}: {e}");
        }
    }
}

pub mod render;
