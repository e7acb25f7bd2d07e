//! The cluster as policy sees it, and the Kubernetes semantics written once, plainly:
//! which policies select a pod, which peers and ports a rule admits. Both the
//! compiler ([`crate::compile`]) and the flow evaluator ([`crate::eval`]) are built
//! on these definitions.

use crate::net::{parse_cidr, Prefix};
use crate::objects::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP protocol of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
    /// Any other protocol (ICMP, …): only rules without ports admit it.
    Other(u8),
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
            Proto::Other(n) => n,
        }
    }

    /// `TCP`, `UDP`, `SCTP` (as in manifests, case-insensitive); `None` otherwise.
    pub fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn name(self) -> String {
        match self {
            Proto::Tcp => "TCP".into(),
            Proto::Udp => "UDP".into(),
            Proto::Sctp => "SCTP".into(),
            Proto::Other(n) => format!("protocol {n}"),
        }
    }

    /// Whether flows of this protocol have ports policy can match.
    pub fn has_ports(self) -> bool {
        !matches!(self, Proto::Other(_))
    }
}

/// A pod, reduced to what policy reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `None` until the pod has an address (it is then no one's peer yet).
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address, on a dual-stack cluster (`status.podIPs`): policy judges it
    /// like the IPv4 one; a pod with an IPv6 address only is not supported yet.
    pub ip6: Option<Ipv6Addr>,
    pub node: Option<String>,
    /// Declared container ports: name, protocol, number.
    pub ports: Vec<(Option<String>, Proto, u16)>,
}

impl PodInfo {
    pub fn from_pod(p: &Pod) -> PodInfo {
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|s| s.parse().ok());
        let ip6 = p
            .status
            .iter()
            .flat_map(|s| &s.pod_ips)
            .find_map(|a| a.ip.parse().ok());
        PodInfo {
            namespace: p.metadata.ns().to_string(),
            name: p.metadata.name.clone(),
            labels: p.metadata.labels.clone(),
            ip,
            ip6,
            node: p.spec.node_name.clone(),
            ports: p
                .spec
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .filter_map(|cp| {
                    let proto = Proto::parse(cp.protocol.as_deref().unwrap_or("TCP"))?;
                    let n = u16::try_from(cp.container_port).ok()?;
                    Some((cp.name.clone(), proto, n))
                })
                .collect(),
        }
    }

    /// Its addresses (IPv4 first), once it has one.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ip
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ip.and(self.ip6).map(IpAddr::V6))
    }

    /// `ns/name`
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The number a named port has on this pod for `proto`.
    pub fn named_port(&self, name: &str, proto: Proto) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| n.as_deref() == Some(name) && *p == proto)
            .map(|(_, _, n)| *n)
    }
}

/// Namespaces, pods and policies: the compiler's whole input.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Namespace name → labels (always with `kubernetes.io/metadata.name`).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub pods: Vec<PodInfo>,
    pub policies: Vec<NetworkPolicy>,
}

impl Cluster {
    pub fn from_objects<'a>(objs: impl IntoIterator<Item = &'a Object>) -> Cluster {
        let mut c = Cluster::default();
        for o in objs {
            match o {
                Object::Namespace(n) => {
                    let mut labels = n.metadata.labels.clone();
                    labels.insert(NAMESPACE_NAME_LABEL.into(), n.metadata.name.clone());
                    c.namespaces.insert(n.metadata.name.clone(), labels);
                }
                Object::Pod(p) => c.pods.push(PodInfo::from_pod(p)),
                Object::NetworkPolicy(p) => c.policies.push(p.clone()),
            }
        }
        // A namespace nobody declared (its pods exist) has only its name label.
        for p in &c.pods {
            if !c.namespaces.contains_key(&p.namespace) {
                c.namespaces.insert(
                    p.namespace.clone(),
                    BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), p.namespace.clone())]),
                );
            }
        }
        c.pods.sort_by_key(PodInfo::key);
        c.policies.sort_by_key(policy_name);
        c
    }

    /// A namespace's labels (none for a namespace that neither exists nor holds pods).
    pub fn ns_labels(&self, ns: &str) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.namespaces.get(ns).unwrap_or(&NONE)
    }

    /// The pod holding `ip` (either of its addresses).
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.addrs().any(|a| a == ip))
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<&PodInfo> {
        self.pods
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
    }
}

