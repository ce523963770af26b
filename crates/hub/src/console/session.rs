//! Dashboard sessions: an opaque random id in a cookie names a token held in memory. Bounded in
//! all and per token (a token at its limit, or one logging in to a full table, ends its own
//! oldest session first, so logging in again and again with one token never logs anyone else
//! out), each with an expiry; time is a number passed in,
//! so expiry and eviction are unit-tested without sleeping. Ids are kept only as SHA-256 hashes,
//! so a lookup's timing says nothing about a real id.

use axum::http::{header, HeaderMap};
use std::collections::{BTreeMap, HashMap};

/// The cookie's name over plain HTTP.
pub const COOKIE: &str = "agentcom_session";
/// Under TLS: the `__Host-` prefix makes the browser refuse it unless Secure, Path=/ and no Domain.
pub const COOKIE_TLS: &str = "__Host-agentcom_session";
/// Random bytes in a session id (hex in the cookie).
const ID_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The token the person logged in with; re-checked with the core on every request.
    pub token: String,
    /// Epoch ms after which the session is over.
    pub expires_at: u64,
    seq: u64,
}

#[derive(Debug)]
pub struct Sessions {
    by_hash: HashMap<String, Session>,
    /// Creation order (so also expiry order: every session lives `ttl_ms`).
    order: BTreeMap<u64, String>,
    /// Each token's sessions, oldest first.
    by_token: HashMap<String, std::collections::BTreeSet<u64>>,
    next_seq: u64,
    cap: usize,
    per_token: usize,
    ttl_ms: u64,
}

fn hash(id: &str) -> String {
    crate::auth::hash_token(id)
}

impl Sessions {
    pub fn new(cap: usize, per_token: usize, ttl_ms: u64) -> Sessions {
        Sessions {
            by_hash: HashMap::new(),
            order: BTreeMap::new(),
            by_token: HashMap::new(),
            next_seq: 0,
            cap: cap.max(1),
            per_token: per_token.max(1),
            ttl_ms,
        }
    }

    /// A new random session id (what the cookie carries).
    pub fn new_id() -> String {
        crate::auth::random_hex(ID_BYTES)
    }

    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Starts a session for `token` under `id`; ends expired sessions, then the token's own
    /// oldest while it is at its limit (or the table is full), then the oldest of all while the
    /// table is still full. Returns when it expires.
    pub fn create(&mut self, id: &str, token: String, now: u64) -> u64 {
        self.prune(now);
        loop {
            let own = self.by_token.get(&token).map_or(0, |s| s.len());
            if own == 0 || (own < self.per_token && self.by_hash.len() < self.cap) {
                break;
            }
            let oldest = *self.by_token[&token].first().expect("non-empty");
            let h = self.order[&oldest].clone();
            self.remove_hash(&h);
        }
        while self.by_hash.len() >= self.cap {
            let Some((_, oldest)) = self.order.first_key_value() else { break };
            let h = oldest.clone();
            self.remove_hash(&h);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let expires_at = now.saturating_add(self.ttl_ms);
        let h = hash(id);
        self.order.insert(seq, h.clone());
        self.by_token.entry(token.clone()).or_default().insert(seq);
        self.by_hash.insert(h, Session { token, expires_at, seq });
        expires_at
    }

    /// The live session under `id`; an expired one is ended and not returned.
    pub fn get(&mut self, id: &str, now: u64) -> Option<Session> {
        let h = hash(id);
        let s = self.by_hash.get(&h)?;
        if now >= s.expires_at {
            self.remove_hash(&h);
            return None;
        }
        Some(s.clone())
    }

    pub fn remove(&mut self, id: &str) {
        self.remove_hash(&hash(id));
    }

    /// Ends every session logged in with `token` (it no longer authenticates).
    pub fn remove_token(&mut self, token: &str) {
        let gone: Vec<String> = self.by_hash.iter().filter(|(_, s)| s.token == token).map(|(h, _)| h.clone()).collect();
        for h in gone {
            self.remove_hash(&h);
        }
    }

    fn remove_hash(&mut self, h: &str) {
        if let Some(s) = self.by_hash.remove(h) {
            self.order.remove(&s.seq);
            if let Some(own) = self.by_token.get_mut(&s.token) {
                own.remove(&s.seq);
                if own.is_empty() {
                    self.by_token.remove(&s.token);
                }
            }
        }
    }

    /// Ends the sessions that expired (the oldest first: they expire in creation order).
    fn prune(&mut self, now: u64) {
        while let Some((_, h)) = self.order.first_key_value() {
            match self.by_hash.get(h) {
                Some(s) if now < s.expires_at => break,
                _ => {
                    let h = h.clone();
                    self.order.pop_first();
                    self.remove_hash(&h);
                }
            }
        }
    }
}

/// The session id in the request's cookies, if it has the shape of one.
pub fn cookie_id(headers: &HeaderMap, name: &str) -> Option<String> {
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else { continue };
            if k == name && v.len() == ID_BYTES * 2 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(v.to_string());
            }
        }
    }
    None
}

