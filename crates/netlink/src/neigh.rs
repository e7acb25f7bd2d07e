//! Neighbour (ARP) entries (`ip neigh`).

use crate::error::Result;
use crate::msg::{self, Msg};
use crate::socket::{Request, Socket};
use crate::sys::{NLM_F_CREATE, NLM_F_REPLACE};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_PERMANENT: u16 = 0x80;
const NTF_SELF: u8 = 0x02;
const AF_BRIDGE: u8 = 7;

fn ndmsg(family: u8, index: u32, state: u16, flags: u8) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = family;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..10].copy_from_slice(&state.to_ne_bytes());
    h[10] = flags;
    h
}

/// `ip neigh replace IP lladdr MAC dev INDEX nud permanent`.
pub fn add_request(index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Request {
    add_any(index, IpAddr::V4(ip), mac)
}

/// `ip neigh del IP dev INDEX`.
pub fn del_request(index: u32, ip: Ipv4Addr) -> Request {
    del_any(index, IpAddr::V4(ip))
}

fn family_and_octets(ip: IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

fn add_any(index: u32, ip: IpAddr, mac: [u8; 6]) -> Request {
    let (family, octets) = family_and_octets(ip);
    let mut m = Msg::new(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE).fixed(&ndmsg(
        family,
        index,
        NUD_PERMANENT,
        0,
    ));
    m.attr(NDA_DST, &octets);
    m.attr(NDA_LLADDR, &mac);
    Request::new(
        m,
        "add neighbour",
        format!("{ip} lladdr {} on link {index}", crate::fmt_mac(&mac)),
    )
}

fn del_any(index: u32, ip: IpAddr) -> Request {
    let (family, octets) = family_and_octets(ip);
    let mut m = Msg::new(RTM_DELNEIGH, 0).fixed(&ndmsg(family, index, 0, 0));
    m.attr(NDA_DST, &octets);
    Request::new(m, "delete neighbour", format!("{ip} on link {index}"))
}

/// One forwarding-database entry of a VXLAN device (`bridge fdb show dev X`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbInfo {
    pub index: u32,
    pub mac: [u8; 6],
    /// The remote VTEP this MAC is reached through (an IPv6 one over an IPv6 underlay).
    pub dst: Option<IpAddr>,
    pub state: u16,
}

/// `bridge fdb replace MAC dev INDEX dst IP self permanent`.
pub fn fdb_add_request(index: u32, mac: [u8; 6], dst: IpAddr) -> Request {
    let mut m = Msg::new(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE).fixed(&ndmsg(
        AF_BRIDGE,
        index,
        NUD_PERMANENT,
        NTF_SELF,
    ));
    m.attr(NDA_LLADDR, &mac);
    m.attr(NDA_DST, &family_and_octets(dst).1);
    Request::new(
        m,
        "add fdb entry",
        format!("{} dst {dst} on link {index}", crate::fmt_mac(&mac)),
    )
}

/// `bridge fdb del MAC dev INDEX dst IP self`.
pub fn fdb_del_request(index: u32, mac: [u8; 6], dst: Option<IpAddr>) -> Request {
    let mut m = Msg::new(RTM_DELNEIGH, 0).fixed(&ndmsg(AF_BRIDGE, index, 0, NTF_SELF));
    m.attr(NDA_LLADDR, &mac);
    if let Some(d) = dst {
        m.attr(NDA_DST, &family_and_octets(d).1);
    }
    Request::new(
        m,
        "delete fdb entry",
        format!("{} on link {index}", crate::fmt_mac(&mac)),
    )
}

/// `bridge fdb show`: every entry, all links, with its IPv4 or IPv6 destination (if any).
pub fn fdb_list(sock: &mut Socket) -> Result<Vec<FdbInfo>> {
    let m = Msg::new(RTM_GETNEIGH, 0).fixed(&ndmsg(AF_BRIDGE, 0, 0, 0));
    let mut out = Vec::new();
    for body in sock.dump(m, "list fdb entries", "")? {
        if body.len() < 12 || body[0] != AF_BRIDGE {
            continue;
        }
        let index = u32::from_ne_bytes(body[4..8].try_into().unwrap());
        let state = u16::from_ne_bytes(body[8..10].try_into().unwrap());
        let Some(mac) =
            msg::find(&body[12..], NDA_LLADDR).and_then(|m| <[u8; 6]>::try_from(m).ok())
        else {
            continue;
        };
        let dst = msg::find(&body[12..], NDA_DST).and_then(|d| match d.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(d).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(d).ok()?)),
            _ => None,
        });
        out.push(FdbInfo {
            index,
            mac,
            dst,
            state,
        });
    }
    Ok(out)
}

