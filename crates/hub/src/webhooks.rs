//! Webhooks: tells people when something needs them (a question, a dead letter, an agent gone
//! offline for a while, a budget run out). The core hands the events a webhook can want to a
//! bounded channel of their own ([`EventBus::tap`]), so a flood of progress lines cannot push
//! them out and sending never delays the core. Each hook has its own bounded queue (the oldest
//! dropped, and counted, when it is full) and one sender, so a hook that is down or slow delays
//! only its own notifications.

use crate::config::{Webhook, WebhookEvent, WebhookFormat};
use crate::events::{EventBus, Published};
use proto::api::{EventKind, TaskStatus};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Notifications waiting for one hook; beyond this its oldest is dropped.
const PER_HOOK_QUEUE: usize = 256;
/// Events a webhook can want, waiting for the follower; beyond this new ones are dropped (and
/// counted): the follower only turns them into notifications, so it keeps up unless starved.
const TAP: usize = 16_384;
/// Agents waiting out `agent_offline_after_ms` at once; more are not watched (and logged).
const MAX_OFFLINE_WATCHED: usize = 100_000;

/// Slack's `mrkdwn` reads `<...>` as links and mentions (`<!channel>`): text from agents is
/// escaped so it is shown, never acted on.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// What a notification says, for people (Slack) and for programs (JSON).
fn notification(kind: WebhookEvent, at: u64, text: String, fields: Value) -> (Value, Value) {
    let mut body = json!({ "event": kind.name(), "at": at, "text": text });
    if let (Some(b), Value::Object(f)) = (body.as_object_mut(), fields) {
        b.extend(f);
    }
    (body, json!({ "text": slack_escape(&text) }))
}

/// Whether a webhook could want the event: what the core hands to the follower.
pub fn wanted(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::NeedsInput { .. }
            | EventKind::Task { to: TaskStatus::DeadLetter, .. }
            | EventKind::Agent { .. }
            | EventKind::BudgetExhausted { .. }
            | EventKind::Limited { .. }
    )
}

/// The notification an event makes, if it is one a webhook can want.
fn notify_of(p: &Published) -> Option<(WebhookEvent, Value, Value)> {
    let at = p.event.at;
    let (kind, text, fields) = match &p.event.kind {
        EventKind::NeedsInput { task_id, agent_id, question } => {
            let mut text = format!("agent {agent_id} asks on task {task_id}: {}", question.question);
            if !question.options.is_empty() {
                text.push_str(&format!(" (options: {})", question.options.join(" / ")));
            }
            let fields = json!({ "task_id": task_id, "agent_id": agent_id, "question": question });
            (WebhookEvent::NeedsInput, text, fields)
        }
        EventKind::Task { task_id, to: TaskStatus::DeadLetter, reason, agent_id, priority, .. }
            if reason.starts_with("budget_exceeded: ") =>
        {
            let text = format!("task {task_id} ({priority}) was stopped: {reason}");
            (WebhookEvent::BudgetExceeded, text, json!({ "task_id": task_id, "agent_id": agent_id, "reason": reason }))
        }
        EventKind::Task { task_id, to: TaskStatus::DeadLetter, reason, agent_id, priority, .. } => {
            let text = format!("task {task_id} ({priority}) went to the dead letter queue: {reason}");
            (WebhookEvent::DeadLetter, text, json!({ "task_id": task_id, "agent_id": agent_id, "reason": reason }))
        }
        EventKind::Limited { agent_id, account, until, reason } => {
            let of = account.as_ref().map(|a| format!(" (account {a})")).unwrap_or_default();
            let text =
                format!("agent {agent_id}{of} is limited by its model provider until {}: {reason}", human::utc(*until));
            let fields = json!({ "agent_id": agent_id, "account": account, "until": until, "reason": reason });
            (WebhookEvent::AgentLimited, text, fields)
        }
        EventKind::BudgetExhausted { agent_id, spend } => {
            let who = agent_id.as_ref().map(|a| format!("agent {a} is")).unwrap_or_else(|| "the fleet is".into());
            let limit = match (spend.budget_usd, spend.budget_tokens) {
                (Some(usd), _) if spend.cost_usd >= usd => format!("${:.2} of ${usd:.2}", spend.cost_usd),
                (_, Some(tokens)) => format!("{} of {tokens} tokens", spend.tokens),
                _ => format!("${:.2}", spend.cost_usd),
            };
            let text = format!("{who} over its daily budget ({limit}); no new task until midnight UTC");
            (WebhookEvent::BudgetExhausted, text, json!({ "agent_id": agent_id, "spend": spend }))
        }
        _ => return None,
    };
    let (json_body, slack_body) = notification(kind, at, text, fields);
    Some((kind, json_body, slack_body))
}