/// `ns/name` of a policy.
pub fn policy_name(p: &NetworkPolicy) -> String {
    format!("{}/{}", p.metadata.ns(), p.metadata.name)
}

/// Which way a rule looks: ingress rules admit sources, egress rules destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Whether the policy governs `dir`: as listed in `policyTypes`; without it, Ingress
/// always and Egress when the policy has egress rules.
pub fn governs(p: &NetworkPolicy, dir: Direction) -> bool {
    match (&p.spec.policy_types, dir) {
        (Some(t), Direction::Ingress) => t.iter().any(|t| t == "Ingress"),
        (Some(t), Direction::Egress) => t.iter().any(|t| t == "Egress"),
        (None, Direction::Ingress) => true,
        (None, Direction::Egress) => p.spec.egress.as_ref().is_some_and(|e| !e.is_empty()),
    }
}

/// Whether the policy selects the pod (same namespace, podSelector matches).
pub fn selects(p: &NetworkPolicy, pod: &PodInfo) -> bool {
    p.metadata.ns() == pod.namespace && p.spec.pod_selector.matches(&pod.labels)
}

/// One rule of either direction, as peers and ports.
pub struct Rule<'a> {
    /// `None` or empty: every peer.
    pub peers: Option<&'a [Peer]>,
    /// `None` or empty: every port and protocol.
    pub ports: Option<&'a [PolicyPort]>,
}

/// The rules of `p` for `dir` (only meaningful if [`governs`]).
pub fn rules(p: &NetworkPolicy, dir: Direction) -> Vec<Rule<'_>> {
    match dir {
        Direction::Ingress => p
            .spec
            .ingress
            .iter()
            .flatten()
            .map(|r| Rule {
                peers: r.from.as_deref(),
                ports: r.ports.as_deref(),
            })
            .collect(),
        Direction::Egress => p
            .spec
            .egress
            .iter()
            .flatten()
            .map(|r| Rule {
                peers: r.to.as_deref(),
                ports: r.ports.as_deref(),
            })
            .collect(),
    }
}

/// The prefixes an ipBlock admits: its CIDR less its exceptions (of either family).
pub fn ip_block_prefixes(b: &IpBlock) -> Vec<Prefix> {
    let Ok(base) = parse_cidr(&b.cidr) else {
        return vec![];
    };
    let except: Vec<Prefix> = b.except.iter().filter_map(|e| parse_cidr(e).ok()).collect();
    base.subtract(&except)
}

/// Whether a peer entry admits the pod `pod` (for a policy in namespace `policy_ns`).
pub fn peer_admits_pod(c: &Cluster, policy_ns: &str, peer: &Peer, pod: &PodInfo) -> bool {
    if let Some(b) = &peer.ip_block {
        return pod.addrs().any(|ip| peer_admits_ip(b, ip));
    }
    let pod_ok = peer
        .pod_selector
        .as_ref()
        .is_none_or(|s| s.matches(&pod.labels));
    let ns_ok = match &peer.namespace_selector {
        Some(s) => s.matches(c.ns_labels(&pod.namespace)),
        // A podSelector alone looks in the policy's own namespace.
        None => pod.namespace == policy_ns,
    };
    pod_ok && ns_ok
}

/// Whether an ipBlock admits an address.
pub fn peer_admits_ip(b: &IpBlock, ip: IpAddr) -> bool {
    ip_block_prefixes(b).iter().any(|p| p.contains(ip))
}

/// The protocol a policy port names (TCP when left out).
pub fn port_proto(p: &PolicyPort) -> Proto {
    p.protocol
        .as_deref()
        .and_then(Proto::parse)
        .unwrap_or(Proto::Tcp)
}

/// The port range a policy port stands for on the destination `dst`: a number (or
/// `port..=endPort`), all ports of its protocol, or a name resolved on `dst` (no
/// range if `dst` is not a pod or has no such port).
pub fn port_range(p: &PolicyPort, dst: Option<&PodInfo>) -> Option<(Proto, u16, u16)> {
    let proto = port_proto(p);
    match &p.port {
        None => Some((proto, 0, 65535)),
        Some(IntOrString::Int(n)) => {
            let first = u16::try_from(*n).ok()?;
            let last = p
                .end_port
                .and_then(|e| u16::try_from(e).ok())
                .unwrap_or(first);
            Some((proto, first, last.max(first)))
        }
        Some(IntOrString::Str(name)) => {
            let n = dst?.named_port(name, proto)?;
            Some((proto, n, n))
        }
    }
}