/// One IPv4 neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighInfo {
    pub index: u32,
    pub ip: Ipv4Addr,
    pub mac: Option<[u8; 6]>,
    /// NUD_* state bits (0x02 REACHABLE, 0x04 STALE, 0x20 FAILED, 0x80 PERMANENT…).
    pub state: u16,
}

impl NeighInfo {
    /// The state word `ip neigh` prints.
    pub fn state_name(&self) -> &'static str {
        nud_name(self.state)
    }
}

/// The state word `ip neigh` prints for NUD_* bits `state`.
pub fn nud_name(state: u16) -> &'static str {
    match state {
        0x01 => "INCOMPLETE",
        0x02 => "REACHABLE",
        0x04 => "STALE",
        0x08 => "DELAY",
        0x10 => "PROBE",
        0x20 => "FAILED",
        0x40 => "NOARP",
        0x80 => "PERMANENT",
        _ => "NONE",
    }
}

/// `ip -4 neigh show`.
pub fn list(sock: &mut Socket) -> Result<Vec<NeighInfo>> {
    let mut h = [0u8; 12];
    h[0] = libc::AF_INET as u8;
    let m = Msg::new(RTM_GETNEIGH, 0).fixed(&h);
    let mut out = Vec::new();
    for body in sock.dump(m, "list neighbours", "")? {
        if body.len() < 12 || body[0] != libc::AF_INET as u8 {
            continue;
        }
        let index = u32::from_ne_bytes(body[4..8].try_into().unwrap());
        let state = u16::from_ne_bytes(body[8..10].try_into().unwrap());
        let Some(dst) = msg::find(&body[12..], NDA_DST).filter(|d| d.len() == 4) else {
            continue;
        };
        let mac = msg::find(&body[12..], NDA_LLADDR).and_then(|m| m.try_into().ok());
        out.push(NeighInfo {
            index,
            ip: Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]),
            mac,
            state,
        });
    }
    Ok(out)
}

/// `ip -6 neigh replace IP lladdr MAC dev INDEX nud permanent`.
pub fn add6_request(index: u32, ip: Ipv6Addr, mac: [u8; 6]) -> Request {
    add_any(index, IpAddr::V6(ip), mac)
}

/// `ip -6 neigh del IP dev INDEX`.
pub fn del6_request(index: u32, ip: Ipv6Addr) -> Request {
    del_any(index, IpAddr::V6(ip))
}

/// One IPv6 neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neigh6Info {
    pub index: u32,
    pub ip: Ipv6Addr,
    pub mac: Option<[u8; 6]>,
    /// NUD_* state bits, as [`NeighInfo::state`].
    pub state: u16,
}

impl Neigh6Info {
    /// The state word `ip -6 neigh` prints.
    pub fn state_name(&self) -> &'static str {
        nud_name(self.state)
    }
}

/// `ip -6 neigh show`.
pub fn list6(sock: &mut Socket) -> Result<Vec<Neigh6Info>> {
    let mut h = [0u8; 12];
    h[0] = libc::AF_INET6 as u8;
    let m = Msg::new(RTM_GETNEIGH, 0).fixed(&h);
    let mut out = Vec::new();
    for body in sock.dump(m, "list neighbours", "")? {
        if body.len() < 12 || body[0] != libc::AF_INET6 as u8 {
            continue;
        }
        let Some(dst) = msg::find(&body[12..], NDA_DST).and_then(|d| <[u8; 16]>::try_from(d).ok())
        else {
            continue;
        };
        out.push(Neigh6Info {
            index: u32::from_ne_bytes(body[4..8].try_into().unwrap()),
            ip: Ipv6Addr::from(dst),
            mac: msg::find(&body[12..], NDA_LLADDR).and_then(|m| m.try_into().ok()),
            state: u16::from_ne_bytes(body[8..10].try_into().unwrap()),
        });
    }
    Ok(out)
}
