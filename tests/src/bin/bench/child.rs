//! Child processes of the benchmark: simulated gateways (and servers) in processes of their own,
//! so one process's open-file limit does not cap a scenario.

use super::*;

/// Child processes the benchmark measures from the outside.
#[derive(Subcommand)]
pub(crate) enum ChildCmd {
    /// Run a gateway on an enrolled data directory.
    #[command(hide = true, name = "child-gateway")]
    Gateway { data: PathBuf, server: String },
    /// Run many gateways (data directories listed one per line in a file); when stdin closes,
    /// write how many held their first uplink throughout to `<list>.held`.
    #[command(hide = true, name = "child-gateways")]
    Gateways { list: PathBuf, server: String },
    /// Run many servers (data directories listed one per line) until stdin closes; write how
    /// many held their leased seat throughout to `<list>.held`.
    #[command(hide = true, name = "child-secondaries")]
    Secondaries { list: PathBuf },
    /// Run a server on an initialised data directory.
    #[command(hide = true, name = "child-server")]
    Server { data: PathBuf },
    /// Run a bare quinn server with certificates from a directory.
    #[command(hide = true, name = "child-bare")]
    Bare { dir: PathBuf },
}

pub(crate) async fn run_child(c: ChildCmd) -> anyhow::Result<()> {
    match c {
        ChildCmd::Gateway { data, server } => {
            let mut cfg = test_gateway_config(server.parse()?);
            cfg.uplink = Default::default();
            let gw = outpost_gateway::start(
                &data,
                outpost_gateway::StartOptions {
                    config: Some(cfg),
                    no_status_file: true,
                    ..Default::default()
                },
            )
            .await?;
            gw.wait_uplink().await;
            println!("READY {}", gw.addr());
            wait_stdin_closed().await;
            gw.shutdown().await;
        }
        ChildCmd::Gateways { list, server } => {
            let mut gws = vec![];
            for d in std::fs::read_to_string(&list)?.lines() {
                let mut cfg = test_gateway_config(server.parse()?);
                cfg.uplink = Default::default(); // default 15 s keep-alive
                gws.push(
                    outpost_gateway::start(
                        Path::new(d),
                        outpost_gateway::StartOptions {
                            config: Some(cfg),
                            no_status_file: true,
                            ..Default::default()
                        },
                    )
                    .await?,
                );
            }
            for g in &gws {
                g.wait_uplink().await;
            }
            println!("READY {}", gws.len());
            wait_stdin_closed().await;
            let held = gws
                .iter()
                .filter(|g| {
                    let st = g.status();
                    st.uplink == "up" && st.uplink_connects == 1
                })
                .count();
            std::fs::write(list.with_extension("held"), held.to_string())?;
            for g in gws {
                g.shutdown().await;
            }
        }
        ChildCmd::Secondaries { list } => crate::leases::run_secondaries(&list).await?,
        ChildCmd::Server { data } => {
            let s = outpost_server::start(outpost_server::DataDir::new(&data)).await?;
            println!("READY {}", s.addr());
            wait_stdin_closed().await;
            s.shutdown().await;
        }
        ChildCmd::Bare { dir } => {
            let (ca, id) = bench::BarePki::load_server(&dir);
            let ep = bench::bare_server(&ca, &id, "127.0.0.1:0".parse()?);
            println!("READY {}", ep.local_addr()?);
            wait_stdin_closed().await;
        }
    }
    Ok(())
}

pub(crate) async fn wait_stdin_closed() {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {}
}

/// A child process, killed when dropped.
pub(crate) struct Proc {
    /// The process; killed on drop.
    pub(crate) child: Child,
    /// The address it printed once ready.
    pub(crate) addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Closing stdin asks the child to shut down cleanly (profilers write their output at
        // exit); kill it if it does not within a few seconds.
        drop(self.child.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn spawn_child(args: &[&str]) -> anyhow::Result<Proc> {
    spawn_wrapped(args, None)
}

/// Spawns a child, optionally under a wrapper command (a profiler: `heaptrack -o FILE`), and
/// waits for its `READY` line (lines a wrapper prints first are skipped).
pub(crate) fn spawn_wrapped(args: &[&str], wrapper: Option<&str>) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe()?;
    let mut cmd = match wrapper.map(|w| w.split_whitespace().collect::<Vec<_>>()) {
        Some(w) if !w.is_empty() => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(&exe);
            c
        }
        _ => Command::new(&exe),
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut reader = std::io::BufReader::new(stdout);
    loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line)? == 0 {
            anyhow::bail!("child ended before it was ready");
        }
        if let Some(addr) = line.trim().strip_prefix("READY ") {
            let addr = addr.to_owned();
            // Whatever the child prints later goes nowhere.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            return Ok(Proc { child, addr });
        }
    }
}

/// Closes the stdin of children that run many simulated nodes and sums what each wrote to
/// `<list>.held`: how many held their link (or seat) throughout.
pub(crate) async fn collect_held(procs: &mut [Proc], lists: &[PathBuf]) -> anyhow::Result<usize> {
    for p in procs.iter_mut() {
        drop(p.child.stdin.take());
    }
    let mut held = 0usize;
    for l in lists {
        let f = l.with_extension("held");
        let t0 = Instant::now();
        while !f.exists() && t0.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        held += std::fs::read_to_string(&f)
            .with_context(|| format!("{} not written", f.display()))?
            .trim()
            .parse::<usize>()?;
    }
    Ok(held)
}
