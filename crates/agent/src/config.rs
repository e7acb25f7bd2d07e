//! podnetd's configuration, as its command line ([`crate::cmd`]) gives it.

use crate::{wireguard, Backend, Datapath, PolicyDatapath};
use podnet_cni_spec::Ipv4Net;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub node: String,
    pub datastore: String,
    pub underlay_dev: String,
    pub cluster_cidr: Ipv4Net,
    /// A dual-stack cluster's IPv6 range and the prefix length of each node's share
    /// (`--cluster-cidr v4,v6`, `--node-prefix6`); `None`: IPv4 only.
    pub cluster_cidr6: Option<(podnet_cni_spec::net::Ipv6Net, u8)>,
    /// The cluster's Service range (kube-apiserver's `--service-cluster-ip-range`):
    /// no peer's underlay address may lie in it ([`crate::peers::check_peer`]).
    pub service_cidr: Ipv4Net,
    /// A dual-stack cluster's IPv6 Service range (`--service-cidr v4,v6`): with the
    /// eBPF policy datapath, IPv6 Service traffic is judged after kube-proxy's
    /// translation, as IPv4's is.
    pub service_cidr6: Option<podnet_cni_spec::net::Ipv6Net>,
    pub node_prefix: u8,
    pub backend: Backend,
    /// Which underlay address the overlay tunnel ends at (`--underlay-family`): with
    /// `ipv6`, the underlay link's global IPv6 address, for VXLAN and WireGuard.
    pub underlay_family: podnet_conventions::UnderlayFamily,
    pub vni: u32,
    pub port: u16,
    pub vxlan_dev: String,
    pub bridge: String,
    pub repair: bool,
    pub lease_ttl: Duration,
    pub node_file: PathBuf,
    pub api_socket: PathBuf,
    /// How often to re-check the kernel when nothing else wakes the agent.
    pub interval: Duration,
    /// Which datapath enforces NetworkPolicy.
    pub policy_datapath: PolicyDatapath,
    /// The bpffs directory of the eBPF policy datapath's pinned maps and programs.
    pub bpf_dir: PathBuf,
    /// The WireGuard backend's device, port, key file, socket and pid file.
    pub wireguard: wireguard::Paths,
    /// Where to serve Prometheus metrics: `node:PORT` (the node's underlay address
    /// and 127.0.0.1) or `ADDRESS:PORT` ([`crate::metrics::listen_addrs`]); `None`: not at all.
    pub metrics_addr: Option<String>,
    /// How pod packets move: through the bridge, or the eBPF fast path (pod traffic
    /// skips the bridge and the node's IP stack, [`crate::policy::FastPath`]; needs the eBPF
    /// policy datapath).
    pub datapath: Datapath,
    /// Outbound masquerade ([`crate::masquerade`]): pod traffic leaving the cluster
    /// leaves with the node's address. Off with `--masquerade=false`.
    pub masquerade: bool,
    /// IPv6 masquerade on a dual-stack node (`--masquerade-ipv6`; by default on for a
    /// unique local IPv6 range, [`crate::masquerade::default_ipv6`]).
    pub masquerade6: bool,
    /// Destinations pods reach with their own address besides the cluster CIDR, of
    /// either family (`--non-masquerade-cidr`, ip-masq-agent's `nonMasqueradeCIDRs`).
    pub non_masquerade: Vec<podnet_policy::net::Prefix>,
}

impl Config {
    /// Whether the eBPF fast path is on (`--datapath ebpf`).
    pub fn fast_path(&self) -> bool {
        self.datapath == Datapath::Ebpf
    }
}