/// Starts the webhook follower and one sender per hook; they end at `shutdown`.
pub fn spawn(hooks: Vec<Webhook>, bus: &EventBus, shutdown: CancellationToken, tracker: &TaskTracker) {
    if hooks.is_empty() {
        return;
    }
    let events = bus.tap(wanted, TAP);
    let senders: Vec<Sender> = hooks
        .into_iter()
        .enumerate()
        .map(|(index, hook)| Sender { index, hook, queue: Arc::new(Queue::default()) })
        .collect();
    let queues: Vec<(Webhook, Arc<Queue>)> = senders.iter().map(|s| (s.hook.clone(), s.queue.clone())).collect();
    for s in senders {
        tracker.spawn(s.run(shutdown.clone()));
    }
    tracker.spawn(follow(queues, events, shutdown));
}

/// One hook's notifications waiting to be sent, oldest first.
#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<Value>>,
    ready: Notify,
    dropped: AtomicU64,
}

impl Queue {
    fn push(&self, body: Value) {
        let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= PER_HOOK_QUEUE {
            q.pop_front();
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(dropped = n, "a webhook's queue is full; dropped its oldest notification");
            }
        }
        q.push_back(body);
        drop(q);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Value> {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }
}

/// Turns events into notifications for each hook that wants them; agents that stay offline
/// are found with one timer list.
async fn follow(
    hooks: Vec<(Webhook, Arc<Queue>)>,
    mut events: mpsc::Receiver<Arc<Published>>,
    shutdown: CancellationToken,
) {
    let enqueue = |kind: WebhookEvent, json_body: &Value, slack_body: &Value, only: Option<usize>| {
        for (i, (hook, queue)) in hooks.iter().enumerate() {
            if hook.events.contains(&kind) && only.is_none_or(|o| o == i) {
                queue.push(if hook.format == WebhookFormat::Slack { slack_body.clone() } else { json_body.clone() });
            }
        }
    };
    let offline_after: Vec<(usize, Duration)> = hooks
        .iter()
        .enumerate()
        .filter(|(_, (hook, _))| hook.events.contains(&WebhookEvent::AgentOffline))
        .map(|(i, (hook, _))| (i, hook.agent_offline_after))
        .collect();
    let mut offline = OfflineWatch::default();
    loop {
        let next = offline.next_due();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                for (agent, hook, after) in offline.take_due(Instant::now()) {
                    let ms = after.as_millis() as u64;
                    let text = format!("agent {agent} has been offline for {} s", ms / 1000);
                    let fields = json!({ "agent_id": agent, "offline_for_ms": ms });
                    let (json_body, slack_body) =
                        notification(WebhookEvent::AgentOffline, crate::clock::wall_ms(), text, fields);
                    enqueue(WebhookEvent::AgentOffline, &json_body, &slack_body, Some(hook));
                }
            }
            next = events.recv() => {
                let Some(p) = next else { return };
                if let EventKind::Agent { agent_id, connected, .. } = &p.event.kind {
                    if *connected {
                        offline.back(agent_id);
                    } else if !offline_after.is_empty() {
                        offline.gone(agent_id, Instant::now(), &offline_after);
                    }
                }
                if let Some((kind, json_body, slack_body)) = notify_of(&p) {
                    enqueue(kind, &json_body, &slack_body, None);
                }
            }
        }
    }
}

/// Agents offline and the hooks to tell if they stay so: every timer is removed when it fires
/// or when its agent comes back, so a connect and disconnect loop leaves nothing behind.
#[derive(Default)]
struct OfflineWatch {
    /// Each watched agent's pending timers.
    agents: HashMap<String, Vec<(Instant, u64)>>,
    /// Timers by due time: (agent, hook, after).
    due: BTreeMap<(Instant, u64), (String, usize, Duration)>,
    next_key: u64,
    full_logged: bool,
}

impl OfflineWatch {
    fn gone(&mut self, agent: &str, now: Instant, hooks: &[(usize, Duration)]) {
        if self.agents.contains_key(agent) {
            return;
        }
        if self.agents.len() >= MAX_OFFLINE_WATCHED {
            if !std::mem::replace(&mut self.full_logged, true) {
                tracing::warn!(max = MAX_OFFLINE_WATCHED, "too many agents offline at once; not every one is watched");
            }
            return;
        }
        let keys = hooks
            .iter()
            .map(|(hook, after)| {
                self.next_key += 1;
                let key = (now + *after, self.next_key);
                self.due.insert(key, (agent.to_string(), *hook, *after));
                key
            })
            .collect();
        self.agents.insert(agent.to_string(), keys);
    }

