//! The licence authority tool (`outpost-server authority …`): creates the authority key pair
//! and issues signed key files (L1). In production the authority is the vendor; this tool is
//! how a deployment, a test or the sandbox gets keys.

use std::path::{Path, PathBuf};

use outpost_net::fsutil::{ReadError, read, read_string, write_atomic};
use outpost_proto::licence::key::{decode_public_key, encode_public_key, parse_time};
use outpost_proto::licence::{Authority, KeyBody, LicenceKey};
use outpost_proto::pb::v1::KeyKind;

/// File of the private key in an authority directory.
pub const PRIVATE_FILE: &str = "authority.key";
/// File of the public key in an authority directory.
pub const PUBLIC_FILE: &str = "authority.pub";

/// Why an authority operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The authority key exists already.
    #[error("{} already exists; an authority key is never overwritten", .0.display())]
    Exists(PathBuf),
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A file could not be written.
    #[error("{0}")]
    Write(#[from] std::io::Error),
    /// An input is not what it should be (the text names it and the fix).
    #[error("{0}")]
    Invalid(String),
    /// TLS or the listener could not be set up.
    #[error("{0}")]
    Setup(String),
}

fn invalid(what: impl std::fmt::Display) -> AuthorityError {
    AuthorityError::Invalid(what.to_string())
}

fn setup(what: impl std::fmt::Display) -> AuthorityError {
    AuthorityError::Setup(what.to_string())
}

/// Creates an authority in `dir`; refuses to overwrite one.
pub fn init(dir: &Path) -> Result<(Authority, PathBuf), AuthorityError> {
    let private = dir.join(PRIVATE_FILE);
    if private.exists() {
        return Err(AuthorityError::Exists(private));
    }
    let (auth, pk8) = Authority::generate();
    write_atomic(&private, &pk8, true)?;
    let public = dir.join(PUBLIC_FILE);
    write_atomic(
        &public,
        format!("{}\n", encode_public_key(auth.public_key())).as_bytes(),
        false,
    )?;
    Ok((auth, public))
}

/// Loads the authority from `dir`.
pub fn load(dir: &Path) -> Result<Authority, AuthorityError> {
    let private = dir.join(PRIVATE_FILE);
    Authority::from_pkcs8(&read(&private)?)
        .map_err(|e| invalid(format!("{}: {e}", private.display())))
}

/// Reads a public key file (or the text itself).
pub fn read_public(path_or_text: &str) -> Result<String, AuthorityError> {
    let text = if path_or_text.starts_with(outpost_proto::licence::key::PUBLIC_KEY_PREFIX) {
        path_or_text.to_owned()
    } else {
        read_string(Path::new(path_or_text))?
    };
    decode_public_key(&text)
        .map_err(|e| invalid(format!("{path_or_text}: not an authority public key ({e})")))?;
    Ok(text.trim().to_owned())
}

/// Parses "now", RFC 3339, or unix seconds.
pub fn parse_when(s: &str, now: i64) -> Result<i64, AuthorityError> {
    if s == "now" {
        return Ok(now);
    }
    if let Some(t) = parse_time(s) {
        return Ok(t);
    }
    s.parse::<i64>().map_err(|_| {
        invalid(format!(
            "{s:?} is not a time: use \"now\", RFC 3339 like 2027-01-31T23:59:59Z, or unix seconds"
        ))
    })
}

/// What to put in a key.
#[derive(Debug, Clone)]
pub struct IssueSpec {
    /// Key id.
    pub key_id: String,
    /// Licensee.
    pub licensee: String,
    /// Product.
    pub product: String,
    /// Components.
    pub components: Vec<String>,
    /// Seats.
    pub seats: u32,
    /// Unix seconds.
    pub valid_from: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Demo or commercial.
    pub demo: bool,
    /// Key it renews.
    pub renews: Option<String>,
}

/// Issues a key file.
pub fn issue(auth: &Authority, spec: &IssueSpec) -> Result<LicenceKey, AuthorityError> {
    auth.issue(&KeyBody {
        key_id: spec.key_id.clone(),
        licensee: spec.licensee.clone(),
        product: spec.product.clone(),
        components: spec.components.clone(),
        seats: spec.seats,
        valid_from: spec.valid_from,
        expires_at: spec.expires_at,
        kind: if spec.demo {
            KeyKind::Demo
        } else {
            KeyKind::Commercial
        },
        renews: spec.renews.clone(),
    })
    .map_err(invalid)
}

/// Directory inside an authority directory holding renewal keys until a server fetches them.
pub const RENEWALS_DIR: &str = "renewals";

/// The running licence authority service (L11).
pub struct AuthorityService {
    /// Address it listens on.
    pub addr: std::net::SocketAddr,
    /// SHA-256 (hex) of its TLS certificate: servers pin it (`licensing.authority_tls_sha256`).
    pub tls_sha256: String,
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for AuthorityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityService")
            .field("addr", &self.addr)
            .finish()
    }
}

