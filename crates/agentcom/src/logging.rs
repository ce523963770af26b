//! Logging for the commands that run daemons: human or JSON lines on stderr, filtered by
//! `AGENTCOM_LOG`.

use clap::ValueEnum;

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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
