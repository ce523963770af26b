//! HA benchmark (issue 13): real hub processes on a private PostgreSQL with its durable defaults
//! (fsync and synchronous commit on), started and removed by the bench, next to one hub on
//! SQLite where the figure has a peer: lifecycles per second and submit → assign latency; the
//! time from a leader's SIGKILL (and SIGSTOP) to a standby serving; and how soon agents are
//! identified again at the new leader: 100 real sidecars, and 10,000 simulated agents.

mod failover;
mod fleet;

use crate::hub::{self, Workload};
use crate::pct;
use anyhow::Result;
use std::path::Path;
use testkit::{Hub, HubCluster, Postgres};

#[derive(clap::Args)]
pub struct Args {
    /// Which parts to run.
    #[arg(long, value_delimiter = ',', default_value = "lifecycles,failover,sidecars,fleet")]
    only: Vec<Part>,
    /// Simulated agents in the lifecycle runs.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Sequential submissions for the latency run.
    #[arg(long, default_value_t = 2000)]
    latency_tasks: usize,
    /// Tasks for the throughput run.
    #[arg(long, default_value_t = 20000)]
    tasks: usize,
    /// Concurrent HTTP submitters in the throughput run.
    #[arg(long, default_value_t = 32)]
    submitters: usize,
    /// Leases to measure failover with (the default lease first).
    #[arg(long, value_delimiter = ',', default_value = "5000,1000")]
    lease_ms: Vec<u64>,
    /// Failovers of each kind per lease.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Open tasks the new leader loads in the failover runs.
    #[arg(long, default_value_t = 1000)]
    open_tasks: usize,
    /// Real sidecars in the re-identify run.
    #[arg(long, default_value_t = 100)]
    sidecars: usize,
    /// Failovers in the sidecar and simulated-fleet runs.
    #[arg(long, default_value_t = 3)]
    fleet_repeats: usize,
    /// Simulated agents in the large re-identify run.
    #[arg(long, default_value_t = 10000)]
    fleet: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Part {
    Lifecycles,
    Failover,
    Sidecars,
    Fleet,
}

pub async fn run(bin: &Path, args: Args) -> Result<()> {
    println!("agentcom HA benchmark (release binary {})", bin.display());
    let pg = Postgres::start_durable()?;
    println!("PostgreSQL: a private cluster at {} (fsync, synchronous_commit and full_page_writes on)", pg.admin_url());
    if args.only.contains(&Part::Lifecycles) {
        lifecycles(bin, &args, &pg).await?;
    }
    if args.only.contains(&Part::Failover) {
        failover::run(bin, &args, &pg).await?;
    }
    if args.only.contains(&Part::Sidecars) {
        fleet::sidecars(bin, &args, &pg).await?;
    }
    if args.only.contains(&Part::Fleet) {
        fleet::simulated(bin, &args, &pg).await?;
    }
    Ok(())
}

/// The `bench hub` workload on one hub on SQLite, then on the leader of two hubs on PostgreSQL.
async fn lifecycles(bin: &Path, args: &Args, pg: &Postgres) -> Result<()> {
    let w = Workload {
        agents: args.agents,
        latency_tasks: args.latency_tasks,
        tasks: args.tasks,
        submitters: args.submitters,
    };
    println!(
        "\n== lifecycles: {} simulated agents, {} sequential submissions, then {} tasks from {} submitters",
        w.agents, w.latency_tasks, w.tasks, w.submitters
    );
    let sqlite = Hub::start(bin, hub::PRODUCTION)?;
    let on_sqlite = hub::lifecycles(&sqlite, &w).await?;
    drop(sqlite);
    let cluster = HubCluster::start_on(bin, pg.share(), 2, hub::PRODUCTION)?;
    let (leader, _) = cluster.settled().await?;
    let on_pg = hub::lifecycles(cluster.hub(leader), &w).await?;
    drop(cluster);
    println!("{:<48} {:>14} {:>22}", "", "SQLite (1 hub)", "PostgreSQL (leader+1)");
    let row = |name: &str, a: f64, b: f64, digits: usize| {
        println!("{name:<48} {a:>14.digits$} {b:>22.digits$}");
    };
    row("lifecycles/s (submit, assign, accept, complete)", on_sqlite.per_sec(), on_pg.per_sec(), 0);
    row("submit -> task_assign p50 (ms)", pct(&on_sqlite.latency_ms, 0.5), pct(&on_pg.latency_ms, 0.5), 2);
    row("submit -> task_assign p99 (ms)", pct(&on_sqlite.latency_ms, 0.99), pct(&on_pg.latency_ms, 0.99), 2);
    let max = |l: &[f64]| l.last().copied().unwrap_or(0.0);
    row("submit -> task_assign max (ms)", max(&on_sqlite.latency_ms), max(&on_pg.latency_ms), 2);
    let per_commit = |l: &hub::Lifecycles| (l.lifecycles * 4) as f64 / l.commits.max(1.0);
    row("state changes per durable commit", per_commit(&on_sqlite), per_commit(&on_pg), 1);
    Ok(())
}

/// Median and max of samples in ms, for a line of figures.
fn median_max(samples: &mut [f64]) -> String {
    samples.sort_by(|a, b| a.total_cmp(b));
    format!("median {:.0} ms, max {:.0} ms", pct(samples, 0.5), samples.last().copied().unwrap_or(f64::NAN))
}
