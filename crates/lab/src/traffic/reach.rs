//! `podnet lab probe`: whether real packets get from one pod to another on a port —
//! a TCP connection that is accepted, a UDP datagram that is echoed, an SCTP INIT
//! that is answered — and the same for every pair at once (`--matrix`). Also the
//! servers that answer them inside each lab pod (`podnet lab serve-echo`).
//!
//! Every probe runs inside the source pod's namespace and sends only to pod addresses
//! of the lab. A probe that gets no answer within its timeout is "not connected":
//! that is what a policy drop looks like from the pod.

use crate::traffic::sctp;
use crate::{Lab, PodState, State};
use anyhow::{bail, Context, Result};
use podnet_netlink::{netns, Netns};
use podnet_policy::Proto;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
    UdpSocket,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long a probe waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

static SEQ: AtomicU32 = AtomicU32::new(1);

/// One probe from the calling thread's namespace, over the family of `dst`.
fn probe_here(dst: IpAddr, port: u16, proto: Proto, timeout: Duration) -> Result<bool> {
    let to = SocketAddr::new(dst, port);
    match (proto, dst) {
        (Proto::Tcp, _) => Ok(TcpStream::connect_timeout(&to, timeout).is_ok()),
        (Proto::Udp, _) => {
            let any: SocketAddr = if dst.is_ipv6() {
                SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into()
            } else {
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(any).context("bind a UDP socket")?;
            s.connect(to)
                .with_context(|| format!("connect UDP to {dst}:{port}"))?;
            s.set_read_timeout(Some(timeout))?;
            s.send(b"probe")?;
            let mut buf = [0u8; 64];
            Ok(matches!(s.recv(&mut buf), Ok(n) if &buf[..n] == b"probe"))
        }
        (Proto::Sctp, IpAddr::V6(_)) => bail!(
            "SCTP probes are IPv4 only (they are raw packets, this kernel has no SCTP sockets): probe TCP or UDP over IPv6"
        ),
        (Proto::Sctp, IpAddr::V4(dst)) => {
            // A source port no earlier probe is likely to have used: a flow seen before
            // would pass as an open association, whatever the policy says now.
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let mix = nanos ^ std::process::id().rotate_left(16) ^ n.wrapping_mul(0x9e37_79b9);
            let src_port = 32_768 + (mix % 28_000) as u16;
            let tag = 0x1000_0000 | (mix >> 4);
            sctp::probe(dst, port, src_port, tag.max(1), timeout)
        }
        (Proto::Other(p), _) => bail!("cannot probe protocol {p}: use TCP, UDP or SCTP"),
    }
}

/// One probe from `src`'s namespace.
pub fn probe(
    src: &PodState,
    dst: IpAddr,
    port: u16,
    proto: Proto,
    timeout: Duration,
) -> Result<bool> {
    let ns = Netns::open(netns::named_path(&src.netns))
        .with_context(|| format!("open the namespace of pod {}", src.key()))?;
    ns.run(|| probe_here(dst, port, proto, timeout))?
}

#[derive(Debug, Serialize)]
pub struct ProbeResult {
    pub from: String,
    pub to: String,
    /// The destination address probed (its IPv6 one with `--ipv6`).
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Proto,
    pub connected: bool,
}

#[derive(Debug, Serialize)]
pub struct Matrix {
    pub pods: Vec<String>,
    /// `ipv4`, or `ipv6` (the pods' IPv6 addresses were probed).
    pub family: &'static str,
    pub port: u16,
    pub protocol: Proto,
    /// Row = source, column = destination.
    pub connected: Vec<Vec<bool>>,
}

fn find<'a>(lab: &Lab, st: &'a State, spec: &str) -> Result<&'a PodState> {
    st.find_pod(spec).with_context(|| {
        format!(
            "no pod {spec} in lab {}; pods: {}",
            lab.name,
            st.pods
                .iter()
                .map(|p| p.key())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The address of `d` a probe of that family goes to.
fn dst_addr(lab: &Lab, d: &PodState, ipv6: bool) -> Result<IpAddr> {
    if !ipv6 {
        return Ok(d.ip.into());
    }
    d.ip6.map(IpAddr::V6).with_context(|| {
        format!(
            "pod {} has no IPv6 address: lab {} is not dual-stack (make one with lab up --ip-family dual), or probe without --ipv6",
            d.key(),
            lab.name
        )
    })
}

impl Lab {
    /// One probe from `from` to `to` (to its IPv6 address with `ipv6`).
    pub fn probe(
        &self,
        from: &str,
        to: &str,
        port: u16,
        proto: Proto,
        ipv6: bool,
    ) -> Result<ProbeResult> {
        let st = self
            .load()?
            .with_context(|| format!("no lab {}", self.name))?;
        let (s, d) = (find(self, &st, from)?, find(self, &st, to)?);
        let address = dst_addr(self, d, ipv6)?;
        let connected = probe(s, address, port, proto, PROBE_TIMEOUT)?;
        Ok(ProbeResult {
            from: s.key(),
            to: d.key(),
            address,
            port,
            protocol: proto,
            connected,
        })
    }

    /// Every pod to every pod (itself included), all probes at once; to their IPv6
    /// addresses with `ipv6`.
    pub fn matrix(&self, port: u16, proto: Proto, ipv6: bool) -> Result<Matrix> {
        let st = self
            .load()?
            .with_context(|| format!("no lab {}", self.name))?;
        let mut pods: Vec<&PodState> = st.pods.iter().collect();
        pods.sort_by_key(|p| p.key());
        let n = pods.len();
        let addrs = pods
            .iter()
            .map(|d| dst_addr(self, d, ipv6))
            .collect::<Result<Vec<_>>>()?;
        let cells = all_at_once(
            pods.iter()
                .flat_map(|s| addrs.iter().map(move |d| (*s, *d)))
                .map(|(s, d)| move || probe(s, d, port, proto, PROBE_TIMEOUT))
                .collect(),
        )?;
        let mut connected = vec![vec![false; n]; n];
        for (i, c) in cells.into_iter().enumerate() {
            connected[i / n][i % n] = c;
        }
        Ok(Matrix {
            pods: pods.iter().map(|p| p.key()).collect(),
            family: if ipv6 { "ipv6" } else { "ipv4" },
            port,
            protocol: proto,
            connected,
        })
    }
}

/// Runs every job on a thread of its own, all at once; the results in job order, or
/// the first error.
pub fn all_at_once<T: Send>(jobs: Vec<impl FnOnce() -> Result<T> + Send>) -> Result<Vec<T>> {
    std::thread::scope(|sc| {
        let handles: Vec<_> = jobs.into_iter().map(|j| sc.spawn(j)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("probe thread panicked")))
            })
            .collect()
    })
}

