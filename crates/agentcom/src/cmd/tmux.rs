//! `agentcom attach` and `agentcom send`: a person's terminal on a tmux process, and typing
//! into it (how an operator answers an interactive agent).

use super::process::Sup;
use anyhow::Context;

#[derive(clap::Args)]
pub struct AttachArgs {
    /// The tmux process (started with --tmux).
    name: String,
    #[command(flatten)]
    sup: Sup,
}

#[derive(clap::Args)]
pub struct SendArgs {
    /// The tmux process (started with --tmux).
    name: String,
    /// What to type, as it is.
    text: String,
    /// Do not press Enter after the text.
    #[arg(long)]
    no_enter: bool,
    #[command(flatten)]
    sup: Sup,
}

/// Replaces this process with `tmux attach` on the supervisor's private server: detach with
/// the usual prefix + d, and the process runs on.
pub fn attach(a: AttachArgs) -> anyhow::Result<u8> {
    let d = a.sup.backend()?.describe(&a.name)?;
    let (Some(socket), Some(session)) = (d["tmux"]["socket"].as_str(), d["tmux"]["session"].as_str()) else {
        anyhow::bail!("{} does not run in tmux (start it with --tmux)", a.name);
    };
    use std::os::unix::process::CommandExt;
    let err =
        std::process::Command::new("tmux").args(["-S", socket, "attach-session", "-t", &format!("={session}")]).exec();
    Err(err).context("cannot run tmux")
}

pub fn send(a: SendArgs) -> anyhow::Result<u8> {
    crate::out::println(a.sup.backend()?.send(&a.name, &a.text, !a.no_enter)?)?;
    Ok(0)
}
