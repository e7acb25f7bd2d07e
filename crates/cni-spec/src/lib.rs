//! The Container Network Interface, version 1.1, as podnet speaks it.
//!
//! This crate does no I/O: it turns the runtime's environment variables and the network
//! configuration on stdin into typed values, and typed results and errors back into the
//! JSON that a runtime expects for the `cniVersion` it asked for. Everything that touches
//! the kernel lives in `podnet-netlink`; everything that decides lives in `podnet-cni`.
//!
//! Supported versions: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0 (see [`version`]).

pub mod config;
pub mod env;
pub mod error;
pub mod net;
pub mod result;
pub mod version;

#[cfg(test)]
mod hostile_tests;

pub use config::{Attachment, NetConf};
pub use env::{Command, Env};
pub use error::{code, CniError};
pub use net::Ipv4Net;
pub use result::{CniResult, Interface, IpConfig, Route};
pub use version::Version;
