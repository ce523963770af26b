//! Prometheus text exposition for the hub: counters and a small fixed-bucket histogram. Every
//! metric of `/metrics` is written here ([`sample`], [`Histogram`]); other parts hand in figures.

use std::fmt::{Display, Write};
use std::time::Duration;

/// What a single-valued metric is.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Gauge,
    Counter,
}

/// One metric with one value: its `# HELP` and `# TYPE` lines, then the sample.
pub fn sample(out: &mut String, name: &str, kind: Kind, help: &str, value: impl Display) {
    let kind = match kind {
        Kind::Gauge => "gauge",
        Kind::Counter => "counter",
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// One gauge with a sample per label value (`name{label="v"} n`).
fn labelled(out: &mut String, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (v, n) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {n}");
    }
}

/// Upper bounds in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if s <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += s;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub submitted: u64,
    pub commits: u64,
    pub commit_errors: u64,
    pub bans: u64,
    pub ws_connections_total: u64,
    pub dispatch_latency: Histogram,
    pub commit_seconds: Histogram,
    /// Reported usage since start, the whole fleet's: `/metrics` needs no token, and what each
    /// agent spent is for those who may read `/api/usage`.
    pub usage: UsageTotals,
}

#[derive(Debug, Default, Clone)]
pub struct UsageTotals {
    pub reports: u64,
    pub cost_usd: f64,
    pub tokens: u64,
}

impl Metrics {
    pub fn record_usage(&mut self, u: &proto::Usage) {
        let t = &mut self.usage;
        t.reports += 1;
        t.cost_usd += u.cost_usd.unwrap_or(0.0);
        t.tokens = t.tokens.saturating_add(u.tokens());
    }

    pub fn render(&self, tasks: &[(&str, u64)], agents: &[(&str, u64)], ws_connections: u64) -> String {
        let mut out = String::with_capacity(2048);
        labelled(&mut out, "agentcom_tasks", "Tasks by status.", "status", tasks);
        labelled(&mut out, "agentcom_agents", "Known agents by status.", "status", agents);
        let open = "Open WebSocket connections.";
        sample(&mut out, "agentcom_websocket_connections", Kind::Gauge, open, ws_connections);
        for (name, help, v) in [
            ("agentcom_tasks_submitted_total", "Tasks submitted since start.", self.submitted),
            ("agentcom_store_commits_total", "Group commits to the store.", self.commits),
            (
                "agentcom_store_commit_errors_total",
                "Failed commits (nothing in them was acknowledged).",
                self.commit_errors,
            ),
            ("agentcom_identify_bans_total", "Agents refused identify after protocol violations.", self.bans),
            (
                "agentcom_websocket_connections_total",
                "WebSocket connections accepted since start.",
                self.ws_connections_total,
            ),
        ] {
            sample(&mut out, name, Kind::Counter, help, v);
        }
        self.dispatch_latency.render(
            &mut out,
            "agentcom_dispatch_latency_seconds",
            "From a task entering the queue to its durable task_assign being sent.",
        );
        self.commit_seconds.render(&mut out, "agentcom_store_commit_seconds", "Duration of one durable group commit.");
        for (name, help, get) in [
            (
                "agentcom_usage_reports_total",
                "Attempts that reported usage, since start.",
                (|t: &UsageTotals| t.reports as f64) as fn(&UsageTotals) -> f64,
            ),
            ("agentcom_usage_cost_usd_total", "Reported cost in US dollars, since start.", |t| t.cost_usd),
            ("agentcom_usage_tokens_total", "Reported tokens (input and output), since start.", |t| t.tokens as f64),
        ] {
            sample(&mut out, name, Kind::Counter, help, get(&self.usage));
        }
        out
    }
}
