//! Logging for the commands that run daemons: human or JSON lines on stderr, filtered by
//! `AGENTCOM_LOG`. Colour only on a terminal (and never with `NO_COLOR`); control characters in
//! any value are escaped, because values come from outside (an agent id with a newline must not
//! forge a log line).

use clap::ValueEnum;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{self, Writer};
use tracing_subscriber::fmt::FormatFields;

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// The `--log-format` flag, flattened into each command that runs a daemon.
#[derive(clap::Args, Clone)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, default_value = "human", env = "AGENTCOM_LOG_FORMAT")]
    pub log_format: LogFormat,
}

pub fn init(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTCOM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let terminal = std::io::stderr().is_terminal();
    let colour = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // Under our supervisor the log file already stamps every line with the time.
    let stamped_by_supervisor = !terminal && std::env::var_os("AGENTCOM_PROCESS_NAME").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    match format {
        LogFormat::Human if stamped_by_supervisor => builder.fmt_fields(escaped_fields()).without_time().init(),
        LogFormat::Human => builder.fmt_fields(escaped_fields()).init(),
        // serde_json escapes control characters itself.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The default `message field=value` layout, with every value escaped.
fn escaped_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    format::debug_fn(|w: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn fmt::Debug| {
        if field.name() != "message" {
            write!(w, "{}=", field.name())?;
        }
        write!(Escaping(w), "{value:?}")
    })
    .delimited(" ")
}

/// Writes through, with control characters as `\n`, `\u{1b}` and the like.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if client::unsafe_for_terminal(c) {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let (mut out, from_outside) = (String::new(), "agent\n2026-11-22 INFO forged\u{1b}[31m\tx");
        write!(Escaping(&mut out), "{from_outside}").unwrap();
        assert_eq!(out, "agent\\n2026-11-22 INFO forged\\u{1b}[31m\\tx");
    }
}
