//! Several hubs behind one client (hubs sharing PostgreSQL, one leading): the list of URLs, the
//! one that served last, and what a standby's answer means for the next try.
//!
//! A standby answers `307 Temporary Redirect` with `{"error": "not_leader", "leader": URL}`
//! (or 503 `not_leader` while it knows no leader). The client follows a named leader only when
//! that URL is one the user configured: the request carries a token, and a token goes to no hub
//! the user did not name. reqwest's own redirects are off for the same reason.

use crate::{parse_base_url, ClientError};
use proto::api::{ApiError, ErrorCode};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most hubs one list may name.
pub const MAX_HUBS: usize = 16;

/// Longest standby answer read (its body is a small JSON error).
const MAX_STANDBY_BODY: usize = 64 * 1024;

/// Longest part of a hub's own words (a leader URL, a redirect) repeated in an error.
const MAX_SHOWN: usize = 200;

/// Checks a comma-separated list of hub base URLs (`http://h1:4000,http://h2:4000`); returns
/// each without its trailing `/`, duplicates dropped, in the given order.
pub fn parse_hub_urls(list: &str) -> Result<Vec<String>, ClientError> {
    let mut urls: Vec<String> = Vec::new();
    for entry in list.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(ClientError::BadUrl {
                url: list.into(),
                why: "an entry of the comma-separated list is empty".into(),
            });
        }
        let url = parse_base_url(entry)?;
        if !urls.iter().any(|u| same_hub(u, &url)) {
            urls.push(url);
        }
    }
    if urls.len() > MAX_HUBS {
        return Err(ClientError::BadUrl { url: list.into(), why: format!("it names more than {MAX_HUBS} hubs") });
    }
    Ok(urls)
}

/// Whether two base URLs name the same hub (scheme, host and port compared as URLs are:
/// `HTTP://H:80/` is `http://h`).
fn same_hub(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
                && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
        }
        _ => false,
    }
}

/// The configured hubs and the one to try first.
#[derive(Debug)]
pub(crate) struct Hubs {
    pub(crate) urls: Vec<String>,
    current: AtomicUsize,
}

impl Hubs {
    pub(crate) fn new(urls: Vec<String>) -> Hubs {
        Hubs { urls, current: AtomicUsize::new(0) }
    }

    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.urls.len()
    }

    /// Remembers the hub that served, so the next request goes there first.
    pub(crate) fn served(&self, index: usize) {
        self.current.store(index, Ordering::Relaxed);
    }

    /// Which configured hub a leader named by a standby is, if any.
    pub(crate) fn index_of(&self, leader: &str) -> Option<usize> {
        self.urls.iter().position(|u| same_hub(u, leader))
    }

    /// The configured hub a redirect's `Location` points into (its base URL is a prefix).
    fn index_of_location(&self, location: &str) -> Option<usize> {
        let target = url::Url::parse(location).ok()?;
        self.urls.iter().position(|u| {
            let Ok(base) = url::Url::parse(u) else { return false };
            base.scheme() == target.scheme()
                && base.host_str() == target.host_str()
                && base.port_or_known_default() == target.port_or_known_default()
                && target.path().starts_with(base.path().trim_end_matches('/'))
        })
    }
}

/// What one hub's answer means for routing.
pub(crate) enum Answer {
    /// Not a standby: this is the answer to the request (any status).
    Served(reqwest::Response),
    /// A standby's 503 that was not `not_leader` after all: an answer, already read.
    Read(u16, Vec<u8>),
    /// A standby, pointing at a configured hub (by index) or at `leader` (not configured,
    /// or none known).
    Standby { listed: Option<usize>, leader: Option<String> },
}

impl Hubs {
    /// Reads a standby's answer; any other answer is passed through unread.
    pub(crate) async fn classify(&self, resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        if status != 307 && status != 503 {
            return Answer::Served(resp);
        }
        let location = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = read_capped(resp, MAX_STANDBY_BODY).await;
        let error = serde_json::from_slice::<ApiError>(&body).ok().filter(|e| e.error == ErrorCode::NotLeader);
        match (status, error) {
            (_, Some(e)) => match e.leader {
                Some(leader) => Answer::Standby { listed: self.index_of(&leader), leader: Some(leader) },
                None => self.redirect(location.as_deref()),
            },
            (307, None) => self.redirect(location.as_deref()),
            (_, None) => Answer::Read(status, body),
        }
    }

