//! Usage reports, by agent, model or day.

use super::*;

/// How usage is grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageBy {
    #[default]
    Agent,
    Model,
    /// UTC day, `YYYY-MM-DD`.
    Day,
}

/// `GET /api/usage`: usage aggregated by agent, model or day, over whole UTC days.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GetUsage {
    #[serde(default)]
    pub by: UsageBy,
    /// First day (`YYYY-MM-DD`, UTC) included; default 30 days ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Last day included; default today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

impl Endpoint for GetUsage {
    type Response = UsageReport;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        let by = match self.by {
            UsageBy::Agent => "agent",
            UsageBy::Model => "model",
            UsageBy::Day => "day",
        };
        let q = query(&[("by", Some(by.into())), ("since", self.since.clone()), ("until", self.until.clone())]);
        format!("/api/usage{q}")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub by: UsageBy,
    pub since: String,
    pub until: String,
    pub rows: Vec<UsageRow>,
    pub total: UsageRow,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The agent id, model name (`unknown` when not reported) or day; empty for the total.
    pub key: String,
    /// Attempts that reported usage.
    pub reports: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
}
