//! Which configured hub to connect to next. Several hubs may share one database with one
//! leader; a standby closes an agent's socket with [`proto::CLOSE_NOT_LEADER`] and the
//! leader's URL as the reason. The sidecar follows that URL at once only if it is one of its
//! own `hub_url`s (the token goes to no hub the operator did not name); otherwise, and after
//! any failed attempt, it tries the next URL in order. After a full round of attempts that
//! came to nothing, it waits the usual backoff; but a round in which a standby answered shows
//! the hubs alive and a leader being elected, so the wait then stays short (it does not grow)
//! and a new leader is found within about one `reconnect_base`. No IO: unit-tested as a table.

use url::Url;

/// Where to connect next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    /// Index into the configured URLs.
    pub index: usize,
    /// Wait the reconnect backoff first (a round ended, or a connection was lost).
    pub wait: bool,
    /// A standby answered in the round that ended: the wait is short and does not grow.
    pub standby_answered: bool,
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
    /// A standby closed with 4001 in this round.
    answered: bool,
    warned: Vec<String>,
}

impl HubList {
    /// Over the configured URLs (validated at load; at least one).
    pub fn new(urls: &[String]) -> HubList {
        let urls = urls.iter().map(|u| Url::parse(u).ok()).collect();
        HubList { urls, current: 0, tried: 0, answered: false, warned: Vec::new() }
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
            self.answered = false;
        }
        self.answered |= not_leader.is_some();
        match not_leader {
            None if identified => Next { index: self.current, wait: true, standby_answered: false, unlisted: None },
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
        let standby_answered = wait && self.answered;
        if wait {
            self.tried = 0;
            self.answered = false;
        }
        Next { index: to, wait, standby_answered, unlisted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: usize) -> HubList {
        HubList::new(&(0..n).map(|i| format!("ws://hub{i}.lan:4000/ws")).collect::<Vec<_>>())
    }

    fn next(index: usize, wait: bool) -> Next {
        Next { index, wait, standby_answered: false, unlisted: None }
    }

    fn after_standby(index: usize) -> Next {
        Next { index, wait: true, standby_answered: true, unlisted: None }
    }

    #[test]
    fn one_hub_behaves_as_before_every_end_waits() {
        let mut h = list(1);
        assert_eq!(h.after(false, None), next(0, true));
        assert_eq!(h.after(true, None), next(0, true));
        assert_eq!(h.after(false, Some("")), after_standby(0));
        assert_eq!(h.after(false, Some("ws://hub0.lan:4000/ws")), after_standby(0));
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
        assert_eq!(n, after_standby(0), "warned once; a full round ends");
        assert_eq!(h.after(false, Some("not a url at all")).unlisted.as_deref(), Some("not a url at all"));
        // Same host, other port or path: not the configured hub.
        assert!(h.after(false, Some("ws://hub1.lan:4001/ws")).unlisted.is_some());
        assert!(h.after(false, Some("wss://hub1.lan:4000/ws")).unlisted.is_some());
    }

    #[test]
    fn a_round_a_standby_answered_in_waits_short_one_of_dead_hubs_backs_off() {
        let mut h = list(2);
        // The leader is dead, the standby has no leader yet: an election.
        assert_eq!(h.after(false, None), next(1, false));
        assert_eq!(h.after(false, Some("")), after_standby(0));
        // Both dead: the usual backoff.
        assert_eq!(h.after(false, None), next(1, false));
        assert_eq!(h.after(false, None), next(0, true));
        // A standby answers in the first attempt of a round that then fails: still short.
        assert_eq!(h.after(false, Some("")), next(1, false));
        assert_eq!(h.after(false, None), after_standby(0));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 10_000, failure_persistence: None, ..Default::default() })]

        /// Whatever a hub puts in its close reason (it is up to 123 bytes from the wire): the
        /// next hub is a configured one, the one named only if it is configured, else the next
        /// in order; a full round never passes without a wait.
        #[test]
        fn any_close_reason_leads_only_to_a_configured_hub(
            reasons in proptest::collection::vec(proptest::option::of(proptest::prop_oneof![
                "\\PC{0,123}",
                "(ws|wss|http)://hub[0-3]\\.(lan|LAN)(:4000)?/ws",
            ]), 1..12),
            identified in proptest::collection::vec(proptest::bool::ANY, 12),
        ) {
            let urls: Vec<String> = (0..3).map(|i| format!("ws://hub{i}.lan:4000/ws")).collect();
            let mut h = HubList::new(&urls);
            let mut without_wait = 0;
            for (reason, identified) in reasons.iter().zip(identified) {
                let before = h.current();
                let n = h.after(identified, reason.as_deref());
                proptest::prop_assert!(n.index < urls.len());
                let named = reason.as_deref().and_then(|r| Url::parse(r.trim()).ok())
                    .and_then(|r| urls.iter().position(|u| Url::parse(u).ok() == Some(r.clone())));
                match (reason, named) {
                    (Some(_), Some(i)) => proptest::prop_assert_eq!(n.index, i),
                    (None, _) if identified => proptest::prop_assert_eq!(n.index, before),
                    _ => proptest::prop_assert_eq!(n.index, (before + 1) % urls.len()),
                }
                without_wait = if n.wait || identified { 0 } else { without_wait + 1 };
                proptest::prop_assert!(without_wait < urls.len(), "a round without a wait");
            }
        }
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
