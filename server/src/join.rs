//! Adding an instance to a deployment on a shared PostgreSQL store (P2).
//!
//! Every instance of a deployment holds the same secrets — the CA key, the server certificate
//! and key, the grant-signing key, the link certificate neighbours pin, the admin bundle — and
//! the same `server.toml`. They never travel through the database: `outpost-server
//! join-bundle` seals them into one file with a passphrase (Argon2id → ChaCha20-Poly1305; the
//! file's header is authenticated too), the administrator carries it to the new host, and
//! `outpost-server init --join FILE` opens it there. A wrong passphrase and an altered file
//! are told apart from nothing else (AEAD), and nothing is written then.
//!
//! Not carried: the embedded store (an instance joining uses the shared database), logs and
//! the status file.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead;

use crate::config::ServerConfig;
use crate::datadir::DataDir;

const MAGIC: &[u8] = b"OUTPOST-JOIN-1\n";
const SALT: usize = 16;
const NONCE: usize = aead::NONCE_LEN;
/// Shortest passphrase accepted: the bundle holds the CA key.
pub const MIN_PASSPHRASE: usize = 12;

/// Why a bundle could not be made or used. Each names the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The passphrase is too short.
    #[error(
        "the passphrase must be at least {MIN_PASSPHRASE} characters: the bundle holds the deployment's CA key"
    )]
    WeakPassphrase,
    /// Wrong passphrase, or the file was altered or truncated.
    #[error(
        "the join bundle does not open with this passphrase, or it was altered; nothing was written"
    )]
    Sealed,
    /// Not a join bundle at all.
    #[error("{0} is not an Outpost join bundle (made with `outpost-server join-bundle`)")]
    NotABundle(String),
    /// The source or target directory does not fit.
    #[error("{0}")]
    Unfit(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    deployment: String,
    files: Vec<File>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct File {
    path: String,
    secret: bool,
    data: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JoinError + '_ {
    move |source| JoinError::Io {
        path: path.to_owned(),
        source,
    }
}

fn key_from(passphrase: &str, salt: &[u8]) -> Result<aead::LessSafeKey, JoinError> {
    let mut key = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|_| JoinError::WeakPassphrase)?;
    let unbound =
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &key).expect("32-byte key for ChaCha20");
    Ok(aead::LessSafeKey::new(unbound))
}

/// Files of a data directory that make an instance, relative paths in a stable order.
fn instance_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), JoinError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        // `.name.tmpPID`: a file the running server is writing right now (fsutil::write_atomic);
        // the finished file is the one that counts.
        if name.starts_with("outpost.db")
            || name.starts_with('.')
            || name.ends_with(".log")
            || name == "status.json"
            || name.ends_with(".tmp")
        {
            continue;
        }
        let path = e.path();
        if e.file_type().map_err(io(&path))?.is_dir() {
            instance_files(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).expect("under root").to_owned());
        }
    }
    Ok(())
}

/// Seals an instance's data directory (on PostgreSQL) into a join bundle.
pub fn seal(data: &DataDir, passphrase: &str) -> Result<Vec<u8>, JoinError> {
    if passphrase.chars().count() < MIN_PASSPHRASE {
        return Err(JoinError::WeakPassphrase);
    }
    if !data.is_initialized() {
        return Err(JoinError::Unfit(format!(
            "{} is not an initialised data directory",
            data.root().display()
        )));
    }
    let cfg = ServerConfig::load(&data.config())
        .map_err(|e| JoinError::Unfit(format!("cannot read server.toml: {e}")))?;
    if !crate::store::backend::is_postgres(&cfg.store.url) {
        return Err(JoinError::Unfit(
            "this server uses the embedded store, which one instance alone can use: move it to \
             PostgreSQL first (`outpost-server migrate-store`), then make the bundle"
                .into(),
        ));
    }
    let mut paths = vec![];
    instance_files(data.root(), data.root(), &mut paths)?;
    let mut files = vec![];
    for p in paths {
        let full = data.root().join(&p);
        let bytes = match std::fs::read(&full) {
            Ok(b) => b,
            // Replaced by the running server between the listing and now: not a file of the
            // instance any more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&full)(e)),
        };
        let name = p.to_string_lossy().into_owned();
        files.push(File {
            secret: name.ends_with(".key") || name.ends_with("key.pem"),
            path: name,
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        });
    }
    let payload = serde_json::to_vec(&Payload {
        deployment: cfg.deployment,
        files,
    })
    .expect("payload serialises");
    let salt: [u8; SALT] = rand::random();
    let nonce: [u8; NONCE] = rand::random();
    let key = key_from(passphrase, &salt)?;
    let mut sealed = payload;
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(MAGIC),
        &mut sealed,
    )
    .expect("sealing fits");
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// What the joining instance changes in the bundle's `server.toml`.
#[derive(Debug, Default, Clone)]
pub struct JoinOptions {
    /// Its UDP address.
    pub listen: Option<std::net::SocketAddr>,
    /// The address clients reach it at.
    pub public_address: Option<String>,
}

