//! What kube-proxy does on one node to a packet for a Service (the API's `service`).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One backend a Service address is translated to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBackend {
    pub ip: IpAddr,
    pub port: u16,
}

/// One Service port as the node's kube-proxy programmed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// `namespace/name/protocol/port-name`, as kube-proxy names it.
    pub service: String,
    /// The address and port matched: a ClusterIP (of the family asked for) and its
    /// port, or the unspecified address (`0.0.0.0`, `::`) and the node port.
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// Whether this is the NodePort of the Service (any node address).
    pub node_port: bool,
    /// The rule that translates it (an nftables chain, or an iptables chain).
    pub rule: String,
    /// The backends kube-proxy picks among (randomly, or by session affinity); empty:
    /// the Service has no ready endpoint and its packets are refused.
    pub backends: Vec<ServiceBackend>,
}

/// The answer: which kube-proxy mode the node runs (as its rules show), the matching
/// Service ports, and the command that shows the rules.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServiceReport {
    /// `nftables`, `iptables`, or `none` (no kube-proxy rules on this node).
    pub proxy: String,
    pub ports: Vec<ServicePort>,
    pub cmd: String,
}
