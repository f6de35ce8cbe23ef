//! An HTTPS client for the web console (O8), for tests and the benchmark: TLS verified against
//! the deployment CA (`ca.crt`), one request per connection, the session cookie kept.

use std::sync::Arc;

use outpost_proto::pki::{Trust, certs_from_pem, client_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Server;

/// A client with its session cookie.
pub struct ConsoleClient {
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
    /// `outpost_console=…` once signed in.
    pub cookie: Option<String>,
    /// Header lines sent with every request (each ending in `\r\n`).
    pub extra_headers: String,
}

/// One answer.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Status line and headers.
    pub head: String,
    /// Body.
    pub body: String,
}

impl ConsoleClient {
    /// For `server`'s console.
    pub fn new(server: &Server) -> ConsoleClient {
        let ca = std::fs::read_to_string(server.data.join("ca.crt")).expect("ca.crt");
        let trust = Trust::Ca(certs_from_pem(&ca, "CA").expect("CA pem"));
        let cfg = client_config(None, &trust, &[b"http/1.1"]).expect("client config");
        ConsoleClient {
            addr: server.h().console_addr().expect("console served"),
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            cookie: None,
            extra_headers: String::new(),
        }
    }

    /// Sends a request (`form`: an urlencoded body); keeps a cookie the answer sets.
    pub async fn send(&mut self, method: &str, path: &str, form: Option<&str>) -> Answer {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::try_from("outpost-server").expect("name");
        let mut s = self
            .tls
            .connect(name, tcp)
            .await
            .expect("TLS to the console");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: console\r\nConnection: close\r\n");
        if let Some(c) = &self.cookie {
            req.push_str(&format!("Cookie: {c}\r\n"));
        }
        req.push_str(&self.extra_headers);
        let body = form.unwrap_or("");
        if form.is_some() {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = vec![];
        let _ = s.read_to_end(&mut out).await;
        let out = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        if let Some(set) = head.lines().find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or(l.strip_prefix("Set-Cookie: "))
        }) {
            let c = set.split(';').next().unwrap_or_default().to_owned();
            self.cookie = (!c.ends_with('=')).then_some(c);
        }
        Answer {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    /// GET.
    pub async fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, None).await
    }
}

/// A one-time sign-in link's path (`/login?token=…`) from `admin console-login`.
pub async fn login_path(server: &Server) -> String {
    use outpost_proto::pb::admin::{Empty, admin_request::Op, admin_response::Result as R};
    match server.admin(Op::ConsoleLogin(Empty {})).await {
        R::Done(d) => {
            let url = d.message.split_whitespace().last().unwrap_or_default();
            let (_, rest) = url.split_once("/login").expect("a login link");
            format!("/login{rest}")
        }
        other => panic!("{other:?}"),
    }
}
