//! The compiler: (namespaces, pods, policies) → for each local pod, one verdict table
//! per direction. A table is either *open* (no policy selects the pod for that
//! direction) or *isolated*, with the set of `(peer prefix, protocol, port range)`
//! it admits — peers already resolved to addresses, named ports already resolved to
//! numbers, `except` already subtracted. That is the whole contract with a datapath:
//! nftables holds the entries in interval sets, eBPF in LPM tries; neither needs to
//! know what a label is.
//!
//! Pure and deterministic: the same input gives the same tables, so an agent can diff
//! the tables of one pod against what it programmed and change only that.
//!
//! Tables are canonical: their entries never overlap (no two entries of one protocol
//! share an address and a port), because nftables' concatenated interval sets refuse
//! overlapping elements and an LPM trie holds one value per prefix. [`normalize`]
//! makes them so.

use crate::model::*;
use crate::net::Prefix;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Ports of one protocol, `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Ports {
    pub proto: Proto,
    pub first: u16,
    pub last: u16,
}

/// One admitted peer range: every protocol and port when `ports` is `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Allow {
    pub net: Prefix,
    pub ports: Option<Ports>,
}

/// One direction of one pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Table {
    /// No policy selects the pod for this direction: everything passes.
    Open,
    /// Only what `allow` holds passes.
    Isolated {
        /// The policies that isolate the pod (`ns/name`).
        policies: Vec<String>,
        allow: BTreeSet<Allow>,
    },
}

impl Table {
    /// Whether the table admits `peer` on `proto`/`port`.
    pub fn allows(&self, peer: Ipv4Addr, proto: Proto, port: u16) -> bool {
        match self {
            Table::Open => true,
            Table::Isolated { allow, .. } => allow.iter().any(|a| {
                a.net.contains(peer)
                    && match a.ports {
                        None => true,
                        Some(p) => p.proto == proto && p.first <= port && port <= p.last,
                    }
            }),
        }
    }

    pub fn is_isolated(&self) -> bool {
        matches!(self, Table::Isolated { .. })
    }
}

/// A local pod's verdict tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodTables {
    pub ip: Ipv4Addr,
    pub ingress: Table,
    pub egress: Table,
}

impl PodTables {
    pub fn table(&self, dir: Direction) -> &Table {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// The peers a rule admits, resolved.
struct Peers {
    /// Address ranges (pods as /32, ipBlocks less their exceptions, or 0.0.0.0/0).
    nets: Vec<Prefix>,
    /// Pods among those (by index into `Cluster::pods`), for named ports resolved on
    /// the destination.
    pods: Vec<usize>,
}

fn resolve_peers(c: &Cluster, policy_ns: &str, peers: Option<&[crate::objects::Peer]>) -> Peers {
    let mut nets = Vec::new();
    let mut pods = BTreeSet::new();
    match peers {
        None | Some([]) => {
            nets.push(Prefix::new(Ipv4Addr::UNSPECIFIED, 0));
            pods.extend(
                c.pods
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.ip.is_some())
                    .map(|(i, _)| i),
            );
        }
        Some(list) => {
            for peer in list {
                if let Some(b) = &peer.ip_block {
                    let ps = ip_block_prefixes(b);
                    pods.extend(c.pods.iter().enumerate().filter_map(|(i, p)| {
                        let ip = p.ip?;
                        ps.iter().any(|n| n.contains(ip)).then_some(i)
                    }));
                    nets.extend(ps);
                } else {
                    for (i, p) in c.pods.iter().enumerate() {
                        if let Some(ip) = p.ip {
                            if peer_admits_pod(c, policy_ns, peer, p) {
                                nets.push(Prefix::host(ip));
                                pods.insert(i);
                            }
                        }
                    }
                }
            }
        }
    }
    Peers {
        nets,
        pods: pods.into_iter().collect(),
    }
}

/// Compiles the tables of every pod for which `local` is true (and that has an
/// address). Pods outside `local` are still everyone's peers.
pub fn compile(c: &Cluster, local: impl Fn(&PodInfo) -> bool) -> BTreeMap<String, PodTables> {
    let locals: Vec<usize> = c
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.ip.is_some() && local(p))
        .map(|(i, _)| i)
        .collect();
    let mut out: BTreeMap<String, PodTables> = locals
        .iter()
        .map(|&i| {
            let p = &c.pods[i];
            (
                p.key(),
                PodTables {
                    ip: p.ip.expect("local pods have addresses"),
                    ingress: Table::Open,
                    egress: Table::Open,
                },
            )
        })
        .collect();
    for pol in &c.policies {
        let selected: Vec<usize> = locals
            .iter()
            .copied()
            .filter(|&i| selects(pol, &c.pods[i]))
            .collect();
        if selected.is_empty() {
            continue;
        }
        let name = policy_name(pol);
        let ns = pol.metadata.ns();
        for dir in [Direction::Ingress, Direction::Egress] {
            if !governs(pol, dir) {
                continue;
            }
            let rules: Vec<(Peers, Option<&[crate::objects::PolicyPort]>)> = rules(pol, dir)
                .into_iter()
                .map(|r| (resolve_peers(c, ns, r.peers), r.ports))
                .collect();
            for &i in &selected {
                let pod = &c.pods[i];
                let t = out.get_mut(&pod.key()).expect("selected pods are local");
                let slot = match dir {
                    Direction::Ingress => &mut t.ingress,
                    Direction::Egress => &mut t.egress,
                };
                if let Table::Open = slot {
                    *slot = Table::Isolated {
                        policies: vec![],
                        allow: BTreeSet::new(),
                    };
                }
                let Table::Isolated { policies, allow } = slot else {
                    unreachable!()
                };
                policies.push(name.clone());
                for (peers, ports) in &rules {
                    add_rule(c, dir, pod, peers, *ports, allow);
                }
            }
        }
    }
    for t in out.values_mut() {
        for slot in [&mut t.ingress, &mut t.egress] {
            if let Table::Isolated { allow, .. } = slot {
                *allow = normalize(allow);
            }
        }
    }
    out
}

