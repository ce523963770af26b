//! agentcom supervisor: keeps processes running the way pm2 does (process groups, restart
//! policies with backoff, health checks, memory limits, rotated logs, persisted desired state),
//! drives a real pm2 where users have one, and tells a supervised program about itself.

pub mod backend;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod logs;
pub mod pm2;
pub mod selfinfo;
pub mod startup;
