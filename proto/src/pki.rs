//! PKI helpers: the deployment's own CA (T2), certificates per role, CSRs for enrollment (S6),
//! fingerprints, and the rustls configurations every Outpost link uses.
//!
//! Roles are encoded in the certificates so that one CA can serve them all without one role
//! impersonating another:
//!
//! | role    | DNS names                                   | extended key usage |
//! |---------|---------------------------------------------|--------------------|
//! | server  | `outpost-server` + configured names         | server + client    |
//! | gateway | `outpost-gateway`, `<id>.gateway.outpost`   | server + client    |
//! | agent   | `<id>.agent.outpost`                        | client             |
//! | admin   | `<id>.admin.outpost`                        | client             |
//!
//! Clients verify a server as `outpost-server` and a gateway as `outpost-gateway`, so an agent
//! or gateway certificate can never pass as the server. Which device a client certificate
//! belongs to is decided by the server's registry (by fingerprint), not by names.
//!
//! This module does no I/O: callers read and write the PEM strings.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, ServerName, UnixTime,
};

/// The name every server certificate carries and every client verifies.
pub const SERVER_NAME: &str = "outpost-server";
/// The name every gateway certificate carries and agents verify.
pub const GATEWAY_NAME: &str = "outpost-gateway";

/// Validity of the CA certificate.
const CA_VALIDITY_DAYS: i64 = 20 * 365;
/// Validity of server, gateway, agent and admin certificates. Re-enrolling replaces one.
const LEAF_VALIDITY_DAYS: i64 = 10 * 365;

/// Errors of certificate and key handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// rcgen could not generate or sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM input did not hold what it should.
    #[error("{what}: not a valid PEM {expected} ({detail})")]
    Pem {
        /// Which input.
        what: String,
        /// What kind of PEM object was expected.
        expected: &'static str,
        /// Parser detail.
        detail: String,
    },
    /// A certificate signing request was malformed or its signature did not verify.
    #[error("certificate signing request rejected: {0}")]
    BadCsr(rcgen::Error),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// A certificate could not be parsed.
    #[error("certificate could not be parsed: {0}")]
    Parse(String),
}

/// The role a certificate is issued for; decides names and key usages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// An `outpost-server`.
    Server,
    /// An `outpost-gateway` (serves agents, dials the server).
    Gateway,
    /// An endpoint agent.
    Agent,
    /// An administrator.
    Admin,
}

impl CertRole {
    fn names(self, id: &str, extra: &[String]) -> Vec<String> {
        match self {
            CertRole::Server => {
                let mut v = vec![SERVER_NAME.to_owned()];
                v.extend(extra.iter().cloned());
                v
            }
            CertRole::Gateway => vec![GATEWAY_NAME.to_owned(), format!("{id}.gateway.outpost")],
            CertRole::Agent => vec![format!("{id}.agent.outpost")],
            CertRole::Admin => vec![format!("{id}.admin.outpost")],
        }
    }

