//! `outpost-gateway`: the distribution point of a remote office. It holds one persistent QUIC
//! uplink out through the office NAT to the server (T3) and relays every agent session over
//! it end to end (S1), so nothing in the office needs an inbound port from the internet and
//! the server can reach every agent at any time (T7).
#![forbid(unsafe_code)]

pub mod cache;
pub mod certs;
pub mod config;
pub mod discovery;
pub mod fanout;
pub mod metrics;
pub mod node;
pub mod office;
pub mod relay;
pub mod status;
pub mod uplink;

pub use config::GatewayConfig;
pub use node::{GatewayHandle, StartOptions, start};
