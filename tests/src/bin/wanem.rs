//! `outpost-wanem`: a UDP relay that adds delay and random loss in both directions, for
//! network tests on kernels without `sch_netem`. Runs inside a test bed namespace between the
//! office and the server: clients send to `--listen`, the relay forwards to `--to` from one
//! socket per client (so it also behaves like one more NAT on the path).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::UdpSocket;

#[derive(Parser)]
#[command(
    name = "outpost-wanem",
    about = "UDP relay with delay and loss (test tool)"
)]
struct Cli {
    /// Address clients send to.
    #[arg(long)]
    listen: SocketAddr,
    /// Where to relay.
    #[arg(long)]
    to: SocketAddr,
    /// Percentage of datagrams dropped, each direction.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Added one-way delay, each direction.
    #[arg(long, default_value = "0ms")]
    delay: humantime::Duration,
}

fn lost(pct: f64) -> bool {
    rand::random::<f64>() * 100.0 < pct
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let delay: Duration = cli.delay.into();
    let front = Arc::new(UdpSocket::bind(cli.listen).await?);
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    println!("READY");
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = front.recv_from(&mut buf).await?;
        let up = match clients.get(&from) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(UdpSocket::bind("0.0.0.0:0").await?);
                s.connect(cli.to).await?;
                clients.insert(from, s.clone());
                // Replies from the server go back to this client, delayed and thinned too.
                let (s2, front2, loss) = (s.clone(), front.clone(), cli.loss);
                tokio::spawn(async move {
                    let mut b = vec![0u8; 65536];
                    while let Ok(n) = s2.recv(&mut b).await {
                        if lost(loss) {
                            continue;
                        }
                        let data = b[..n].to_vec();
                        let f = front2.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = f.send_to(&data, from).await;
                        });
                    }
                });
                s
            }
        };
        if lost(cli.loss) {
            continue;
        }
        let data = buf[..n].to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = up.send(&data).await;
        });
    }
}
