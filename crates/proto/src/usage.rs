//! What an attempt cost, as agents report it with their results.

use crate::*;
use serde::{Deserialize, Serialize};

/// What an attempt at a task cost (our extension of `task_complete` and `task_failed`). AgentCom
/// v1 sidecars send only `tokens_used`, which the hub reads as `total_tokens`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Usage {
    /// Input and output tokens, or the total when that is all there is.
    pub fn tokens(&self) -> u64 {
        match (self.input_tokens, self.output_tokens) {
            (None, None) => self.total_tokens.unwrap_or(0),
            (i, o) => i.unwrap_or(0).saturating_add(o.unwrap_or(0)),
        }
    }
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }

    /// Only the fields within the limits ([`MAX_USAGE_TOKENS`], [`MAX_USAGE_COST_USD`],
    /// [`MAX_SHORT`]): for usage read from places no schema checked (a result's own `usage`,
    /// v1's `tokens_used`).
    pub fn within_limits(self) -> Usage {
        let count = |n: Option<u64>| n.filter(|n| *n <= MAX_USAGE_TOKENS);
        Usage {
            input_tokens: count(self.input_tokens),
            output_tokens: count(self.output_tokens),
            total_tokens: count(self.total_tokens),
            cost_usd: self.cost_usd.filter(|c| (0.0..=MAX_USAGE_COST_USD).contains(c)),
            model: self.model.filter(|m| m.chars().count() <= MAX_SHORT),
        }
    }
}
