//! The web console (O8): server-rendered HTML over HTTPS on its own TCP port
//! (`console.listen`), everything in the binary (no script, font or style from elsewhere).
//!
//! Sign-in: with a named account's password (`accounts`), or with a one-time link that
//! `outpost-server admin console-login` (an admin certificate) prints, valid for
//! `console.login_ttl`. Either starts a session tied to that account or admin, kept by
//! the SHA-256 of an HttpOnly, Secure, SameSite=Strict cookie, ending after
//! `console.session_idle` unused or `console.session_max` in all. Every form carries the
//! session's CSRF token, checked on every POST. Actions go through the same code as the admin
//! CLI (`admin::handle`), so the console can do nothing the CLI cannot, and refuse nothing
//! differently; each one, done or refused, is written to the audit log shown in the console.

pub(crate) mod accounts;
mod act;
mod fleet;
mod manage;
mod pages;
mod servers;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use outpost_proto::pb::admin::admin_response::Result as R;
use tracing::{info, warn};

use crate::node::Node;
use crate::store::StoreError;
use crate::store::console::{AuditRow, ConsoleSession};

/// The session cookie.
const COOKIE: &str = "outpost_console";

/// The browser's address, for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::Listener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tls::Listener>) -> Self {
        Peer(*s.remote_addr())
    }
}

fn sha(s: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()))
}

pub(crate) fn secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Makes a one-time sign-in link for `admin` (the `console-login` admin command).
pub async fn login_link(node: &Node, admin: &str) -> Result<String, StoreError> {
    let c = &node.config().console;
    let Some(listen) = c.listen else {
        return Err(StoreError::Invalid(
            "the web console is off: set console.listen in server.toml (e.g. \"0.0.0.0:4443\") \
             and restart the server"
                .into(),
        ));
    };
    let token = secret();
    let now = outpost_net::unix_now();
    node.store()
        .add_console_login(&sha(&token), admin, now, now + c.login_ttl.as_secs() as i64)
        .await?;
    let base = if c.public_url.is_empty() {
        let public = node.config().client_address();
        let host = public.rsplit_once(':').map_or(public.as_str(), |(h, _)| h);
        format!(
            "https://{host}:{}",
            node.console_addr().unwrap_or(listen).port()
        )
    } else {
        c.public_url.trim_end_matches('/').to_owned()
    };
    info!(%admin, "console sign-in link made");
    Ok(format!("{base}/login?token={token}"))
}

/// Binds `console.listen` and serves the console until shutdown; returns the bound address.
pub async fn serve(node: Arc<Node>) -> std::io::Result<Option<SocketAddr>> {
    let Some(addr) = node.config().console.listen else {
        return Ok(None);
    };
    let tls = tls_config(&node).map_err(std::io::Error::other)?;
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("console.listen {addr}: {e} (pick a free address, or leave it unset)"),
        )
    })?;
    let listener = tls::Listener::new(tcp, tls, node.runtime().child_token())?;
    let bound = axum::serve::Listener::local_addr(&listener)?;
    let app = axum::Router::new()
        .route("/login", get(sign_in).post(sign_in_password))
        .route("/logout", post(sign_out))
        .route("/", get(overview))
        .route("/devices", get(devices))
        .route("/devices/{id}", get(device))
        .route("/keys", get(keys))
        .route("/groups", get(groups))
        .route("/servers", get(servers))
        .route("/updates", get(updates))
        .route("/tokens", get(tokens).post(token_create))
        .route("/notifications", get(notifications))
        .route("/hosts", get(hosts))
        .route("/audit", get(audit))
        .route("/console.css", get(pages::css))
        .fallback(|| async { pages::not_found() });
    let app = act::ROUTES
        .iter()
        .fold(app, |app, r| app.route(r, post(act::act)))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(node.clone());
    let stop = node.runtime().child_token();
    tokio::spawn(async move {
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "console stopped");
        }
    });
    info!(addr = %bound, "web console served");
    Ok(Some(bound))
}

fn tls_config(node: &Node) -> Result<Arc<rustls::ServerConfig>, String> {
    let c = &node.config().console;
    let identity = if c.cert_file.is_empty() && c.key_file.is_empty() {
        node.enrollment().certs().current().server.clone()
    } else {
        let read = |p: &str, what: &str| {
            std::fs::read_to_string(p).map_err(|e| format!("console.{what} {p}: {e}"))
        };
        let pem = outpost_proto::pki::IdentityPem {
            chain_pem: read(&c.cert_file, "cert_file")?,
            key_pem: read(&c.key_file, "key_file")?,
        };
        outpost_proto::pki::Identity::from_pem(&pem, "console certificate")
            .map_err(|e| format!("console.cert_file / console.key_file: {e}"))?
    };
    let cfg = outpost_proto::pki::server_config(
        &identity,
        &[],
        &[b"http/1.1"],
        outpost_proto::pki::ClientAuth::None,
    )
    .map_err(|e| format!("console TLS: {e}"))?;
    Ok(Arc::new(cfg))
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // `same-origin`: no address leaves for another site, and browsers send the real
    // `Origin` with the console's own POSTs (`no-referrer` makes it `null`).
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    r
}

