//! End-to-end tests: the real `agentcom` binary started on port 0 in a temp dir and driven as a
//! user would. One test binary (one link) with a module per concern.

use std::path::Path;

mod dashboard_support;

mod cli;
mod console;
mod daemons;
mod daemons_pm2;
mod dashboard;
mod dashboard_security;
mod demo;
mod guard;
mod ha;
mod ha_fleet;
mod ha_tls;
mod hub;
mod hub_hostile;
mod hub_protocol;
mod hub_restarts;
mod integration;
mod limits;
mod mcp;
mod quickstart;
mod sidecar;
mod sidecar_answers;
mod sidecar_hostile;
mod sidecar_hubs;
mod sidecar_input;
mod sidecar_questions;
mod sidecar_steady;
mod supervisor;
mod supervisor_cli;
mod supervisor_control;
mod supervisor_habits;
mod supervisor_pm2_keys;
mod supervisor_startup;
mod supervisor_top;
mod tls;
mod tmux;
mod workspaces;

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_agentcom"))
}
