//! Reading what podnet's anti-spoofing datapath (`bpf/from_pod.c`) holds: one place
//! for the layouts that podnet-cni (which loads the program and writes each pod's
//! entry) and podnetd (metrics, drop events) both read.
//!
//! On a pod's host veth the tc ingress filter named [`PROG_NAME`] runs the program; its
//! maps are the per-node hash of pod entries (MAC, IP, one drop counter per reason)
//! and the per-node ring buffer of drop events ([`SpoofEvent`]).

use crate::{bpf, tc, Error, Result, Socket};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

include!(concat!(env!("OUT_DIR"), "/drop_reasons.rs"));

/// The tc filter's and the program's name.
pub const PROG_NAME: &str = "podnet_from_pod";

/// `struct pod_state` and `struct spoof_event` of bpf/abi.h, generated.
use podnet_bpf_abi as abi;

/// Size of `struct pod_state`: mac, ip, overlay guard, one drop counter per reason.
pub fn state_size() -> usize {
    std::mem::size_of::<abi::PodState>()
}

/// The overlay guard a pod's entry carries (see `struct pod_state` in from_pod.c): the
/// node's overlay UDP ports, to which the pod may send only to another pod's address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverlayGuard {
    /// VXLAN and WireGuard ports; 0: none.
    pub ports: [u16; 2],
    /// The cluster CIDR: `(network, prefix)`; `None`: no address is a pod's, so the
    /// ports are closed to every destination.
    pub cluster: Option<(Ipv4Addr, u8)>,
    /// The prefix length of one node's pod CIDR.
    pub node_prefix: u8,
    /// The prefix length of the cluster's IPv6 pod range (dual-stack); 0: not known,
    /// a pod's IPv6 UDP to the ports may go only to the pods of its own node.
    pub cluster6_prefix: u8,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32) as u32)
    }
}

/// A pod's map entry: its MAC, IPv4 address, a dual-stack pod's IPv6 address with the
/// prefix length of its node's IPv6 pod CIDR, and its overlay guard; counters at zero.
pub fn state_bytes(
    mac: [u8; 6],
    ip: Ipv4Addr,
    ip6: Option<(Ipv6Addr, u8)>,
    guard: &OverlayGuard,
) -> Vec<u8> {
    let (cluster_net, cluster_mask) = guard.cluster.map_or((0, 0), |(net, prefix)| {
        let m = mask(prefix);
        (u32::from(net) & m, m)
    });
    abi::PodState {
        mac,
        ip: u32::from_ne_bytes(ip.octets()),
        guard_ports: guard.ports,
        cluster_net,
        cluster_mask,
        node_mask: mask(guard.node_prefix),
        ip6: ip6.map_or([0; 16], |(a, _)| a.octets()),
        ip6_prefix: ip6.map_or(0, |(_, p)| p),
        cluster6_prefix: guard.cluster6_prefix,
        ..Default::default()
    }
    .as_bytes()
    .to_vec()
}

/// The reason id of drop reason number `n` (`unknown` if this build has no such).
pub fn reason_id(n: u32) -> &'static str {
    DROP_REASONS
        .iter()
        .find(|(i, _, _)| *i == n)
        .map(|(_, id, _)| *id)
        .unwrap_or("unknown")
}

/// The program id of podnet's filter on `ifindex`, if installed.
pub fn installed_prog(sock: &mut Socket, ifindex: u32) -> Result<Option<u32>> {
    Ok(tc::list_ingress(sock, ifindex)?
        .into_iter()
        .find(|f| f.kind == "bpf" && f.name.as_deref() == Some(PROG_NAME))
        .and_then(|f| f.prog_id))
}

/// What the datapath holds for one pod: its MAC, IP and drop counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    /// A dual-stack pod's IPv6 address.
    pub ip6: Option<Ipv6Addr>,
    /// `(reason, packets dropped)` for every reason, in table order.
    pub drops: Vec<(String, u64)>,
}

/// The ids of program `prog_id`'s maps of type `map_type`.
fn maps_of(prog_id: u32, map_type: u32) -> Result<Vec<u32>> {
    let prog = bpf::prog_by_id(prog_id)?;
    let mut out = Vec::new();
    for id in bpf::prog_info(&prog)?.map_ids {
        if bpf::map_info(&bpf::map_by_id(id)?)?.map_type == map_type {
            out.push(id);
        }
    }
    Ok(out)
}

/// The drop events program `prog_id` could not tell: `[over a pod's budget, ring
/// buffer full]` (`podnet_spooflost` in from_pod.c); `None` for programs of podnet
/// builds without it.
pub fn events_lost(prog_id: u32) -> Result<Option<[u64; 2]>> {
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let Some(id) = maps_of(prog_id, BPF_MAP_TYPE_ARRAY)?.first().copied() else {
        return Ok(None);
    };
    let map = bpf::map_by_id(id)?;
    let mut out = [0u64; 2];
    for (i, slot) in [abi::SPOOF_LOST_BUDGET, abi::SPOOF_LOST_RING_FULL]
        .into_iter()
        .zip(out.iter_mut())
    {
        if let Some(v) = bpf::lookup(&map, i)? {
            if v.len() >= 8 {
                *slot = u64::from_ne_bytes(v[..8].try_into().unwrap());
            }
        }
    }
    Ok(Some(out))
}

