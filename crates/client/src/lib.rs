//! HTTP client for the hub API (used by the CLI), and plain-text tables for people.

use reqwest::Method;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_URL: &str = "http://127.0.0.1:4000";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the hub at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("{error}{}", .message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Api { status: u16, error: String, message: Option<String> },
    #[error("unexpected answer from the hub (HTTP {status}): {body}")]
    Decode { status: u16, body: String },
    #[error("CA file {0}")]
    CaFile(String),
}

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the hub at `base` (`http://` or `https://`). `https://` trusts Mozilla's
    /// roots and the PEM certificates in `ca_file` (a private CA, or a self-signed hub): the
    /// same [`osutil::tls::client_config`] as every other outgoing connection.
    pub fn new(base: &str, token: Option<String>, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let tls = osutil::tls::client_config(ca_file).map_err(ClientError::CaFile)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
            .build()
            .map_err(|e| ClientError::Connect { url: base.into(), message: root_cause(&e) })?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), token, http })
    }

    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp =
            req.send().await.map_err(|e| ClientError::Connect { url: self.base.clone(), message: root_cause(&e) })?;
        let status = resp.status().as_u16();
        let text =
            resp.text().await.map_err(|e| ClientError::Connect { url: self.base.clone(), message: root_cause(&e) })?;
        let value: Value =
            serde_json::from_str(&text).map_err(|_| ClientError::Decode { status, body: text.clone() })?;
        if status >= 400 {
            let error = value["error"].as_str().unwrap_or("error").to_string();
            let mut message = value["message"].as_str().map(str::to_string);
            if let Some(errs) = value["errors"].as_array() {
                let list: Vec<&str> = errs.iter().filter_map(Value::as_str).collect();
                message = Some(list.join("; "));
            }
            return Err(ClientError::Api { status, error, message });
        }
        Ok(value)
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.request(Method::POST, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::DELETE, path, None).await
    }
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

/// Percent-encodes one path segment.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A left-aligned text table; cells are truncated to `max` characters.
pub fn table(headers: &[&str], rows: &[Vec<String>], max: usize) -> String {
    let cut = |s: &str| -> String {
        let one_line = s.replace(['\n', '\r', '\t'], " ");
        if one_line.chars().count() > max {
            one_line.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
        } else {
            one_line
        }
    };
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| cut(c)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let parts: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths[i])).collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// Renders a value for a table cell: strings bare, null as "-", others as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// "3s ago"-style age of an epoch-milliseconds timestamp.
pub fn age(ms: &Value, now_ms: u64) -> String {
    let Some(t) = ms.as_u64() else {
        return "-".into();
    };
    let s = now_ms.saturating_sub(t) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_truncate() {
        let t = table(&["A", "B"], &[vec!["x".into(), "a very long cell".into()]], 6);
        assert_eq!(t, "A  B\nx  a ver…\n");
    }

    #[test]
    fn cells_and_segments() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(age(&json!(1000), 61_000), "1m ago");
    }
}

/// Output of the CLI commands: a table or summary for people, the raw JSON for scripts.
pub mod render {
    use super::{age, cell, table};
    use serde_json::Value;

    fn now_ms() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    pub fn tasks(v: &Value) -> String {
        let now = now_ms();
        let rows: Vec<Vec<String>> = v["tasks"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|t| {
                vec![
                    cell(&t["task_id"]),
                    cell(&t["status"]),
                    cell(&t["priority"]),
                    cell(&t["assigned_to"]),
                    cell(&t["generation"]),
                    cell(&t["attempts"]),
                    age(&t["created_at"], now),
                    cell(&t["description"]),
                ]
            })
            .collect();
        if rows.is_empty() {
            return "no tasks\n".into();
        }
        table(&["TASK", "STATUS", "PRIORITY", "AGENT", "GEN", "ATTEMPTS", "CREATED", "DESCRIPTION"], &rows, 48)
    }

    pub fn task(t: &Value) -> String {
        let mut out = String::new();
        for k in [
            "task_id",
            "status",
            "priority",
            "description",
            "generation",
            "assigned_to",
            "attempts",
            "failures",
            "max_retries",
            "needed_capabilities",
            "assign_to",
            "last_error",
            "submitted_by",
        ] {
            out.push_str(&format!("{k:<20} {}\n", cell(&t[k])));
        }
        for k in ["metadata", "result", "progress"] {
            if !t[k].is_null() {
                out.push_str(&format!("{k:<20} {}\n", t[k]));
            }
        }
        out.push_str("history:\n");
        for h in t["history"].as_array().map(|a| a.as_slice()).unwrap_or_default() {
            out.push_str(&format!(
                "  {}  {:>13} -> {:<13} gen {:<3} {}\n",
                cell(&h["at"]),
                cell(&h["from"]),
                cell(&h["to"]),
                cell(&h["generation"]),
                cell(&h["reason"])
            ));
        }
        out
    }

    pub fn agents(v: &Value) -> String {
        let now = now_ms();
        let rows: Vec<Vec<String>> = v["agents"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|a| {
                vec![
                    cell(&a["agent_id"]),
                    cell(&a["status"]),
                    cell(&a["current_task"]),
                    cell(&a["capabilities"]),
                    cell(&a["process_info"]["restart_count"]),
                    age(&a["last_seen"], now),
                ]
            })
            .collect();
        if rows.is_empty() {
            return "no agents\n".into();
        }
        table(&["AGENT", "STATUS", "TASK", "CAPABILITIES", "RESTARTS", "LAST SEEN"], &rows, 40)
    }

    pub fn tokens(v: &Value) -> String {
        let now = now_ms();
        let rows: Vec<Vec<String>> = v["tokens"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|t| vec![cell(&t["agent_id"]), age(&t["created_at"], now), cell(&t["fingerprint"])])
            .collect();
        if rows.is_empty() {
            return "no tokens\n".into();
        }
        table(&["AGENT", "CREATED", "FINGERPRINT"], &rows, 40)
    }
}
