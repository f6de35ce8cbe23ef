//! The deployment CA: creating it, issuing certificates per role (from a CSR at enrollment),
//! self-signed identities (the licence authority service), CSRs, and reading names back.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

use super::{
    CA_VALIDITY_DAYS, CertRole, IdentityPem, PkiError, SELF_SIGNED_VALIDITY_DAYS, cert_to_pem,
    certs_from_pem,
};

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
    at(now_unix + days * 86_400)
}

fn at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
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
        lifetime_secs: i64,
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
        // Back-dated a little for clocks running behind, never by a large share of the lifetime
        // (the renewal point is two thirds of not_before..not_after).
        let lifetime = lifetime_secs.max(1);
        params.not_before = at(now_unix - (lifetime / 10).min(3_600));
        params.not_after = at(now_unix + lifetime);
        params.serial_number = Some(random_serial());
        Ok(params)
    }

    /// Issues a certificate valid for `lifetime_secs` and a fresh key pair (the server's own,
    /// and the admin's at init).
    pub fn issue(
        &self,
        role: CertRole,
        id: &str,
        extra_names: &[String],
        now_unix: i64,
        lifetime_secs: i64,
    ) -> Result<IdentityPem, PkiError> {
        let key = KeyPair::generate()?;
        let params = self.leaf_params(role, id, extra_names, now_unix, lifetime_secs)?;
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
        lifetime_secs: i64,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr_der.to_vec(),
        ))
        .map_err(PkiError::BadCsr)?;
        let params = self.leaf_params(role, id, &[], now_unix, lifetime_secs)?;
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
    params.not_after = offset(now_unix, SELF_SIGNED_VALIDITY_DAYS);
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

/// A certificate's validity as Unix times: (not before, not after).
pub fn validity(der: &[u8]) -> Result<(i64, i64), PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// When a certificate is due for renewal (S9): two thirds of its validity.
pub fn renewal_due(der: &[u8]) -> Result<i64, PkiError> {
    let (from, until) = validity(der)?;
    Ok(from + (until - from) * 2 / 3)
}

/// Whether `ca` issued `cert`: the certificate's issuer is the CA's subject and its signature
/// verifies with the CA's key.
pub fn issued_by(cert: &[u8], ca: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, a))) = (
        x509_parser::parse_x509_certificate(cert),
        x509_parser::parse_x509_certificate(ca),
    ) else {
        return false;
    };
    c.issuer().as_raw() == a.subject().as_raw() && c.verify_signature(Some(a.public_key())).is_ok()
}