impl AuthorityService {
    /// Stops serving.
    pub async fn shutdown(self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"authority shutting down");
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Places a renewal key file in the authority's renewal store, where it waits until the
/// server that owns the key it renews fetches it.
pub fn offer(dir: &Path, file: &Path) -> Result<String, AuthorityError> {
    let auth = load(dir)?;
    let bytes = read(file)?;
    let key = outpost_proto::licence::verify_key_file(&bytes, auth.public_key())
        .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
    let renews = key.body.renews.clone().ok_or_else(|| {
        invalid(format!(
            "{}: key {} renews no key (issue it with --renews)",
            file.display(),
            key.body.key_id
        ))
    })?;
    write_atomic(
        &dir.join(RENEWALS_DIR)
            .join(format!("{}.key", key.body.key_id)),
        &bytes,
        false,
    )?;
    Ok(format!("{} (renews {renews})", key.body.key_id))
}

/// Starts the authority service on `listen` with the authority in `dir`. Its TLS certificate
/// is created on first start and kept in `dir`.
pub async fn serve(
    dir: &Path,
    listen: std::net::SocketAddr,
) -> Result<AuthorityService, AuthorityError> {
    use std::sync::Arc;
    let auth = Arc::new(load(dir)?);
    let cert_path = dir.join("authority-tls.pem");
    let key_path = dir.join("authority-tls.key");
    if !cert_path.exists() {
        let id = outpost_proto::pki::self_signed("outpost-authority", outpost_net::unix_now())
            .map_err(setup)?;
        write_atomic(&key_path, id.key_pem.as_bytes(), true)?;
        write_atomic(&cert_path, id.chain_pem.as_bytes(), false)?;
    }
    let identity = outpost_proto::pki::Identity::from_pem(
        &outpost_proto::pki::IdentityPem {
            chain_pem: read_string(&cert_path)?,
            key_pem: read_string(&key_path)?,
        },
        "authority TLS certificate",
    )
    .map_err(invalid)?;
    let tls_sha256 = hex::encode(outpost_proto::pki::fingerprint(identity.leaf()));
    let tls = outpost_proto::pki::server_config(
        &identity,
        std::slice::from_ref(identity.leaf()),
        &[outpost_proto::alpn::AUTHORITY],
        outpost_proto::pki::ClientAuth::None,
    )
    .map_err(setup)?;
    let cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).map_err(setup)?,
    ));
    let endpoint = outpost_net::endpoint::endpoint(listen, &Default::default(), Some(cfg))
        .map_err(|e| setup(format!("cannot listen on udp {listen}: {e}")))?;
    let addr = endpoint.local_addr()?;
    std::fs::create_dir_all(dir.join(RENEWALS_DIR))?;
    let ep = endpoint.clone();
    let dir = dir.to_owned();
    let task = tokio::spawn(async move {
        while let Some(inc) = ep.accept().await {
            let (auth, dir) = (auth.clone(), dir.clone());
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let (auth, dir) = (auth.clone(), dir.clone());
                    tokio::spawn(answer(auth, dir, send, recv));
                }
            });
        }
    });
    Ok(AuthorityService {
        addr,
        tls_sha256,
        endpoint,
        task,
    })
}

async fn answer(
    auth: std::sync::Arc<Authority>,
    dir: PathBuf,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    use futures_util::{SinkExt, StreamExt};
    use outpost_proto::pb::v1::{RenewalFile, RenewalOffer, envelope::Msg};
    let mut f = outpost_net::stream::framed(outpost_net::stream::bi(send, recv), 16 << 20);
    let Some(Ok(Msg::RenewalQuery(q))) = f.next().await else {
        return;
    };
    // Only holders of a key learn about its renewal: every file must be a key we signed.
    let mut owned = vec![];
    for file in &q.key_files {
        match outpost_proto::licence::verify_key_file(file, auth.public_key()) {
            Ok(k) => owned.push(k.body.key_id),
            Err(e) => {
                let r = outpost_proto::error::refusal(
                    outpost_proto::error::RefusalCode::InvalidArgument,
                    format!("a key file in the query does not verify: {e}"),
                );
                let _ = f.send(Msg::Refusal(r)).await;
                return;
            }
        }
    }
    let mut files = vec![];
    let store = dir.join(RENEWALS_DIR);
    if let Ok(entries) = std::fs::read_dir(&store) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "key") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            // The service is a store: it hands out what it holds for the keys asked about;
            // the server verifies every file before it stores anything.
            if let Some(renews) = renews_of(&bytes)
                && owned.contains(&renews)
            {
                files.push(RenewalFile {
                    renews,
                    file_name: e.file_name().to_string_lossy().into_owned(),
                    content: bytes,
                });
            }
        }
    }
    let _ = f
        .send(Msg::RenewalOffer(RenewalOffer {
            files: files.clone(),
        }))
        .await;
    let _ = f.close().await;
    // Held until fetched: what was handed out moves to fetched/.
    let fetched = store.join("fetched");
    let _ = std::fs::create_dir_all(&fetched);
    for r in files {
        let _ = std::fs::rename(store.join(&r.file_name), fetched.join(&r.file_name));
    }
}

/// The `renews` field of a key file, read as plain text (not verified).
fn renews_of(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("renews = ")
            .map(|v| v.trim().trim_matches('"').to_owned())
    })
}
