//! Active probes a node runs from its own namespace: ICMP echo with the Don't
//! Fragment bit (ICMPv6 echo, never fragmented, to an IPv6 address), of a chosen size. Pinging a peer's VTEP address goes through the
//! overlay (UDP 8472 out and back); pinging its underlay address tests the physical
//! network, and at full size its MTU.
//!
//! It lives beside the API because the agent runs it for `{"get":"ping"}` and clients
//! (`podnet wireguard`, the tests) run it themselves: plain sockets, std and libc only.

use crate::Echo;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends an ICMP echo request (`id`, `seq`, `data`) to `dst` on raw socket `fd`;
/// `sendto`'s result.
fn send_echo(fd: &OwnedFd, dst: Ipv4Addr, id: u16, seq: u16, data: &[u8]) -> isize {
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(data);
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    // SAFETY: a zeroed sockaddr_in is valid; family and address are set below.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
    // SAFETY: sending our buffer to a valid sockaddr_in.
    unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr() as *const _,
            pkt.len(),
            0,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    }
}

/// Sends one ICMP echo of `payload` bytes to `dst` with DF set (to an IPv6 address:
/// ICMPv6, not fragmented) and waits `timeout`. The IP packet is `payload + 28` bytes
/// long (`payload + 48` over IPv6).
pub fn ping(dst: impl Into<IpAddr>, payload: usize, timeout: Duration) -> Echo {
    match dst.into() {
        IpAddr::V4(d) => ping4(d, payload, timeout),
        IpAddr::V6(d) => ping6(d, payload, timeout),
    }
}

/// The bytes an echo of `payload` bytes takes on the wire to `dst`, IP header included.
pub fn echo_size(dst: IpAddr, payload: usize) -> usize {
    payload + if dst.is_ipv6() { 48 } else { 28 }
}

/// A raw socket of `family` and `proto`, or why not.
fn raw_socket(family: libc::c_int, proto: libc::c_int) -> Result<OwnedFd, String> {
    // SAFETY: a raw socket, owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(format!(
            "open ICMP socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd was just created.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: setsockopt with a valid int.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            4,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Waits until `timeout` for what `judge` makes of a received message.
fn wait_for(fd: &OwnedFd, timeout: Duration, judge: impl Fn(&[u8], &[u8]) -> Option<Echo>) -> Echo {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Echo::Timeout;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid fd.
        if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) } <= 0 {
            continue;
        }
        // SAFETY: a zeroed sockaddr_storage is valid; recvfrom fills it.
        let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: reading into our buffers.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut _,
                buf.len(),
                0,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n <= 0 {
            continue;
        }
        // The sender's IPv6 address (none for IPv4: its judge reads the IPv4 header).
        let sender: [u8; 16] = if i32::from(from.ss_family) == libc::AF_INET6 {
            // SAFETY: an AF_INET6 sockaddr_storage holds a sockaddr_in6.
            unsafe {
                (*(&from as *const _ as *const libc::sockaddr_in6))
                    .sin6_addr
                    .s6_addr
            }
        } else {
            [0; 16]
        };
        if let Some(e) = judge(&buf[..n as usize], &sender) {
            return e;
        }
    }
}

/// ICMPv6 echo (the kernel fills in the checksum of a raw ICMPv6 socket), never
/// fragmented: an oversized probe is refused (EMSGSIZE) or answered by a Packet Too Big.
fn ping6(dst: Ipv6Addr, payload: usize, timeout: Duration) -> Echo {
    let fd = match raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6) {
        Ok(fd) => fd,
        Err(e) => return Echo::Error(e),
    };
    // IPV6_PMTUDISC_PROBE: ignore cached path MTUs; IPV6_DONTFRAG: never fragment.
    for (opt, v) in [(libc::IPV6_MTU_DISCOVER, 3), (libc::IPV6_DONTFRAG, 1)] {
        if let Err(e) = set_int(&fd, libc::IPPROTO_IPV6, opt, v) {
            return Echo::Error(format!("set no-fragment on the ICMPv6 socket: {e}"));
        }
    }
    let id = (std::process::id() & 0xffff) as u16 ^ (payload as u16).rotate_left(7);
    let mut pkt = vec![128u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend((0..payload).map(|i| (i % 251) as u8));
    // SAFETY: a zeroed sockaddr_in6 is valid; family and address are set below.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as u16;
    sa.sin6_addr.s6_addr = dst.octets();
    // SAFETY: sending our buffer to a valid sockaddr_in6.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr() as *const _,
            pkt.len(),
            0,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EMSGSIZE) {
            Echo::TooBig
        } else {
            Echo::Error(e.to_string())
        };
    }
    // A raw ICMPv6 socket reads the ICMPv6 message without the IPv6 header.
    wait_for(&fd, timeout, |m, sender| match m.first() {
        Some(129) if m.len() >= 8 && *sender == dst.octets() && m[4..6] == id.to_be_bytes() => {
            Some(Echo::Reply)
        }
        // Packet Too Big about our probe: the quoted IPv6 header's destination.
        Some(2) if m.len() >= 8 + 40 && m[8 + 24..8 + 40] == dst.octets() => Some(Echo::TooBig),
        _ => None,
    })
}

