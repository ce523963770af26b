//! The CLI as a new user meets it (issue 10): pipes, refusals that say what to do, URLs, `--help`,
//! times people read, and agents that never existed. Every test runs the real binary.

use crate::bin;
use proto::api::SubmitTask;
use std::process::{Command, Output, Stdio};
use testkit::{Hub, WsAgent};

type R = anyhow::Result<()>;

/// `agentcom ARGS` as a user runs it against `hub`, from a folder with no admin token.
fn cli(hub: &Hub, token: Option<&str>, args: &[&str]) -> Output {
    let elsewhere = std::env::temp_dir();
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(&elsewhere)
        .env("AGENTCOM_URL", hub.url())
        .env("AGENTCOM_DATA_DIR", elsewhere.join("no-such-agentcom-data"))
        .env_remove("AGENTCOM_TOKEN");
    if let Some(t) = token {
        c.env("AGENTCOM_TOKEN", t);
    }
    c.output().expect("run agentcom")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn a_closed_pipe_ends_the_command_quietly() -> R {
    let hub = Hub::start(bin(), "")?;
    for n in 0..300 {
        let mut t = SubmitTask::new(format!("task {n} with a description long enough to fill the pipe quickly"));
        t.assign_to = Some("nobody".into());
        hub.submit(t).await?;
    }
    for args in [&["task", "list", "--limit", "300"][..], &["task", "list", "--json", "--limit", "300"]] {
        let mut child = Command::new(bin())
            .args(args)
            .env("AGENTCOM_URL", hub.url())
            .env("AGENTCOM_TOKEN", &hub.admin_token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // `| true`: the reader goes away before reading anything.
        drop(child.stdout.take());
        let out = child.wait_with_output()?;
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(101), "no panic: {err}");
        assert!(out.status.success(), "exits quietly like ripgrep: {:?} {err}", out.status);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    }
    Ok(())
}

#[tokio::test]
async fn refused_tokens_say_where_the_token_came_from_and_how_to_set_it() -> R {
    let hub = Hub::start(bin(), "")?;
    let out = cli(&hub, None, &["task", "list"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("error: unauthorized"), "{err}");
    for hint in ["AGENTCOM_TOKEN", "no-such-agentcom-data/admin.token", "AGENTCOM_DATA_DIR", "agentcom token create"] {
        assert!(err.contains(hint), "{hint} in: {err}");
    }
    let out = cli(&hub, Some("stale-token"), &["agents"]);
    let err = stderr(&out);
    assert!(err.starts_with("error: invalid_token") && err.contains("--token or AGENTCOM_TOKEN"), "{err}");
    // An admin.token of another hub, found in the data dir, is named as such.
    let other = tempfile::tempdir()?;
    std::fs::write(other.path().join("admin.token"), "the-admin-token-of-another-hub\n")?;
    let out = Command::new(bin())
        .args(["task", "list"])
        .env("AGENTCOM_URL", hub.url())
        .env("AGENTCOM_DATA_DIR", other.path())
        .env_remove("AGENTCOM_TOKEN")
        .output()?;
    let err = stderr(&out);
    assert!(err.contains("refused the admin token read from") && err.contains("belongs to another hub"), "{err}");
    // An agent token on an admin route: the hub names the kind it got.
    let token = hub.token("agent-1").await?;
    let out = cli(&hub, Some(&token), &["token", "list"]);
    let err = stderr(&out);
    assert!(err.contains("forbidden") && err.contains("this is an agent token (agent agent-1)"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_malformed_url_is_named_with_the_form_expected() -> R {
    let out = Command::new(bin()).args(["agents", "--url", "127.0.0.1:4000", "--token", "t"]).output()?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("error: malformed hub URL \"127.0.0.1:4000\""), "{err}");
    assert!(err.contains("http://HOST:PORT") && !err.contains("relative URL without a base"), "{err}");
    Ok(())
}

/// A URL where nothing listens (bound, then released).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    format!("http://{}", l.local_addr().expect("bound"))
}

#[tokio::test]
async fn a_list_of_hub_urls_reaches_the_hub_that_serves() -> R {
    let hub = Hub::start(bin(), "")?;
    let (dead1, dead2) = (dead_url(), dead_url());
    let list = format!("{dead1}, {}", hub.url());
    let out = cli(&hub, Some(&hub.admin_token), &["agents", "--url", &list]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout)?, "no agents\n");
    // No hub of the list serves: each is named with its reason, on one line.
    let list = format!("{dead1},{dead2}");
    let out = cli(&hub, Some(&hub.admin_token), &["agents", "--url", &list]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.starts_with("error: no hub served the request: "), "{err}");
    assert!(err.contains(&format!("{dead1}: unreachable")) && err.contains(&format!("{dead2}: unreachable")), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A bad entry is named.
    let list = format!("{},,{dead1}", hub.url());
    let err = stderr(&cli(&hub, Some(&hub.admin_token), &["agents", "--url", &list]));
    assert!(err.starts_with("error: malformed hub URL") && err.contains("empty"), "{err}");
    Ok(())
}

#[tokio::test]
async fn task_show_prints_times_people_read() -> R {
    let hub = Hub::start(bin(), "")?;
    let id = hub.submit_text("read my times").await?;
    let out = cli(&hub, Some(&hub.admin_token), &["task", "show", &id]);
    let text = String::from_utf8(out.stdout)?;
    let this_year = &humantime_year();
    let history: Vec<&str> = text.lines().skip_while(|l| *l != "history:").skip(1).collect();
    assert_eq!(history.len(), 1, "{text}");
    assert!(history[0].trim_start().starts_with(this_year) && history[0].contains("s ago)"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("created") && l.contains('T') && l.contains("Z (")), "{text}");
    // --json keeps the machine's epoch milliseconds.
    let out = cli(&hub, Some(&hub.admin_token), &["task", "show", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(v["history"][0]["at"].as_u64().is_some_and(|ms| ms > 1_600_000_000_000));
    Ok(())
}

/// The current UTC year, as ISO 8601 timestamps start.
fn humantime_year() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // Good for centuries: days since 1970 / 365.2425.
    (1970.0 + (secs / 86_400) as f64 / 365.2425).floor().to_string()
}

#[tokio::test]
async fn restarting_an_agent_tells_unknown_from_offline() -> R {
    let hub = Hub::start(bin(), "")?;
    let out = cli(&hub, Some(&hub.admin_token), &["agent", "restart", "nobody"]);
    let err = stderr(&out);
    assert!(err.starts_with("error: unknown_agent: no agent nobody was ever seen"), "{err}");
    let token = hub.token("gone").await?;
    WsAgent::identify(&hub.ws_url(), "gone", &token, &[]).await?.close().await;
    let err = testkit::eventually("gone to be offline", || async {
        let err = stderr(&cli(&hub, Some(&hub.admin_token), &["agent", "restart", "gone"]));
        if err.contains("agent_not_connected") {
            Ok(err)
        } else {
            Err(err)
        }
    })
    .await?;
    assert!(err.contains("gone is offline; it gets no commands until it reconnects"), "{err}");
    Ok(())
}

/// Every command reachable from `agentcom --help`, as argument paths.
fn commands(path: &[String]) -> Vec<Vec<String>> {
    let out = Command::new(bin()).args(path).arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut found = vec![path.to_vec()];
    let section: Vec<&str> =
        help.lines().skip_while(|l| *l != "Commands:").skip(1).take_while(|l| l.starts_with("  ")).collect();
    for line in section {
        let name = line.split_whitespace().next().unwrap_or("");
        if name != "help" && !name.is_empty() {
            let mut next = path.to_vec();
            next.push(name.to_string());
            found.extend(commands(&next));
        }
    }
    found
}

#[test]
fn every_argument_in_help_is_described_and_env_vars_appear_once() {
    let all = commands(&[]);
    assert!(all.len() > 30, "{all:?}");
    let daemons =
        [&["hub"][..], &["sidecar"], &["supervisor"], &["daemons", "watch"], &["guard", "watch"], &["integrate"]];
    for path in &all {
        let out = Command::new(bin()).args(path).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let item = line.trim_start();
            let is_arg =
                line.starts_with("  ") && (item.starts_with('-') || item.starts_with('<') || item.starts_with('['));
            if !is_arg || help.lines().take(i).all(|l| l != "Options:" && l != "Arguments:") {
                continue;
            }
            let described = item.split_once("  ").map(|(_, d)| d.trim()).unwrap_or("");
            let next = lines.get(i + 1).copied().unwrap_or("");
            let continued = next.starts_with("          ") && !next.trim_start().starts_with('-');
            let own_words = !described.is_empty() && !described.starts_with('[');
            assert!(own_words || continued, "`agentcom {}`: no description for {item:?}", path.join(" "));
            assert!(line.matches("[env:").count() <= 1, "env named twice: {line}");
        }
        let runs_a_daemon = daemons.iter().any(|d| path.iter().map(String::as_str).eq(d.iter().copied()));
        let has_log_format = help.contains("--log-format");
        if !path.is_empty()
            && lines.iter().any(|l| l.trim_start().starts_with("-h, --help"))
            && !help.contains("Commands:")
        {
            assert_eq!(has_log_format, runs_a_daemon, "--log-format on `agentcom {}`", path.join(" "));
        }
    }
}
