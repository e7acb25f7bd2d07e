//! What an agent reports about itself (`{"get":"status"}`): its node, backend, peers,
//! WireGuard device and underlay guard.

use podnet_conventions::{Backend, Datapath};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the agent reports about itself (the API's `status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// What podnet cannot serve of the node's Service set-up (kube-proxy in IPVS mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_problems: Vec<String>,
    /// Outbound masquerade (table `ip podnet_nat`; `ip6 podnet_nat` in its `ipv6`), as
    /// the kernel holds it when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<MasqueradeStatus>,
    /// The underlay guard (the agent's eBPF program on the underlay device), with VXLAN and WireGuard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_guard: Option<GuardStatus>,
    pub node: String,
    pub backend: Backend,
    pub pod_cidr: String,
    /// A dual-stack node's IPv6 pod CIDR.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_cidr6: String,
    pub underlay_dev: String,
    pub underlay_ip: String,
    /// A dual-stack node's underlay IPv6 address (what host-gw peers route its IPv6
    /// pods to).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub underlay_ip6: String,
    /// Where the node's overlay tunnel ends: `underlay_ip6` over an IPv6 underlay
    /// (`--underlay-family ipv6`), else `underlay_ip` ([`Status::tunnel`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tunnel_ip: String,
    pub vtep_mac: String,
    pub bridge: String,
    pub vxlan_dev: String,
    /// The VXLAN UDP port, and what VXLAN adds to each packet (0 with host-gw): what
    /// trace and doctor probe and size with.
    pub vxlan_port: u16,
    pub overlay_overhead: u32,
    /// `bridge`, or `ebpf` (the fast path).
    #[serde(default)]
    pub datapath: Datapath,
    pub mtu: u32,
    pub repair: bool,
    pub datastore: String,
    pub peers: Vec<PeerStatus>,
    /// Seconds since the Unix epoch of the last completed sync.
    pub last_sync: u64,
    /// Kernel changes made since the agent started.
    pub changes: u64,
    pub pid: u32,
    /// What is wrong with the datastore right now (a refused watch, the API server
    /// unreachable); the datapath keeps its last state meanwhile.
    pub datastore_problems: Vec<String>,
    /// The WireGuard backend's device as it is now (absent with other backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireGuardStatus>,
}

/// The WireGuard device, read from it at every sync (never its private key).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WireGuardStatus {
    /// Which WireGuard runs the device (`gotatun` and its version).
    pub implementation: String,
    /// Whether the node's kernel has WireGuard (podnet runs the userspace device
    /// either way).
    #[serde(default)]
    pub kernel_has_wireguard: bool,
    pub device: String,
    pub port: u16,
    /// The node's public key, as published.
    pub public_key: String,
    /// The public key of the private key the device holds (differs from
    /// `public_key` only while a rotation is half done).
    pub device_public_key: String,
    /// The device process.
    pub pid: u32,
    pub socket: String,
    /// What the device could not be asked, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub peers: Vec<WireGuardPeerStatus>,
}

/// One peer as the device holds it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WireGuardPeerStatus {
    pub public_key: String,
    pub endpoint: String,
    pub allowed_ips: Vec<String>,
    /// Unix seconds of the latest handshake (0: none yet).
    pub last_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub pod_cidr: String,
    /// A dual-stack peer's IPv6 pod CIDR, as this node routes it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_cidr6: String,
    pub underlay_ip: String,
    /// A dual-stack peer's underlay IPv6 address, as it publishes it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub underlay_ip6: String,
    /// Where this node sends the peer's overlay traffic ([`PeerStatus::tunnel`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tunnel_ip: String,
    pub vtep_mac: String,
    /// With the WireGuard backend: the peer's public key and port as the datastore
    /// publishes them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wireguard_public_key: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wireguard_port: u16,
}

/// What the guard holds, for the agent's status.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuardStatus {
    /// The device whose ingress carries the filter.
    pub device: String,
    pub vxlan_port: u16,
    pub wireguard_port: u16,
    /// host-gw: plain pod sources bound to their owner's MAC (else refused from the
    /// wire altogether).
    pub host_gw: bool,
    /// host-gw: peers' pod CIDRs bound to a known MAC (the others take any MAC until
    /// their neighbour entry resolves).
    #[serde(default)]
    pub bound_sources: usize,
    /// Peers whose underlay address may reach the ports.
    pub peers: usize,
    /// Whether the filter is in place with this agent's program (read when asked).
    pub attached: bool,
    /// The kernel id of this agent's guard program.
    #[serde(default)]
    pub program_id: u32,
    /// Packets dropped, by reason id (`UNDERLAY_DROP_REASONS`).
    pub drops: BTreeMap<String, u64>,
}

fn is_zero(p: &u16) -> bool {
    *p == 0
}

/// Outbound masquerade on a node (the API's `status.masquerade`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasqueradeStatus {
    /// `--masquerade`: off means pod traffic leaving the cluster keeps the pod's address.
    pub on: bool,
    /// The sources masqueraded (the cluster CIDR) and the destinations kept.
    pub cluster: String,
    pub keep: Vec<String>,
    /// What differs between the kernel's table and the agent's (None: in place).
    pub problem: Option<String>,
    /// Packets masqueraded so far (the rule's counter).
    pub packets: u64,
    /// IPv6 masquerade (table `ip6 podnet_nat`) on a dual-stack node, in the same form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Box<MasqueradeStatus>>,
}

impl Status {
    /// Where the node's overlay tunnel ends (its underlay IPv4 address when the agent
    /// does not say: agents before IPv6 underlays).
    pub fn tunnel(&self) -> &str {
        if self.tunnel_ip.is_empty() {
            &self.underlay_ip
        } else {
            &self.tunnel_ip
        }
    }
}

impl PeerStatus {
    /// Where the node sends this peer's overlay traffic (its underlay IPv4 address
    /// when the agent does not say).
    pub fn tunnel(&self) -> &str {
        if self.tunnel_ip.is_empty() {
            &self.underlay_ip
        } else {
            &self.tunnel_ip
        }
    }
}