/// The matrix for people: `.` connected, `X` not (as the Kubernetes e2e tests print it).
pub fn render_matrix(m: &Matrix) -> String {
    let w = m.pods.iter().map(|p| p.len()).max().unwrap_or(4).max(4);
    let mut s = format!(
        "{} port {}: row = from, column = to; . connected, X not\n",
        m.protocol.name(),
        m.port
    );
    s.push_str(&format!("{:w$} ", ""));
    for p in &m.pods {
        s.push_str(&format!(" {p:>w$}"));
    }
    s.push('\n');
    for (i, row) in m.connected.iter().enumerate() {
        s.push_str(&format!("{:w$} ", m.pods[i]));
        for c in row {
            s.push_str(&format!(" {:>w$}", if *c { "." } else { "X" }));
        }
        s.push('\n');
    }
    s
}

/// `podnet lab serve-echo`: the server inside a lab pod. TCP on the echo port answers
/// one line with `from=<source address> <line>` (the no-NAT check); every TCP port
/// accepts and answers the same; every UDP port echoes each datagram; every SCTP port
/// answers INIT with INIT ACK. TCP and UDP are served on the pod's IPv6 address too
/// (`ip6`, dual-stack); SCTP on IPv4 only. Runs until killed.
pub fn serve(
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
    echo: u16,
    tcp: &[u16],
    udp: &[u16],
    sctp_ports: &[u16],
) -> Result<()> {
    // Every socket is bound before any is served, the IPv4 echo port last: once it
    // accepts, the pod serves every declared TCP and UDP port (the lab waits for it).
    let mut tcp: Vec<u16> = tcp.iter().copied().filter(|p| *p != echo).collect();
    tcp.push(echo);
    let addrs: Vec<IpAddr> = ip6.map(IpAddr::V6).into_iter().chain([ip.into()]).collect();
    let mut udp_sockets = Vec::new();
    let mut listeners = Vec::new();
    for a in &addrs {
        for port in udp.iter().copied() {
            udp_sockets.push(
                UdpSocket::bind(SocketAddr::new(*a, port))
                    .with_context(|| format!("bind UDP {a} port {port}"))?,
            );
        }
        for port in tcp.iter().copied() {
            listeners.push(
                TcpListener::bind(SocketAddr::new(*a, port))
                    .with_context(|| format!("bind TCP {a} port {port}"))?,
            );
        }
    }
    let mut threads = Vec::new();
    for l in listeners {
        threads.push(std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let peer = c
                        .peer_addr()
                        .map(|a| a.ip().to_string())
                        .unwrap_or_default();
                    let mut line = String::new();
                    let _ = BufReader::new(&c).read_line(&mut line);
                    let mut w = &c;
                    let _ = writeln!(w, "from={peer} {}", line.trim_end());
                });
            }
        }));
    }
    for s in udp_sockets {
        threads.push(std::thread::spawn(move || {
            // Whole datagrams, up to the largest UDP allows (fragmented ones included).
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }));
    }
    if !sctp_ports.is_empty() {
        let ports = sctp_ports.to_vec();
        threads.push(std::thread::spawn(move || {
            if let Err(e) = sctp::serve(ip, ports) {
                eprintln!("podnet lab serve-echo: SCTP: {e:#}");
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// `80,81` → `[80, 81]` (empty → none).
pub fn parse_ports(s: &str) -> Result<Vec<u16>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .with_context(|| format!("{p:?} is not a port number"))
        })
        .collect()
}
