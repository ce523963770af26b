//! Every answer arrives (issue 18): 1,000 questions from agents on four sidecars, answered by a
//! person (the test) after random delays, while sidecars are SIGKILLed and started again and
//! their connections cut: every answer reaches its question's agent exactly once, in order.

use crate::bin;
use proto::api::{AnswerTask, ListTasks, TaskStatus};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::{Hub, Proxy, Sidecar};

type R = anyhow::Result<()>;

const SIDECARS: usize = 4;
const TASKS: usize = 40;
/// Within the hub's per-attempt bound (32).
const QUESTIONS: usize = 25;

/// Asks `QUESTIONS` questions in turn (`<task>-<n>?`), each after the answer to the one before,
/// and writes down each answer it reads, then succeeds.
const AGENT: &str = r#"#!/bin/sh
R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"; LOG="$CONTROL/$T.log"
touch "$R/$T.started"
n=$(wc -l < "$LOG" 2>/dev/null || echo 0); n=$(echo $n | tr -d ' ')
while [ "$n" -lt "$QUESTIONS" ]; do
  printf '{"question":"%s-%s?"}' "$T" "$n" > "$R/.$T.q" && mv "$R/.$T.q" "$R/$T.needs-input"
  while [ -e "$R/$T.needs-input" ]; do sleep 0.005; done
  printf '%s %s\n' "$n" "$(cat "$R/$T.input")" >> "$LOG"
  rm -f "$R/$T.input"
  n=$((n+1))
done
printf '{"status":"success"}' > "$R/.$T.r" && mv "$R/.$T.r" "$R/$T.json"
"#;

fn rand_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random");
    u64::from_le_bytes(b) % n.max(1)
}

struct Node {
    dir: PathBuf,
    config: PathBuf,
    proxy: Proxy,
    sidecar: Option<Sidecar>,
}

impl Node {
    fn start(&mut self) -> anyhow::Result<()> {
        self.sidecar = Some(Sidecar::start_file(bin(), &self.dir, &self.config)?);
        Ok(())
    }
}

async fn node(hub: &Hub, root: &Path, n: usize) -> anyhow::Result<Node> {
    let agent = format!("s{n}");
    let token = hub.token(&agent).await?;
    let upstream = hub.url().trim_start_matches("http://").parse()?;
    let proxy = Proxy::start(upstream).await?;
    let wake = format!(
        "CONTROL='{}' QUESTIONS={QUESTIONS} sh '{}'",
        root.join("control").display(),
        root.join("agent.sh").display()
    );
    let dir = root.join(&agent);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("sidecar.toml");
    std::fs::write(&config, testkit::sidecar_config(&agent, &token, &proxy.ws_url(), Some(&wake)))?;
    let mut node = Node { dir, config, proxy, sidecar: None };
    node.start()?;
    Ok(node)
}

#[tokio::test]
async fn a_thousand_answers_each_reach_their_agent_once_through_restarts_and_cut_connections() -> R {
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("control"))?;
    std::fs::write(root.path().join("agent.sh"), AGENT)?;
    let hub = Hub::start(bin(), "")?;
    let mut nodes = Vec::new();
    for n in 0..SIDECARS {
        nodes.push(node(&hub, root.path(), n).await?);
    }
    let mut ids = Vec::new();
    for _ in 0..TASKS {
        ids.push(hub.submit_text("ask and wait").await?);
    }
    let admin = hub.admin_client();
    // (task, request id): request ids are per task.
    let mut answered: HashSet<(String, String)> = HashSet::new();
    let mut chaos_at = 20 + rand_below(30) as usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let page = admin.call(&ListTasks { status: None, limit: Some(1000), cursor: None }).await?;
        let done = page.tasks.iter().filter(|t| ids.contains(&t.task_id) && t.status == TaskStatus::Completed).count();
        if done == TASKS {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{done} of {TASKS} tasks done after 10 minutes");
        let open: Vec<(String, String, String)> = page
            .tasks
            .iter()
            .filter_map(|t| {
                t.needs_input.as_ref().map(|q| (t.task_id.clone(), q.request_id.clone(), q.question.clone()))
            })
            .filter(|(task, rid, _)| !answered.contains(&(task.clone(), rid.clone())))
            .collect();
        for (task, rid, question) in open {
            // A person takes a moment; some answer at once.
            tokio::time::sleep(Duration::from_millis(rand_below(15))).await;
            let answer =
                AnswerTask { task_id: task.clone(), answer: format!("A:{question}"), request_id: Some(rid.clone()) };
            // Refused only if the question closed meanwhile (it is then asked again, anew).
            if admin.call(&answer).await.is_ok() {
                answered.insert((task, rid));
            }
            if answered.len() >= chaos_at {
                chaos_at = answered.len() + 20 + rand_below(40) as usize;
                let n = &mut nodes[rand_below(SIDECARS as u64) as usize];
                if rand_below(2) == 0 {
                    // A crash and a restart.
                    if let Some(mut s) = n.sidecar.take() {
                        s.kill9();
                    }
                    n.start()?;
                } else {
                    // The connection drops and comes back.
                    n.proxy.cut();
                    tokio::time::sleep(Duration::from_millis(rand_below(200))).await;
                    n.proxy.restore();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Each agent read the answer to each of its questions, once, in order.
    let mut total = 0;
    for id in &ids {
        let log = std::fs::read_to_string(root.path().join("control").join(format!("{id}.log")))?;
        let lines: Vec<&str> = log.lines().collect();
        let want: Vec<String> = (0..QUESTIONS).map(|n| format!("{n} A:{id}-{n}?")).collect();
        assert_eq!(lines, want, "{id}");
        total += lines.len();
    }
    assert_eq!(total, TASKS * QUESTIONS);
    // The hub recorded each delivery once.
    // Request ids are per task: (task, reason).
    let mut delivered: BTreeMap<(String, String), usize> = BTreeMap::new();
    for id in &ids {
        for h in hub.task(id).await?.history {
            if h.reason.starts_with("answer to ") && h.reason.ends_with(" delivered") {
                *delivered.entry((id.clone(), h.reason)).or_default() += 1;
            }
        }
    }
    if delivered.len() != TASKS * QUESTIONS {
        for id in &ids {
            let n = delivered.keys().filter(|(t, _)| t == id).count();
            if n != QUESTIONS {
                let h: Vec<String> = hub
                    .task(id)
                    .await?
                    .history
                    .iter()
                    .map(|h| format!("{:?}->{} {}", h.from, h.to, h.reason))
                    .collect();
                eprintln!("DIAG {id} {n}\n{}", h.join("\n"));
            }
        }
    }
    assert_eq!(delivered.len(), TASKS * QUESTIONS, "every answer delivered");
    assert!(delivered.values().all(|n| *n == 1), "none twice");
    Ok(())
}
