//! The compiled tables as the maps hold them: pod flags, peer prefixes per direction
//! (per family: a dual-stack pod's IPv6 address has its entries in the `*6` maps, and
//! a table's IPv6 prefixes go there, its IPv4 ones to the IPv4 maps) and port sets as
//! prefixes of the port number, shared by both families ([`desired`]), and the LPM keys.

use super::maps::raw;
use aya::maps::lpm_trie::Key;
use podnet_bpf_abi::{
    In6, Peer6Data, PeerData, PortData, POD_ISOLATED_EGRESS, POD_ISOLATED_INGRESS, POD_PROGRAMMED,
};
use podnet_policy::compile::{PodTables, Ports, Table};
use podnet_policy::net::Prefix;
use podnet_policy::Direction;
use std::collections::{BTreeMap, BTreeSet};

/// What the maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub(super) pods: BTreeMap<u32, u32>,
    /// (pod, peer network, peer prefix length) → port set id, per direction.
    pub(super) peers: [BTreeMap<(u32, u32, u8), u32>; 2],
    /// The same for pods' IPv6 addresses (`pod_policy6`, `*_peers6`).
    pub(super) pods6: BTreeMap<In6, u32>,
    pub(super) peers6: [BTreeMap<(In6, In6, u8), u32>; 2],
    /// (set id, protocol, first port of the block, block prefix length).
    pub(super) ports: BTreeSet<(u32, u8, u16, u8)>,
}

/// `first..=last` as prefixes of the 16-bit port: `(start, prefix length)`.
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut a, b) = (u32::from(first), u32::from(last));
    while a <= b {
        let mut size = 1u32;
        while a % (size * 2) == 0 && a + size * 2 - 1 <= b && size < 65536 {
            size *= 2;
        }
        out.push((a as u16, 16 - size.trailing_zeros() as u8));
        a += size;
    }
    out
}

/// A port set's id: a hash of its content (never 0, which means "any").
pub(super) fn set_hash(ports: &[Ports]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in ports {
        for b in [p.proto.number()]
            .into_iter()
            .chain(p.first.to_be_bytes())
            .chain(p.last.to_be_bytes())
        {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h.max(1)
}

/// The map contents for `tables`.
pub fn desired(tables: &BTreeMap<String, PodTables>) -> Desired {
    let mut d = Desired::default();
    let mut ids: BTreeMap<Vec<Ports>, u32> = BTreeMap::new();
    let mut used: BTreeMap<u32, Vec<Ports>> = BTreeMap::new();
    for t in tables.values() {
        let pod = raw(t.ip);
        let pod6 = t.ip6.map(in6);
        let mut flags = POD_PROGRAMMED;
        for (i, dir) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            let Table::Isolated { allow, .. } = t.table(dir) else {
                continue;
            };
            flags |= if dir == Direction::Ingress {
                POD_ISOLATED_INGRESS
            } else {
                POD_ISOLATED_EGRESS
            };
            let mut by_net: BTreeMap<Prefix, Option<Vec<Ports>>> = BTreeMap::new();
            for a in allow {
                match a.ports {
                    None => {
                        by_net.insert(a.net, None);
                    }
                    Some(p) => {
                        if let Some(list) = by_net.entry(a.net).or_insert_with(|| Some(vec![])) {
                            list.push(p);
                        }
                    }
                }
            }
            for (net, ports) in by_net {
                let set = match ports {
                    None => 0,
                    Some(mut list) => {
                        list.sort();
                        *ids.entry(list.clone()).or_insert_with(|| {
                            let mut id = set_hash(&list);
                            while used.get(&id).is_some_and(|o| *o != list) {
                                id = id.wrapping_add(1).max(1);
                            }
                            used.insert(id, list.clone());
                            id
                        })
                    }
                };
                match net {
                    Prefix::V4(net) => {
                        d.peers[i].insert((pod, raw(net.network()), net.prefix()), set);
                    }
                    // An IPv4-only pod has no IPv6 address to judge by these.
                    Prefix::V6(net) => {
                        if let Some(pod6) = pod6 {
                            d.peers6[i].insert((pod6, in6(net.network()), net.prefix()), set);
                        }
                    }
                }
            }
        }
        d.pods.insert(pod, flags);
        if let Some(pod6) = pod6 {
            d.pods6.insert(pod6, flags);
        }
    }
    for (list, id) in &ids {
        for p in list {
            for (start, len) in port_prefixes(p.first, p.last) {
                d.ports.insert((*id, p.proto.number(), start, len));
            }
        }
    }
    d
}

pub(super) fn peer_key(&(pod, peer, len): &(u32, u32, u8)) -> Key<PeerData> {
    Key::new(32 + u32::from(len), PeerData { pod, peer })
}

pub(super) fn peer6_key(&(pod, peer, len): &(In6, In6, u8)) -> Key<Peer6Data> {
    Key::new(128 + u32::from(len), Peer6Data { pod, peer })
}

/// An IPv6 address as the programs' keys hold it.
pub fn in6(ip: std::net::Ipv6Addr) -> In6 {
    In6 { a: ip.octets() }
}

pub(super) fn port_key(&(set, proto, start, len): &(u32, u8, u16, u8)) -> Key<PortData> {
    Key::new(
        40 + u32::from(len),
        PortData {
            set: set.to_be_bytes(),
            proto,
            port: start.to_be_bytes(),
            pad: 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_become_exact_prefix_covers() {
        for (a, b) in [
            (80, 80),
            (80, 81),
            (1, 65535),
            (0, 65535),
            (1000, 1999),
            (65535, 65535),
        ] {
            let ps = port_prefixes(a, b);
            let covers = |p: u32| {
                ps.iter()
                    .any(|&(s, l)| p >= u32::from(s) && p < u32::from(s) + (1u32 << (16 - l)))
            };
            for p in 0..=65535u32 {
                assert_eq!(
                    covers(p),
                    (a as u32..=b as u32).contains(&p),
                    "{a}-{b}: {p}"
                );
            }
        }
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_prefixes(80, 81), vec![(80, 15)]);
    }
}
