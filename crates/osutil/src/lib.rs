//! Small OS helpers shared by every agentcom daemon, so that `hub`, `sidecar` and `supervisor`
//! never reach into one another: the wall clock ([`clock`]), durable files ([`fs`]), process
//! groups ([`pgroup`]), `/proc` ([`procfs`]), thread priorities ([`sched`]) and the TLS client
//! configuration of every outgoing connection ([`tls`]).

pub mod clock;
pub mod fs;
pub mod pgroup;
pub mod procfs;
pub mod sched;
pub mod tls;