    fn back(&mut self, agent: &str) {
        for key in self.agents.remove(agent).unwrap_or_default() {
            self.due.remove(&key);
        }
        self.full_logged = self.full_logged && self.agents.len() >= MAX_OFFLINE_WATCHED;
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.keys().next().map(|(at, _)| *at)
    }

    /// The timers due by `now`: (agent, hook, after); they are forgotten.
    fn take_due(&mut self, now: Instant) -> Vec<(String, usize, Duration)> {
        let mut fired = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = *entry.key();
            let (agent, hook, after) = entry.remove();
            if let Some(keys) = self.agents.get_mut(&agent) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.agents.remove(&agent);
                }
            }
            fired.push((agent, hook, after));
        }
        fired
    }
}

/// One hook's sender: its notifications one at a time, each retried with backoff.
struct Sender {
    index: usize,
    hook: Webhook,
    queue: Arc<Queue>,
}

impl Sender {
    async fn run(self, shutdown: CancellationToken) {
        let client = match reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build() {
            Ok(c) => c,
            Err(e) => {
                return tracing::error!(hook = self.index, error = %e, "cannot build the webhook client; this hook is off")
            }
        };
        loop {
            let Some(body) = self.queue.pop() else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.queue.ready.notified() => continue,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.deliver(&client, &body) => {}
            }
        }
    }

    /// Posts one notification, retrying with backoff (`retry_ms` doubling, at most a minute apart).
    async fn deliver(&self, client: &reqwest::Client, body: &Value) {
        let (hook, index) = (&self.hook, self.index);
        let host = hook.host();
        let mut wait = hook.retry;
        for attempt in 1..=hook.max_attempts {
            match client.post(&hook.url).timeout(hook.timeout).json(body).send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => {
                    tracing::warn!(
                        hook = index,
                        host,
                        status = r.status().as_u16(),
                        attempt,
                        "webhook refused the notification"
                    )
                }
                Err(e) => tracing::warn!(hook = index, host, error = %e.without_url(), attempt, "webhook unreachable"),
            }
            if attempt < hook.max_attempts {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
        tracing::error!(hook = index, host, attempts = hook.max_attempts, "webhook notification given up");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_from_agents_cannot_mention_or_link() {
        let (json_body, slack) = notification(
            WebhookEvent::NeedsInput,
            1,
            "agent a asks: <!channel> see <https://evil|Approve> & go".into(),
            json!({"task_id": "t"}),
        );
        assert_eq!(slack["text"], "agent a asks: &lt;!channel&gt; see &lt;https://evil|Approve&gt; &amp; go");
        assert_eq!(
            json_body["text"], "agent a asks: <!channel> see <https://evil|Approve> & go",
            "JSON keeps the bytes"
        );
        assert_eq!((json_body["event"].as_str(), json_body["task_id"].as_str()), (Some("needs_input"), Some("t")));
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_counts_it() {
        let q = Queue::default();
        for i in 0..PER_HOOK_QUEUE + 3 {
            q.push(json!(i));
        }
        assert_eq!(q.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(q.pop(), Some(json!(3)));
    }

    #[test]
    fn offline_timers_fire_once_and_a_return_or_a_loop_leaves_none_behind() {
        let mut w = OfflineWatch::default();
        let t0 = Instant::now();
        let hooks = [(0, Duration::from_secs(10)), (2, Duration::from_secs(20))];
        // An agent that comes and goes a thousand times leaves nothing behind.
        for _ in 0..1000 {
            w.gone("flapping", t0, &hooks);
            w.back("flapping");
        }
        assert!(w.due.is_empty() && w.agents.is_empty());
        w.gone("a", t0, &hooks);
        w.gone("a", t0, &hooks); // a second disconnect while watched changes nothing
        assert_eq!(w.due.len(), 2);
        assert!(w.take_due(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(w.take_due(t0 + Duration::from_secs(10)), vec![("a".to_string(), 0, Duration::from_secs(10))]);
        assert_eq!(w.take_due(t0 + Duration::from_secs(30)), vec![("a".to_string(), 2, Duration::from_secs(20))]);
        assert!(w.due.is_empty() && w.agents.is_empty(), "fired timers are forgotten");
        assert_eq!(w.next_due(), None);
    }
}
