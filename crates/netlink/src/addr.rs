//! Addresses on links (`ip addr`): IPv4, and the IPv6 addresses of dual-stack pods
//! and their gateway.

use crate::error::Result;
use crate::msg::{self, Msg};
use crate::socket::{Request, Socket};
use crate::sys::*;
use std::net::{Ipv4Addr, Ipv6Addr};

/// One IPv4 address as `ip -4 addr` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

fn ifaddr(prefix: u8, index: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = libc::AF_INET as u8;
    h[1] = prefix;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

/// The request for `ip addr add ADDR/PREFIX dev INDEX`.
pub fn add_request(index: u32, addr: Ipv4Addr, prefix: u8) -> Request {
    let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL).fixed(&ifaddr(prefix, index));
    m.attr(IFA_LOCAL, &addr.octets());
    m.attr(IFA_ADDRESS, &addr.octets());
    Request::new(m, "add address", format!("{addr}/{prefix} on link {index}"))
}

/// `ip -4 addr show`; only the link `index` when given.
pub fn list(sock: &mut Socket, index: Option<u32>) -> Result<Vec<AddrInfo>> {
    let m = Msg::new(RTM_GETADDR, 0).fixed(&ifaddr(0, 0));
    let mut out = Vec::new();
    for body in sock.dump(m, "list addresses", "")? {
        if body.len() < 8 || body[0] != libc::AF_INET as u8 {
            continue;
        }
        let prefix = body[1];
        let idx = u32::from_ne_bytes(body[4..8].try_into().unwrap());
        if index.is_some_and(|i| i != idx) {
            continue;
        }
        let local = msg::find(&body[8..], IFA_LOCAL).or_else(|| msg::find(&body[8..], IFA_ADDRESS));
        if let Some(p) = local.filter(|p| p.len() == 4) {
            out.push(AddrInfo {
                index: idx,
                addr: Ipv4Addr::new(p[0], p[1], p[2], p[3]),
                prefix,
            });
        }
    }
    Ok(out)
}

/// `IFA_F_NODAD`: the address is usable at once, without duplicate address detection.
const IFA_F_NODAD: u8 = 0x02;

/// The request for `ip -6 addr add ADDR/PREFIX dev INDEX nodad`. No duplicate address
/// detection: podnet's IPAM hands each address out once, and a tentative address
/// would leave a new pod without IPv6 for a second or more.
pub fn add6_request(index: u32, addr: Ipv6Addr, prefix: u8) -> Request {
    let mut h = ifaddr(prefix, index);
    h[0] = libc::AF_INET6 as u8;
    h[2] = IFA_F_NODAD;
    let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL).fixed(&h);
    m.attr(IFA_ADDRESS, &addr.octets());
    Request::new(m, "add address", format!("{addr}/{prefix} on link {index}"))
}

/// `ip -6 addr show`: `(index, address, prefix)`; only the link `index` when given.
pub fn list6(sock: &mut Socket, index: Option<u32>) -> Result<Vec<(u32, Ipv6Addr, u8)>> {
    let mut h = ifaddr(0, 0);
    h[0] = libc::AF_INET6 as u8;
    let m = Msg::new(RTM_GETADDR, 0).fixed(&h);
    let mut out = Vec::new();
    for body in sock.dump(m, "list addresses", "")? {
        if body.len() < 8 || body[0] != libc::AF_INET6 as u8 {
            continue;
        }
        let idx = u32::from_ne_bytes(body[4..8].try_into().unwrap());
        if index.is_some_and(|i| i != idx) {
            continue;
        }
        let a = msg::find(&body[8..], IFA_ADDRESS).or_else(|| msg::find(&body[8..], IFA_LOCAL));
        if let Some(p) = a.and_then(|p| <[u8; 16]>::try_from(p).ok()) {
            out.push((idx, Ipv6Addr::from(p), body[1]));
        }
    }
    Ok(out)
}
