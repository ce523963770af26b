//! One module per group of commands: its flags (clap derive) and the glue that calls a library.

pub mod agent;
pub mod daemons;
pub mod guard;
pub mod hub;
pub mod integrate;
pub mod process;
pub mod remote;
pub mod startup;
pub mod tmux;
pub mod top;
