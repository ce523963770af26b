//! `run-agent --mcp`: the agent's command with `agentcom mcp` configured as its MCP server
//! `agentcom`, so one line of sidecar config gives a real agent the fleet's tools.
//!
//! - Claude Code (`claude`): a config file `{"mcpServers": {"agentcom": ...}}` beside the task
//!   file, passed with `--mcp-config`, and `mcp__agentcom` added to `--allowedTools` (Claude
//!   Code asks before any MCP tool otherwise, and in `-p` mode nobody answers).
//! - Codex (`codex`): `-c mcp_servers.agentcom.*` overrides, with
//!   `default_tools_approval_mode = "approve"` (else every call is refused) and a tool timeout
//!   above `agentcom mcp`'s longest wait.
//!
//! The server's environment names the wake's task, attempt and sidecar socket explicitly,
//! whatever the CLI passes down.

use crate::local::wire::SOCKET_ENV;
use serde_json::json;
use std::path::Path;

/// The server's name: its tools are `mcp__agentcom__<tool>`.
pub const SERVER: &str = "agentcom";
/// Codex's `tool_timeout_sec`: above `agentcom mcp`'s default longest wait (25 minutes).
pub const CODEX_TOOL_TIMEOUT_S: u64 = 1800;

/// The wake's variables the MCP server needs.
pub const PASSED: [&str; 3] = ["AGENTCOM_TASK_ID", "AGENTCOM_TASK_GENERATION", SOCKET_ENV];

/// Which agent CLI `program` is, by its file name.
fn kind(program: &str) -> Option<&'static str> {
    match Path::new(program).file_name()?.to_str()? {
        "claude" => Some("claude"),
        "codex" => Some("codex"),
        _ => None,
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// The command with the server configured. `exe` is this binary; `env` the variables to pass;
/// `config` where Claude Code's config file goes (written here).
pub fn configure(cmd: &[String], exe: &Path, env: &[(String, String)], config: &Path) -> Result<Vec<String>, String> {
    let (program, args) = cmd.split_first().ok_or("no command given")?;
    let exe = exe.to_str().ok_or("this binary's path is not UTF-8")?;
    match kind(program) {
        Some("claude") => {
            let env: serde_json::Map<String, serde_json::Value> =
                env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let file = json!({"mcpServers": {SERVER: {"type": "stdio", "command": exe, "args": ["mcp"], "env": env}}});
            osutil::fs::write_atomic(config, file.to_string().as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
            let mut out = vec![program.clone()];
            let mut allowed = false;
            let mut it = args.iter().peekable();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--allowedTools" | "--allowed-tools" => {
                        out.push(a.clone());
                        if let Some(v) = it.next() {
                            out.push(format!("{v} mcp__{SERVER}"));
                            allowed = true;
                        }
                    }
                    _ => match a.split_once('=') {
                        Some((flag @ ("--allowedTools" | "--allowed-tools"), v)) => {
                            out.push(format!("{flag}={v} mcp__{SERVER}"));
                            allowed = true;
                        }
                        _ => out.push(a.clone()),
                    },
                }
            }
            out.push("--mcp-config".into());
            out.push(config.display().to_string());
            if !allowed {
                out.push("--allowedTools".into());
                out.push(format!("mcp__{SERVER}"));
            }
            Ok(out)
        }
        Some(_) => {
            let env: Vec<String> = env.iter().map(|(k, v)| format!("{k} = {}", toml_str(v))).collect();
            let key = format!("mcp_servers.{SERVER}");
            let mut out = vec![program.clone()];
            for (k, v) in [
                ("command", toml_str(exe)),
                ("args", "[\"mcp\"]".to_string()),
                ("env", format!("{{ {} }}", env.join(", "))),
                ("default_tools_approval_mode", "\"approve\"".to_string()),
                ("tool_timeout_sec", CODEX_TOOL_TIMEOUT_S.to_string()),
            ] {
                out.push("-c".into());
                out.push(format!("{key}.{k}={v}"));
            }
            out.extend(args.iter().cloned());
            Ok(out)
        }
        None => Err(format!(
            "--mcp configures claude and codex; for {program}, configure an MCP server `agentcom` that runs `agentcom mcp` (docs/mcp.md)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn claude_gets_a_config_file_and_the_tools_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("t.mcp.json");
        let env = vec![("AGENTCOM_TASK_ID".to_string(), "task-1".to_string())];
        let exe = Path::new("/usr/bin/agentcom");
        let out = configure(&args(&["claude", "-p", "do it"]), exe, &env, &config).unwrap();
        let c = config.display().to_string();
        assert_eq!(out, args(&["claude", "-p", "do it", "--mcp-config", &c, "--allowedTools", "mcp__agentcom"]));
        let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        assert_eq!(
            file,
            json!({"mcpServers": {"agentcom": {"type": "stdio", "command": "/usr/bin/agentcom", "args": ["mcp"], "env": {"AGENTCOM_TASK_ID": "task-1"}}}})
        );
        let out =
            configure(&args(&["/x/claude", "--allowedTools", "Bash Write", "-p", "x"]), exe, &env, &config).unwrap();
        assert_eq!(
            out,
            args(&["/x/claude", "--allowedTools", "Bash Write mcp__agentcom", "-p", "x", "--mcp-config", &c])
        );
        let out = configure(&args(&["claude", "--allowed-tools=Bash"]), exe, &env, &config).unwrap();
        assert_eq!(out[1], "--allowed-tools=Bash mcp__agentcom");
    }

    #[test]
    fn codex_gets_overrides_that_approve_the_tools() {
        let env = vec![("AGENTCOM_TASK_ID".to_string(), "task-\"1".to_string())];
        let out =
            configure(&args(&["codex", "exec", "--json", "go"]), Path::new("/a"), &env, Path::new("/unused")).unwrap();
        assert_eq!(
            out,
            args(&[
                "codex",
                "-c",
                "mcp_servers.agentcom.command=\"/a\"",
                "-c",
                "mcp_servers.agentcom.args=[\"mcp\"]",
                "-c",
                "mcp_servers.agentcom.env={ AGENTCOM_TASK_ID = \"task-\\\"1\" }",
                "-c",
                "mcp_servers.agentcom.default_tools_approval_mode=\"approve\"",
                "-c",
                "mcp_servers.agentcom.tool_timeout_sec=1800",
                "exec",
                "--json",
                "go"
            ])
        );
        let e = configure(&args(&["aider"]), Path::new("/a"), &env, Path::new("/u")).unwrap_err();
        assert!(e.contains("configure an MCP server"), "{e}");
    }
}
