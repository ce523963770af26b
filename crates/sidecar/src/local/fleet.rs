//! Children of the held task through the hub's HTTP API, with the sidecar's own token (the MCP
//! server never sees it): `submit_task` creates a child (`parent_task_id` is the held task, so
//! the hub checks that this agent holds it now), `task_status` and `wait_for_tasks` read only
//! the held task's children, and a child may depend only on its siblings.

use super::wire::Scope;
use super::{Ctx, MAX_WAIT_POLL};
use crate::config::SidecarConfig;
use client::Client;
use proto::api::{ChildTask, GetTask, SubmitTask, TaskDetail};
use serde_json::{json, Value};
use tokio::time::{Duration, Instant};

pub(crate) struct Fleet {
    client: Client,
}

/// `ws://host:port/ws` → `http://host:port`: the hub's API is on the same address.
pub fn api_url(ws: &str) -> Result<String, String> {
    let mut u = url::Url::parse(ws).map_err(|e| format!("hub_url {ws}: {e}"))?;
    let scheme = if u.scheme() == "wss" { "https" } else { "http" };
    u.set_scheme(scheme).map_err(|()| format!("hub_url {ws}: cannot make an http URL of it"))?;
    u.set_path("");
    u.set_query(None);
    Ok(u.as_str().trim_end_matches('/').to_string())
}

fn cut(v: &Value) -> Value {
    let text = v.to_string();
    if text.chars().count() <= super::wire::MAX_RESULT_CHARS {
        return v.clone();
    }
    let start: String = text.chars().take(super::wire::MAX_RESULT_CHARS).collect();
    json!({"cut": true, "start": start})
}

/// A child as the tools show it.
fn shown(d: &TaskDetail) -> Value {
    let t = &d.task;
    json!({
        "task_id": t.task_id,
        "status": t.status,
        "assigned_to": t.assigned_to,
        "result": t.result.as_ref().map(cut),
        "last_error": t.last_error,
        "progress": t.progress.as_ref().map(proto::api::progress_text),
    })
}

impl Fleet {
    pub fn new(cfg: &SidecarConfig) -> Result<Fleet, String> {
        let urls: Result<Vec<String>, String> = cfg.hub_urls.iter().map(|u| api_url(u)).collect();
        let tls = match &cfg.tls {
            Some(t) => rustls::ClientConfig::clone(t),
            None => rustls::ClientConfig::clone(&*osutil::tls::client_config(None)?),
        };
        let client = Client::with_tls(&urls?.join(","), Some(cfg.token.clone()), tls).map_err(|e| e.to_string())?;
        Ok(Fleet { client })
    }

    async fn children(&self, scope: &Scope) -> Result<Vec<ChildTask>, String> {
        let d = self.client.call(&GetTask { task_id: scope.task_id.clone() }).await.map_err(|e| e.to_string())?;
        Ok(d.children)
    }

    /// Refuses any id that is not a child of the held task.
    fn only_children(children: &[ChildTask], ids: &[String], what: &str, scope: &Scope) -> Result<(), String> {
        for (i, id) in ids.iter().enumerate() {
            if !children.iter().any(|c| c.task_id == *id) {
                return Err(format!(
                    "{what}[{i}]: {id} is not a child of task {} (the task this agent holds)",
                    scope.task_id
                ));
            }
        }
        Ok(())
    }

    pub async fn submit(
        &self,
        scope: &Scope,
        description: String,
        priority: Option<String>,
        capabilities: Vec<String>,
        depends_on: Vec<String>,
    ) -> Result<Value, String> {
        if !depends_on.is_empty() {
            Self::only_children(&self.children(scope).await?, &depends_on, "depends_on", scope)?;
        }
        let mut n = SubmitTask::new(description);
        if let Some(p) = priority {
            n.priority = p.parse().map_err(|e| format!("priority: {e}"))?;
        }
        n.needed_capabilities = capabilities;
        n.depends_on = depends_on;
        n.parent_task_id = Some(scope.task_id.clone());
        let s = self.client.call(&n).await.map_err(|e| e.to_string())?;
        tracing::info!(parent = %scope.task_id, task_id = %s.task_id, status = %s.status, "a child task was submitted for the agent");
        Ok(json!({"task_id": s.task_id, "status": s.status}))
    }

    pub async fn status(&self, scope: &Scope, of: &str) -> Result<Value, String> {
        Self::only_children(&self.children(scope).await?, &[of.to_string()], "task_id", scope)
            .map_err(|e| e.replacen("task_id[0]", "task_id", 1))?;
        let d = self.client.call(&GetTask { task_id: of.to_string() }).await.map_err(|e| e.to_string())?;
        Ok(shown(&d))
    }

    /// Waits until every task of `ids` (children of the held task) finished, or `wait_ms` passed.
    pub async fn wait(&self, ctx: &Ctx, scope: &Scope, ids: &[String], wait_ms: u64) -> Result<Value, String> {
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let mut pause = Duration::from_millis(100);
        loop {
            let children = self.children(scope).await?;
            Self::only_children(&children, ids, "task_ids", scope)?;
            let of = |id: &String| children.iter().find(|c| c.task_id == *id).expect("checked above");
            if ids.iter().all(|id| of(id).status.is_terminal()) {
                let mut tasks = Vec::with_capacity(ids.len());
                for id in ids {
                    let d = self.client.call(&GetTask { task_id: id.clone() }).await.map_err(|e| e.to_string())?;
                    tasks.push(shown(&d));
                }
                return Ok(json!({"done": true, "tasks": tasks}));
            }
            let now = Instant::now();
            if now >= deadline {
                let tasks: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"task_id": id, "status": of(id).status, "assigned_to": of(id).assigned_to}))
                    .collect();
                return Ok(
                    json!({"done": false, "tasks": tasks, "hint": "not all finished yet: call wait_for_tasks again to keep waiting"}),
                );
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_WAIT_POLL);
            ctx.check_scope(scope)?;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_api_is_on_the_hubs_address() {
        assert_eq!(super::api_url("ws://127.0.0.1:4000/ws").unwrap(), "http://127.0.0.1:4000");
        assert_eq!(super::api_url("wss://hub.lan/ws").unwrap(), "https://hub.lan");
    }
}
