//! The configuration of what the hub tells people and what it lets agents spend: `[budgets]`
//! and `[[webhooks]]`, checked into [`Budgets`] and [`Webhook`]s.

use serde::Deserialize;
use std::time::Duration;

/// `[budgets]`: spend allowed per UTC day, for the whole fleet and per agent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsFile {
    pub daily_usd: Option<f64>,
    pub daily_tokens: Option<u64>,
    /// `[budgets.agents.<agent_id>]`.
    pub agents: Option<std::collections::BTreeMap<String, BudgetFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    pub daily_usd: Option<f64>,
    pub daily_tokens: Option<u64>,
}

/// `[[webhooks]]`: where to tell people that something needs them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    pub url: Option<String>,
    /// `needs_input`, `dead_letter`, `agent_offline`, `budget_exhausted`, `agent_limited`,
    /// `budget_exceeded`.
    pub events: Option<Vec<String>>,
    /// `json` (default) or `slack` (a `{"text": ...}` body).
    pub format: Option<String>,
    /// For `agent_offline`: how long an agent must stay offline first.
    pub agent_offline_after_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Attempts per notification, with backoff between them.
    pub max_attempts: Option<u32>,
    /// The first wait before a retry (doubling, at most a minute).
    pub retry_ms: Option<u64>,
}

/// A day's allowance; either or both may be set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    pub daily_usd: Option<f64>,
    pub daily_tokens: Option<u64>,
}

impl Budget {
    pub fn is_set(&self) -> bool {
        self.daily_usd.is_some() || self.daily_tokens.is_some()
    }
    /// Whether `cost` and `tokens` reach the allowance.
    pub fn exceeded_by(&self, cost: f64, tokens: u64) -> bool {
        self.daily_usd.is_some_and(|b| cost >= b) || self.daily_tokens.is_some_and(|b| tokens >= b)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budgets {
    pub fleet: Budget,
    pub agents: std::collections::HashMap<String, Budget>,
}

/// What a webhook is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookEvent {
    NeedsInput,
    DeadLetter,
    AgentOffline,
    BudgetExhausted,
    /// A model provider's limit parked an agent (once per agent and limit).
    AgentLimited,
    /// A task was stopped over its cost cap or its agent's budget.
    BudgetExceeded,
}

impl WebhookEvent {
    const ALL: [WebhookEvent; 6] = [
        WebhookEvent::NeedsInput,
        WebhookEvent::DeadLetter,
        WebhookEvent::AgentOffline,
        WebhookEvent::BudgetExhausted,
        WebhookEvent::AgentLimited,
        WebhookEvent::BudgetExceeded,
    ];

    /// The name in the configuration and in a notification's `event`.
    pub fn name(self) -> &'static str {
        match self {
            WebhookEvent::NeedsInput => "needs_input",
            WebhookEvent::DeadLetter => "dead_letter",
            WebhookEvent::AgentOffline => "agent_offline",
            WebhookEvent::BudgetExhausted => "budget_exhausted",
            WebhookEvent::AgentLimited => "agent_limited",
            WebhookEvent::BudgetExceeded => "budget_exceeded",
        }
    }
}

impl std::str::FromStr for WebhookEvent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WebhookEvent::ALL.into_iter().find(|e| e.name() == s).ok_or_else(|| {
            format!(
                "unknown event {s:?} (expected needs_input, dead_letter, agent_offline, budget_exhausted, agent_limited or budget_exceeded)"
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    Json,
    /// Slack-style `{"text": ...}`.
    Slack,
}

/// A hook's URL often is its secret: `Debug` shows its host only.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    pub events: Vec<WebhookEvent>,
    pub format: WebhookFormat,
    pub agent_offline_after: Duration,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub retry: Duration,
}

impl Webhook {
    /// Where the hook points, for logs and `Debug`: its host only, since a webhook URL's path or
    /// query often is the secret (Slack's are).
    pub fn host(&self) -> String {
        url::Url::parse(&self.url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default()
    }
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("host", &self.host())
            .field("events", &self.events)
            .field("format", &self.format)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

fn budget(scope: &str, daily_usd: Option<f64>, daily_tokens: Option<u64>, errors: &mut Vec<String>) -> Budget {
    if daily_usd.is_some_and(|d| !d.is_finite() || d < 0.0) {
        errors.push(format!("{scope}.daily_usd: must be a number of dollars, 0 or more"));
    }
    Budget { daily_usd: daily_usd.filter(|d| d.is_finite() && *d >= 0.0), daily_tokens }
}

pub(super) fn budgets(file: Option<BudgetsFile>, errors: &mut Vec<String>) -> Budgets {
    let Some(f) = file else { return Budgets::default() };
    let fleet = budget("budgets", f.daily_usd, f.daily_tokens, errors);
    let mut agents = std::collections::HashMap::new();
    for (agent, b) in f.agents.unwrap_or_default() {
        if let Err(e) = proto::api::check_agent_id(&agent) {
            errors.push(format!("budgets.agents: {e}"));
        }
        agents.insert(agent.clone(), budget(&format!("budgets.agents.{agent}"), b.daily_usd, b.daily_tokens, errors));
    }
    Budgets { fleet, agents }
}

pub(super) fn webhooks(files: Vec<WebhookFile>, errors: &mut Vec<String>) -> Vec<Webhook> {
    let mut out = Vec::new();
    if files.len() > 32 {
        errors.push("webhooks: at most 32".into());
    }
    for (i, w) in files.into_iter().take(32).enumerate() {
        let at = format!("webhooks[{i}]");
        let url = w.url.unwrap_or_default();
        match url::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            // Not echoed: a hook's URL often holds its secret, and errors go to logs.
            _ => errors.push(format!("{at}.url: not an http:// or https:// URL with a host")),
        }
        let events: Vec<WebhookEvent> = w
            .events
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e.parse().map_err(|msg| errors.push(format!("{at}.events: {msg}"))).ok())
            .collect();
        if events.is_empty() {
            errors.push(format!("{at}.events: name at least one event"));
        }
        let format = match w.format.as_deref() {
            None | Some("json") => WebhookFormat::Json,
            Some("slack") => WebhookFormat::Slack,
            Some(other) => {
                errors.push(format!("{at}.format: {other:?} is not json or slack"));
                WebhookFormat::Json
            }
        };
        let ms = |name: &str, v: Option<u64>, def: u64, errors: &mut Vec<String>| {
            if v == Some(0) {
                errors.push(format!("{at}.{name}: must be greater than 0"));
            }
            Duration::from_millis(v.filter(|v| *v > 0).unwrap_or(def))
        };
        out.push(Webhook {
            url,
            events,
            format,
            agent_offline_after: ms("agent_offline_after_ms", w.agent_offline_after_ms, 120_000, errors),
            timeout: ms("timeout_ms", w.timeout_ms, 10_000, errors),
            max_attempts: w.max_attempts.unwrap_or(5).clamp(1, 20),
            retry: ms("retry_ms", w.retry_ms, 1000, errors),
        });
    }
    out
}
