//! `agentcom startup`: the supervisor started at boot by systemd, as `pm2 startup` does. For
//! this user it writes the unit into their systemd folder and enables it; with `--system` it
//! prints a unit for the system's systemd and how to install it.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Command;
use supervisor::startup::{system_unit, user_unit, UnitArgs, UNIT};

/// The exit code when the unit is written but could not be enabled (no user systemd to ask).
pub const NOT_ENABLED: u8 = 2;

#[derive(clap::Args)]
pub struct StartupArgs {
    /// Print a unit for the system's systemd (multi-user.target) and how to install it, instead
    /// of installing one for this user.
    #[arg(long)]
    system: bool,
    /// With --system: whose supervisor the unit runs (default: the user who ran sudo, else
    /// this one).
    #[arg(long, value_name = "USER", requires = "system")]
    user: Option<String>,
    /// Print this user's unit instead of writing and enabling it.
    #[arg(long, visible_alias = "dry-run")]
    print: bool,
}

fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p);
    }
    Ok(std::env::current_dir().context("the current folder")?.join(p))
}

/// `systemctl --user ARGS`: what went wrong, in words, if it did not work.
fn systemctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("systemctl").arg("--user").args(args).output().map_err(|e| format!("systemctl: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(if why.is_empty() { format!("systemctl --user {} failed: {}", args.join(" "), out.status) } else { why })
}

pub fn run(a: StartupArgs) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("find the agentcom binary")?;
    let path = std::env::var("PATH").ok();
    if a.system {
        let (me, sudo) = supervisor::client::user_names();
        let user = a.user.or(sudo).or(me).context("who runs the supervisor? name the user with --user")?;
        let home = supervisor::client::home_of(&user).with_context(|| format!("no user named {user}"))?;
        let dir = home.join(".agentcom/supervisor");
        let unit = system_unit(&UnitArgs { exe: &exe, dir: &dir, path: path.as_deref() }, &user)
            .map_err(anyhow::Error::msg)?;
        crate::out::print(unit)?;
        eprintln!(
            "To start {user}'s supervisor at boot, as root:\n  agentcom startup --system --user {user} > /etc/systemd/system/{UNIT}.service\n  systemctl daemon-reload && systemctl enable --now {UNIT}",
            user = client::printable(&user)
        );
        return Ok(0);
    }
    let dir = absolute(supervisor::client::default_dir())?;
    let unit = user_unit(&UnitArgs { exe: &exe, dir: &dir, path: path.as_deref() }).map_err(anyhow::Error::msg)?;
    if a.print {
        crate::out::print(unit)?;
        return Ok(0);
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| supervisor::client::home_dir().map(|h| h.join(".config")))
        .context("no home folder to write the unit into ($HOME)")?;
    let file = config.join("systemd/user").join(format!("{UNIT}.service"));
    write(&file, &unit)?;
    crate::out::println(format!("wrote {}", file.display()))?;
    match systemctl(&["daemon-reload"]).and_then(|()| systemctl(&["enable", UNIT])) {
        Ok(()) => {
            crate::out::println(format!(
                "enabled {UNIT}: your supervisor starts with your systemd session; to start it at boot \
                 without a login: loginctl enable-linger $USER"
            ))?;
            Ok(0)
        }
        Err(why) => {
            eprintln!(
                "error: the unit is written but not enabled: {}\n  where a user systemd runs, enable it with: \
                 systemctl --user daemon-reload && systemctl --user enable {UNIT}",
                client::printable(&why)
            );
            Ok(NOT_ENABLED)
        }
    }
}

fn write(file: &Path, unit: &str) -> anyhow::Result<()> {
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(file, unit).with_context(|| format!("write {}", file.display()))
}
