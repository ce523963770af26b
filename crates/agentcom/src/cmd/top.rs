//! `agentcom top`: a live terminal view of the supervisor's processes and, when a hub answers,
//! its agents (pm2's `monit`, process-compose's view), refreshed every second; `q`, Esc or
//! Ctrl-C quit and give the terminal back as it was. Text from outside (names, tasks) is
//! escaped before it is drawn.

use super::process::Sup;
use proto::api::{AgentList, ListAgents};
use proto::control::ProcStatus;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Frame;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    sup: Sup,
    /// Hub base URL for the agents (several separated by commas).
    #[arg(long, env = "AGENTCOM_URL", default_value = client::DEFAULT_URL)]
    url: String,
    /// Bearer token; defaults to a local hub's admin.token, as for the other hub commands.
    #[arg(long, env = "AGENTCOM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data dir whose admin.token is the default token.
    #[arg(long, env = "AGENTCOM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PEM CA certificates to trust for an https:// hub, besides the built-in roots.
    #[arg(long, env = "AGENTCOM_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// How often the view is refreshed.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

/// What one refresh saw.
#[derive(Debug)]
pub struct Snapshot {
    /// The processes, or why there are none to show.
    pub procs: Result<Vec<ProcStatus>, String>,
    /// The hub's agents, or why not.
    pub agents: Result<AgentList, String>,
    pub hub: String,
    pub now_ms: u64,
}

fn cell(s: &str) -> String {
    human::printable(&s.replace(['\n', '\r', '\t'], " "))
}

fn status_style(status: &str) -> Style {
    match status {
        "online" | "idle" | "working" => Style::default().fg(Color::Green),
        "errored" | "offline" => Style::default().fg(Color::Red),
        "launching" | "stopping" | "waiting-restart" | "restarting" => Style::default().fg(Color::Yellow),
        _ => Style::default().fg(Color::DarkGray),
    }
}

/// Draws one snapshot: a title line, the processes, the agents.
pub fn render(f: &mut Frame, s: &Snapshot) {
    let [title, procs, agents] =
        Layout::vertical([Constraint::Length(1), Constraint::Percentage(60), Constraint::Fill(1)]).areas(f.area());
    f.render_widget(
        Paragraph::new(Line::from("agentcom top — q to quit")).style(Style::default().add_modifier(Modifier::BOLD)),
        title,
    );
    let bold = Style::default().add_modifier(Modifier::BOLD);
    match &s.procs {
        Ok(list) => {
            let mut by_id: Vec<&ProcStatus> = list.iter().collect();
            by_id.sort_by_key(|p| p.id);
            let rows = by_id.into_iter().map(|p| {
                let up = supervisor::cli::running(&p.status);
                let none = || "—".to_string();
                Row::new(vec![
                    p.id.to_string(),
                    cell(&p.name),
                    p.status.clone(),
                    if p.pid == 0 { "-".into() } else { p.pid.to_string() },
                    if up { format!("{:.1}%", p.cpu_percent) } else { none() },
                    if up { human::bytes(p.memory_bytes) } else { none() },
                    p.restart_count.to_string(),
                    if up { human::short_duration(p.uptime_ms) } else { "-".into() },
                ])
                .style(status_style(&p.status))
            });
            let widths = [4, 32, 16, 8, 8, 12, 9, 8].map(Constraint::Length);
            let header = Row::new(["ID", "NAME", "STATUS", "PID", "CPU", "MEMORY", "RESTARTS", "UPTIME"]).style(bold);
            let table = Table::new(rows, widths)
                .header(header)
                .block(Block::default().borders(Borders::ALL).title(format!(" Processes ({}) ", list.len())));
            f.render_widget(table, procs);
        }
        Err(why) => f.render_widget(
            Paragraph::new(cell(why)).block(Block::default().borders(Borders::ALL).title(" Processes ")),
            procs,
        ),
    }
    let hub = cell(&s.hub);
    match &s.agents {
        Ok(list) => {
            let rows = list.agents.iter().map(|a| {
                let status = a.status.as_str();
                Row::new(vec![
                    cell(&a.agent_id),
                    status.to_string(),
                    a.current_task.as_deref().map(cell).unwrap_or_else(|| "-".into()),
                    human::age(Some(a.last_seen), s.now_ms),
                ])
                .style(status_style(status))
            });
            let widths =
                [Constraint::Length(32), Constraint::Length(12), Constraint::Length(40), Constraint::Length(12)];
            let header = Row::new(["ID", "STATUS", "TASK", "LAST SEEN"]).style(bold);
            let title = format!(" Agents ({}) at {hub} ", list.agents.len());
            let table =
                Table::new(rows, widths).header(header).block(Block::default().borders(Borders::ALL).title(title));
            f.render_widget(table, agents);
        }
        Err(why) => f.render_widget(
            Paragraph::new(cell(why)).block(Block::default().borders(Borders::ALL).title(format!(" Agents at {hub} "))),
            agents,
        ),
    }
}

