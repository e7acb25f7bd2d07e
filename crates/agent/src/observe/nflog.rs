//! The nftables datapath's refusals (and admitted new flows, while asked), read from
//! the NFLOG group its rules log to ([`LOG_GROUP`]).

use super::Verdict;
use crate::policy::datapath::nftables::table::LOG_GROUP;
use crate::Failure;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A bound NFLOG group: the refused packets' headers, as verdicts.
pub struct NfLog {
    sock: podnet_netlink::Socket,
}

impl NfLog {
    /// Binds [`LOG_GROUP`] in the calling thread's namespace, copying the first 64
    /// bytes of each packet (the IP header and ports: 44 bytes for IPv6).
    pub fn open() -> Result<NfLog, Failure> {
        const NFULNL_MSG_CONFIG: u16 = (4 << 8) | 1;
        const NFULA_CFG_CMD: u16 = 1;
        const NFULA_CFG_MODE: u16 = 2;
        const NFULA_CFG_QTHRESH: u16 = 5;
        const NFULNL_CFG_CMD_BIND: u8 = 1;
        const NFULNL_COPY_PACKET: u8 = 2;
        let mut sock =
            podnet_netlink::Socket::open(libc::NETLINK_NETFILTER).map_err(Failure::from)?;
        let g = LOG_GROUP.to_be_bytes();
        let hdr = [libc::AF_UNSPEC as u8, 0, g[0], g[1]];
        let mut mode = 64u32.to_be_bytes().to_vec();
        mode.extend([NFULNL_COPY_PACKET, 0]);
        // Bound; the first 64 bytes of each packet; each packet as it comes (by default
        // the kernel batches them for up to a second).
        for (what, attr, data) in [
            ("bind", NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND]),
            ("set the copy mode of", NFULA_CFG_MODE, mode),
            (
                "set the queue threshold of",
                NFULA_CFG_QTHRESH,
                1u32.to_be_bytes().to_vec(),
            ),
        ] {
            let mut m = podnet_netlink::Msg::new(NFULNL_MSG_CONFIG, 0).fixed(&hdr);
            m.attr(attr, &data);
            sock.ack(m, "configure NFLOG group", format!("{LOG_GROUP} ({what})"))
                .map_err(Failure::from)?;
        }
        Ok(NfLog { sock })
    }

    /// The verdicts logged since the last call (waiting up to `wait` for the first);
    /// `Err(n)` when the kernel had to drop some (about `n` lost).
    pub fn read(&mut self, wait: std::time::Duration) -> Result<Vec<Verdict>, u64> {
        const NFULNL_MSG_PACKET: u16 = 4 << 8;
        const NFULA_PAYLOAD: u16 = 9;
        const NFULA_PREFIX: u16 = 10;
        let mut out = Vec::new();
        let mut timeout = wait.as_millis() as i32;
        loop {
            let mut pfd = libc::pollfd {
                fd: self.sock.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid fd.
            if unsafe { libc::poll(&mut pfd, 1, timeout) } <= 0 {
                return Ok(out);
            }
            timeout = 0;
            let msgs = match self.sock.notifications() {
                Ok(m) => m,
                Err(_) => return Err(1),
            };
            for (ty, body) in msgs {
                if ty != NFULNL_MSG_PACKET || body.len() < 4 {
                    continue;
                }
                let attrs = &body[4..];
                let prefix = podnet_netlink::msg::find(attrs, NFULA_PREFIX)
                    .map(podnet_netlink::msg::as_str)
                    .unwrap_or_default();
                let Some(p) = podnet_netlink::msg::find(attrs, NFULA_PAYLOAD) else {
                    continue;
                };
                out.extend(verdict_of(&prefix, p));
            }
        }
    }
}

/// A logged packet (`prefix`, IP header onwards, either family) as verdicts: one for a refusal;
/// for an admitted new flow (`podnet:allow:`) one per end — the source's egress and
/// the destination's ingress (the reader keeps those of its node's pods).
pub fn verdict_of(prefix: &str, p: &[u8]) -> Vec<Verdict> {
    let Some(side) = prefix
        .strip_prefix("podnet:")
        .map(|s| s.trim_end_matches(':'))
    else {
        return vec![];
    };
    // The addresses, the protocol and where the ports start, of either family (for
    // IPv6, ports are read when TCP, UDP or SCTP follows the fixed header directly).
    let (saddr, daddr, proto, l4): (IpAddr, IpAddr, u8, usize) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => (
            Ipv4Addr::new(p[12], p[13], p[14], p[15]).into(),
            Ipv4Addr::new(p[16], p[17], p[18], p[19]).into(),
            p[9],
            usize::from(p[0] & 0x0f) * 4,
        ),
        Some(6) if p.len() >= 40 => {
            let a = |o: usize| -> IpAddr {
                let b: [u8; 16] = p[o..o + 16].try_into().expect("16 bytes");
                Ipv6Addr::from(b).into()
            };
            (a(8), a(24), p[6], 40)
        }
        _ => return vec![],
    };
    let (sport, dport) = match (proto, p.get(l4..l4 + 4)) {
        (6 | 17 | 132, Some(l4)) => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        _ => (0, 0),
    };
    let v = |pod, peer, direction, allowed| Verdict {
        pod,
        peer,
        direction,
        allowed,
        proto,
        sport,
        dport,
    };
    match side {
        "egress" => vec![v(saddr, daddr, "egress", false)],
        "ingress" => vec![v(daddr, saddr, "ingress", false)],
        "closed-src" => vec![v(saddr, daddr, "closed", false)],
        "closed-dst" => vec![v(daddr, saddr, "closed", false)],
        "allow" => vec![
            v(saddr, daddr, "egress", true),
            v(daddr, saddr, "ingress", true),
        ],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_packets_of_both_families_become_verdicts() {
        // IPv4 TCP 10.244.0.5:40000 → 10.244.1.7:80, refused on egress.
        let mut p4 = vec![0u8; 24];
        p4[0] = 0x45;
        p4[9] = 6;
        p4[12..16].copy_from_slice(&[10, 244, 0, 5]);
        p4[16..20].copy_from_slice(&[10, 244, 1, 7]);
        p4[20..24].copy_from_slice(&[0x9c, 0x40, 0, 80]);
        let v = verdict_of("podnet:egress:", &p4);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].pod.to_string(), "10.244.0.5");
        assert_eq!(
            (v[0].peer.to_string(), v[0].dport),
            ("10.244.1.7".into(), 80)
        );
        // IPv6 UDP fd00:10:244:1::9:5353 → fd00:10:244::5:53, refused on ingress: the
        // pod is the destination.
        let mut p6 = vec![0u8; 44];
        p6[0] = 0x60;
        p6[6] = 17;
        let s: Ipv6Addr = "fd00:10:244:1::9".parse().unwrap();
        let d: Ipv6Addr = "fd00:10:244::5".parse().unwrap();
        p6[8..24].copy_from_slice(&s.octets());
        p6[24..40].copy_from_slice(&d.octets());
        p6[40..44].copy_from_slice(&[0x14, 0xe9, 0, 53]);
        let v = verdict_of("podnet:ingress:", &p6);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].pod, IpAddr::from(d));
        assert_eq!(v[0].peer, IpAddr::from(s));
        assert_eq!((v[0].proto, v[0].sport, v[0].dport), (17, 5353, 53));
        // Truncated headers are no verdict.
        assert!(verdict_of("podnet:ingress:", &p6[..39]).is_empty());
        assert!(verdict_of("podnet:egress:", &p4[..19]).is_empty());
    }
}
