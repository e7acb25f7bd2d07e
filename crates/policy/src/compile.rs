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
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

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
    pub fn allows(&self, peer: IpAddr, proto: Proto, port: u16) -> bool {
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
    /// The pod's IPv6 address on a dual-stack cluster: the same tables judge it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
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
    /// Address ranges (pods as /32 and /128, ipBlocks less their exceptions, or
    /// 0.0.0.0/0 and ::/0).
    nets: Vec<Prefix>,
    /// Pods among those (by index into `Cluster::pods`), for named ports resolved on
    /// the destination.
    /// Each as (index, the address it is a peer by): an ipBlock of one family
    /// admits a dual-stack pod by that family's address only.
    pods: Vec<(usize, IpAddr)>,
}

/// Lookups the compiler makes again and again, built once per compile.
struct Index<'a> {
    /// Pods with an address, by namespace.
    by_ns: HashMap<&'a str, Vec<usize>>,
    /// Pods with an address, by address — each of its addresses — (for ipBlocks: a
    /// range lookup, not a scan).
    by_ip: Vec<(IpAddr, usize)>,
    /// Every pod with an address, in index order.
    all: Rc<Vec<(usize, IpAddr)>>,
    /// Peer lists already resolved, by (policy namespace, peers as JSON): policies
    /// stamped from one template share their peers.
    peers: HashMap<(String, String), Rc<Peers>>,
    /// Single peers already resolved, by (policy namespace — empty for an ipBlock,
    /// which does not depend on it —, peer as JSON): lists that differ in one peer
    /// share the others.
    peer: HashMap<(String, String), Rc<Peers>>,
}

