//! The replies that are not whole reports of their own.

use crate::{Denied, Echo, Event, PolicyStatus};
use podnet_conventions::PolicyDatapath;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The answer to `events`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventsReply {
    pub events: Vec<Event>,
    /// Ask after this next time.
    pub next: u64,
    /// Events lost so far on this node.
    pub lost: u64,
    /// Whether allowed-flow events are on now.
    #[serde(default)]
    pub allowed: bool,
}

/// A refusal: `{"error":"…"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyRevision {
    pub datapath: PolicyDatapath,
    /// Revision of the objects the datapath reflects (0: not programmed yet).
    pub revision: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyVersions {
    pub datapath: PolicyDatapath,
    pub revision: u64,
    pub error: Option<String>,
    /// Each asked key → the version programmed (`None`: none, or the object is absent).
    pub versions: BTreeMap<String, Option<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyStats {
    #[serde(flatten)]
    pub status: PolicyStatus,
    #[serde(default)]
    pub denied: Vec<Denied>,
    /// Packets to or from addresses of the node's pod CIDR no programmed pod holds.
    #[serde(default)]
    pub closed_packets: u64,
    /// Why the counters could not be read, if they could not.
    #[serde(default)]
    pub denied_error: Option<String>,
    /// What is missing from the kernel now, read when asked
    /// (the agent reads them when asked): each one opens pods (or lets one
    /// forge its source) until the agent's next round puts it back.
    #[serde(default)]
    pub enforcement: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PingReply {
    pub ip: std::net::IpAddr,
    pub size: u16,
    pub result: Echo,
}

/// What a key rotation did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Rotated {
    pub node: String,
    pub public_key_before: String,
    pub public_key: String,
    /// From the request reaching the agent's loop to the new key published.
    pub elapsed_ms: u64,
}