/// The session of a request, if its cookie names a live one.
async fn session(node: &Node, headers: &HeaderMap) -> Option<(String, ConsoleSession)> {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_owned)
        })?;
    let id = sha(&cookie);
    let idle = node.config().console.session_idle.as_secs() as i64;
    let s = node
        .store()
        .console_session(&id, outpost_net::unix_now(), idle)
        .await
        .ok()??;
    Some((id, s))
}

pub(super) async fn record(
    node: &Node,
    admin: &str,
    peer: Peer,
    action: &str,
    target: &str,
    outcome: &str,
) {
    let r = AuditRow {
        at_ms: outpost_net::unix_now_ms(),
        admin: admin.to_owned(),
        address: peer.0.ip().to_string(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: outcome.to_owned(),
    };
    if let Err(e) = node.store().console_audit(&r).await {
        warn!(error = %e, "console audit record not stored");
    }
}

/// Sign-in with a one-time link (`?token=`); without one, the name and password form.
async fn sign_in(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let now = outpost_net::unix_now();
    let Some(token) = q.get("token") else {
        return pages::sign_in_form(StatusCode::OK, None);
    };
    let admin = match node.store().take_console_login(&sha(token), now).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            record(
                &node,
                "-",
                peer,
                "sign-in",
                "link",
                "refused: link unknown, used or expired",
            )
            .await;
            return pages::signed_out(
                StatusCode::FORBIDDEN,
                "This sign-in link is unknown, was used already, or expired. Run \
                 `outpost-server admin console-login` for a new one.",
            );
        }
        Err(e) => return pages::failed(&e),
    };
    start_session(&node, peer, &admin, "").await
}

/// Sign-in with an account's name and password (`accounts`).
async fn sign_in_password(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    // The form has no session to carry a CSRF token yet; a browser says where a POST came
    // from, and a sign-in posted from another site (login CSRF) is refused.
    if !same_origin(&headers) {
        record(
            &node,
            "-",
            peer,
            "sign-in",
            "password",
            "refused: posted from another site",
        )
        .await;
        return pages::csrf_refused();
    }
    let now = outpost_net::unix_now();
    let name = f
        .get("name")
        .map(|n| n.trim())
        .unwrap_or_default()
        .to_owned();
    let password = f.get("password").cloned().unwrap_or_default();
    let account = match node.store().console_account(&name).await {
        Ok(a) => a,
        Err(e) => return pages::failed(&e),
    };
    let locked = account.as_ref().is_some_and(|a| a.locked_until > now);
    let stored = account
        .as_ref()
        .map_or_else(|| accounts::decoy().to_owned(), |a| a.password_hash.clone());
    // Checked even when locked or unknown, so neither answers faster.
    let matches = tokio::task::spawn_blocking(move || accounts::verify(&stored, &password))
        .await
        .unwrap_or(false);
    let why = match (&account, locked, matches) {
        (None, ..) => "refused: no such account".to_owned(),
        (Some(a), true, _) => format!("refused: locked until {}", pages::time(a.locked_until)),
        (Some(_), false, false) => {
            match node
                .store()
                .console_sign_in_failed(&name, now, accounts::LOCK_AFTER, accounts::LOCK_FOR)
                .await
            {
                Ok(0) => "refused: wrong password".to_owned(),
                Ok(t) => format!("refused: wrong password; locked until {}", pages::time(t)),
                Err(e) => return pages::failed(&e),
            }
        }
        (Some(_), false, true) => {
            if let Err(e) = node.store().console_signed_in(&name, now).await {
                return pages::failed(&e);
            }
            return start_session(&node, peer, &name, &name).await;
        }
    };
    warn!(account = %name, %why, "console sign-in refused");
    record(&node, &name, peer, "sign-in", "password", &why).await;
    pages::sign_in_form(
        StatusCode::UNAUTHORIZED,
        Some(
            "Wrong name or password — or, after 5 failures in a row, the account is locked for \
             15 minutes. An administrator can set a new password with `outpost-server admin \
             console-account set NAME`.",
        ),
    )
}

