//! `GET /health`: whether this hub serves, and which leads.

use super::*;

/// `GET /health`: no token needed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GetHealth;

impl Endpoint for GetHealth {
    type Response = Health;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        "/health".into()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    pub version: String,
    /// `leader` (a single hub always leads), or `standby` when several hubs share PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<HubRole>,
    /// The leading hub's base URL, when this one is a standby and knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The leader's term (increases with every takeover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HubRole {
    Leader,
    Standby,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
}
