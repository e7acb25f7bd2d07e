//! IPv4 addresses on links (`ip addr`).

use crate::error::Result;
use crate::msg::{self, Msg};
use crate::socket::{Request, Socket};
use crate::sys::*;
use std::net::Ipv4Addr;

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