    fn redirect(&self, location: Option<&str>) -> Answer {
        match location {
            Some(l) => Answer::Standby { listed: self.index_of_location(l), leader: Some(l.to_string()) },
            None => Answer::Standby { listed: None, leader: None },
        }
    }
}

/// Up to `limit` bytes of a body (a standby's answer is small; more is not read).
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]);
        if body.len() >= limit {
            break;
        }
    }
    body
}

/// Why one hub did not serve a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Skipped {
    /// No connection (refused, timed out, TLS refused): the request was never sent.
    Unreachable(String),
    /// A standby that knows no leader yet (a takeover is under way).
    NoLeaderKnown,
    /// A standby naming a configured hub, tried in this round as well.
    Named(String),
    /// A standby naming a leader that is not configured: nothing was sent there.
    UnlistedLeader(String),
}

/// One hub tried in a round, and why it did not serve.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub url: String,
    pub skipped: Skipped,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.url)?;
        match &self.skipped {
            Skipped::Unreachable(why) => write!(f, "unreachable ({why})"),
            Skipped::NoLeaderKnown => f.write_str("a standby that knows no leader yet"),
            Skipped::Named(leader) => write!(f, "a standby naming the leader {}", shown(leader)),
            Skipped::UnlistedLeader(leader) => write!(
                f,
                "a standby naming the leader {}, which is not one of the configured hub URLs, so \
                 the request (and its token) was not sent there; add it to AGENTCOM_URL or --url",
                shown(leader)
            ),
        }
    }
}

/// A hub's own words in our error: cut short, control characters escaped.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(MAX_SHOWN).collect();
    let mut out: String = cut.chars().flat_map(char::escape_debug).collect();
    if s.chars().count() > MAX_SHOWN {
        out.push('…');
    }
    out
}

/// The attempts of a failed round, for [`ClientError::NoHub`]'s message.
pub(crate) fn describe(attempts: &[Attempt]) -> String {
    attempts.iter().map(Attempt::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_checked_entry_by_entry() {
        assert_eq!(
            parse_hub_urls("http://h1:4000, https://h2:4000/ ,http://H1:4000/").unwrap(),
            ["http://h1:4000", "https://h2:4000"]
        );
        for (bad, says) in [
            ("http://h1:4000,,http://h2:4000", "empty"),
            ("http://h1:4000,", "empty"),
            ("http://h1:4000,h2:4000", "\"h2:4000\""),
            ("http://h1:4000,ws://h2:1", "scheme"),
        ] {
            let e = parse_hub_urls(bad).unwrap_err().to_string();
            assert!(e.starts_with("malformed hub URL") && e.contains(says), "{bad}: {e}");
        }
        let many: Vec<String> = (0..=MAX_HUBS).map(|i| format!("http://h{i}:1")).collect();
        assert!(parse_hub_urls(&many.join(",")).unwrap_err().to_string().contains("more than 16 hubs"));
    }

    #[test]
    fn a_leader_is_matched_as_a_url_not_as_text() {
        let hubs = Hubs::new(parse_hub_urls("http://h1:4000,http://h2/agentcom").unwrap());
        assert_eq!(hubs.index_of("http://H1:4000/"), Some(0));
        assert_eq!(hubs.index_of("http://h2:80/agentcom"), Some(1));
        assert_eq!(hubs.index_of("https://h1:4000"), None, "another scheme is another hub");
        assert_eq!(hubs.index_of("http://h1:4001"), None);
        assert_eq!(hubs.index_of("not a url"), None);
        assert_eq!(hubs.index_of_location("http://h2/agentcom/api/tasks?limit=2"), Some(1));
        assert_eq!(hubs.index_of_location("http://h3:4000/api/tasks"), None);
    }

    #[test]
    fn a_hubs_words_are_cut_and_escaped_in_errors() {
        let a = Attempt {
            url: "http://h1".into(),
            skipped: Skipped::UnlistedLeader(format!("x\u{1b}[2J{}", "y".repeat(500))),
        };
        let text = a.to_string();
        assert!(text.contains("x\\u{1b}[2J") && !text.contains('\u{1b}'), "{text}");
        assert!(text.len() < 600 && text.contains('…'), "{text}");
    }
}
