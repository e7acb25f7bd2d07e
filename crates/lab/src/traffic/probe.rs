//! In-process traffic for tests, the demo and the lab: a TCP echo server that reports
//! the source address it saw (the no-NAT check), TCP and UDP clients, and raw Ethernet
//! frames for the spoofing attack. Every socket is opened inside a namespace podnet
//! created, and every address used lives inside such a namespace.

use anyhow::{bail, Context, Result};
use podnet_netlink::Netns;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A TCP echo server inside a namespace: for each connection it reads one line and
/// answers `from=<source ip> <line>`. Stops when dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, ip: Ipv4Addr, port: u16) -> Result<EchoServer> {
        let listener = ns
            .run(|| TcpListener::bind(SocketAddrV4::new(ip, port)))?
            .with_context(|| format!("bind echo server on {ip}:{port} in {}", ns.path()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut line = String::new();
                        let _ = BufReader::new(&c).read_line(&mut line);
                        let _ = writeln!(c, "from={} {}", peer.ip(), line.trim_end());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(EchoServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` to `dst`, sends `msg`, returns the echo server's answer.
pub fn tcp_request(
    ns: &Netns,
    dst: impl Into<SocketAddr>,
    msg: &str,
    timeout: Duration,
) -> Result<String> {
    let dst: SocketAddr = dst.into();
    ns.run(|| -> Result<String> {
        let mut c = TcpStream::connect_timeout(&dst, timeout)
            .with_context(|| format!("connect to {dst}"))?;
        c.set_read_timeout(Some(timeout))?;
        writeln!(c, "{msg}")?;
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    })?
}

/// A UDP socket bound inside `ns`, for checking what arrives.
pub fn udp_bind(ns: &Netns, addr: SocketAddrV4) -> Result<UdpSocket> {
    let s = ns.run(|| UdpSocket::bind(addr))??;
    s.set_read_timeout(Some(Duration::from_millis(300)))?;
    Ok(s)
}

/// Every datagram `sock` receives within its read timeout: `(source, payload)`.
pub fn udp_drain(sock: &UdpSocket) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        out.push((from, buf[..n].to_vec()));
    }
    out
}

/// Sends one raw Ethernet frame out of `ifname` in `ns` (AF_PACKET).
pub fn send_frame(ns: &Netns, ifname: &str, frame: &[u8]) -> Result<()> {
    ns.run(|| -> Result<()> {
        // SAFETY: raw packet socket; closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("open packet socket: {}", std::io::Error::last_os_error());
        }
        let cname = std::ffi::CString::new(ifname)?;
        // SAFETY: if_nametoindex on a valid C string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and sll are valid for the call.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        let err = std::io::Error::last_os_error();
        // SAFETY: closing the fd we opened.
        unsafe { libc::close(fd) };
        if n < 0 {
            bail!("send frame on {ifname}: {err}");
        }
        Ok(())
    })?
}

/// A packet socket in `ns` receiving every frame that arrives on `ifname`.
pub struct Capture {
    fd: std::os::fd::OwnedFd,
}

impl Capture {
    pub fn open(ns: &Netns, ifname: &str) -> Result<Capture> {
        ns.run(|| -> Result<Capture> {
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            // SAFETY: raw packet socket, owned below.
            let fd = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
            };
            if fd < 0 {
                bail!("open capture socket: {}", std::io::Error::last_os_error());
            }
            // SAFETY: fd just created.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let cname = std::ffi::CString::new(ifname)?;
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            // SAFETY: if_nametoindex on a valid C string.
            sll.sll_ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
            // SAFETY: bind with a valid sockaddr_ll.
            if unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            } != 0
            {
                bail!(
                    "bind capture on {ifname}: {}",
                    std::io::Error::last_os_error()
                );
            }
            Ok(Capture { fd })
        })?
    }

    /// Frames received until `wait` passes with nothing new.
    pub fn frames(&self, wait: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid fd.
            if unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) } <= 0 {
                return out;
            }
            // SAFETY: reading into our buffer.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut _,
                    buf.len(),
                    0,
                )
            };
            if n <= 0 {
                return out;
            }
            out.push(buf[..n as usize].to_vec());
        }
    }
}

/// An Ethernet + ARP frame.
#[allow(clippy::too_many_arguments)]
pub fn arp_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f
}

/// An Ethernet + IPv4 + UDP frame (UDP checksum 0, allowed for IPv4).
pub fn udp_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&dst.ip().octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !(sum as u16);
    ip[10..12].copy_from_slice(&ck.to_be_bytes());
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The Internet checksum of an IPv6 upper-layer packet `l4` (its checksum field
/// zeroed) from `src` to `dst` with next header `next` (RFC 8200 §8.1).
fn checksum6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, next: u8, l4: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(l4.len() as u32).to_be_bytes());
    add(&[0, 0, 0, next]);
    add(l4);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv6 frame carrying `l4` (next header `next`, hop limit 255, as
/// neighbour discovery requires), its checksum filled in at `csum_at` within `l4`.
fn ipv6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    next: u8,
    mut l4: Vec<u8>,
    csum_at: usize,
) -> Vec<u8> {
    let c = checksum6(src, dst, next, &l4);
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(54 + l4.len());
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&l4);
    f
}

/// An Ethernet + IPv6 + UDP frame, with its (mandatory) UDP checksum.
pub fn udp6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: std::net::SocketAddrV6,
    dst: std::net::SocketAddrV6,
    payload: &[u8],
) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut l4 = Vec::with_capacity(len as usize);
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    l4.extend_from_slice(&len.to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    ipv6_frame(eth_dst, eth_src, *src.ip(), *dst.ip(), 17, l4, 6)
}

/// An unsolicited neighbour advertisement (override flag set) from `src`: "`target`
/// is at `tlla`", sent to `dst` at `eth_dst`.
pub fn na6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    target: std::net::Ipv6Addr,
    tlla: [u8; 6],
) -> Vec<u8> {
    let mut l4 = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    l4.extend_from_slice(&target.octets());
    l4.extend_from_slice(&[2, 1]);
    l4.extend_from_slice(&tlla);
    ipv6_frame(eth_dst, eth_src, src, dst, 58, l4, 2)
}
