//! A small HTTP client returning (status, JSON body).

use anyhow::Result;
use serde_json::Value;

/// A small HTTP client returning (status, JSON body).
#[derive(Clone)]
pub struct Api {
    pub(crate) base: String,
    pub(crate) token: Option<String>,
    pub(crate) http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: Option<&str>) -> Api {
        Api { base: base.to_string(), token: token.map(str::to_string), http: reqwest::Client::new() }
    }

    pub async fn raw(&self, method: reqwest::Method, path: &str, body: Option<String>) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.raw(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        self.raw(reqwest::Method::POST, path, Some(body.to_string())).await
    }
    pub async fn delete(&self, path: &str) -> Result<(u16, Value)> {
        self.raw(reqwest::Method::DELETE, path, None).await
    }
}
