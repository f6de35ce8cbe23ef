//! `outpost-listen ADDR`: accepts TCP connections on ADDR and closes them, until killed — a
//! host with an open port for the network-discovery tests (D3), without depending on netcat.

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .ok_or_else(|| std::io::Error::other("usage: outpost-listen ADDR:PORT"))?;
    let l = std::net::TcpListener::bind(&addr)?;
    for c in l.incoming() {
        drop(c);
    }
    Ok(())
}
