//! Webhooks: tells people when something needs them (a question, a dead letter, an agent gone
//! offline for a while, a budget run out). A follower of the event bus, so it never delays the
//! core: deliveries wait in a bounded queue (the oldest dropped, and logged, when it is full)
//! and are retried with backoff.

use crate::config::{Webhook, WebhookEvent, WebhookFormat};
use crate::events::{EventBus, Published};
use proto::api::{EventKind, TaskStatus};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Notifications waiting to be sent; beyond this the oldest is dropped.
const QUEUE: usize = 1024;
/// Deliveries in flight at once.
const IN_FLIGHT: usize = 8;

/// One notification for one webhook.
#[derive(Debug, Clone)]
struct Delivery {
    hook: usize,
    body: Value,
}

/// What a notification says, for people (Slack) and for programs (JSON).
fn notification(kind: WebhookEvent, at: u64, text: String, fields: Value) -> (Value, Value) {
    let name = match kind {
        WebhookEvent::NeedsInput => "needs_input",
        WebhookEvent::DeadLetter => "dead_letter",
        WebhookEvent::AgentOffline => "agent_offline",
        WebhookEvent::BudgetExhausted => "budget_exhausted",
    };
    let mut body = json!({ "event": name, "at": at, "text": text });
    if let (Some(b), Value::Object(f)) = (body.as_object_mut(), fields) {
        b.extend(f);
    }
    (body, json!({ "text": text }))
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
        EventKind::Task { task_id, to: TaskStatus::DeadLetter, reason, agent_id, priority, .. } => {
            let text = format!("task {task_id} ({priority}) went to the dead letter queue: {reason}");
            (WebhookEvent::DeadLetter, text, json!({ "task_id": task_id, "agent_id": agent_id, "reason": reason }))
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

/// Starts the webhook follower; it ends at `shutdown`.
pub fn spawn(hooks: Vec<Webhook>, bus: &EventBus, shutdown: CancellationToken, tracker: &TaskTracker) {
    if hooks.is_empty() {
        return;
    }
    let hooks = Arc::new(hooks);
    let queue = Arc::new(Queue::default());
    let live = bus.subscribe(None).live;
    tracker.spawn(follow(hooks.clone(), live, queue.clone(), shutdown.clone()));
    tracker.spawn(send(hooks, queue, shutdown));
}

#[derive(Default)]
struct Queue {
    items: std::sync::Mutex<VecDeque<Delivery>>,
    ready: Notify,
}

impl Queue {
    fn push(&self, d: Delivery) {
        let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == QUEUE {
            q.pop_front();
            tracing::warn!("webhook queue full; dropped the oldest notification");
        }
        q.push_back(d);
        drop(q);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Delivery> {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }
}

fn enqueue(hooks: &[Webhook], queue: &Queue, kind: WebhookEvent, json_body: &Value, slack_body: &Value) {
    for (i, h) in hooks.iter().enumerate().filter(|(_, h)| h.events.contains(&kind)) {
        let body = match h.format {
            WebhookFormat::Json => json_body.clone(),
            WebhookFormat::Slack => slack_body.clone(),
        };
        queue.push(Delivery { hook: i, body });
    }
}

/// Turns events into notifications; agents that stay offline are found with one timer each.
async fn follow(
    hooks: Arc<Vec<Webhook>>,
    mut live: broadcast::Receiver<Arc<Published>>,
    queue: Arc<Queue>,
    shutdown: CancellationToken,
) {
    let wants_offline: Vec<(usize, Duration)> = hooks
        .iter()
        .enumerate()
        .filter(|(_, h)| h.events.contains(&WebhookEvent::AgentOffline))
        .map(|(i, h)| (i, h.agent_offline_after))
        .collect();
    // For each offline agent, the disconnect it is waiting on; a reconnect forgets it.
    let mut offline: HashMap<String, u64> = HashMap::new();
    let (due_tx, mut due_rx) = mpsc::channel::<(String, u64, usize, u64)>(256);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            due = due_rx.recv() => {
                let Some((agent, since, hook, after_ms)) = due else { continue };
                if offline.get(&agent) == Some(&since) {
                    let text = format!("agent {agent} has been offline for {} s", after_ms / 1000);
                    let (json_body, slack_body) = notification(
                        WebhookEvent::AgentOffline,
                        crate::clock::wall_ms(),
                        text,
                        json!({ "agent_id": agent, "offline_for_ms": after_ms }),
                    );
                    let h = &hooks[hook];
                    let body = if h.format == WebhookFormat::Slack { slack_body } else { json_body };
                    queue.push(Delivery { hook, body });
                }
            }
            next = live.recv() => match next {
                Ok(p) => {
                    if let EventKind::Agent { agent_id, connected, .. } = &p.event.kind {
                        if *connected {
                            offline.remove(agent_id);
                        } else if !wants_offline.is_empty() && !offline.contains_key(agent_id) && offline.len() < 100_000 {
                            seq += 1;
                            offline.insert(agent_id.clone(), seq);
                            for (hook, after) in &wants_offline {
                                let (tx, agent, since, hook, after) = (due_tx.clone(), agent_id.clone(), seq, *hook, *after);
                                tokio::spawn(async move {
                                    tokio::time::sleep(after).await;
                                    let _ = tx.send((agent, since, hook, after.as_millis() as u64)).await;
                                });
                            }
                        }
                    }
                    if let Some((kind, json_body, slack_body)) = notify_of(&p) {
                        enqueue(&hooks, &queue, kind, &json_body, &slack_body);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "webhooks fell behind the event stream and missed events");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn send(hooks: Arc<Vec<Webhook>>, queue: Arc<Queue>, shutdown: CancellationToken) {
    let client = match reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build() {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "cannot build the webhook client; webhooks are off"),
    };
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Some(d) = queue.pop() else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = queue.ready.notified() => continue,
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (client, hook, shutdown) = (client.clone(), hooks[d.hook].clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            deliver(&client, d.hook, &hook, &d.body, &shutdown).await;
        });
    }
}

/// Where a hook points, for logs: its host only, since a webhook URL's path or query often is the
/// secret (Slack's are).
fn host_of(url: &str) -> String {
    url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default()
}

/// Posts one notification, retrying with backoff (1 s doubling, at most a minute apart).
async fn deliver(client: &reqwest::Client, index: usize, hook: &Webhook, body: &Value, shutdown: &CancellationToken) {
    let host = host_of(&hook.url);
    let mut wait = hook.retry;
    for attempt in 1..=hook.max_attempts {
        let sent = client.post(&hook.url).timeout(hook.timeout).json(body).send().await;
        match sent {
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
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
    tracing::error!(hook = index, host, attempts = hook.max_attempts, "webhook notification given up");
}
