//! Hosts found by gateways' network scans (D3) and their reconciliation with the devices'
//! inventory: a host is managed when one of its addresses (MAC, else IP) is in a device's
//! inventory. Scans only ever write `discovered_hosts`: no device is created, changed, merged
//! or deleted because of one.

use outpost_proto::pb::admin::HostInfo;
use outpost_proto::pb::v1::DiscoveredHost;

use super::{Store, StoreError};

impl Store {
    /// Records the hosts a gateway's scan saw (first seen kept, last seen moved forward).
    pub async fn record_discovery(
        &self,
        gateway: &str,
        hosts: &[DiscoveredHost],
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        for h in hosts {
            sqlx::query(
                "INSERT INTO discovered_hosts (gateway_id, mac, ip, methods, first_seen, last_seen)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (gateway_id, mac, ip) DO UPDATE SET
                    methods = excluded.methods,
                    first_seen = CASE WHEN excluded.first_seen < discovered_hosts.first_seen
                                 THEN excluded.first_seen ELSE discovered_hosts.first_seen END,
                    last_seen = CASE WHEN excluded.last_seen > discovered_hosts.last_seen
                                THEN excluded.last_seen ELSE discovered_hosts.last_seen END",
            )
            .bind(gateway)
            .bind(&h.mac)
            .bind(&h.ip)
            .bind(h.methods.join(","))
            .bind(h.first_seen)
            .bind(h.last_seen)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every discovered host, with the device on it (if any), by gateway and address.
    pub async fn discovered_hosts(&self) -> Result<Vec<HostInfo>, StoreError> {
        let rows: Vec<(String, String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT gateway_id, mac, ip, methods, first_seen, last_seen FROM discovered_hosts
             ORDER BY gateway_id, ip, mac",
        )
        .fetch_all(&self.read)
        .await?;
        let devices: Vec<(String, String)> =
            sqlx::query_as("SELECT id, addresses FROM devices WHERE addresses <> ''")
                .fetch_all(&self.read)
                .await?;
        let mut by_address = std::collections::HashMap::new();
        for (id, addresses) in &devices {
            for a in addresses.split(',').filter(|a| !a.is_empty()) {
                by_address.insert(a.to_lowercase(), id.clone());
            }
        }
        Ok(rows
            .into_iter()
            .map(|(gateway, mac, ip, methods, first_seen, last_seen)| {
                let device_id = by_address
                    .get(&mac.to_lowercase())
                    .filter(|_| !mac.is_empty())
                    .or_else(|| by_address.get(&ip))
                    .cloned()
                    .unwrap_or_default();
                HostInfo {
                    gateway,
                    ip,
                    mac,
                    methods: methods
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    first_seen,
                    last_seen,
                    device_id,
                }
            })
            .collect())
    }
}
