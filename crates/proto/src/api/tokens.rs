//! Agent tokens (admin only).

use super::*;

/// `POST /admin/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateToken {
    pub agent_id: String,
}

impl CreateToken {
    /// Validates the JSON body of `POST /admin/tokens`.
    pub fn from_json(m: Map<String, Value>) -> Result<CreateToken, Vec<String>> {
        let mut f = super::fields::Fields::new(m);
        let agent_id = f.string("agent_id", true, usize::MAX).unwrap_or_default();
        if !agent_id.is_empty() {
            f.check(super::check_agent_id(&agent_id));
        }
        f.done(CreateToken { agent_id })
    }
}

impl Endpoint for CreateToken {
    type Response = TokenCreated;
    const METHOD: Method = Method::Post;
    fn path(&self) -> String {
        "/admin/tokens".into()
    }
    fn body(&self) -> Option<Value> {
        Some(serde_json::to_value(self).expect("serializes"))
    }
}

/// The new token: shown this once, stored only as a hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub agent_id: String,
    pub token: String,
    pub created_at: u64,
}

/// `GET /admin/tokens`: by agent, one page at a time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListTokens {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Endpoint for ListTokens {
    type Response = TokenList;
    const METHOD: Method = Method::Get;
    fn path(&self) -> String {
        let q = query(&[("limit", self.limit.map(|l| l.to_string())), ("cursor", self.cursor.clone())]);
        format!("/admin/tokens{q}")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    pub count: usize,
    pub tokens: Vec<TokenInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub agent_id: String,
    pub created_at: u64,
    /// The first 12 hex digits of the token's hash: enough to tell tokens apart, useless to an attacker.
    pub fingerprint: String,
}

/// `DELETE /admin/tokens/:agent_id`: every token of the agent, which is disconnected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokeTokens {
    pub agent_id: String,
}

impl Endpoint for RevokeTokens {
    type Response = TokensRevoked;
    const METHOD: Method = Method::Delete;
    fn path(&self) -> String {
        format!("/admin/tokens/{}", encode(&self.agent_id))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokensRevoked {
    pub status: Done,
    pub agent_id: String,
    pub revoked: usize,
}
