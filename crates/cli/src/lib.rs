//! The `podnet` commands that ask the agents and explain what they say: `trace` (the
//! path between two pods, hop by hop), `doctor` (node-wide checks, sharing trace's
//! diagnosis), `observe` (drop and flow events), `policy` (why a flow is allowed or
//! denied, and what was refused) and `wireguard` (devices, keys, rotation).
//!
//! Everything here talks to podnetd through `podnet-api` and reads no kernel state of
//! its own, so this crate builds none of the agent: no eBPF loader, no WireGuard, no
//! async runtime. Where a command needs a cluster's names (a lab's pods), it takes an
//! [`trace::Agents`] that the caller provides.

pub mod doctor;
pub mod observe;
pub mod policy;
pub mod trace;
pub mod wireguard;
