//! The console's HTTPS listener: TCP accepted here, TLS handshakes run in their own tasks (a
//! slow or silent client holds up no one), finished connections handed to axum.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Handshakes that may finish before axum takes them.
const READY: usize = 64;
/// Longest wait for a client's handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Connections whose TLS handshake completed.
pub struct Listener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl Listener {
    /// Accepts on `tcp` until `stop`.
    pub fn new(
        tcp: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        stop: CancellationToken,
    ) -> std::io::Result<Listener> {
        let addr = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY);
        let acceptor = TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    r = tcp.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            debug!(error = %e, "console accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stop.cancelled() => return,
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "console TLS handshake failed"),
                        Err(_) => debug!(%peer, "console TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Listener { ready, addr })
    }
}

impl axum::serve::Listener for Listener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // Stopped: nothing will come; axum's graceful shutdown ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