/// Whether a request's `Origin`, when it has one, is the console's own (the `Host` it asked).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let same = origin.strip_prefix("https://") == Some(host);
    if !same {
        warn!(%origin, %host, "console request from another origin");
    }
    same
}

/// Opens a session for `admin` (`account`: the account signed in with, or empty).
async fn start_session(node: &Node, peer: Peer, admin: &str, account: &str) -> Response {
    let now = outpost_net::unix_now();
    let cookie = secret();
    let max = node.config().console.session_max.as_secs();
    let s = ConsoleSession {
        admin: admin.to_owned(),
        account: account.to_owned(),
        csrf: secret(),
        expires_at: now + max as i64,
    };
    if let Err(e) = node
        .store()
        .add_console_session(&sha(&cookie), &s, now)
        .await
    {
        return pages::failed(&e);
    }
    let how = if account.is_empty() {
        "link"
    } else {
        "password"
    };
    record(node, admin, peer, "sign-in", how, "done").await;
    let set =
        format!("{COOKIE}={cookie}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max}");
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&set) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn sign_out(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let Some((id, s)) = checked(&node, &headers, &f, peer, "sign-out", "").await else {
        return pages::csrf_refused();
    };
    let _ = node.store().end_console_session(&id).await;
    record(&node, &s.admin, peer, "sign-out", "", "done").await;
    let mut r = pages::signed_out(StatusCode::OK, "Signed out.");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "outpost_console=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// A POST's session, when its CSRF token is the session's; refusals are audited.
pub(super) async fn checked(
    node: &Node,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    peer: Peer,
    action: &str,
    target: &str,
) -> Option<(String, ConsoleSession)> {
    let Some((id, s)) = session(node, headers).await else {
        record(
            node,
            "-",
            peer,
            action,
            target,
            "refused: not signed in or session expired",
        )
        .await;
        return None;
    };
    let sent = form.get("csrf").map(String::as_str).unwrap_or_default();
    // Compared in constant time (for equal lengths; the length of a token is no secret).
    let same = sent.len() == s.csrf.len()
        && sent
            .bytes()
            .zip(s.csrf.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        record(
            node,
            &s.admin,
            peer,
            action,
            target,
            "refused: missing or wrong CSRF token",
        )
        .await;
        return None;
    }
    Some((id, s))
}

macro_rules! signed_in {
    ($node:expr, $headers:expr) => {
        match session(&$node, &$headers).await {
            Some((_, s)) => s,
            None => {
                return pages::sign_in_form(
                    StatusCode::UNAUTHORIZED,
                    Some("Not signed in, or the session expired: sign in again."),
                );
            }
        }
    };
}

async fn overview(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let s = signed_in!(node, headers);
    pages::overview(&node, &s).await
}

async fn devices(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = signed_in!(node, headers);
    pages::devices(&node, &s, &q, None).await
}

async fn device(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = signed_in!(node, headers);
    pages::device(&node, &s, &id, None).await
}

async fn keys(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let s = signed_in!(node, headers);
    manage::keys(&node, &s, None).await
}

async fn groups(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let s = signed_in!(node, headers);
    fleet::groups(&node, &s, None).await
}

async fn servers(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let s = signed_in!(node, headers);
    servers::page(&node, &s, None).await
}

async fn updates(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let s = signed_in!(node, headers);
    fleet::updates(&node, &s).await
}

async fn tokens(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let s = signed_in!(node, headers);
    manage::tokens(&node, &s, None, None).await
}

async fn token_create(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let Some((_, s)) = checked(&node, &headers, &f, peer, "token-create", "").await else {
        return pages::csrf_refused();
    };
    let answer = match manage::token_op(&f) {
        Ok(op) => manage::run(&node, &s, op).await,
        Err(e) => Err(e),
    };
    let (outcome, token) = match answer {
        Ok(R::TokenCreated(t)) => (
            format!(
                "done: token {} for {} in {}, {} use(s)",
                t.token_id, t.role, t.group, t.uses
            ),
            Some(t.token),
        ),
        Ok(_) => ("done".to_owned(), None),
        Err(e) => (format!("refused: {e}"), None),
    };
    // The audit log names the token's id, never the token.
    record(&node, &s.admin, peer, "token-create", "", &outcome).await;
    manage::tokens(&node, &s, Some(&outcome), token.as_deref()).await
}

async fn notifications(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = signed_in!(node, headers);
    let kind = q.get("kind").map(|k| k.trim()).unwrap_or_default();
    manage::notifications(&node, &s, kind).await
}

async fn hosts(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = signed_in!(node, headers);
    manage::hosts(&node, &s, q.contains_key("unmanaged")).await
}

async fn audit(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let s = signed_in!(node, headers);
    pages::audit(&node, &s).await
}
