//! `outpost-admin`: everything an administration tool needs to talk to an Outpost server, and
//! nothing of the server itself (no database, no CA): the admin bundle on disk
//! ([`bundle`]), requests over `outpost-admin/1` ([`client`]), human and JSON rendering of
//! results ([`render`]), and the `admin` command line ([`cli`]) that `outpost-server admin`
//! runs. A web console or another tool links this crate.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod cli;
pub mod client;
pub mod console;
pub mod hierarchy;
pub mod render;
pub mod tasks;
pub mod updates;

pub use client::{AdminClient, AdminError};