    fn ekus(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            CertRole::Server | CertRole::Gateway => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            CertRole::Agent | CertRole::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

/// A certificate chain (leaf first, then the CA) and its private key, as PEM.
#[derive(Clone)]
pub struct IdentityPem {
    /// Leaf certificate then CA certificate.
    pub chain_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for IdentityPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityPem").finish_non_exhaustive()
    }
}

/// A parsed identity, ready for rustls.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Parses an identity from PEM text.
    pub fn from_pem(pem: &IdentityPem, what: &str) -> Result<Identity, PkiError> {
        let chain = certs_from_pem(&pem.chain_pem, what)?;
        let key =
            PrivateKeyDer::from_pem_slice(pem.key_pem.as_bytes()).map_err(|e| PkiError::Pem {
                what: what.to_owned(),
                expected: "PRIVATE KEY",
                detail: e.to_string(),
            })?;
        Ok(Identity { chain, key })
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

/// Parses every certificate in a PEM text; at least one must be present.
pub fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what: what.to_owned(),
            expected: "CERTIFICATE",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what: what.to_owned(),
            expected: "CERTIFICATE",
            detail: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}

/// PEM-encodes one DER certificate.
pub fn cert_to_pem(der: &[u8]) -> String {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// SHA-256 of a DER certificate: how the server's registry knows a device.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The deployment's certificate authority.
pub struct Ca {
    cert_der: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn offset(now_unix: i64, days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(now_unix + days * 86_400)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

impl Ca {
    /// Creates a new CA named after the deployment. `now_unix` is the current time.
    pub fn generate(deployment: &str, now_unix: i64) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Outpost CA {deployment}"));
        dn.push(DnType::OrganizationName, "Outpost");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = offset(now_unix, -1);
        params.not_after = offset(now_unix, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_der: cert.der().clone(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let cert_der = certs_from_pem(cert_pem, "CA certificate")?.remove(0);
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem {
            what: "CA key".to_owned(),
            expected: "PRIVATE KEY",
            detail: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Ca {
            cert_der,
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        cert_to_pem(&self.cert_der)
    }

    /// The CA private key, PEM (store it with mode 0600).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn leaf_params(
        &self,
        role: CertRole,
        id: &str,
        extra_names: &[String],
        now_unix: i64,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = role
            .names(id, extra_names)
            .into_iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = role.ekus();
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset(now_unix, -1);
        params.not_after = offset(now_unix, LEAF_VALIDITY_DAYS);
        params.serial_number = Some(random_serial());
        Ok(params)
    }

    /// Issues a certificate and a fresh key pair (the server's own, and the admin's at init).
    pub fn issue(
        &self,
        role: CertRole,
        id: &str,
        extra_names: &[String],
        now_unix: i64,
    ) -> Result<IdentityPem, PkiError> {
        let key = KeyPair::generate()?;
        let params = self.leaf_params(role, id, extra_names, now_unix)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IdentityPem {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem()),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for the public key in a CSR. Only the key is taken from the CSR:
    /// names, usages and validity are the server's decision, never the requester's.
    pub fn issue_for_csr(
        &self,
        csr_der: &[u8],
        role: CertRole,
        id: &str,
        now_unix: i64,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr_der.to_vec(),
        ))
        .map_err(PkiError::BadCsr)?;
        let params = self.leaf_params(role, id, &[], now_unix)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(cert.der().clone())
    }
}

fn random_serial() -> rcgen::SerialNumber {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random");
    b[0] &= 0x7f; // positive
    rcgen::SerialNumber::from_slice(&b)
}

/// A self-signed certificate and key for `name` (the licence authority service, which is
/// trusted by pinning its certificate rather than through a CA).
pub fn self_signed(name: &str, now_unix: i64) -> Result<IdentityPem, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.not_before = offset(now_unix, -1);
    params.not_after = offset(now_unix, LEAF_VALIDITY_DAYS);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;
    Ok(IdentityPem {
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A key pair generated on the device and the CSR carrying its public key (S6).
pub struct CsrPair {
    /// PKCS#8 private key PEM; never leaves the device.
    pub key_pem: String,
    /// The signing request, DER.
    pub csr_der: Vec<u8>,
}

/// Generates a key pair and a CSR for enrollment.
pub fn generate_csr(hostname: &str) -> Result<CsrPair, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hostname);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok(CsrPair {
        key_pem: key.serialize_pem(),
        csr_der: csr.der().to_vec(),
    })
}

/// Common name of a certificate (the device id for certificates this CA issued).
pub fn common_name(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(cn)
}

/// Whether a certificate carries a DNS name (how a gateway in DMZ mode recognises the server).
pub fn has_dns_name(der: &[u8], name: &str) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|g| {
        matches!(g, x509_parser::extensions::GeneralName::DNSName(n) if n.eq_ignore_ascii_case(name))
    })
}

/// The crypto provider every Outpost TLS configuration uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, PkiError> {
    let mut store = RootCertStore::empty();
    store.add(ca.clone())?;
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

/// A TLS 1.3 server configuration with this identity, verifying clients against the CA.
pub fn server_config(
    identity: &Identity,
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
    client_auth: ClientAuth,
) -> Result<rustls::ServerConfig, PkiError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required | ClientAuth::OptionalForEnrollment => {
            let mut vb = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider);
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
    /// The deployment CA certificate (enrolled devices).
    Ca(CertificateDer<'static>),
    /// Only the SHA-256 of the CA certificate, from an enrollment token: the server's chain
    /// must contain a CA certificate with this hash, and the leaf must verify against it.
    PinnedCa([u8; 32]),
    /// The SHA-256 of the peer's own (self-signed) certificate: the licence authority service.
    PinnedLeaf([u8; 32]),
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
        Trust::Ca(ca) => builder.with_root_certificates(roots(ca)?),
        Trust::PinnedCa(hash) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
                pin: *hash,
                provider: provider.clone(),
                leaf: false,
            })),
        Trust::PinnedLeaf(hash) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
                pin: *hash,
                provider: provider.clone(),
                leaf: true,
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
            return if fingerprint(end_entity) == self.pin {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General(
                    "the licence authority's certificate does not match licensing.authority_tls_sha256".to_owned(),
                ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issues_from_csr_ignoring_requested_names() {
        let ca = Ca::generate("test", 1_700_000_000).unwrap();
        let csr = generate_csr("evil.example").unwrap();
        let cert = ca
            .issue_for_csr(&csr.csr_der, CertRole::Agent, "d-1", 1_700_000_000)
            .unwrap();
        assert_eq!(common_name(&cert).unwrap(), "d-1");
        let reloaded = Ca::load(&ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(reloaded.cert_der(), ca.cert_der());
    }

    #[test]
    fn tampered_csr_is_rejected() {
        let ca = Ca::generate("test", 1_700_000_000).unwrap();
        let mut csr = generate_csr("host").unwrap();
        let n = csr.csr_der.len();
        csr.csr_der[n - 5] ^= 0xff;
        assert!(matches!(
            ca.issue_for_csr(&csr.csr_der, CertRole::Agent, "d-1", 1_700_000_000),
            Err(PkiError::BadCsr(_))
        ));
    }
}
