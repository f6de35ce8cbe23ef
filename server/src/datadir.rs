//! The server's data directory and its first-start initialisation (O1, P1).
//!
//! ```text
//! <data>/server.toml        configuration (written last at init: its presence means "initialised")
//! <data>/ca.crt, ca.key     the deployment CA (T2); ca.key is 0600
//! <data>/server.crt, .key   the server's certificate chain and key
//! <data>/grant.key          Ed25519 key that signs licence grants (L7), PKCS#8, 0600
//! <data>/update.key         Ed25519 key that signs update manifests (D1), PKCS#8, 0600
//! <data>/outpost.db         the SQLite store (+ -wal, -shm)
//! <data>/keys/              imported licence key files, kept even after removal (L2)
//! <data>/admin/             admin bundle: admin.toml, cert.pem, key.pem, ca.pem (O3)
//! ```

use std::path::{Path, PathBuf};

use outpost_net::config::ConfigError;
use outpost_net::fsutil::{ReadError, read_string, write_atomic};
use outpost_proto::pki::{Ca, CertRole, Identity};

use crate::config::ServerConfig;
use crate::store::{Store, StoreError, fp_hex};

/// Why a data directory could not be initialised or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// `init` on a directory that is initialised already.
    #[error("{} is already initialised", .0.display())]
    AlreadyInitialised(PathBuf),
    /// The configuration to initialise with is invalid (names the key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A file is there but unusable.
    #[error("{}: {what}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A file or directory could not be written.
    #[error("{0}")]
    Write(#[from] std::io::Error),
    /// Certificates could not be made.
    #[error("cannot create certificates: {0}")]
    Pki(#[from] outpost_proto::pki::PkiError),
    /// The store could not be created.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// What an admin passes at first start.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Listen address (default `0.0.0.0:4700`).
    pub listen: Option<std::net::SocketAddr>,
    /// Licence authority public key text.
    pub authority_public_key: String,
    /// Extra certificate names.
    pub server_names: Vec<String>,
    /// Deployment name.
    pub deployment: Option<String>,
    /// A complete config to start from (tests, sandbox); listen/authority above override it.
    pub base: Option<ServerConfig>,
}

impl DataDir {
    /// A data directory at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `server.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("server.toml")
    }
    /// The first CA's certificate, written at init. After a CA roll-over `pki.toml` names the
    /// CAs in use (`certs`).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    /// The first CA's key (see `ca_cert`).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// Server chain.
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.crt")
    }
    /// Server key.
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    /// Grant signing key.
    pub fn grant_key(&self) -> PathBuf {
        self.root.join("grant.key")
    }
    /// Update-manifest signing key (D1).
    pub fn update_key(&self) -> PathBuf {
        self.root.join("update.key")
    }
    /// Database.
    pub fn db(&self) -> PathBuf {
        self.root.join("outpost.db")
    }
    /// Key files.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// Admin bundle directory.
    pub fn admin(&self) -> PathBuf {
        self.root.join("admin")
    }

    /// Whether first-start initialisation completed.
    pub fn is_initialized(&self) -> bool {
        self.config().exists()
    }

    /// Initialises a new data directory: CA, server certificate, grant key, database, admin
    /// identity, config. A crash part-way leaves no `server.toml`, and the next start redoes
    /// the whole initialisation.
    pub async fn init(&self, opts: &InitOptions) -> Result<ServerConfig, DataDirError> {
        if self.is_initialized() {
            return Err(DataDirError::AlreadyInitialised(self.root.clone()));
        }
        if opts.authority_public_key.is_empty() {
            return Err(ConfigError::invalid(
                "first start needs the licence authority's public key: pass --authority-key <file> \
                 (create one with `outpost-server authority init --dir <dir>`)",
            )
            .into());
        }
        outpost_proto::licence::key::decode_public_key(&opts.authority_public_key)
            .map_err(|e| ConfigError::invalid(format!("--authority-key: {e}")))?;
        std::fs::create_dir_all(&self.root).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", self.root.display()),
            )
        })?;
        // Leftovers of an interrupted init.
        for f in ["outpost.db", "outpost.db-wal", "outpost.db-shm"] {
            let _ = std::fs::remove_file(self.root.join(f));
        }
        let mut cfg = opts.base.clone().unwrap_or_default();
        if let Some(l) = opts.listen {
            cfg.listen = l;
        }
        if let Some(d) = &opts.deployment {
            cfg.deployment = d.clone();
        }
        cfg.server_names.extend(opts.server_names.iter().cloned());
        cfg.authority_public_key = opts.authority_public_key.trim().to_owned();
        outpost_net::config::Validate::validate(&cfg)?;

        let now = outpost_net::unix_now();
        let ca = Ca::generate(&cfg.deployment, now)?;
        write_atomic(&self.ca_cert(), ca.cert_pem().as_bytes(), false)?;
        write_atomic(&self.ca_key(), ca.key_pem().as_bytes(), true)?;
        let server = ca.issue(
            CertRole::Server,
            "outpost-server",
            &cfg.server_names,
            now,
            cfg.certificates.server_lifetime.as_secs() as i64,
        )?;
        write_atomic(&self.server_cert(), server.chain_pem.as_bytes(), false)?;
        write_atomic(&self.server_key(), server.key_pem.as_bytes(), true)?;
        let (_, grant_pk8) = outpost_proto::licence::GrantSigner::generate();
        write_atomic(&self.grant_key(), &grant_pk8, true)?;
        let (_, update_pk8) = outpost_proto::licence::GrantSigner::generate();
        write_atomic(&self.update_key(), &update_pk8, true)?;
        std::fs::create_dir_all(self.keys())?;

        let store =
            Store::open_configured(&self.db(), &cfg.store.url, cfg.store.durability).await?;
        if store.backend() == crate::store::Backend::Postgres && store.holds_a_deployment().await? {
            return Err(StoreError::Conflict(
                "the PostgreSQL database in store.url already holds a deployment: init needs an \
                 empty database; to add an instance to that deployment, copy an instance's data \
                 directory instead (README, \"Scaling out\")"
                    .into(),
            )
            .into());
        }
        let admin_id = format!("admin-{:08x}", rand::random::<u32>());
        let admin = ca.issue(
            CertRole::Admin,
            &admin_id,
            &[],
            now,
            cfg.certificates.device_lifetime.as_secs() as i64,
        )?;
        let admin_leaf = Identity::from_pem(&admin, "admin certificate")?;
        store
            .insert_local_device(
                &admin_id,
                "admin",
                &fp_hex(&outpost_proto::pki::fingerprint(admin_leaf.leaf())),
                now,
            )
            .await?;
        store
            .record_cert(
                &admin_id,
                outpost_proto::pki::validity(admin_leaf.leaf())?.1,
                &fp_hex(&outpost_proto::pki::fingerprint(ca.cert_der())),
            )
            .await?;
        store.close().await;
        outpost_admin::bundle::write(&self.admin(), &admin, &ca.cert_pem(), &cfg.client_address())?;

        write_atomic(&self.config(), cfg.to_commented_toml().as_bytes(), false)?;
        Ok(cfg)
    }

    /// Points the admin bundle at the address the server actually listens on.
    pub fn set_admin_server(&self, server: &str) -> Result<(), DataDirError> {
        Ok(outpost_admin::bundle::set_server(&self.admin(), server)?)
    }

    /// Reads a file of the data directory.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, DataDirError> {
        Ok(outpost_net::fsutil::read(path)?)
    }

    /// Loads the server identity.
    pub fn load_server_identity(&self) -> Result<Identity, DataDirError> {
        let pem = outpost_proto::pki::IdentityPem {
            chain_pem: read_string(&self.server_cert())?,
            key_pem: read_string(&self.server_key())?,
        };
        Identity::from_pem(&pem, &self.server_cert().display().to_string()).map_err(|e| {
            DataDirError::Damaged {
                path: self.server_cert(),
                what: e.to_string(),
            }
        })
    }
}
