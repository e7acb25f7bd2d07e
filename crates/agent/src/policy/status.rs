//! The policy side of the agent's status: per-pod directions, pods refused for their
//! size, and what the API asks of the kernel — one flow's verdict at one pod
//! ([`verdict`]), the drop counters ([`denied`]) and what is missing that opens pods
//! ([`enforcement_problems`]).

use super::datapath;
use super::filters::{filters_of, pod_filter_problems, pod_veths};
use super::PolicyState;
use crate::Failure;
use podnet_api::{Denied, DirStatus, PodVerdict, PolicyStatus, RefusedPod};
use podnet_policy::compile::{PodTables, Table};
use podnet_policy::Direction;
use std::collections::BTreeMap;

pub(super) fn dir_status(t: &Table) -> DirStatus {
    match t {
        Table::Open => DirStatus {
            state: "open".into(),
            policies: vec![],
            entries: 0,
        },
        Table::Isolated { policies, allow } => DirStatus {
            state: "isolated".into(),
            policies: policies.clone(),
            entries: allow.len(),
        },
    }
}

/// The most table entries (allowed peer prefixes × port ranges, both directions) one
/// pod may have programmed. One pod's policies may select far more (an ipBlock with
/// thousands of excepts times hundreds of ports): programming them would fail the
/// node's whole round, and every other pod made meanwhile would stay closed. Such a
/// pod alone stays closed, said in its log, `policy stats` and `doctor`.
pub const MAX_POD_ENTRIES: usize = 100_000;

/// Splits off the pods whose tables are over [`MAX_POD_ENTRIES`].
pub(super) fn over_bound(tables: &mut BTreeMap<String, PodTables>) -> BTreeMap<String, RefusedPod> {
    let size = |t: &Table| match t {
        Table::Open => 0,
        Table::Isolated { allow, .. } => allow.len(),
    };
    let over: Vec<(String, std::net::Ipv4Addr, usize, Vec<String>)> = tables
        .iter()
        .filter_map(|(k, t)| {
            let n = size(&t.ingress) + size(&t.egress);
            (n > MAX_POD_ENTRIES).then(|| {
                let mut pols: Vec<String> = [&t.ingress, &t.egress]
                    .iter()
                    .filter_map(|t| match t {
                        Table::Isolated { policies, .. } => Some(policies.clone()),
                        Table::Open => None,
                    })
                    .flatten()
                    .collect();
                pols.sort();
                pols.dedup();
                (k.clone(), t.ip, n, pols)
            })
        })
        .collect();
    over.into_iter()
        .map(|(k, ip, n, pols)| {
            tables.remove(&k);
            let why = format!(
                "its policies ({}) compile to {n} entries, over the {MAX_POD_ENTRIES} one pod may have: it stays closed; split or simplify them (fewer ipBlock excepts or ports)",
                pols.join(", ")
            );
            let r = RefusedPod {
                pod: k.clone(),
                ip: ip.to_string(),
                why,
            };
            (k, r)
        })
        .collect()
}

/// Everything missing from the kernel that keeps this node's pods isolated and
/// protected (the node-wide nftables objects, every pod veth's filters), read now.
pub fn enforcement_problems(st: &PolicyState) -> Vec<String> {
    let mut v = datapath::reader(st).node_problems(&st.tables);
    if let Ok(mut sock) = podnet_netlink::Socket::route() {
        match pod_veths(&mut sock) {
            Ok(veths) => {
                for l in veths {
                    v.extend(
                        pod_filter_problems(&mut sock, l.index, &l.name, &*datapath::reader(st))
                            .into_iter()
                            .map(|(_, w)| w),
                    );
                }
            }
            Err(e) => v.push(format!("cannot list the pods' veths: {e}")),
        }
    }
    v
}

/// The host veth (index, name) of the local pod at `ip` (either of its addresses),
/// and the pod's IPv4 address, found by its anti-spoofing entry.
fn veth_of(
    sock: &mut podnet_netlink::Socket,
    ip: std::net::IpAddr,
) -> Option<(u32, String, std::net::Ipv4Addr)> {
    pod_veths(sock).ok()?.into_iter().find_map(|l| {
        podnet_netlink::antispoof::pod_state(sock, l.index)
            .ok()
            .flatten()
            .filter(|st| {
                std::net::IpAddr::V4(st.ip) == ip || st.ip6.map(std::net::IpAddr::V6) == Some(ip)
            })
            .map(|st| (l.index, l.name.clone(), st.ip))
    })
}

