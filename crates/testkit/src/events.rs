//! The hub's event stream, followed in the background by a test.

use crate::eventually;
use anyhow::Result;
use futures_util::StreamExt;
use proto::api::Event;
use std::sync::{Arc, Mutex};

/// Collects a stream's events in the background until dropped.
pub struct Follower {
    seen: Arc<Mutex<Vec<Event>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    /// Follows from after `last` (or from now).
    pub async fn start(client: client::Client, last: Option<String>) -> Result<Follower> {
        let mut stream = Box::pin(client.events(last).await?);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(e)) = stream.next().await {
                sink.lock().unwrap().push(e);
            }
        });
        Ok(Follower { seen, task })
    }

    pub fn events(&self) -> Vec<Event> {
        self.seen.lock().unwrap().clone()
    }

    pub fn names(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|e| e.kind.name().to_string()).collect()
    }

    /// Waits until an event matching `pred` arrived; returns all so far.
    pub async fn until(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Result<Vec<Event>> {
        eventually(what, || async {
            let seen = self.events();
            if seen.iter().any(&pred) {
                Ok(seen)
            } else {
                Err(format!("{:?}", self.names()))
            }
        })
        .await
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}