/// The same admitted set as `allow`, as entries that never overlap: prefixes covered
/// by an all-protocol entry go; the rest, per protocol, is cut along the nesting of
/// its prefixes, and each piece gets the union of the port ranges of every entry that
/// covers it, as disjoint ranges.
pub fn normalize(allow: &BTreeSet<Allow>) -> BTreeSet<Allow> {
    let mut any: Vec<Prefix> = allow
        .iter()
        .filter(|a| a.ports.is_none())
        .map(|a| a.net)
        .collect();
    any.sort_by_key(|p| p.len);
    let mut top: Vec<Prefix> = Vec::new();
    for p in any {
        if !top.iter().any(|t| t.covers(&p)) {
            top.push(p);
        }
    }
    let mut out: BTreeSet<Allow> = top.iter().map(|&net| Allow { net, ports: None }).collect();
    let mut by_proto: BTreeMap<Proto, Vec<(Prefix, u16, u16)>> = BTreeMap::new();
    for a in allow {
        if let Some(p) = a.ports {
            if !top.iter().any(|t| t.covers(&a.net)) {
                by_proto
                    .entry(p.proto)
                    .or_default()
                    .push((a.net, p.first, p.last));
            }
        }
    }
    for (proto, entries) in by_proto {
        let nets: BTreeSet<Prefix> = entries.iter().map(|e| e.0).collect();
        for &p in &nets {
            // The part of p not inside a nested prefix of the family.
            let inner: Vec<Prefix> = nets
                .iter()
                .filter(|q| **q != p && p.covers(q))
                .copied()
                .collect();
            let mut ranges: Vec<(u16, u16)> = entries
                .iter()
                .filter(|(q, _, _)| q.covers(&p))
                .map(|&(_, a, b)| (a, b))
                .collect();
            ranges.sort();
            let mut merged: Vec<(u16, u16)> = Vec::new();
            for (a, b) in ranges {
                match merged.last_mut() {
                    Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            for piece in p.subtract(&inner) {
                for &(first, last) in &merged {
                    out.insert(Allow {
                        net: piece,
                        ports: Some(Ports { proto, first, last }),
                    });
                }
            }
        }
    }
    out
}

fn add_rule(
    c: &Cluster,
    dir: Direction,
    pod: &PodInfo,
    peers: &Peers,
    ports: Option<&[crate::objects::PolicyPort]>,
    allow: &mut BTreeSet<Allow>,
) {
    let ports = match ports {
        None | Some([]) => {
            allow.extend(peers.nets.iter().map(|&net| Allow { net, ports: None }));
            return;
        }
        Some(p) => p,
    };
    for pp in ports {
        let named = matches!(pp.port, Some(crate::objects::IntOrString::Str(_)));
        match (dir, named) {
            // Egress to a named port: the name means a number on each destination pod.
            (Direction::Egress, true) => {
                for &j in &peers.pods {
                    let dst = &c.pods[j];
                    if let (Some(ip), Some((proto, first, last))) =
                        (dst.ip, port_range(pp, Some(dst)))
                    {
                        allow.insert(Allow {
                            net: Prefix::host(ip),
                            ports: Some(Ports { proto, first, last }),
                        });
                    }
                }
            }
            // Ingress: the destination is the pod itself. Egress to numbered ports: the
            // same for every destination.
            _ => {
                let dst = (dir == Direction::Ingress).then_some(pod);
                if let Some((proto, first, last)) = port_range(pp, dst) {
                    allow.extend(peers.nets.iter().map(|&net| Allow {
                        net,
                        ports: Some(Ports { proto, first, last }),
                    }));
                }
            }
        }
    }
}
