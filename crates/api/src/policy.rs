//! The NetworkPolicy datapath as an agent reports it: its status, per-pod verdicts
//! and the packets it refused.

use podnet_conventions::PolicyDatapath;
use podnet_policy::Direction;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One direction of one local pod, as the API reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirStatus {
    /// `open` or `isolated`.
    pub state: String,
    pub policies: Vec<String>,
    /// Entries in the datapath for this direction.
    pub entries: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodPolicyStatus {
    pub pod: String,
    pub ip: String,
    /// Its IPv6 address, programmed too, on a dual-stack node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    pub ingress: DirStatus,
    pub egress: DirStatus,
}

/// The policy side of the agent's status (the API's `{"get":"policy"}`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub datapath: PolicyDatapath,
    /// Revision of the objects the datapath reflects (0: not programmed yet).
    pub revision: u64,
    pub pods: Vec<PodPolicyStatus>,
    pub rejected: Vec<String>,
    /// Local pods left closed because their compiled tables are too large to program
    /// (the agent's per-pod bound). Every other pod is programmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedPod>,
    /// The last programming error, if the last round failed.
    pub error: Option<String>,
    /// Duration of the last change: read the objects, compile and program,
    /// milliseconds; and of its first two parts.
    pub last_change_ms: f64,
    #[serde(default)]
    pub last_change_read_ms: f64,
    #[serde(default)]
    pub last_change_compile_ms: f64,
    /// Elements written by the last change.
    pub last_change_elements: usize,
    /// Where the eBPF datapath's maps are pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_dir: Option<PathBuf>,
    /// The node's IPv6 pod CIDR on a dual-stack node: the datapath judges the pods'
    /// IPv6 addresses too (a reader of the status checks those objects as well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<podnet_conventions::Ipv6Net>,
    /// The eBPF fast path (`--datapath ebpf`), when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<FastPathStatus>,
}

/// A local pod the agent left closed, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefusedPod {
    pub pod: String,
    pub ip: String,
    pub why: String,
}

/// The fast path as the datapath holds it (the status's `fast_path`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FastPathStatus {
    /// The node's pods the fast path delivers to directly.
    pub pods: Vec<String>,
    /// Their IPv6 addresses, for dual-stack pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods6: Vec<String>,
    /// The overlay device with `from_overlay` on its ingress (empty: none).
    pub overlay_dev: String,
    /// The underlay device with `from_underlay` on its ingress, when the fast path
    /// writes the VXLAN encapsulation itself (empty: it does not; host-gw, or a VXLAN
    /// device without a local address and underlay link).
    #[serde(default)]
    pub underlay_dev: String,
    /// Peer VTEPs the fast path sends to directly.
    #[serde(default)]
    pub overlay_peers: usize,
}

/// What the programmed tables say of one flow at one local pod (the API's `verdict`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodVerdict {
    /// The local pod (`ns/name`), if the address is one.
    pub pod: Option<String>,
    pub direction: Direction,
    pub isolated: bool,
    pub policies: Vec<String>,
    pub allowed: bool,
    /// The table entry that admits the flow, as the datapath holds it.
    pub entry: Option<String>,
    /// Whether the kernel holds the pod's address as programmed (else it is closed).
    pub programmed: bool,
    pub datapath: PolicyDatapath,
    /// What is missing from the kernel that opens this pod (a deleted table, a flushed
    /// chain or isolation set, bridge-nf-call-iptables off, a removed filter): while
    /// any is listed the flow is *allowed*, whatever the tables say, until the agent
    /// puts it back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enforcement: Vec<String>,
    /// Why the agent left this pod closed, if it did (its tables are too large).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Packets refused per local pod and direction, with the policies that isolate it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Denied {
    pub pod: String,
    pub ip: String,
    pub direction: Direction,
    pub policies: Vec<String>,
    pub packets: u64,
}
