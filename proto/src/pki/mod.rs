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

mod ca;
mod tls;

use rcgen::ExtendedKeyUsagePurpose;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use ca::{
    Ca, CsrPair, common_name, generate_csr, has_dns_name, issued_by, renewal_due, self_signed,
    validity,
};
pub use tls::{
    ClientAuth, Pins, Trust, client_config, provider, server_config, server_config_with_pins,
};

/// Lower-case hex of a fingerprint, as every message and record shows it.
pub fn hex(fp: &[u8; 32]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name every server certificate carries and every client verifies.
pub const SERVER_NAME: &str = "outpost-server";
/// The name every gateway certificate carries and agents verify.
pub const GATEWAY_NAME: &str = "outpost-gateway";

/// Validity of a CA certificate; `admin status` shows each CA's expiry, and `ca roll-over`
/// (S9) replaces one long before.
const CA_VALIDITY_DAYS: i64 = 20 * 365;
/// Default lifetime of server, gateway, agent and admin certificates (S9): renewed over a live
/// session once two thirds of it has passed.
pub const DEFAULT_LEAF_LIFETIME_SECS: i64 = 365 * 86_400;
/// The self-signed licence authority service certificate (pinned by fingerprint, so a new one
/// means a new pin everywhere): long-lived on purpose.
const SELF_SIGNED_VALIDITY_DAYS: i64 = 10 * 365;

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

/// One hash over a set of CA certificates (order does not matter): how a device and the
/// server compare the trust they hold (S9).
pub fn trust_sha256(cas: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut fps: Vec<[u8; 32]> = cas.iter().map(|c| fingerprint(c)).collect();
    fps.sort_unstable();
    fps.dedup();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for f in &fps {
        ctx.update(f);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issues_from_csr_ignoring_requested_names() {
        let ca = Ca::generate("test", 1_700_000_000).unwrap();
        let csr = generate_csr("evil.example").unwrap();
        let cert = ca
            .issue_for_csr(&csr.csr_der, CertRole::Agent, "d-1", 1_700_000_000, 86_400)
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
            ca.issue_for_csr(&csr.csr_der, CertRole::Agent, "d-1", 1_700_000_000, 86_400),
            Err(PkiError::BadCsr(_))
        ));
    }

    #[test]
    fn s9_lifetime_renewal_point_and_issuer() {
        let now = 1_700_000_000;
        let old = Ca::generate("test", now).unwrap();
        let new = Ca::generate("test 2026", now).unwrap();
        let csr = generate_csr("host").unwrap();
        let year = 365 * 86_400;
        let cert = new
            .issue_for_csr(&csr.csr_der, CertRole::Agent, "d-1", now, year)
            .unwrap();
        let (from, until) = validity(&cert).unwrap();
        assert_eq!(until, now + year);
        assert!(
            from <= now && now - from <= 3_600,
            "back-dated at most an hour"
        );
        let due = renewal_due(&cert).unwrap();
        assert!(
            due > now + year * 6 / 10 && due < now + year * 7 / 10,
            "{due}"
        );
        assert!(issued_by(&cert, new.cert_der()));
        assert!(
            !issued_by(&cert, old.cert_der()),
            "the old CA did not issue it"
        );
        // A short lifetime is not swallowed by the back-dating.
        let short = new
            .issue_for_csr(&csr.csr_der, CertRole::Agent, "d-1", now, 30)
            .unwrap();
        assert!(renewal_due(&short).unwrap() > now);
        assert_eq!(
            trust_sha256(&[old.cert_der().clone(), new.cert_der().clone()]),
            trust_sha256(&[new.cert_der().clone(), old.cert_der().clone()]),
            "order does not matter"
        );
        assert_ne!(
            trust_sha256(&[old.cert_der().clone()]),
            trust_sha256(&[new.cert_der().clone(), old.cert_der().clone()])
        );
    }
}
