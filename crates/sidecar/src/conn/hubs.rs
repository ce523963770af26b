//! Which configured hub to connect to next. Several hubs may share one database with one
//! leader; a standby closes an agent's socket with [`proto::CLOSE_NOT_LEADER`] and the
//! leader's URL as the reason. The sidecar follows that URL at once only if it is one of its
//! own `hub_url`s (the token goes to no hub the operator did not name); otherwise, and after
//! any failed attempt, it tries the next URL in order. After a full round of attempts that
//! came to nothing, it waits the usual backoff. No IO: unit-tested as a table.

use url::Url;

/// Where to connect next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    /// Index into the configured URLs.
    pub index: usize,
    /// Wait the reconnect backoff first (a round ended, or a connection was lost).
    pub wait: bool,
    /// A leader URL a standby named that is not configured, the first time it is named.
    pub unlisted: Option<String>,
}

/// Unlisted leader URLs remembered, so each is warned about once.
const MAX_WARNED: usize = 16;

#[derive(Debug)]
pub struct HubList {
    urls: Vec<Option<Url>>,
    current: usize,
    /// Attempts in this round that came to nothing.
    tried: usize,
    warned: Vec<String>,
}

impl HubList {
    /// Over the configured URLs (validated at load; at least one).
    pub fn new(urls: &[String]) -> HubList {
        HubList { urls: urls.iter().map(|u| Url::parse(u).ok()).collect(), current: 0, tried: 0, warned: Vec::new() }
    }

    pub fn current(&self) -> usize {
        self.current
    }

    /// The connection to the current hub ended: `identified` if it got that far, `not_leader`
    /// with the close reason if a standby closed it with [`proto::CLOSE_NOT_LEADER`].
    pub fn after(&mut self, identified: bool, not_leader: Option<&str>) -> Next {
        if identified {
            // It worked: a new round starts, at the hub it worked with.
            self.tried = 0;
        }
        match not_leader {
            None if identified => Next { index: self.current, wait: true, unlisted: None },
            None => self.step(self.next_in_order(), None),
            Some(reason) => {
                let reason = reason.trim();
                if reason.is_empty() {
                    return self.step(self.next_in_order(), None);
                }
                match self.index_of(reason) {
                    Some(leader) => self.step(leader, None),
                    None => {
                        let shown = crate::machine::clip(reason, 200);
                        let first = !self.warned.contains(&shown);
                        if first && self.warned.len() < MAX_WARNED {
                            self.warned.push(shown.clone());
                        }
                        self.step(self.next_in_order(), first.then_some(shown))
                    }
                }
            }
        }
    }

    fn next_in_order(&self) -> usize {
        (self.current + 1) % self.urls.len().max(1)
    }

    /// The configured hub `url` names (URLs compared parsed: scheme and host case, default
    /// ports), if any.
    fn index_of(&self, url: &str) -> Option<usize> {
        let named = Url::parse(url).ok()?;
        self.urls.iter().position(|u| u.as_ref() == Some(&named))
    }

    fn step(&mut self, to: usize, unlisted: Option<String>) -> Next {
        self.tried += 1;
        self.current = to;
        let wait = self.tried >= self.urls.len();
        if wait {
            self.tried = 0;
        }
        Next { index: to, wait, unlisted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: usize) -> HubList {
        HubList::new(&(0..n).map(|i| format!("ws://hub{i}.lan:4000/ws")).collect::<Vec<_>>())
    }

    fn next(index: usize, wait: bool) -> Next {
        Next { index, wait, unlisted: None }
    }

    #[test]
    fn one_hub_behaves_as_before_every_end_waits() {
        let mut h = list(1);
        assert_eq!(h.after(false, None), next(0, true));
        assert_eq!(h.after(true, None), next(0, true));
        assert_eq!(h.after(false, Some("")), next(0, true));
        assert_eq!(h.after(false, Some("ws://hub0.lan:4000/ws")), next(0, true));
    }

    #[test]
    fn failures_go_round_the_list_and_wait_after_a_full_round() {
        let mut h = list(3);
        assert_eq!(h.after(false, None), next(1, false));
        assert_eq!(h.after(false, None), next(2, false));
        assert_eq!(h.after(false, None), next(0, true), "a full round: back off");
        assert_eq!(h.after(false, None), next(1, false));
        // A connection that worked and was lost: the same hub again, after the backoff.
        assert_eq!(h.after(true, None), next(1, true));
        assert_eq!(h.after(false, None), next(2, false), "a new round");
    }

    #[test]
    fn a_standby_naming_a_configured_leader_is_followed_at_once() {
        let mut h = list(3);
        assert_eq!(h.after(false, Some("ws://hub2.lan:4000/ws")), next(2, false));
        // Written differently, the same URL: host case and the default port do not matter.
        let mut h = HubList::new(&["ws://a.lan/ws".into(), "wss://B.lan:443/ws".into()]);
        assert_eq!(h.after(false, Some("wss://b.LAN/ws")), next(1, false));
        // An empty reason (no leader known yet): the next in order.
        let mut h = list(3);
        assert_eq!(h.after(false, Some("  ")), next(1, false));
        // A deposed leader closes an identified socket naming the new one: followed at once.
        let mut h = list(2);
        assert_eq!(h.after(true, Some("ws://hub1.lan:4000/ws")), next(1, false));
    }

    #[test]
    fn an_unlisted_leader_is_never_followed_and_named_once() {
        let mut h = list(2);
        let n = h.after(false, Some("ws://evil.example:4000/ws"));
        assert_eq!((n.index, n.wait, n.unlisted.as_deref()), (1, false, Some("ws://evil.example:4000/ws")));
        let n = h.after(false, Some("ws://evil.example:4000/ws"));
        assert_eq!(n, next(0, true), "warned once; a full round ends");
        assert_eq!(h.after(false, Some("not a url at all")).unlisted.as_deref(), Some("not a url at all"));
        // Same host, other port or path: not the configured hub.
        assert!(h.after(false, Some("ws://hub1.lan:4001/ws")).unlisted.is_some());
        assert!(h.after(false, Some("wss://hub1.lan:4000/ws")).unlisted.is_some());
    }

    #[test]
    fn standbys_naming_each_other_cannot_loop_without_backoff() {
        let mut h = list(2);
        let mut waits = 0;
        for i in 0..100 {
            let other = format!("ws://hub{}.lan:4000/ws", (i + 1) % 2);
            if h.after(false, Some(&other)).wait {
                waits += 1;
            }
        }
        assert_eq!(waits, 50, "one backoff per round of two attempts");
    }
}