/// Reads the entry for host veth `ifindex` in the pod map of program `prog_id`.
pub fn read_state(prog_id: u32, ifindex: u32) -> Result<Option<PodState>> {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let id = *maps_of(prog_id, BPF_MAP_TYPE_HASH)?
        .first()
        .ok_or_else(|| Error::Malformed {
            op: "read pod state",
            obj: format!("program {prog_id}"),
            why: "the program uses no pod map".into(),
        })?;
    let Some(v) = bpf::lookup(&bpf::map_by_id(id)?, ifindex)? else {
        return Ok(None);
    };
    if v.len() != state_size() {
        return Err(Error::Malformed {
            op: "read pod state",
            obj: format!("program {prog_id}"),
            why: format!(
                "its map entries are {} bytes, this build reads {}: it was loaded by another podnet build",
                v.len(),
                state_size()
            ),
        });
    }
    let st = abi::PodState::from_bytes(&v).expect("the size was checked");
    Ok(Some(PodState {
        mac: st.mac,
        ip: Ipv4Addr::from(st.ip.to_ne_bytes()),
        ip6: Some(Ipv6Addr::from(st.ip6)).filter(|a| !a.is_unspecified()),
        drops: DROP_REASONS
            .iter()
            .map(|(n, id, _)| (id.to_string(), st.drops[*n as usize]))
            .collect(),
    }))
}

/// The datapath's view of the pod behind host veth `ifindex` (in the socket's
/// namespace): `None` if the filter or the entry is missing.
pub fn pod_state(sock: &mut Socket, ifindex: u32) -> Result<Option<PodState>> {
    match installed_prog(sock, ifindex)? {
        Some(id) => read_state(id, ifindex),
        None => Ok(None),
    }
}

/// The drop-event ring buffer of program `prog_id`, if it has one (programs loaded by
/// podnet builds before drop events have none).
pub fn events_map(prog_id: u32) -> Result<Option<u32>> {
    Ok(maps_of(prog_id, bpf::MAP_TYPE_RINGBUF)?.first().copied())
}

/// Size of the ring buffer of drop events podnet-cni creates per node.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// One dropped frame, as `from_pod.c` writes it to the ring buffer (`struct
/// spoof_event`, 64 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoofEvent {
    /// The host veth the frame came in on (the pod).
    pub ifindex: u32,
    /// Drop reason number ([`DROP_REASONS`]).
    pub reason: u32,
    pub src_mac: [u8; 6],
    pub ethertype: u16,
    /// IPv4 and IPv6: source and destination; ARP: sender and target address; else
    /// 0.0.0.0.
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    /// IPv4 protocol number or IPv6 next header (0 for ARP and others).
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl SpoofEvent {
    pub const SIZE: usize = std::mem::size_of::<abi::SpoofEvent>();

    pub fn parse(b: &[u8]) -> Option<SpoofEvent> {
        let e = abi::SpoofEvent::from_bytes(b.get(..Self::SIZE)?)?;
        let ipv6 = e.ethertype == [0x86, 0xdd];
        Some(SpoofEvent {
            ifindex: e.ifindex,
            reason: e.reason,
            src_mac: e.src_mac,
            ethertype: u16::from_be_bytes(e.ethertype),
            saddr: if ipv6 {
                IpAddr::V6(Ipv6Addr::from(e.saddr6))
            } else {
                IpAddr::V4(Ipv4Addr::from(e.saddr.to_ne_bytes()))
            },
            daddr: if ipv6 {
                IpAddr::V6(Ipv6Addr::from(e.daddr6))
            } else {
                IpAddr::V4(Ipv4Addr::from(e.daddr.to_ne_bytes()))
            },
            proto: e.proto,
            sport: e.sport,
            dport: e.dport,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_table_is_dense_and_named() {
        for (i, (n, id, what)) in DROP_REASONS.iter().enumerate() {
            assert_eq!(*n as usize, i);
            assert!(!id.is_empty() && !what.is_empty());
        }
        assert_eq!(reason_id(2), "arp-spa");
        assert_eq!(reason_id(999), "unknown");
    }

    #[test]
    fn events_parse_at_their_c_offsets() {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&7u32.to_ne_bytes());
        b[4..8].copy_from_slice(&2u32.to_ne_bytes());
        b[8..14].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        b[14..16].copy_from_slice(&[0x08, 0x06]);
        b[16..20].copy_from_slice(&[10, 0, 0, 9]);
        b[20..24].copy_from_slice(&[10, 0, 0, 1]);
        b[24] = 6;
        b[26..28].copy_from_slice(&1234u16.to_ne_bytes());
        b[28..30].copy_from_slice(&80u16.to_ne_bytes());
        let e = SpoofEvent::parse(&b).unwrap();
        assert_eq!(e.ifindex, 7);
        assert_eq!(reason_id(e.reason), "arp-spa");
        assert_eq!(e.ethertype, 0x0806);
        assert_eq!(e.saddr, Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!((e.proto, e.sport, e.dport), (6, 1234, 80));
        assert!(SpoofEvent::parse(&b[..63]).is_none());
        // IPv6: the addresses from their own fields.
        b[14..16].copy_from_slice(&[0x86, 0xdd]);
        b[32..48].copy_from_slice(&"fd00::9".parse::<Ipv6Addr>().unwrap().octets());
        b[48..64].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        let e = SpoofEvent::parse(&b).unwrap();
        assert_eq!(e.saddr.to_string(), "fd00::9");
        assert_eq!(e.daddr.to_string(), "fd00::1");
    }
}
