//! Agents as members of the fleet (issue 22): the real Claude Code CLI with `agentcom mcp`
//! configured by `run-agent --mcp`, against a scripted model on loopback. It asks a person
//! (answered through the CLI), also across a SIGKILL of its sidecar, and it delegates: two
//! children run on two other agents and its own task completes after them with their results.
//! And a plain MCP client no one here wrote (the official Python SDK) lists the tools and calls
//! each with bad arguments.

use crate::bin;
use crate::quickstart::path_with_agentcom;
use proto::api::TaskStatus;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::anthropic::{self, ScriptedClaude, Seen, Turn};
use testkit::{eventually, eventually_within, Hub, Sidecar, AGENT_WAIT};

type R = anyhow::Result<()>;

/// The README's wake command for Claude Code, with `--mcp`.
const CLAUDE_WAKE: &str = r#"agentcom run-agent --usage claude-json --mcp -- claude -p "$AGENTCOM_TASK_DESCRIPTION" --permission-mode acceptEdits --output-format json"#;

/// A worker that completes at once, saying who did what.
const WORKER: &str = r#"R="$AGENTCOM_RESULTS_DIR"; T="$AGENTCOM_TASK_ID"
touch "$R/$T.started"
printf '{"status":"success","output":"%s did %s"}' "$AGENTCOM_AGENT_ID" "$AGENTCOM_TASK_DESCRIPTION" > "$R/.$T.r" && mv "$R/.$T.r" "$R/$T.json""#;

/// A sidecar for `agent` in `root/agent`, waking `wake` with `env`.
async fn sidecar(
    hub: &Hub,
    root: &Path,
    agent: &str,
    wake: &str,
    extra: &str,
    env: &[(String, String)],
) -> anyhow::Result<(Sidecar, PathBuf)> {
    let token = hub.token(agent).await?;
    let dir = root.join(agent);
    std::fs::create_dir_all(&dir)?;
    let cfg = testkit::merge_config(
        &testkit::sidecar_config(agent, &token, &hub.ws_url(), Some(wake)),
        &format!("wake_timeout_ms = 120000\n{extra}"),
    );
    let path = dir.join("sidecar.toml");
    std::fs::write(&path, cfg)?;
    Ok((Sidecar::launch(bin(), &dir, &path, None, env)?, path))
}

fn claude_env(model: &ScriptedClaude, root: &Path) -> Vec<(String, String)> {
    let mut env = model.env(&root.join("home"));
    env.push(("PATH".into(), path_with_agentcom()));
    env
}

