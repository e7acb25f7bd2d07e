//! The node's kernel state and one pod's, as an agent reads them (`state`, `pod`), and
//! the outcome of a probe it sends (`ping`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The node's kernel state, as `ip`/`bridge` would show it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeState {
    pub bridge: String,
    pub vxlan_dev: String,
    pub links: Vec<LinkState>,
    pub routes: Vec<RouteState>,
    pub neigh: Vec<NeighState>,
    /// A dual-stack node's IPv6 routes: podnet's (protocol 0x50, to its peers' IPv6
    /// pod CIDRs) and those on the bridge (its own pods' IPv6 range).
    #[serde(default)]
    pub routes6: Vec<RouteState>,
    /// IPv6 neighbours on the VXLAN device (the peers' next hops) and on the bridge
    /// (its own pods).
    #[serde(default)]
    pub neigh6: Vec<NeighState>,
    /// The VXLAN device's FDB.
    pub fdb: Vec<FdbState>,
    pub forwarding: bool,
    /// `net.ipv6.conf.all.forwarding`; `None` from agents that do not read it.
    #[serde(default)]
    pub forwarding6: Option<bool>,
    pub conntrack: Conntrack,
    /// `rp_filter` of `all`, `default`, the VXLAN device and the bridge.
    pub rp_filter: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkState {
    pub name: String,
    pub index: u32,
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: u32,
    pub mac: String,
    /// The bridge it is on.
    pub master: Option<String>,
    pub vxlan: Option<VxlanState>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VxlanState {
    pub vni: u32,
    pub port: u16,
    /// The local tunnel end (IPv6 over an IPv6 underlay).
    pub local: Option<std::net::IpAddr>,
    pub learning: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RouteState {
    /// `default` or `a.b.c.d/n` (`x::/n` for IPv6).
    pub dst: String,
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
    #[serde(default)]
    pub onlink: bool,
    #[serde(default)]
    pub protocol: u8,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NeighState {
    pub ip: IpAddr,
    pub mac: Option<String>,
    /// The device (node entries; a pod's own are all on its interface).
    #[serde(default)]
    pub dev: String,
    /// `PERMANENT`, `REACHABLE`, `FAILED`…
    pub state: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FdbState {
    pub mac: String,
    /// The remote tunnel end (IPv6 over an IPv6 underlay).
    pub dst: Option<std::net::IpAddr>,
    pub dev: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Conntrack {
    pub count: Option<u64>,
    pub max: Option<u64>,
}

/// One pod on this node, as its host veth and its own namespace show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodReport {
    /// The pod's IPv4 address (its host veth's MAC is made from it).
    pub ip: Ipv4Addr,
    /// A dual-stack pod's IPv6 address, as its anti-spoofing entry holds it.
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    /// Whether a host veth with this pod's MAC exists.
    pub found: bool,
    pub host_veth: Option<HostVeth>,
    /// The pod's namespace, as the veth's alias records it.
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub pod: Option<PodInside>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostVeth {
    pub name: String,
    pub up: bool,
    /// The kernel's operational state (`IF_OPER_*`: 6 is up, 2 down).
    pub operstate: u8,
    pub mtu: u32,
    pub master: Option<String>,
    pub mac: String,
}

/// Inside the pod's namespace; `error` if it could not be entered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodInside {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub link: Option<PodLink>,
    #[serde(default)]
    pub addrs: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RouteState>,
    #[serde(default)]
    pub neigh: Vec<NeighState>,
    #[serde(default)]
    pub routes6: Vec<RouteState>,
    #[serde(default)]
    pub neigh6: Vec<NeighState>,
}

/// `v6` when `ip` is an IPv6 address, else `v4`.
fn by_family<'a, T>(ip: IpAddr, v4: &'a [T], v6: &'a [T]) -> &'a [T] {
    if ip.is_ipv6() {
        v6
    } else {
        v4
    }
}

impl NodeState {
    /// The node's routes of `ip`'s family.
    pub fn routes_for(&self, ip: IpAddr) -> &[RouteState] {
        by_family(ip, &self.routes, &self.routes6)
    }
    /// The node's neighbour entries of `ip`'s family.
    pub fn neigh_for(&self, ip: IpAddr) -> &[NeighState] {
        by_family(ip, &self.neigh, &self.neigh6)
    }
}

impl PodInside {
    /// The pod's routes of `ip`'s family.
    pub fn routes_for(&self, ip: IpAddr) -> &[RouteState] {
        by_family(ip, &self.routes, &self.routes6)
    }
    /// The pod's neighbour entries of `ip`'s family.
    pub fn neigh_for(&self, ip: IpAddr) -> &[NeighState] {
        by_family(ip, &self.neigh, &self.neigh6)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodLink {
    pub name: String,
    pub up: bool,
    pub mtu: u32,
    pub mac: String,
}

/// The outcome of one probe.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Echo {
    /// The peer answered.
    Reply,
    /// Nothing came back in time.
    Timeout,
    /// The packet was too big for a link on the way (locally or reported by ICMP).
    TooBig,
    /// The kernel refused to send (no route, …); the text says why.
    Error(String),
}
