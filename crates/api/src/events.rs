//! The node's drop and flow events (`{"get":"events"}`), as `podnet observe` prints them.

use serde::{Deserialize, Serialize};

/// One verdict on one packet, as `podnet observe` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the node's event log (increasing).
    pub seq: u64,
    /// RFC 3339, milliseconds.
    pub time: String,
    /// Milliseconds since the Unix epoch (for `--since`).
    pub unix_ms: u64,
    pub node: String,
    /// `dropped` or `allowed`.
    pub verdict: String,
    /// Anti-spoofing: the drop reason (`arp-spa`, `ip-src`, …). Policy: `policy`
    /// (isolated, no rule admits it), `not-programmed` (the pod's verdicts are not in
    /// place yet), or for allowed flows `policy` (a rule admits it) or `not-isolated`.
    pub reason: String,
    /// The policies that isolate the pod in this direction (comma-separated), for
    /// policy verdicts.
    pub policy: String,
    /// `ingress` or `egress` of the pod, for policy verdicts; empty for anti-spoofing.
    pub direction: String,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ARP`, `IPv6`, or the number.
    pub protocol: String,
    pub src: String,
    pub dst: String,
    pub src_port: u16,
    /// The destination port (0 without one).
    pub port: u16,
    /// The node's pod the verdict is about, and its namespace.
    pub pod: String,
    pub namespace: String,
    /// Anti-spoofing: the frame's Ethernet source.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub src_mac: String,
}