/// Judges a flow at local pod `ip` (either of its addresses; `peer` of the same
/// family) from the tables the datapath was given, and checks that the kernel holds
/// the pod as programmed.
pub fn verdict(
    st: &PolicyState,
    ip: std::net::IpAddr,
    peer: std::net::IpAddr,
    dir: Direction,
    proto: podnet_policy::Proto,
    port: u16,
) -> PodVerdict {
    let found = st.tables.iter().find(|(_, t)| match ip {
        std::net::IpAddr::V4(a) => t.ip == a,
        std::net::IpAddr::V6(a) => t.ip6 == Some(a),
    });
    let dp = datapath::reader(st);
    let programmed = dp.holds(ip);
    let mut v = PodVerdict {
        pod: found.map(|(k, _)| k.clone()),
        direction: dir,
        isolated: false,
        policies: vec![],
        allowed: true,
        entry: None,
        programmed,
        datapath: st.datapath,
        enforcement: vec![],
        refused: None,
    };
    if !dp.enforces() {
        return v;
    }
    // The kernel's truth first: what is missing there opens the pod (except where the
    // nftables backstop on the pod's veth closes forwarded traffic to it meanwhile).
    v.enforcement = dp.node_problems(&st.tables);
    let mut open_now = !v.enforcement.is_empty();
    let mut closed_now = false;
    // The pod's IPv4 address, as its anti-spoofing entry holds it (refused pods are
    // listed by it).
    let mut ip4 = None;
    if let Ok(mut sock) = podnet_netlink::Socket::route() {
        if let Some((index, name, a)) = veth_of(&mut sock, ip) {
            ip4 = Some(a);
            if open_now
                && dir == Direction::Ingress
                && filters_of(&mut sock, index).is_ok_and(|f| f.backstop)
            {
                open_now = false;
                closed_now = true;
                v.enforcement.push(format!(
                    "the nftables backstop on {name} drops every forwarded packet to the pod until the agent puts the table back: closed meanwhile"
                ));
            }
            for (opens, what) in pod_filter_problems(&mut sock, index, &name, &*dp) {
                open_now |= opens;
                v.enforcement.push(what);
            }
        }
    }
    let Some((_, t)) = found else {
        v.allowed = open_now && !closed_now;
        let ip_s = match (ip, ip4) {
            (std::net::IpAddr::V4(a), _) | (_, Some(a)) => a.to_string(),
            (std::net::IpAddr::V6(_), None) => String::new(),
        };
        v.refused = st
            .refused
            .iter()
            .find(|r| r.ip == ip_s)
            .map(|r| format!("{}: {}", r.pod, r.why));
        return v;
    };
    if let Table::Isolated { policies, allow } = t.table(dir) {
        v.isolated = true;
        v.policies = policies.clone();
        let hit = allow.iter().find(|a| {
            a.net.contains(peer)
                && a.ports
                    .is_none_or(|p| p.proto == proto && p.first <= port && port <= p.last)
        });
        v.allowed = hit.is_some();
        v.entry = hit.map(|a| match a.ports {
            None => format!("{} any protocol", a.net),
            Some(p) => format!("{} {} {}-{}", a.net, p.proto.name(), p.first, p.last),
        });
    }
    v.allowed &= programmed;
    if open_now {
        // Whatever the tables say: nothing in the kernel refuses the flow now.
        v.allowed = true;
        v.programmed = true;
    }
    if closed_now {
        v.allowed = false;
    }
    v
}

/// The datapath's drop counters, joined with the status (for the API).
pub fn denied(status: &PolicyStatus) -> Result<(Vec<Denied>, u64), Failure> {
    let (counts, closed) = datapath::reader(status).counters()?;
    let mut out = Vec::new();
    for p in &status.pods {
        for (dir, d) in [
            (Direction::Ingress, &p.ingress),
            (Direction::Egress, &p.egress),
        ] {
            if d.state != "isolated" {
                continue;
            }
            // Refused over either family: the pod's IPv4 and IPv6 addresses.
            let packets = std::iter::once(&p.ip)
                .chain(&p.ip6)
                .filter_map(|a| a.parse().ok())
                .filter_map(|ip| counts.get(&(ip, dir)).copied())
                .sum();
            out.push(Denied {
                pod: p.pod.clone(),
                ip: p.ip.clone(),
                direction: dir,
                policies: d.policies.clone(),
                packets,
            });
        }
    }
    Ok((out, closed))
}
