//! The rustls configurations every Outpost link uses: servers and gateways requiring (or, for
//! enrollment, allowing the absence of) client certificates from the CA; clients trusting the
//! CA, a CA pinned by fingerprint (enrollment tokens) or a pinned leaf (the authority service).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{Identity, PkiError, fingerprint};

/// The crypto provider every Outpost TLS configuration uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut store = RootCertStore::empty();
    for ca in cas {
        store.add(ca.clone())?;
    }
    Ok(Arc::new(store))
}

/// Whether a listener requires client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client presents a certificate issued by the CA.
    Required,
    /// A client may connect without a certificate (enrollment ALPN only; the listener closes
    /// any other certificate-less connection right after the handshake). A certificate that is
    /// presented is always verified against the CA.
    OptionalForEnrollment,
    /// No client certificate is asked for (inner enrollment sessions).
    None,
}

/// The link certificates of the servers this one has relations with (H1), pinned by SHA-256:
/// shared between the listener's verifier and whoever adds or removes relations, so a change
/// applies to the next handshake without rebuilding the configuration.
#[derive(Debug, Clone, Default)]
pub struct Pins(Arc<RwLock<BTreeSet<[u8; 32]>>>);

impl Pins {
    /// Replaces the set.
    pub fn set(&self, pins: impl IntoIterator<Item = [u8; 32]>) {
        *self.0.write().expect("pins lock") = pins.into_iter().collect();
    }

    /// Whether `fp` is pinned.
    pub fn contains(&self, fp: &[u8; 32]) -> bool {
        self.0.read().expect("pins lock").contains(fp)
    }
}

/// As [`server_config`] with `ClientAuth::OptionalForEnrollment`, also accepting a client
/// whose certificate is one of `pins` (a neighbour server's link certificate, H1): no CA trust
/// across deployments — the handshake signature proves the peer holds the pinned key. A client
/// that offers only `link_alpn` is shown `link` instead of `identity`.
pub fn server_config_with_pins(
    identity: &Identity,
    cas: &[CertificateDer<'static>],
    alpn: &[&[u8]],
    pins: Pins,
    link: (&Identity, &[u8]),
) -> Result<rustls::ServerConfig, PkiError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots(cas)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Verifier(e.to_string()))?;
    let verifier = Arc::new(PinnedOrCa { inner, pins });
    let certified = |id: &Identity| -> Result<Arc<rustls::sign::CertifiedKey>, PkiError> {
        let key = provider.key_provider.load_private_key(id.key.clone_key())?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(
            id.chain.clone(),
            key,
        )))
    };
    let resolver = Arc::new(ByAlpn {
        default: certified(identity)?,
        link: certified(link.0)?,
        link_alpn: link.1.to_vec(),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

/// Shows the link certificate to clients that offer only the server-link ALPN.
#[derive(Debug)]
struct ByAlpn {
    default: Arc<rustls::sign::CertifiedKey>,
    link: Arc<rustls::sign::CertifiedKey>,
    link_alpn: Vec<u8>,
}

impl rustls::server::ResolvesServerCert for ByAlpn {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut offered = hello.alpn().into_iter().flatten();
        let link = offered.next() == Some(self.link_alpn.as_slice()) && offered.next().is_none();
        Some(if link { &self.link } else { &self.default }.clone())
    }
}

#[derive(Debug)]
struct PinnedOrCa {
    inner: Arc<dyn ClientCertVerifier>,
    pins: Pins,
}

impl ClientCertVerifier for PinnedOrCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        if self.pins.contains(&fp) {
            return Ok(ClientCertVerified::assertion());
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| {
                if super::issued_by(end_entity, end_entity) {
                    // A self-signed certificate: a server's link certificate nobody pinned.
                    rustls::Error::General(format!(
                        "link certificate sha256 {} is not pinned for any server relation here",
                        super::hex(&fp)
                    ))
                } else {
                    e
                }
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A TLS 1.3 server configuration with this identity, verifying clients against the CAs
/// (more than one during a CA roll-over, S9).
pub fn server_config(
    identity: &Identity,
    cas: &[CertificateDer<'static>],
    alpn: &[&[u8]],
    client_auth: ClientAuth,
) -> Result<rustls::ServerConfig, PkiError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required | ClientAuth::OptionalForEnrollment => {
            let mut vb = WebPkiClientVerifier::builder_with_provider(roots(cas)?, provider);
            if client_auth == ClientAuth::OptionalForEnrollment {
                vb = vb.allow_unauthenticated();
            }
            let verifier = vb.build().map_err(|e| PkiError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    // No session resumption: it buys little here (NOTES §3) and a ticket per connection is
    // memory held per idle agent.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

/// How a client decides to trust the server it reaches.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The deployment's CA certificates (enrolled devices): one, or the old and the new one
    /// during a roll-over (S9).
    Ca(Vec<CertificateDer<'static>>),
    /// Only the SHA-256 of the CA certificate, from an enrollment token: the server's chain
    /// must contain a CA certificate with this hash, and the leaf must verify against it.
    PinnedCa([u8; 32]),
    /// The SHA-256 of the peer's own (self-signed) certificate: the licence authority service.
    PinnedLeaf([u8; 32]),
    /// A neighbour server's link certificate (H1), pinned by SHA-256; a mismatch names both
    /// fingerprints and the relation.
    PinnedServer {
        /// The pinned fingerprint.
        pin: [u8; 32],
        /// The relation's name, for the message.
        relation: String,
    },
}

/// A TLS 1.3 client configuration presenting `identity` (if any).
pub fn client_config(
    identity: Option<&Identity>,
    trust: &Trust,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, PkiError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match trust {
        Trust::Ca(cas) => builder.with_root_certificates(roots(cas)?),
        Trust::PinnedCa(hash) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
                pin: *hash,
                provider: provider.clone(),
                leaf: false,
                relation: None,
            })),
        Trust::PinnedLeaf(hash) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
                pin: *hash,
                provider: provider.clone(),
                leaf: true,
                relation: None,
            })),
        Trust::PinnedServer { pin, relation } => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
                pin: *pin,
                provider: provider.clone(),
                leaf: true,
                relation: Some(relation.clone()),
            })),
    };
    let mut cfg = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// Verifies a server whose CA is known only by hash (enrollment). Not a weakening: the chain
/// is fully verified by webpki against the pinned CA, which the server sends along.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// Pin the end-entity certificate itself (the handshake signature still proves the peer
    /// holds its key).
    leaf: bool,
    /// A neighbour server's link certificate (H1): the relation's name, for the message.
    relation: Option<String>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.leaf {
            let got = fingerprint(end_entity);
            return match &self.relation {
                _ if got == self.pin => Ok(ServerCertVerified::assertion()),
                Some(relation) => Err(rustls::Error::General(format!(
                    "server {relation} presented link certificate sha256 {} but sha256 {} is \
                     pinned for it: another server answers at that address, or it was \
                     re-installed (export its certificate again and re-add the relation)",
                    super::hex(&got),
                    super::hex(&self.pin)
                ))),
                None => Err(rustls::Error::General(
                    "the licence authority's certificate does not match licensing.authority_tls_sha256".to_owned(),
                )),
            };
        }
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA does not match the CA fingerprint in the enrollment token \
                     (wrong server address, or a token from another deployment)"
                        .to_owned(),
                )
            })?;
        let mut store = RootCertStore::empty();
        store.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Outpost configurations speak TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