/// `Set-Cookie` for a new session: script-proof, same-site only, for the whole hub.
pub fn set_cookie(name: &str, id: &str, max_age_s: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}")
}

/// `Set-Cookie` that makes the browser forget the session.
pub fn clear_cookie(name: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_the_oldest_make_room() {
        let mut s = Sessions::new(2, 2, 1000);
        assert_eq!(s.create("a", "ta".into(), 0), 1000);
        s.create("b", "tb".into(), 10);
        assert_eq!(s.get("a", 999).map(|x| x.token), Some("ta".into()));
        assert_eq!(s.get("a", 1000), None, "expired at its expiry");
        assert_eq!(s.len(), 1);
        s.create("c", "tc".into(), 20);
        s.create("d", "td".into(), 30);
        assert_eq!((s.get("b", 40), s.len()), (None, 2), "the oldest was ended to make room");
        assert!(s.get("c", 40).is_some() && s.get("d", 40).is_some());
        s.remove("c");
        assert_eq!(s.get("c", 40), None);
        s.create("e", "td".into(), 50);
        s.remove_token("td");
        assert!(s.is_empty());
    }

    /// Red team (issue 17): 1,000 logins with one read-only agent token used to evict the admin's
    /// session in about a second.
    #[test]
    fn logging_in_again_and_again_ends_only_the_same_tokens_sessions() {
        let mut s = Sessions::new(1000, 8, 1_000_000);
        s.create("admin", "admin-token".into(), 0);
        for i in 0..5000 {
            s.create(&format!("x{i}"), "agent-token".into(), 1 + i);
        }
        assert!(s.get("admin", 10_000).is_some(), "the admin is still logged in");
        assert_eq!(s.len(), 9, "the agent token keeps its newest 8");
        assert!(s.get("x4999", 10_000).is_some() && s.get("x4991", 10_000).is_none());
        // A full table: a newcomer ends the oldest of all; a token already in it ends its own.
        let mut s = Sessions::new(3, 8, 1_000_000);
        s.create("a", "ta".into(), 0);
        s.create("b1", "tb".into(), 1);
        s.create("b2", "tb".into(), 2);
        s.create("b3", "tb".into(), 3);
        assert!(s.get("a", 4).is_some() && s.get("b1", 4).is_none(), "tb ended its own oldest");
        s.create("c", "tc".into(), 5);
        assert!(s.get("a", 6).is_none(), "a newcomer to a full table ends the oldest of all");
        assert_eq!(s.by_token.values().map(|v| v.len()).sum::<usize>(), s.len());
    }

    #[test]
    fn expired_sessions_leave_when_a_new_one_comes() {
        let mut s = Sessions::new(100, 100, 10);
        for i in 0..50 {
            s.create(&format!("s{i}"), "t".into(), i);
        }
        s.create("late", "t".into(), 1000);
        assert_eq!(s.len(), 1);
        assert_eq!(s.order.len(), 1);
    }

    #[test]
    fn only_well_formed_ids_are_read_from_cookies() {
        let id = Sessions::new_id();
        assert_eq!(id.len(), 64);
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, format!("other=1; {COOKIE}={id}; x=y").parse().unwrap());
        assert_eq!(cookie_id(&h, COOKIE), Some(id.clone()));
        assert_eq!(cookie_id(&h, COOKIE_TLS), None);
        let mut bad = HeaderMap::new();
        bad.append(header::COOKIE, format!("{COOKIE}=../../etc; {COOKIE}={}", "z".repeat(64)).parse().unwrap());
        assert_eq!(cookie_id(&bad, COOKIE), None);
        let c = set_cookie(COOKIE_TLS, &id, 60, true);
        for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=60", "Secure"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!set_cookie(COOKIE, &id, 60, false).contains("Secure"));
        assert!(clear_cookie(COOKIE, false).contains("Max-Age=0"));
    }
}