impl<'a> Index<'a> {
    fn new(c: &'a Cluster) -> Index<'a> {
        let mut by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_ip = Vec::new();
        let mut all = Vec::new();
        for (i, p) in c.pods.iter().enumerate() {
            if p.ip.is_some() {
                by_ns.entry(p.namespace.as_str()).or_default().push(i);
                by_ip.extend(p.addrs().map(|a| (a, i)));
                all.extend(p.addrs().map(|a| (i, a)));
            }
        }
        by_ip.sort_unstable();
        Index {
            by_ns,
            by_ip,
            all: Rc::new(all),
            peers: HashMap::new(),
            peer: HashMap::new(),
        }
    }

    /// Pods (with addresses) a selector peer admits.
    fn selected(&self, c: &Cluster, policy_ns: &str, peer: &crate::objects::Peer) -> Vec<usize> {
        let mut out = Vec::new();
        let namespaces: Vec<&str> = match &peer.namespace_selector {
            Some(s) => self
                .by_ns
                .keys()
                .filter(|ns| s.matches(c.ns_labels(ns)))
                .copied()
                .collect(),
            None => vec![policy_ns],
        };
        for ns in namespaces {
            for &i in self.by_ns.get(ns).into_iter().flatten() {
                if peer
                    .pod_selector
                    .as_ref()
                    .is_none_or(|s| s.matches(&c.pods[i].labels))
                {
                    out.push(i);
                }
            }
        }
        out
    }

    /// Pods whose address lies in one of `nets`.
    fn in_nets(&self, nets: &[Prefix]) -> Vec<(usize, IpAddr)> {
        let mut out = Vec::new();
        for n in nets {
            let (first, last) = (n.network(), n.last());
            let from = self.by_ip.partition_point(|(ip, _)| *ip < first);
            out.extend(
                self.by_ip[from..]
                    .iter()
                    .take_while(|(ip, _)| *ip <= last)
                    .map(|(ip, i)| (*i, *ip)),
            );
        }
        out
    }

    /// One peer of a rule, resolved.
    fn resolve_one(
        &mut self,
        c: &Cluster,
        policy_ns: &str,
        peer: &crate::objects::Peer,
    ) -> Rc<Peers> {
        let ns = if peer.ip_block.is_some() {
            ""
        } else {
            policy_ns
        };
        let key = (
            ns.to_string(),
            serde_json::to_string(peer).unwrap_or_default(),
        );
        if let Some(p) = self.peer.get(&key) {
            return p.clone();
        }
        let r = if let Some(b) = &peer.ip_block {
            let nets = ip_block_prefixes(b);
            let pods = self.in_nets(&nets);
            Peers { nets, pods }
        } else {
            let pods: Vec<(usize, IpAddr)> = self
                .selected(c, policy_ns, peer)
                .into_iter()
                .flat_map(|i| c.pods[i].addrs().map(move |a| (i, a)))
                .collect();
            let nets = pods.iter().map(|&(_, a)| Prefix::host(a)).collect();
            Peers { nets, pods }
        };
        let r = Rc::new(r);
        self.peer.insert(key, r.clone());
        r
    }

    fn resolve(
        &mut self,
        c: &Cluster,
        policy_ns: &str,
        peers: Option<&[crate::objects::Peer]>,
    ) -> Rc<Peers> {
        let key = (
            policy_ns.to_string(),
            serde_json::to_string(&peers).unwrap_or_default(),
        );
        if let Some(p) = self.peers.get(&key) {
            return p.clone();
        }
        let r = match peers {
            None | Some([]) => Peers {
                nets: vec![Prefix::everything(false), Prefix::everything(true)],
                pods: (*self.all).clone(),
            },
            Some(list) => {
                let mut nets = Vec::new();
                let mut pods = Vec::new();
                for peer in list {
                    let one = self.resolve_one(c, policy_ns, peer);
                    nets.extend_from_slice(&one.nets);
                    pods.extend_from_slice(&one.pods);
                }
                pods.sort_unstable();
                pods.dedup();
                Peers { nets, pods }
            }
        };
        let r = Rc::new(r);
        self.peers.insert(key, r.clone());
        r
    }
}

/// Compiles the tables of every pod for which `local` is true (and that has an
/// address). Pods outside `local` are still everyone's peers.
///
/// Pods selected by the same policies get the same table (for ingress, when they
/// also declare the same ports, since named ports resolve on them): each distinct
/// table is built and normalized once.
pub fn compile(c: &Cluster, local: impl Fn(&PodInfo) -> bool) -> BTreeMap<String, PodTables> {
    let mut idx = Index::new(c);
    // Local pods by namespace: a policy selects only pods of its own namespace.
    let mut locals: HashMap<&str, Vec<usize>> = HashMap::new();
    // Per local pod and direction, the policies that govern it there.
    let mut governing: HashMap<usize, [Vec<usize>; 2]> = HashMap::new();
    for (i, p) in c.pods.iter().enumerate() {
        if p.ip.is_some() && local(p) {
            locals.entry(p.namespace.as_str()).or_default().push(i);
            governing.insert(i, [vec![], vec![]]);
        }
    }
    for (pi, pol) in c.policies.iter().enumerate() {
        let dirs = [Direction::Ingress, Direction::Egress].map(|d| governs(pol, d));
        if dirs == [false, false] {
            continue;
        }
        for &i in locals.get(pol.metadata.ns()).into_iter().flatten() {
            if selects(pol, &c.pods[i]) {
                let g = governing.get_mut(&i).expect("local pods are listed");
                for d in 0..2 {
                    if dirs[d] {
                        g[d].push(pi);
                    }
                }
            }
        }
    }
    type GroupKey = (usize, Vec<usize>, Vec<(Option<String>, Proto, u16)>);
    let mut ids: Vec<usize> = governing.keys().copied().collect();
    ids.sort();
    let key = |i: usize, d: usize| -> Option<GroupKey> {
        let g = &governing[&i][d];
        if g.is_empty() {
            return None;
        }
        let ports = if d == 0 {
            c.pods[i].ports.clone()
        } else {
            vec![]
        };
        Some((d, g.clone(), ports))
    };
    // How many pods share each table: the last takes it rather than a copy (a large
    // table is built once and never copied when one pod has it).
    let mut uses: HashMap<GroupKey, usize> = HashMap::new();
    for &i in &ids {
        for d in 0..2 {
            if let Some(k) = key(i, d) {
                *uses.entry(k).or_default() += 1;
            }
        }
    }
    let mut built: HashMap<GroupKey, Table> = HashMap::new();
    let mut out = BTreeMap::new();
    for i in ids {
        let pod = &c.pods[i];
        let g = &governing[&i];
        let mut table = |d: usize, dir: Direction| -> Table {
            let Some(k) = key(i, d) else {
                return Table::Open;
            };
            let left = uses.get_mut(&k).expect("every key is counted");
            *left -= 1;
            let last = *left == 0;
            let t = built.entry(k.clone()).or_insert_with(|| {
                let mut allow = BTreeSet::new();
                let mut names = Vec::new();
                for &pi in &g[d] {
                    let pol = &c.policies[pi];
                    names.push(policy_name(pol));
                    for r in rules(pol, dir) {
                        let peers = idx.resolve(c, pol.metadata.ns(), r.peers);
                        add_rule(c, dir, pod, &peers, r.ports, &mut allow);
                    }
                }
                Table::Isolated {
                    policies: names,
                    allow: normalize(&allow),
                }
            });
            if last {
                built.remove(&k).expect("just built")
            } else {
                t.clone()
            }
        };
        let ingress = table(0, Direction::Ingress);
        let egress = table(1, Direction::Egress);
        out.insert(
            pod.key(),
            PodTables {
                ip: pod.ip.expect("local pods have addresses"),
                ip6: pod.ip6,
                ingress,
                egress,
            },
        );
    }
    out
}

/// The tables after a change that touched only NetworkPolicies: `prev` (compiled by
/// [`compile`] with the same `local` from the cluster as it was) with the tables of
/// the pods that any of `changed` selects — each changed policy as it was and as it is
/// — compiled again. A policy decides only the tables of the pods it selects, so every
/// other table is unchanged; when pods or namespaces change, call [`compile`].
pub fn recompile(
    c: &Cluster,
    prev: &BTreeMap<String, PodTables>,
    changed: &[&crate::objects::NetworkPolicy],
    local: impl Fn(&PodInfo) -> bool,
) -> BTreeMap<String, PodTables> {
    let touched = |p: &PodInfo| changed.iter().any(|pol| selects(pol, p));
    let fresh = compile(c, |p| local(p) && touched(p));
    let mut out = prev.clone();
    out.extend(fresh);
    out
}

/// The same admitted set as `allow`, as entries that never overlap: prefixes covered
/// by an all-protocol entry go; the rest, per protocol, is cut along the nesting of
/// its prefixes, and each piece gets the union of the port ranges of every entry that
/// covers it, as disjoint ranges.
pub fn normalize(allow: &BTreeSet<Allow>) -> BTreeSet<Allow> {
    // All-protocol prefixes, keeping only the outermost (prefixes nest or are disjoint).
    let any: std::collections::HashSet<Prefix> = allow
        .iter()
        .filter(|a| a.ports.is_none())
        .map(|a| a.net)
        .collect();
    let covered_by = |set: &std::collections::HashSet<Prefix>, p: &Prefix, strict: bool| {
        (0..=p.prefix())
            .filter(|&l| !strict || l < p.prefix())
            .any(|l| set.contains(&Prefix::truncating(p.network(), l)))
    };
    let top: Vec<Prefix> = any
        .iter()
        .filter(|p| !covered_by(&any, p, true))
        .copied()
        .collect();
    let top_set: std::collections::HashSet<Prefix> = top.iter().copied().collect();
    let mut out: BTreeSet<Allow> = top.iter().map(|&net| Allow { net, ports: None }).collect();
    let mut by_proto: BTreeMap<Proto, BTreeMap<Prefix, Vec<(u16, u16)>>> = BTreeMap::new();
    for a in allow {
        if let Some(p) = a.ports {
            if top_set.is_empty() || !covered_by(&top_set, &a.net, false) {
                by_proto
                    .entry(p.proto)
                    .or_default()
                    .entry(a.net)
                    .or_default()
                    .push((p.first, p.last));
            }
        }
    }
    for (proto, nets) in by_proto {
        // In address order, a prefix's nested prefixes follow it in one run, and its
        // enclosing ones are on the stack with the ranges they pass down.
        let list: Vec<(Prefix, Vec<(u16, u16)>)> = nets.into_iter().collect();
        let mut stack: Vec<(Prefix, Vec<(u16, u16)>)> = Vec::new();
        for (i, (p, own)) in list.iter().enumerate() {
            while stack.last().is_some_and(|(q, _)| !q.covers(p)) {
                stack.pop();
            }
            let mut ranges = own.clone();
            if let Some((_, inherited)) = stack.last() {
                ranges.extend(inherited);
            }
            let merged = merge_ranges(ranges);
            let inner: Vec<Prefix> = list[i + 1..]
                .iter()
                .take_while(|(q, _)| p.covers(q))
                .map(|(q, _)| *q)
                .collect();
            for piece in p.subtract(&inner) {
                for &(first, last) in &merged {
                    out.insert(Allow {
                        net: piece,
                        ports: Some(Ports { proto, first, last }),
                    });
                }
            }
            stack.push((*p, merged));
        }
    }
    out
}

/// Sorted, disjoint, adjacent ones joined.
fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
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
                for &(j, ip) in &peers.pods {
                    if let Some((proto, first, last)) = port_range(pp, Some(&c.pods[j])) {
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
