//! SCTP with raw sockets: this kernel has no SCTP module, so the lab's pods serve SCTP
//! ports and `podnet lab probe` tests them with the first two packets of an SCTP
//! association built by hand — INIT, answered by INIT ACK (RFC 9260 §3.3.2–3.3.3).
//! That is enough for NetworkPolicy: the INIT is the packet a policy admits or
//! drops, and conntrack tracks the INIT ACK as its reply.
//!
//! Raw IPv4 sockets of protocol 132 receive every SCTP packet of their namespace with
//! its IP header, and send without one (the kernel adds it).

use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub const IPPROTO_SCTP: i32 = 132;
const CHUNK_INIT: u8 = 1;
const CHUNK_INIT_ACK: u8 = 2;
/// Parameter type of the State Cookie an INIT ACK must carry.
const PARAM_STATE_COOKIE: u16 = 7;

/// CRC32c (Castagnoli), as SCTP's checksum.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A packet with its checksum filled in (sent little-endian, as Linux does).
fn seal(mut p: Vec<u8>) -> Vec<u8> {
    p[8..12].copy_from_slice(&[0; 4]);
    let c = crc32c(&p);
    p[8..12].copy_from_slice(&c.to_le_bytes());
    p
}

fn common_header(src: u16, dst: u16, vtag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&src.to_be_bytes());
    p.extend_from_slice(&dst.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

/// INIT from `src` to `dst` port, with our initiate tag `tag` (verification tag 0).
pub fn init(src: u16, dst: u16, tag: u32) -> Vec<u8> {
    let mut p = common_header(src, dst, 0);
    p.extend_from_slice(&[CHUNK_INIT, 0]);
    p.extend_from_slice(&20u16.to_be_bytes());
    p.extend_from_slice(&tag.to_be_bytes()); // initiate tag
    p.extend_from_slice(&65_535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    seal(p)
}

/// INIT ACK answering an INIT whose initiate tag was `peer_tag`.
pub fn init_ack(src: u16, dst: u16, peer_tag: u32, tag: u32) -> Vec<u8> {
    let mut p = common_header(src, dst, peer_tag);
    p.extend_from_slice(&[CHUNK_INIT_ACK, 0]);
    p.extend_from_slice(&28u16.to_be_bytes());
    p.extend_from_slice(&tag.to_be_bytes());
    p.extend_from_slice(&65_535u32.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&tag.to_be_bytes());
    p.extend_from_slice(&PARAM_STATE_COOKIE.to_be_bytes());
    p.extend_from_slice(&8u16.to_be_bytes());
    p.extend_from_slice(&peer_tag.to_be_bytes());
    seal(p)
}

/// One SCTP packet as read from a raw socket (IP header first).
#[derive(Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub vtag: u32,
    /// Type of the first chunk.
    pub chunk: u8,
    /// The initiate tag, for INIT and INIT ACK.
    pub initiate_tag: Option<u32>,
}

/// Reads an IPv4 + SCTP packet; `None` if it is not one or its checksum is wrong.
pub fn parse(buf: &[u8]) -> Option<Packet> {
    let ihl = usize::from(buf.first()? & 0x0f) * 4;
    if buf.len() < ihl + 16 || buf[9] != IPPROTO_SCTP as u8 {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(buf[o], buf[o + 1], buf[o + 2], buf[o + 3]);
    let s = &buf[ihl..];
    let mut check = s.to_vec();
    check[8..12].copy_from_slice(&[0; 4]);
    if crc32c(&check).to_le_bytes() != s[8..12] {
        return None;
    }
    let chunk = s[12];
    let initiate_tag = (matches!(chunk, CHUNK_INIT | CHUNK_INIT_ACK) && s.len() >= 20)
        .then(|| u32::from_be_bytes([s[16], s[17], s[18], s[19]]));
    Some(Packet {
        src: ip(12),
        dst: ip(16),
        src_port: u16::from_be_bytes([s[0], s[1]]),
        dst_port: u16::from_be_bytes([s[2], s[3]]),
        vtag: u32::from_be_bytes([s[4], s[5], s[6], s[7]]),
        chunk,
        initiate_tag,
    })
}

/// A raw SCTP socket in the calling thread's namespace.
pub fn socket() -> Result<OwnedFd> {
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            IPPROTO_SCTP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("open a raw SCTP socket");
    }
    // SAFETY: fd is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn send(fd: &OwnedFd, dst: Ipv4Addr, packet: &[u8]) -> Result<()> {
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sending a buffer we own to a valid sockaddr_in.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr() as *const _,
            packet.len(),
            0,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("send SCTP to {dst}"));
    }
    Ok(())
}

/// Waits up to `timeout` for a packet `want` accepts.
pub fn recv_until(
    fd: &OwnedFd,
    timeout: Duration,
    mut want: impl FnMut(&Packet) -> bool,
) -> Option<Packet> {
    let t = Instant::now();
    let mut buf = [0u8; 2048];
    loop {
        let left = timeout.checked_sub(t.elapsed())?;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid fd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        if r <= 0 {
            if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        // SAFETY: reading into a local buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        if let Some(p) = parse(&buf[..n as usize]) {
            if want(&p) {
                return Some(p);
            }
        }
    }
}

/// Serves SCTP `ports` at `ip`: every INIT to one of them is answered with an INIT ACK.
/// Runs forever (in the pod's namespace).
pub fn serve(ip: Ipv4Addr, ports: Vec<u16>) -> Result<()> {
    let fd = socket()?;
    let mut n = 0u32;
    loop {
        let Some(p) = recv_until(&fd, Duration::from_secs(3600), |p| {
            p.dst == ip && p.chunk == CHUNK_INIT && ports.contains(&p.dst_port)
        }) else {
            continue;
        };
        n = n.wrapping_add(1);
        let tag = 0x5000_0000 | n;
        let ack = init_ack(p.dst_port, p.src_port, p.initiate_tag.unwrap_or(0), tag);
        let _ = send(&fd, p.src, &ack);
    }
}

/// Sends an INIT from the calling thread's namespace to `dst:port` and waits for the
/// INIT ACK. `src_port` and `tag` tell concurrent probes apart.
pub fn probe(dst: Ipv4Addr, port: u16, src_port: u16, tag: u32, timeout: Duration) -> Result<bool> {
    let fd = socket()?;
    send(&fd, dst, &init(src_port, port, tag))?;
    Ok(recv_until(&fd, timeout, |p| {
        p.src == dst
            && p.chunk == CHUNK_INIT_ACK
            && p.src_port == port
            && p.dst_port == src_port
            && p.vtag == tag
    })
    .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn init_ack_round_trips_through_the_parser() {
        let mut pkt = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 132, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        pkt.extend(init_ack(80, 40000, 0xabcd, 0x1234));
        let p = parse(&pkt).unwrap();
        assert_eq!(p.src_port, 80);
        assert_eq!(p.dst_port, 40000);
        assert_eq!(p.vtag, 0xabcd);
        assert_eq!(p.chunk, CHUNK_INIT_ACK);
        assert_eq!(p.initiate_tag, Some(0x1234));
        // A flipped bit fails the checksum.
        let last = pkt.len() - 1;
        pkt[last] ^= 1;
        assert!(parse(&pkt).is_none());
    }
}
