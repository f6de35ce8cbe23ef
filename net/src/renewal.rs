//! Certificate renewal and trust updates on a device (S9), shared by agents and gateways: when
//! to renew, the key pair kept in memory while the server issues, and the identity to swap in
//! afterwards. The caller rebuilds its TLS configurations from the identity returned.

use std::path::Path;

use outpost_proto::pb::v1::{CertRenewed, TrustUpdate};
use outpost_proto::pki;
use rustls_pki_types::CertificateDer;
use tracing::{info, warn};

use crate::identity::DeviceIdentity;

/// A renewal in flight: the new key pair, kept in memory until its certificate arrives.
#[derive(Debug, Default)]
pub struct Renewal {
    key_pem: Option<String>,
}

impl Renewal {
    /// A CSR for a new key pair when the renewal is `due` (from
    /// [`DeviceIdentity::renewal_due`], computed once per identity) at `now` and none is asked
    /// for.
    pub fn request_if_due(&mut self, due: i64, hostname: &str, now: i64) -> Option<Vec<u8>> {
        if self.key_pem.is_some() || now < due {
            return None;
        }
        match pki::generate_csr(if hostname.is_empty() {
            "device"
        } else {
            hostname
        }) {
            Ok(csr) => {
                info!("certificate due for renewal: asking the server for a new one");
                self.key_pem = Some(csr.key_pem);
                Some(csr.csr_der)
            }
            Err(e) => {
                warn!(error = %e, "cannot generate a key pair for renewal");
                None
            }
        }
    }

    /// The server issued the renewed certificate: stored in `data`; returns the identity to
    /// use from the next connection on (`None`, logged, keeps the current one).
    pub fn done(
        &mut self,
        id: &DeviceIdentity,
        data: &Path,
        r: CertRenewed,
    ) -> Option<DeviceIdentity> {
        let key = self.key_pem.take()?;
        let mut next = id.clone();
        let cas = r.ca_der.into_iter().map(CertificateDer::from).collect();
        match next.renewed(data, &key, r.certificate_der, cas) {
            Ok(()) => {
                info!(
                    expires = %outpost_proto::licence::key::format_time(next.expires_at()),
                    "certificate renewed"
                );
                Some(next)
            }
            Err(e) => {
                warn!(error = %e, "renewed certificate not stored; the current one stays");
                None
            }
        }
    }

    /// When to look again (Unix seconds), given the identity's renewal point; `None` while a
    /// renewal is in flight.
    pub fn next_check(&self, due: i64) -> Option<i64> {
        self.key_pem.is_none().then_some(due)
    }
}

/// A trust update from the server: the CA set stored in `data`; returns the identity to use
/// from the next connection on.
pub fn with_trust(id: &DeviceIdentity, data: &Path, t: TrustUpdate) -> Option<DeviceIdentity> {
    let cas: Vec<CertificateDer<'static>> =
        t.ca_der.into_iter().map(CertificateDer::from).collect();
    if cas.is_empty() {
        return None;
    }
    let mut next = id.clone();
    next.cas = cas;
    if let Err(e) = next.save_trust(data) {
        warn!(error = %e, "the CA set from the server could not be stored");
        return None;
    }
    info!(cas = next.cas.len(), "trusted CAs updated by the server");
    Some(next)
}