/// Opens a join bundle into an empty data directory. `server.toml` is written last, so an
/// interrupted join leaves a directory that is not initialised. Returns the configuration.
pub fn open(
    data: &DataDir,
    bundle: &[u8],
    origin: &str,
    passphrase: &str,
    opts: &JoinOptions,
) -> Result<ServerConfig, JoinError> {
    if data.is_initialized() {
        return Err(JoinError::Unfit(format!(
            "{} is already initialised; join into a new, empty data directory",
            data.root().display()
        )));
    }
    let body = bundle
        .strip_prefix(MAGIC)
        .filter(|b| b.len() > SALT + NONCE + aead::CHACHA20_POLY1305.tag_len())
        .ok_or_else(|| JoinError::NotABundle(origin.to_owned()))?;
    let (salt, rest) = body.split_at(SALT);
    let (nonce, sealed) = rest.split_at(NONCE);
    let key = key_from(passphrase, salt)?;
    let mut buf = sealed.to_vec();
    let plain = key
        .open_in_place(
            aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| JoinError::Sealed)?,
            aead::Aad::from(MAGIC),
            &mut buf,
        )
        .map_err(|_| JoinError::Sealed)?;
    let payload: Payload = serde_json::from_slice(plain).map_err(|_| JoinError::Sealed)?;
    let mut config = None;
    let mut writes = vec![];
    for f in payload.files {
        let rel = Path::new(&f.path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(JoinError::Unfit(format!(
                "the bundle names a file outside the data directory ({})",
                f.path
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&f.data)
            .map_err(|_| JoinError::Sealed)?;
        if f.path == "server.toml" {
            config = Some(bytes);
        } else {
            writes.push((data.root().join(rel), bytes, f.secret));
        }
    }
    let text = config
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| JoinError::Unfit("the bundle holds no server.toml".into()))?;
    let mut cfg: ServerConfig = toml::from_str(&text)
        .map_err(|e| JoinError::Unfit(format!("the bundle's server.toml: {e}")))?;
    if let Some(l) = opts.listen {
        cfg.listen = l;
    }
    if let Some(p) = &opts.public_address {
        cfg.public_address = p.clone();
    }
    outpost_net::config::Validate::validate(&cfg).map_err(|e| JoinError::Unfit(e.to_string()))?;
    for (path, bytes, secret) in writes {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        outpost_net::fsutil::write_atomic(&path, &bytes, secret).map_err(io(&path))?;
    }
    let path = data.config();
    outpost_net::fsutil::write_atomic(&path, cfg.to_commented_toml().as_bytes(), false)
        .map_err(io(&path))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> (tempfile::TempDir, DataDir) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a");
        std::fs::create_dir_all(root.join("admin")).unwrap();
        let cfg = ServerConfig {
            store: crate::config::StoreConfig {
                url: "postgres://u@127.0.0.1:5432/outpost".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        std::fs::write(root.join("server.toml"), cfg.to_commented_toml()).unwrap();
        std::fs::write(root.join("ca.key"), b"CA KEY").unwrap();
        std::fs::write(root.join("admin/cert.pem"), b"ADMIN").unwrap();
        std::fs::write(root.join("outpost.db"), b"not carried").unwrap();
        (dir, DataDir::new(root))
    }

    #[test]
    fn p2_join_bundle_carries_the_secrets_sealed_and_refuses_a_wrong_passphrase_or_a_change() {
        let (dir, a) = instance();
        // A file the running instance is writing at this moment (write_atomic's temporary).
        std::fs::write(a.root().join(".link.crt.tmp4242"), b"half written").unwrap();
        let bundle = seal(&a, "correct horse battery").unwrap();
        assert!(
            !bundle.windows(6).any(|w| w == b"CA KEY"),
            "secrets are not in clear"
        );
        let b = DataDir::new(dir.path().join("b"));
        let wrong = open(&b, &bundle, "f", "wrong horse battery", &Default::default());
        assert!(matches!(wrong, Err(JoinError::Sealed)), "{wrong:?}");
        let mut altered = bundle.clone();
        let n = altered.len();
        altered[n - 40] ^= 1;
        let r = open(
            &b,
            &altered,
            "f",
            "correct horse battery",
            &Default::default(),
        );
        assert!(matches!(r, Err(JoinError::Sealed)), "{r:?}");
        assert!(!b.root().exists(), "nothing written");
        let cfg = open(
            &b,
            &bundle,
            "f",
            "correct horse battery",
            &JoinOptions {
                listen: Some("127.0.0.1:4801".parse().unwrap()),
                public_address: Some("hq-2.example.com:4801".into()),
            },
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 4801);
        assert_eq!(std::fs::read(b.root().join("ca.key")).unwrap(), b"CA KEY");
        assert_eq!(
            std::fs::read(b.root().join("admin/cert.pem")).unwrap(),
            b"ADMIN"
        );
        assert!(!b.root().join("outpost.db").exists());
        assert!(
            !b.root().join(".link.crt.tmp4242").exists(),
            "temporaries are not sealed"
        );
        let again = open(
            &b,
            &bundle,
            "f",
            "correct horse battery",
            &Default::default(),
        );
        assert!(matches!(again, Err(JoinError::Unfit(_))), "{again:?}");
        assert!(matches!(seal(&a, "short"), Err(JoinError::WeakPassphrase)));
        // An embedded store cannot be shared: no bundle.
        std::fs::write(a.config(), ServerConfig::default().to_commented_toml()).unwrap();
        let r = seal(&a, "correct horse battery");
        assert!(
            matches!(&r, Err(JoinError::Unfit(m)) if m.contains("migrate-store")),
            "{r:?}"
        );
        let c = DataDir::new(dir.path().join("c"));
        assert!(matches!(
            open(
                &c,
                b"garbage",
                "f",
                "correct horse battery",
                &Default::default()
            ),
            Err(JoinError::NotABundle(_))
        ));
    }
}
