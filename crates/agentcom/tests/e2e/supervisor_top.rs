//! `agentcom top` in a real terminal: tmux (a server of the test's own) runs it, `capture-pane`
//! reads the screen until the processes and the hub's agents are on it, `q` ends it with exit 0
//! and the terminal is given back (its alternate screen left).

use crate::bin;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::{eventually, Hub, Supervised};

type R = anyhow::Result<()>;

/// A tmux server on a socket in a temp dir, killed when dropped.
struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn new() -> anyhow::Result<Tmux> {
        let dir = tempfile::tempdir()?;
        Ok(Tmux { socket: dir.path().join("tmux.sock"), _dir: dir })
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("tmux").arg("-S").arg(&self.socket).arg("-f").arg("/dev/null").args(args).output()?;
        if !out.status.success() {
            anyhow::bail!("tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"]).unwrap_or_else(|e| e.to_string())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[tokio::test]
async fn top_shows_processes_and_agents_live_and_quits_on_q() -> R {
    let s = Supervised::new(bin())?;
    s.ok(&["start", "alpha-proc", "--", "sleep", "1000"])?;
    s.ok(&["start", "beta-proc", "--restart", "never", "--", "true"])?;
    let hub = Hub::start(bin(), "")?;
    let _agent = hub.agent("agent-zeta", &[]).await?;
    let tmux = Tmux::new()?;
    // Its exit status goes to a file: tmux does not always record a pane's status when its
    // server is busy reaping (the supervisor's tmux code watches the pid for the same reason).
    let status = s.dir().with_file_name("top.status");
    let command = format!(
        "env AGENTCOM_SUPERVISOR_DIR={} AGENTCOM_URL={} AGENTCOM_TOKEN={} {} top; echo $? > {}",
        quoted(&s.dir()),
        hub.url(),
        hub.admin_token,
        quoted(bin()),
        quoted(&status)
    );
    tmux.run(&["new-session", "-d", "-s", "top", "-x", "160", "-y", "40", &command])?;
    // Kept on exit, so its status can be read.
    tmux.run(&["set-option", "-w", "-t", "top", "remain-on-exit", "on"])?;
    let screen = eventually("the processes and the agent on the screen", || async {
        let screen = tmux.screen();
        let all = ["alpha-proc", "beta-proc", "agent-zeta", "Processes (2)", "Agents (1)"];
        if all.iter().all(|w| screen.contains(w)) {
            Ok(screen)
        } else {
            Err(screen)
        }
    })
    .await?;
    let alpha = screen.lines().find(|l| l.contains("alpha-proc")).unwrap();
    assert!(alpha.contains("online") && alpha.contains('%'), "{screen}");
    // Live: a process stopped now is shown stopped at a next refresh.
    s.ok(&["stop", "alpha-proc"])?;
    eventually("alpha-proc shown stopped", || async {
        let screen = tmux.screen();
        let row = screen.lines().find(|l| l.contains("alpha-proc")).unwrap_or("").to_string();
        if row.contains("stopped") {
            Ok(())
        } else {
            Err(screen)
        }
    })
    .await?;
    tmux.run(&["send-keys", "-t", "top", "q"])?;
    eventually("top to end with exit 0", || async {
        match std::fs::read_to_string(&status) {
            Ok(s) if s == "0\n" => Ok(()),
            other => Err(format!("{other:?}; the screen:\n{}", tmux.screen())),
        }
    })
    .await?;
    let after = tmux.screen();
    assert!(!after.contains("Processes ("), "the terminal is given back:\n{after}");
    Ok(())
}