fn ping4(dst: Ipv4Addr, payload: usize, timeout: Duration) -> Echo {
    let fd = match raw_socket(libc::AF_INET, libc::IPPROTO_ICMP) {
        Ok(fd) => fd,
        Err(e) => return Echo::Error(e),
    };
    // PROBE sets DF and ignores cached path MTUs. Without DF an oversized probe is
    // fragmented and answered: the MTU check would lie.
    if let Err(e) = set_int(
        &fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    ) {
        return Echo::Error(format!("set DF on the ICMP socket: {e}"));
    }
    let id = (std::process::id() & 0xffff) as u16 ^ (payload as u16).rotate_left(7);
    let data: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
    if send_echo(&fd, dst, id, 1, &data) < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EMSGSIZE) {
            Echo::TooBig
        } else {
            Echo::Error(e.to_string())
        };
    }
    // A raw ICMP socket reads the IPv4 header too.
    wait_for(&fd, timeout, |p, _| {
        let ihl = ((p.first()? & 0x0f) as usize) * 4;
        let icmp = p.get(ihl..).filter(|i| i.len() >= 8)?;
        match icmp[0] {
            // Echo reply to our probe.
            0 if p[12..16] == dst.octets() && icmp[4..6] == id.to_be_bytes() => Some(Echo::Reply),
            // Destination unreachable, fragmentation needed, about our probe.
            3 if icmp[1] == 4
                && icmp.len() >= 8 + 20 + 8
                && icmp[8 + 16..8 + 20] == dst.octets() =>
            {
                Some(Echo::TooBig)
            }
            _ => None,
        }
    })
}

/// What a stream of echoes saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stream {
    pub sent: u32,
    pub received: u32,
    /// The longest run of unanswered echoes, in milliseconds of sending time (0: none
    /// lost).
    pub longest_gap_ms: u64,
}

/// Sends an ICMP echo to `dst` every `interval` until `stop` returns true (checked
/// before each echo), then waits `grace` for late replies. Replies are matched by
/// sequence number, so reordering and duplicates count once.
pub fn ping_stream(
    dst: Ipv4Addr,
    interval: Duration,
    grace: Duration,
    stop: &mut dyn FnMut() -> bool,
) -> std::io::Result<Stream> {
    // SAFETY: a raw ICMP socket, owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut answered: Vec<bool> = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut drain = |answered: &mut Vec<bool>| loop {
        // SAFETY: reading into our buffer; the socket does not block.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n <= 0 {
            return;
        }
        let p = &buf[..n as usize];
        let ihl = ((p[0] & 0x0f) as usize) * 4;
        if p.len() < ihl + 8 || p[12..16] != dst.octets() {
            continue;
        }
        let icmp = &p[ihl..];
        if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
            let seq = u16::from_be_bytes([icmp[6], icmp[7]]) as usize;
            if let Some(a) = answered.get_mut(seq) {
                *a = true;
            }
        }
    };
    let mut next = Instant::now();
    while !stop() && sent_at.len() < u16::MAX as usize {
        // A failed send (no route for a moment) is an unanswered echo like any other.
        send_echo(&fd, dst, id, sent_at.len() as u16, &[0x70; 32]);
        sent_at.push(Instant::now());
        answered.push(false);
        next += interval;
        loop {
            drain(&mut answered);
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid fd.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        }
    }
    let end = Instant::now() + grace;
    while Instant::now() < end {
        drain(&mut answered);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut s = Stream {
        sent: sent_at.len() as u32,
        received: answered.iter().filter(|a| **a).count() as u32,
        longest_gap_ms: 0,
    };
    let mut i = 0;
    while i < answered.len() {
        if answered[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < answered.len() && !answered[i] {
            i += 1;
        }
        // From the first lost echo to the next answered one (or the last sent).
        let until = sent_at.get(i).unwrap_or(&sent_at[i - 1]);
        let gap = until.duration_since(sent_at[start]).as_millis() as u64;
        s.longest_gap_ms = s.longest_gap_ms.max(gap.max(interval.as_millis() as u64));
    }
    Ok(s)
}