/// What the hub says of its agents, within `limit`.
async fn agents(hub: &Result<client::Client, String>, limit: Duration) -> Result<AgentList, String> {
    let hub = hub.as_ref().map_err(String::clone)?;
    match tokio::time::timeout(limit, hub.call(&ListAgents { limit: Some(200), cursor: None })).await {
        Ok(Ok(list)) => Ok(list),
        Ok(Err(e)) => Err(format!("no agents: {e}")),
        Err(_) => Err(format!("no agents: the hub did not answer within {} ms", limit.as_millis())),
    }
}

fn processes(backend: &supervisor::backend::Backend) -> Result<Vec<ProcStatus>, String> {
    match backend.list_if_running() {
        Ok(Some(list)) => Ok(list),
        Ok(None) => Err(format!("no supervisor running in {} (agentcom start launches one)", backend.dir.display())),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn run(a: TopArgs) -> anyhow::Result<u8> {
    let backend = a.sup.backend()?;
    let token = a.token.clone().or_else(|| client::find_admin_token(a.data_dir.as_deref()).ok().map(|(t, _)| t));
    let hub = client::Client::new(&a.url, token, a.ca_file.as_deref()).map_err(|e| e.to_string());
    let interval = Duration::from_millis(a.interval_ms.max(100));
    let shutdown = crate::shutdown_on_signals()?;
    let mut terminal = ratatui::try_init()?;
    let result = view(&mut terminal, &backend, &hub, &a.url, interval, &shutdown).await;
    // Whatever happened, the terminal is given back as it was (the panic hook does it on a panic).
    ratatui::restore();
    result
}

async fn view(
    terminal: &mut ratatui::DefaultTerminal,
    backend: &supervisor::backend::Backend,
    hub: &Result<client::Client, String>,
    url: &str,
    interval: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<u8> {
    let mut due = Instant::now();
    let mut snap: Option<Snapshot> = None;
    loop {
        if Instant::now() >= due {
            let agents = agents(hub, interval.max(Duration::from_secs(1))).await;
            let now_ms = client::now_ms();
            snap = Some(Snapshot { procs: processes(backend), agents, hub: url.to_string(), now_ms });
            due = Instant::now() + interval;
        }
        if let Some(s) = &snap {
            terminal.draw(|f| render(f, s))?;
        }
        // Keys are read in short waits, and the runtime gets a turn between them: a signal
        // (SIGTERM, SIGHUP) ends the view too.
        let wait = due.saturating_duration_since(Instant::now()).min(Duration::from_millis(200));
        if event::poll(wait)? {
            if let Event::Key(k) = event::read()? {
                let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if k.kind == KeyEventKind::Press && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c) {
                    return Ok(0);
                }
            }
        }
        tokio::task::yield_now().await;
        if shutdown.is_cancelled() {
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;

    fn proc(id: u32, name: &str, status: &str) -> ProcStatus {
        ProcStatus {
            id,
            name: name.into(),
            pid: 40 + id,
            status: status.into(),
            uptime_ms: 65_000,
            restart_count: 2,
            memory_bytes: 3 << 20,
            cpu_percent: 1.5,
            exit_code: None,
            unstable_restarts: 0,
            spec_hash: None,
            daemon_root: None,
            reason: None,
            tmux: false,
            instance_of: None,
        }
    }

    fn screen(s: &Snapshot) -> String {
        let mut t = ratatui::Terminal::new(TestBackend::new(120, 20)).unwrap();
        t.draw(|f| render(f, s)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>() + "\n")
            .collect()
    }

    #[test]
    fn processes_and_why_there_are_no_agents_are_drawn_with_hostile_names_escaped() {
        let s = Snapshot {
            procs: Ok(vec![proc(0, "web", "online"), proc(1, "evil\u{1b}[2J", "stopped")]),
            agents: Err("no agents: connection refused".into()),
            hub: "http://127.0.0.1:1".into(),
            now_ms: 0,
        };
        let text = screen(&s);
        let row = text.lines().find(|l| l.contains("web")).unwrap();
        assert!(
            row.contains("online") && row.contains("1.5%") && row.contains("3.0 MiB") && row.contains("1m"),
            "{row}"
        );
        assert!(text.contains("evil\\u{1b}[2J") && !text.contains('\u{1b}'), "{text}");
        let stopped = text.lines().find(|l| l.contains("evil")).unwrap();
        assert!(stopped.contains("—"), "no figures for a stopped process: {stopped}");
        assert!(text.contains("Processes (2)") && text.contains("no agents: connection refused"), "{text}");
    }
}
