//! agentcom guard: lets an agent change its own code safely. [`checkpoint`] saves what the agent
//! needs to carry on; [`upgrade`] is the transaction (test, journal, merge, restart, health
//! window, commit or roll back); [`watch`] rolls back an agent that stays offline after one.

pub mod checkpoint;
mod error;
pub mod git;
pub mod health;
pub mod upgrade;
pub mod watch;

pub use error::GuardError;
