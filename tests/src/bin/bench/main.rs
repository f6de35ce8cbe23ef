//! `outpost-bench`: Outpost's performance figures as ratios against bare quinn measured in the
//! same run (SPEC §8). Writes a table and `target/bench/results.json`.
//!
//! ```sh
//! cargo run --release -p outpost-tests --bin outpost-bench            # full run
//! cargo run --release -p outpost-tests --bin outpost-bench -- --quick # smoke test (CI)
//! ```

mod agents;
mod child;
mod console;
mod fanout;
mod latency;
mod leases;
mod seats;
mod update;
mod uplinks;

use agents::{connect_storm_and_push, connect_storm_two_instances, idle_memory};
use child::{ChildCmd, run_child};
use console::console_devices;
use fanout::push_fanout_bytes;
use latency::connect_latency;
use leases::leases_held;
use seats::{seat_checks, seat_checks_pg};
use update::update_fanout;
use uplinks::uplinks_held;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use outpost_proto::pb::admin::{PushRequest, admin_request::Op, admin_response::Result as R};
use outpost_server::store::{Durability, Store};
use outpost_tests::bench::{self, ScenarioResult};
use outpost_tests::{Authority, Server, test_gateway_config};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(
    name = "outpost-bench",
    about = "Outpost benchmarks with a bare-quinn baseline in the same run"
)]
struct Cli {
    /// Small sizes, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (comma-separated): connect_storm, connect_storm_2i, push_fanout, push_fanout_bytes, update_fanout, connect_latency, idle_memory, seat_checks, seat_checks_pg, uplinks, leases, console_devices.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Agents for connect_storm and push_fanout.
    #[arg(long)]
    agents: Option<usize>,
    /// Agents for update_fanout.
    #[arg(long)]
    update_agents: Option<usize>,
    /// File size for update_fanout, MiB. Every agent writes its copy: agents × size must fit
    /// on the temporary directory's disk (200 × 32 MiB = 6.4 GB by default).
    #[arg(long)]
    update_mib: Option<u64>,
    /// Idle agents for idle_memory.
    #[arg(long)]
    idle_agents: Option<usize>,
    /// Seats for seat_checks (2 x seats devices check).
    #[arg(long)]
    seats: Option<u32>,
    /// Gateway uplinks for uplinks.
    #[arg(long)]
    uplinks: Option<usize>,
    /// Secondary servers for leases.
    #[arg(long)]
    secondaries: Option<usize>,
    /// PostgreSQL for seat_checks_pg: a URL whose database the bench may create databases
    /// from (else OUTPOST_TEST_PG, else a throwaway cluster of its own via .ci/pg-cluster).
    #[arg(long)]
    pg: Option<String>,
    /// Results file.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    child: Option<ChildCmd>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    outpost_net::logging::init(Some(
        &std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(child) = cli.child {
        return rt.block_on(run_child(child));
    }
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let q = cli.quick;
    let agents = cli.agents.unwrap_or(if q { 200 } else { 2000 });
    let idle = cli.idle_agents.unwrap_or(if q { 300 } else { 10_000 });
    let seats = cli.seats.unwrap_or(if q { 500 } else { 5000 });
    let uplinks = cli.uplinks.unwrap_or(if q { 50 } else { 10_000 });
    let secondaries = cli.secondaries.unwrap_or(if q { 20 } else { 500 });
    let want = |n: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == n);
    let mut rows = vec![];
    println!(
        "outpost-bench ({} mode) on {}",
        if q { "quick" } else { "full" },
        bench::machine()
    );
    if want("connect_storm") || want("push_fanout") {
        let (storm, push) = connect_storm_and_push(agents, want("push_fanout")).await?;
        if want("connect_storm") {
            println!("{}", one(&storm));
            rows.push(storm);
        }
        if let Some(p) = push {
            println!("{}", one(&p));
            rows.push(p);
        }
    }
    if want("push_fanout_bytes") {
        let sizes: &[usize] = if q { &[10, 50] } else { &[10, 100, 1000] };
        let r = push_fanout_bytes(sizes).await?;
        println!("{}", one(&r));
        rows.push(r);
    }
    if want("update_fanout") {
        let n = cli.update_agents.unwrap_or(if q { 10 } else { 200 });
        let mib = cli.update_mib.unwrap_or(if q { 8 } else { 32 });
        let r = update_fanout(n, mib).await?;
        println!("{}", one(&r));
        rows.push(r);
    }
    if want("connect_latency") {
        let r = connect_latency(if q { 20 } else { 200 }).await?;
        println!("{}", one(&r));
        rows.push(r);
    }
    if want("idle_memory") {
        let r = idle_memory(idle).await?;
        println!("{}", one(&r));
        rows.push(r);
    }
    if want("seat_checks") {
        let r = seat_checks(seats).await?;
        println!("{}", one(&r));
        rows.push(r);
    }
    if want("seat_checks_pg") || want("connect_storm_2i") {
        let own;
        let base = match cli.pg.clone().or_else(outpost_tests::pg::cluster) {
            Some(u) => Some(u),
            None if ls_postgres() => {
                own = outpost_tests::pg::OwnCluster::start();
                Some(own.url.clone())
            }
            None => None,
        };
        match base {
            Some(base) => {
                if want("seat_checks_pg") {
                    for r in seat_checks_pg(&base, seats).await? {
                        println!("{}", one(&r));
                        rows.push(r);
                    }
                }
                if want("connect_storm_2i") {
                    let r = connect_storm_two_instances(&base, agents).await?;
                    println!("{}", one(&r));
                    rows.push(r);
                }
            }
            None => println!(
                "  seat_checks_pg, connect_storm_2i skipped: no PostgreSQL (install postgresql \
                 or pass --pg URL)"
            ),
        }
    }
    if want("uplinks") {
        let r = uplinks_held(uplinks, if q { 5 } else { 20 }).await?;
        println!("{}", one(&r));
        rows.push(r);
    }
    if want("leases") {
        let r = leases_held(secondaries, if q { 12 } else { 30 }).await?;
        println!("{}", one(&r));
        rows.push(r);
    }
    if want("console_devices") {
        let r = console_devices(if q { 10_000 } else { 100_000 }).await?;
        println!("{}", one(&r));
        rows.push(r);
    }
    let out = cli.out.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/results.json")
    });
    let table = bench::write_results(&out, &rows, &bench::machine())?;
    println!("\n{table}\nresults written to {}", out.display());
    Ok(())
}

/// Whether PostgreSQL's server binaries are installed (for a throwaway cluster).
fn ls_postgres() -> bool {
    std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|mut d| d.next().is_some())
}

fn one(r: &ScenarioResult) -> String {
    format!(
        "  {:<14} {:.2} {} (baseline {}, ratio {}) {}",
        r.name,
        r.value,
        r.unit,
        bench::figure(r.baseline),
        bench::figure(r.ratio),
        serde_json::Value::Object(r.extra.clone())
    )
}