/// `agentcom task answer ID TEXT`, as a person types it.
fn answer_with_cli(hub: &Hub, id: &str, text: &str) -> R {
    let out = Command::new(bin())
        .args(["task", "answer", id, text])
        .env("AGENTCOM_URL", hub.url())
        .env("AGENTCOM_TOKEN", &hub.admin_token)
        .output()?;
    anyhow::ensure!(out.status.success(), "task answer: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

async fn open_question(hub: &Hub, id: &str) -> anyhow::Result<String> {
    eventually_within(AGENT_WAIT, "the agent's question to reach the hub", || async {
        let t = hub.task(id).await.map_err(|e| e.to_string())?;
        match &t.task.needs_input {
            Some(q) => Ok(format!("{}|{}|{}", q.request_id, q.question, q.options.join(","))),
            None => Err(format!("{:?}", t.task.status)),
        }
    })
    .await
}

/// Asks a person which color, then says what the answer was.
fn asks_a_person(s: &Seen) -> Turn {
    match s.tool_results().last() {
        None => Turn::Tool {
            name: "mcp__agentcom__ask_person".into(),
            input: json!({"question": "Which color?", "options": ["red", "blue"]}),
        },
        Some(answer) => Turn::Text(format!("The person chose: {answer}")),
    }
}

#[tokio::test]
async fn a_real_claude_asks_a_person_through_mcp_and_gets_the_answer_given_with_the_cli() -> R {
    anthropic::claude_bin()?;
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let model = ScriptedClaude::start(asks_a_person).await?;
    let env = claude_env(&model, root.path());
    let (_s, _) = sidecar(&hub, root.path(), "asker", CLAUDE_WAKE, "", &env).await?;
    let id = hub.submit_text("Paint the shed").await?;
    let q = open_question(&hub, &id).await?;
    assert!(q.ends_with("|Which color?|red,blue"), "{q}");
    answer_with_cli(&hub, &id, "blue")?;
    let done = hub.wait_status_within(AGENT_WAIT, &id, TaskStatus::Completed).await?;
    assert_eq!(done.task.result.as_ref().unwrap()["result"], "The person chose: blue", "{:?}", done.task.result);
    let seen = model.requests();
    let tools = &seen[0].tools;
    for t in ["ask_person", "report_progress", "submit_task", "wait_for_tasks", "task_status"] {
        assert!(tools.contains(&format!("mcp__agentcom__{t}")), "{t} in {tools:?}");
    }
    assert_eq!(seen.last().unwrap().tool_results(), ["blue"]);
    assert_eq!(seen.len(), 2, "one tool call, then the answer");
    Ok(())
}

#[tokio::test]
async fn a_question_asked_through_mcp_survives_a_sigkill_of_the_sidecar_and_is_asked_once() -> R {
    anthropic::claude_bin()?;
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let model = ScriptedClaude::start(asks_a_person).await?;
    let env = claude_env(&model, root.path());
    let (mut s, cfg) = sidecar(&hub, root.path(), "crashy", CLAUDE_WAKE, "", &env).await?;
    let id = hub.submit_text("Paint the fence").await?;
    let q = open_question(&hub, &id).await?;
    s.kill9();
    // Back on the same config: it claims the task, finds the agent still running and waiting
    // in its tool call, whose MCP server reconnects and waits for the same question.
    let _s = Sidecar::launch(bin(), cfg.parent().unwrap(), &cfg, None, &env)?;
    answer_with_cli(&hub, &id, "red")?;
    let done = hub.wait_status_within(AGENT_WAIT, &id, TaskStatus::Completed).await?;
    assert_eq!(done.task.result.as_ref().unwrap()["result"], "The person chose: red");
    let request_id = q.split('|').next().unwrap();
    let asked: Vec<_> = done.history.iter().filter(|h| h.reason.starts_with("needs input")).collect();
    assert_eq!(asked.len(), 1, "asked once: {:#?}", done.history);
    assert!(
        done.history.iter().any(|h| h.reason == format!("answer to {request_id} delivered")),
        "{:#?}",
        done.history
    );
    assert_eq!(model.requests().last().unwrap().tool_results(), ["red"], "the answer came back as the tool's result");
    Ok(())
}

/// The ids of the children a conversation's `submit_task` calls made.
fn children_of(s: &Seen) -> Vec<String> {
    s.tool_results()
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(r).ok())
        .filter_map(|v| v["task_id"].as_str().map(str::to_string))
        .collect()
}

/// Submits two children (one for each worker), waits for them, and answers with their results.
fn delegates(s: &Seen) -> Turn {
    let results = s.tool_results();
    let submit = |what: &str, cap: &str| Turn::Tool {
        name: "mcp__agentcom__submit_task".into(),
        input: json!({"description": what, "capabilities": [cap]}),
    };
    match results.len() {
        0 => submit("the-left-half", "left"),
        1 => submit("the-right-half", "right"),
        _ => {
            let last: Value = serde_json::from_str(results.last().unwrap()).unwrap_or(Value::Null);
            if last["done"] == true {
                let outputs: Vec<String> = last["tasks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| t["result"]["output"].as_str().unwrap_or("?").to_string())
                    .collect();
                Turn::Text(format!("Both halves done: {}", outputs.join("; ")))
            } else {
                Turn::Tool {
                    name: "mcp__agentcom__wait_for_tasks".into(),
                    input: json!({"task_ids": children_of(s), "timeout_s": 60}),
                }
            }
        }
    }
}

#[tokio::test]
async fn a_real_claude_delegates_two_children_to_two_agents_and_completes_after_them() -> R {
    anthropic::claude_bin()?;
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let model = ScriptedClaude::start(delegates).await?;
    let env = claude_env(&model, root.path());
    let (_lead, _) = sidecar(&hub, root.path(), "lead", CLAUDE_WAKE, "", &env).await?;
    let (_w1, _) = sidecar(&hub, root.path(), "w1", WORKER, "capabilities = [\"left\"]\n", &[]).await?;
    let (_w2, _) = sidecar(&hub, root.path(), "w2", WORKER, "capabilities = [\"right\"]\n", &[]).await?;
    let parent = hub
        .submit(proto::api::SubmitTask {
            assign_to: Some("lead".into()),
            ..proto::api::SubmitTask::new("Split the work")
        })
        .await?;
    let done = hub.wait_status_within(AGENT_WAIT, &parent, TaskStatus::Completed).await?;
    let text = done.task.result.as_ref().unwrap()["result"].as_str().unwrap_or("").to_string();
    assert_eq!(text, "Both halves done: w1 did the-left-half; w2 did the-right-half", "{text}");
    assert_eq!(done.children.len(), 2, "{:?}", done.children);
    for (child, agent) in done.children.iter().zip(["w1", "w2"]) {
        assert_eq!((child.status, child.assigned_to.as_deref()), (TaskStatus::Completed, Some(agent)));
        let c = hub.task(&child.task_id).await?;
        assert_eq!(c.task.parent_task_id.as_deref(), Some(parent.as_str()));
        assert_eq!(c.task.submitted_by, "lead", "the agent's own token submitted it, through its sidecar");
        assert!(c.task.completed_at <= done.task.completed_at);
    }
    // `agentcom task show` lists the children with their status.
    let out = Command::new(bin())
        .args(["task", "show", &parent])
        .env("AGENTCOM_URL", hub.url())
        .env("AGENTCOM_TOKEN", &hub.admin_token)
        .output()?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("children (2):"), "{shown}");
    for c in &done.children {
        assert!(shown.lines().any(|l| l.contains(&c.task_id) && l.contains("completed")), "{shown}");
    }
    Ok(())
}

/// The official Python SDK as a client: lists the tools, calls each with bad arguments, and a
/// good call for a task the sidecar does not hold.
const PLAIN_CLIENT: &str = r#"
import asyncio, json, os, sys
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

def field(o, snake, camel):
    # mcp 2 names fields in snake case, mcp 1 in camel case.
    return getattr(o, snake) if hasattr(o, snake) else getattr(o, camel)

async def main():
    params = StdioServerParameters(command=sys.argv[1], args=["mcp"], env=dict(os.environ))
    out = {}
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            init = await s.initialize()
            out["server"] = field(init, "server_info", "serverInfo").name
            tools = await s.list_tools()
            out["tools"] = {t.name: sorted(field(t, "input_schema", "inputSchema").get("required", [])) for t in tools.tools}
            calls = json.loads(sys.argv[2])
            out["calls"] = []
            for name, args in calls:
                try:
                    res = await s.call_tool(name, args)
                    text = " ".join(c.text for c in res.content if getattr(c, "text", None))
                    out["calls"].append({"tool": name, "is_error": bool(field(res, "is_error", "isError")), "text": text})
                except Exception as e:
                    out["calls"].append({"tool": name, "is_error": True, "text": "protocol error: " + str(e)})
    print(json.dumps(out))

asyncio.run(main())
"#;

#[tokio::test]
async fn a_plain_mcp_client_lists_the_tools_and_each_refuses_bad_arguments() -> R {
    let python = testkit::anthropic::which("python3").ok_or_else(|| anyhow::anyhow!("python3 is missing"))?;
    let probe = Command::new(&python).args(["-c", "import mcp"]).output()?;
    anyhow::ensure!(probe.status.success(), "the MCP Python SDK is missing: pip install mcp (scripts/test does)");
    let root = tempfile::tempdir()?;
    let hub = Hub::start(bin(), "")?;
    let (s, _) = sidecar(&hub, root.path(), "idle", "true", "", &[]).await?;
    let socket = s.state().join("agent.sock");
    eventually("the sidecar's socket", || async { socket.exists().then_some(()).ok_or_else(|| "not yet".to_string()) })
        .await?;
    std::fs::write(root.path().join("client.py"), PLAIN_CLIENT)?;
    let calls = json!([
        ["ask_person", {"question": 5}],
        ["ask_person", {"question": "  "}],
        ["ask_person", {"question": "q", "options": vec!["o"; 21]}],
        ["report_progress", {}],
        ["report_progress", {"message": "x".repeat(2001)}],
        ["submit_task", {"description": "x", "depends_on": ["../../etc/passwd"], "priority": "now"}],
        ["wait_for_tasks", {"task_ids": [], "timeout_s": 99999}],
        ["wait_for_tasks", {"task_ids": "task-1", "timeout_s": 1}],
        ["task_status", {"task_id": "a b"}],
        ["task_status", {"task_id": "task-stale"}],
        ["no_such_tool", {}],
    ]);
    let out = Command::new(&python)
        .arg(root.path().join("client.py"))
        .arg(bin())
        .arg(calls.to_string())
        .env("AGENTCOM_SIDECAR_SOCKET", &socket)
        .env("AGENTCOM_TASK_ID", "task-stale")
        .env("AGENTCOM_TASK_GENERATION", "1")
        .output()?;
    anyhow::ensure!(out.status.success(), "the client failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["server"], "agentcom");
    assert_eq!(
        v["tools"],
        json!({
            "ask_person": ["question"], "report_progress": ["message"], "submit_task": ["description"],
            "wait_for_tasks": ["task_ids", "timeout_s"], "task_status": ["task_id"],
        })
    );
    let texts: Vec<(bool, String)> = v["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["is_error"].as_bool().unwrap(), c["text"].as_str().unwrap().to_string()))
        .collect();
    let wants = [
        "expected a string",
        "question: must not be empty",
        "options: at most 20 options",
        "missing field `message`",
        "message: longer than 2000 characters",
        "depends_on[0]: must be",
        "task_ids: name at least one task; timeout_s: at most 3600",
        "expected a sequence",
        "task_id: must be",
        "this sidecar holds no task now (asked for task-stale)",
        "tool not found",
    ];
    for ((is_error, text), want) in texts.iter().zip(wants) {
        assert!(*is_error && text.contains(want), "{want:?} in {text:?}");
    }
    assert_eq!(texts.len(), wants.len());
    assert!(texts[5].1.contains("priority: unknown priority"), "{}", texts[5].1);
    Ok(())
}
