//! Neighbour (ARP) entries (`ip neigh`).

use crate::error::Result;
use crate::msg::{self, Msg};
use crate::socket::Socket;
use std::net::Ipv4Addr;

const RTM_GETNEIGH: u16 = 30;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

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
        match self.state {
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
