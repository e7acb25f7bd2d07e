//! `podnet bench spray`: what a spraying pod costs the other pods on its node, on
//! both policy datapaths.
//!
//! One lab node per datapath (`--policy-datapath ebpf`, then `nftables`), five pods:
//! - `victim`, whose ingress is isolated (a policy admitting nothing), so every reply
//!   it gets passes only because its own connection was remembered (the eBPF flow
//!   table, or conntrack);
//! - `server`, open: the victim opens and closes TCP connections to it (the
//!   connection-rate test of `bench policy`) and then times one-byte request/response
//!   round trips over one connection;
//! - `sprayer`, open: the attacker;
//! - `target`, open: what the sprayer sprays at;
//! - `closed`, ingress isolated: what the sprayer's denied packets are sent to.
//!
//! Cases, interleaved in every round (every other round in reverse order), medians:
//! - `quiet`: the sprayer is idle;
//! - `cpu burn`: the control — the sprayer spins one CPU and sends nothing, so the
//!   rows below can be told apart from what any busy neighbour costs (on this 2-core
//!   machine a busy CPU *shortens* round trips: no CPU wakes up from idle for them);
//! - `flow spray`: the sprayer sends one-byte UDP datagrams as fast as it can, each to
//!   a new flow (64 source sockets × 64 512 destination ports of `target`, batches of
//!   `sendmmsg`): on eBPF every one asks for flow-table entries (charged to the
//!   sprayer: 20 000 a second, bursts of 50 000), on nftables for conntrack entries;
//! - `event spray`: the sprayer alternates batches of UDP to `closed` (denied: a drop
//!   event each, charged to `closed`, 50 a second) and of forged ARP replies claiming
//!   the victim's address (dropped by anti-spoofing: an event each, charged to the
//!   sprayer's veth).
//!
//! Per case: the victim's connections per second and round trip (median, p99), each
//! against the quiet case; the sprayer's packets per second; the entries it holds
//! when the spray stops (eBPF: keys of the pinned `flows` map with its address as
//! source; nftables: the node namespace's conntrack entries with it as original
//! source, one ctnetlink dump) and the table's size; the growth of podnetd's
//! `podnet_datapath_budget_total{what=…}` counters, and of the node namespace's
//! conntrack `drop`, `early_drop` and `insert_failed` statistics. After a spray the sprayer's entries
//! are deleted (as pod removal would), so every case starts from the same table.
//!
//! Everything runs in lab namespaces this run creates and takes down, also on failure
//! and on Ctrl-C (the first one stops the run at the next step and takes the lab down;
//! a second one kills the process).

use super::{bench_lab, conn_rate, median, obj, pod, pod_ns};
use crate::bench::datapath::LabGuard;
use crate::{Binaries, Lab};
use anyhow::{bail, Context, Result};
use podnet_netlink::{netns, Netns};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Options {
    /// Length of one case: the first half (rounded up) opens connections, the rest
    /// times round trips.
    pub seconds: u32,
    pub rounds: u32,
}

pub const CASES: [&str; 4] = ["quiet", "cpu burn", "flow spray", "event spray"];

/// One datapath under one case: medians over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub datapath: String,
    pub case: String,
    pub connections_per_s: f64,
    pub connections_vs_quiet: f64,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    pub rtt_p50_vs_quiet: f64,
    pub rtt_p99_vs_quiet: f64,
    /// Packets (datagrams and frames) the sprayer sent per second; 0 when quiet.
    pub spray_packets_per_s: f64,
    /// Of which denied datagrams and forged frames (event spray).
    pub spray_denied_per_s: f64,
    pub spray_forged_per_s: f64,
    /// Flow-table (eBPF) or conntrack (nftables) entries whose source is the sprayer,
    /// when the case ends.
    pub sprayer_entries: f64,
    /// The whole table's entries then (the `flows` map; the node's conntrack count).
    pub table_entries: f64,
    /// Growth of `podnet_datapath_budget_total{what=…}` over the case.
    pub budget_growth: BTreeMap<String, f64>,
    /// Measurements of the victim that failed (a connection not made within 3 s, a
    /// round trip not answered within 3 s), one line each; their samples count as 0
    /// connections a second, or are left out of the round trips.
    pub victim_failures: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seconds: u32,
    pub rounds: u32,
    pub cells: Vec<Cell>,
}

/// One measurement of one case.
#[derive(Default)]
struct Sample {
    conns: f64,
    rtts_us: Vec<f64>,
    udp: u64,
    forged: u64,
    spray_s: f64,
    sprayer_entries: u64,
    table_entries: u64,
    budget: BTreeMap<String, f64>,
    failures: Vec<String>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
    // A second Ctrl-C kills the process.
    // SAFETY: signal() is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: the bench lab is being taken down");
    }
    Ok(())
}

const BATCH: usize = 64;
const SPRAY_SOCKETS: usize = 64;
const FIRST_PORT: u16 = 1024;

/// `sendmmsg` of `BATCH` messages on `fd`: `payload` to each of `dsts` (IPv4 or
/// packet-socket addresses of type `A`). Returns how many the kernel took.
fn send_batch<A>(fd: i32, payload: &[u8], dsts: &mut [A]) -> usize {
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: zeroed mmsghdr is a valid empty message.
    let mut msgs: Vec<libc::mmsghdr> = (0..dsts.len())
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    for (m, d) in msgs.iter_mut().zip(dsts.iter_mut()) {
        m.msg_hdr.msg_name = d as *mut A as *mut libc::c_void;
        m.msg_hdr.msg_namelen = std::mem::size_of::<A>() as u32;
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every message points at a live address and the one iovec above.
    let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as u32, 0) };
    n.max(0) as usize
}

fn sockaddr_in(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The flow spray, in the sprayer's namespace until `stop`: a new (source port,
/// destination port) pair of `target` for every datagram. Returns datagrams sent.
fn spray_flows(target: Ipv4Addr, stop: &AtomicBool) -> Result<u64> {
    let socks = (0..SPRAY_SOCKETS)
        .map(|_| UdpSocket::bind("0.0.0.0:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("sprayer: bind UDP sockets")?;
    let mut sent = 0u64;
    let mut port = FIRST_PORT;
    let mut dsts = vec![sockaddr_in(target, 0); BATCH];
    while !stop.load(Ordering::Relaxed) {
        for (i, d) in dsts.iter_mut().enumerate() {
            let p = u32::from(port) + i as u32;
            let p = if p > 65535 {
                p - 65536 + u32::from(FIRST_PORT)
            } else {
                p
            };
            d.sin_port = (p as u16).to_be();
        }
        for s in &socks {
            sent += send_batch(s.as_raw_fd(), b"x", &mut dsts) as u64;
        }
        port = match port.checked_add(BATCH as u16) {
            Some(p) => p,
            None => FIRST_PORT,
        };
    }
    Ok(sent)
}

/// The event spray, in the sprayer's namespace until `stop`: batches of UDP to
/// `closed` (denied) and of forged ARP `frame`s out of eth0, alternating. Returns
/// (datagrams, frames) sent.
fn spray_events(closed: Ipv4Addr, frame: &[u8], stop: &AtomicBool) -> Result<(u64, u64)> {
    let udp = UdpSocket::bind("0.0.0.0:0").context("sprayer: bind a UDP socket")?;
    // SAFETY: a raw packet socket, owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!(
            "sprayer: open a packet socket: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a socket we just opened and own from here on.
    let packet = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_ll is valid; if_nametoindex takes a C string.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) } as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&frame[..6]);
    let mut lls = vec![sll; BATCH];
    let mut dsts = vec![sockaddr_in(closed, 9000); BATCH];
    let (mut denied, mut forged) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        denied += send_batch(udp.as_raw_fd(), b"x", &mut dsts) as u64;
        forged += send_batch(packet.as_raw_fd(), frame, &mut lls) as u64;
    }
    Ok((denied, forged))
}

/// The control: spins until `stop`, sending nothing.
fn burn(stop: &AtomicBool) -> Result<(u64, u64)> {
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
    Ok((0, 0))
}

/// The node namespace's conntrack statistics (`/proc/net/stat/nf_conntrack`, summed
/// over CPUs) that tell of a full table: `conntrack-drop`, `conntrack-early_drop`,
/// `conntrack-insert_failed`. Empty without conntrack.
fn conntrack_stats(node: &Netns) -> Result<BTreeMap<String, f64>> {
    let text = node.run(|| {
        std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack").unwrap_or_default()
    })?;
    let mut lines = text.lines();
    let Some(head) = lines.next() else {
        return Ok(BTreeMap::new());
    };
    let names: Vec<&str> = head.split_whitespace().collect();
    let mut out = BTreeMap::new();
    for l in lines {
        for (name, v) in names.iter().zip(l.split_whitespace()) {
            if matches!(*name, "drop" | "early_drop" | "insert_failed") {
                *out.entry(format!("conntrack-{name}")).or_insert(0.0) +=
                    u64::from_str_radix(v, 16).unwrap_or(0) as f64;
            }
        }
    }
    Ok(out)
}

/// podnetd's `podnet_datapath_budget_total` counters, from its metrics on the node's
/// 127.0.0.1:9465.
fn budget_counters(node: &Netns) -> Result<BTreeMap<String, f64>> {
    let text = node.run(|| -> Result<String> {
        let mut c = TcpStream::connect_timeout(
            &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9465).into(),
            Duration::from_secs(3),
        )
        .context("connect to podnetd's metrics on the lab node's 127.0.0.1:9465")?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })??;
    let prefix = "podnet_datapath_budget_total{what=\"";
    Ok(text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (what, v) = rest.split_once("\"} ")?;
            Some((what.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// Entries of the table whose source is `ip`, and the table's size.
fn table_entries(datapath: &str, lab: &Lab, node: &Netns, ip: Ipv4Addr) -> Result<(u64, u64)> {
    if datapath == "ebpf" {
        let path = flows_path(lab);
        let map = podnet_netlink::bpf::obj_get(&path)
            .with_context(|| format!("open the pinned flow table {}", path.display()))?;
        let info = podnet_netlink::bpf::map_info(&map)?;
        let keys = podnet_netlink::bpf::raw_keys(&map, &info)?;
        let mine = keys.iter().filter(|k| k[0..4] == ip.octets()).count();
        return Ok((mine as u64, keys.len() as u64));
    }
    // One dump of everything: both counts from the same walk.
    node.run(|| -> Result<(u64, u64)> {
        let Some(mut sock) = podnet_netlink::conntrack::open()? else {
            return Ok((0, 0));
        };
        let all = podnet_netlink::conntrack::list(&mut sock)?;
        let mine = all.iter().filter(|e| e.orig.src == ip).count();
        Ok((mine as u64, all.len() as u64))
    })?
}

fn flows_path(lab: &Lab) -> std::path::PathBuf {
    lab.bpf_dir()
        .join("node1")
        .join(podnet_netlink::flows::FLOWS_MAP)
}

/// Deletes the sprayer's entries, as its removal would.
fn forget(datapath: &str, lab: &Lab, node: &Netns, ip: Ipv4Addr) -> Result<()> {
    if datapath == "ebpf" {
        podnet_netlink::flows::forget(&flows_path(lab), ip.into())?;
    } else {
        // One dump and the deletes (`flush_addr` filters four dumps, which suits a
        // table holding few of an address's entries, not 200 000 of them).
        node.run(|| -> Result<()> {
            if let Some(mut sock) = podnet_netlink::conntrack::open()? {
                let mut all = podnet_netlink::conntrack::list(&mut sock)?;
                all.retain(|e| e.involves(ip));
                podnet_netlink::conntrack::delete(&mut sock, &all)?;
            }
            Ok(())
        })??;
    }
    Ok(())
}

/// One-byte request/response round trips from `src` to `ip:5202` (in `dst`) over one
/// connection, for `seconds`: each in µs.
fn round_trips(src: &Netns, dst: &Netns, ip: Ipv4Addr, seconds: f64) -> Result<Vec<f64>> {
    let listener = dst.run(|| TcpListener::bind(SocketAddrV4::new(ip, 5202)))??;
    let listener = &listener;
    std::thread::scope(|s| {
        s.spawn(move || -> std::io::Result<()> {
            let (mut c, _) = listener.accept()?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut b = [0u8; 1];
            while c.read_exact(&mut b).is_ok() {
                c.write_all(&b)?;
            }
            Ok(())
        });
        let r = src.run(|| -> Result<Vec<f64>> {
            let mut c = TcpStream::connect_timeout(
                &SocketAddrV4::new(ip, 5202).into(),
                Duration::from_secs(3),
            )
            .with_context(|| format!("connect to {ip}:5202"))?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut b = [7u8; 1];
            let mut out = Vec::new();
            let t = Instant::now();
            while t.elapsed().as_secs_f64() < seconds {
                let one = Instant::now();
                c.write_all(&b)?;
                c.read_exact(&mut b)
                    .with_context(|| format!("no answer from {ip}:5202 within 3 s"))?;
                out.push(one.elapsed().as_secs_f64() * 1e6);
            }
            Ok(out)
        });
        // Wakes the echo's accept if the connection was never made; a made one ends
        // when the client's side closes, with the scope.
        // SAFETY: shutdown on our own listening socket.
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        r?
    })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// The pods and policies of the bench, on node1.
fn objects() -> Vec<podnet_policy::Object> {
    let isolate = |name: &str, role: &str| {
        obj(
            json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
            "metadata":{"name":name,"namespace":"spray"},
            "spec":{"podSelector":{"matchLabels":{"role":role}},"policyTypes":["Ingress"]}}),
        )
    };
    let mut v = vec![obj(
        json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"spray"}}),
    )];
    for name in ["victim", "server", "sprayer", "target", "closed"] {
        v.push(pod("spray", name, json!({ "role": name }), "node1", &[]));
    }
    v.push(isolate("victim-ingress", "victim"));
    v.push(isolate("closed-ingress", "closed"));
    v
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("not a MAC address: {s}");
    }
    for (o, p) in m.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).with_context(|| format!("not a MAC address: {s}"))?;
    }
    Ok(m)
}

/// What every case of one datapath's bench works with.
struct Bench<'a> {
    datapath: &'a str,
    lab: &'a Lab,
    /// node1's namespace, where the pods and the datapath's tables live.
    node: &'a Netns,
    victim: &'a Netns,
    server: &'a Netns,
    sprayer: &'a Netns,
    /// The server's, the sprayer's, the target's and the closed pod's addresses.
    sip: Ipv4Addr,
    spip: Ipv4Addr,
    tip: Ipv4Addr,
    cip: Ipv4Addr,
    /// The forged ARP reply the event spray sends.
    frame: &'a [u8],
    conn_s: u32,
    rtt_s: f64,
}

/// Every case of one datapath, rounds interleaved.
fn datapath(
    datapath: &str,
    tag: &str,
    opts: &Options,
    bins: &Binaries,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<Cell>> {
    say(&format!("{datapath}: lab up"));
    let (_g, lab): (LabGuard, Lab) =
        bench_lab(&format!("{tag}{}", &datapath[..2]), datapath, bins)?;
    check_interrupt()?;
    lab.apply(&objects(), true, bins, &mut |_| {})?;
    check_interrupt()?;
    let (victim, vip) = pod_ns(&lab, "spray/victim")?;
    let (server, sip) = pod_ns(&lab, "spray/server")?;
    let (sprayer, spip) = pod_ns(&lab, "spray/sprayer")?;
    let (_, tip) = pod_ns(&lab, "spray/target")?;
    let (_, cip) = pod_ns(&lab, "spray/closed")?;
    let st = lab.load()?.context("lab state")?;
    let smac = parse_mac(&st.find_pod("spray/sprayer").context("no sprayer")?.mac)?;
    // A gratuitous ARP reply from the sprayer claiming the victim's address.
    let frame = crate::traffic::probe::arp_frame([0xff; 6], smac, 2, smac, vip, [0; 6], vip);
    let node = Netns::open(netns::named_path(&lab.node_ns("node1")))?;
    let conn_s = opts.seconds.div_ceil(2).max(1);
    let rtt_s = f64::from(opts.seconds.saturating_sub(conn_s).max(1));
    let bench = Bench {
        datapath,
        lab: &lab,
        node: &node,
        victim: &victim,
        server: &server,
        sprayer: &sprayer,
        sip,
        spip,
        tip,
        cip,
        frame: &frame,
        conn_s,
        rtt_s,
    };

    // Warm-up, not reported (neighbours, tables, the agent's first events).
    conn_rate(&victim, &server, sip, 1)?;
    round_trips(&victim, &server, sip, 0.2)?;
    let mut last_conns = Instant::now();
    let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    for round in 0..opts.rounds {
        let mut order = CASES.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for case in order {
            check_interrupt()?;
            say(&format!(
                "{datapath}: {case} (round {}/{})",
                round + 1,
                opts.rounds
            ));
            let s = bench.case(case, &mut last_conns, say)?;
            samples.entry(case).or_default().push(s);
        }
    }
    Ok(cells(datapath, &samples))
}

impl Bench<'_> {
    /// One case once: the victim measured under it, what the datapath's tables and
    /// budgets grew by, and the line that says so.
    fn case(
        &self,
        case: &str,
        last_conns: &mut Instant,
        say: &mut dyn FnMut(&str),
    ) -> Result<Sample> {
        let (datapath, node) = (self.datapath, self.node);
        // The victim's own flow budget (eBPF: 50 000, refilled at 20 000 a second)
        // starts every case full: its connection test spends it.
        let settle = Duration::from_millis(2600).saturating_sub(last_conns.elapsed());
        std::thread::sleep(settle);
        let mut before = budget_counters(node)?;
        before.extend(conntrack_stats(node)?);
        let mut s = Sample::default();
        self.measure_victim(case, &mut s, last_conns)?;
        let (mine, all) = table_entries(datapath, self.lab, node, self.spip)?;
        s.sprayer_entries = mine;
        s.table_entries = all;
        let mut after = budget_counters(node)?;
        after.extend(conntrack_stats(node)?);
        s.budget = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
            .collect();
        if case.ends_with("spray") {
            forget(datapath, self.lab, node, self.spip)?;
        }
        for f in &s.failures {
            say(&format!("{datapath}: {case}: victim: {f}"));
        }
        say(&format!(
            "{datapath}: {case}: victim {:.0} conn/s, RTT p50 {:.1} µs; sprayer {} pk/s; {}",
            s.conns,
            percentile(&mut s.rtts_us.clone(), 0.5),
            count(if s.spray_s > 0.0 {
                (s.udp + s.forged) as f64 / s.spray_s
            } else {
                0.0
            }),
            s.budget
                .iter()
                .filter(|(_, v)| **v > 0.0)
                .map(|(k, v)| format!("{k} +{}", count(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(s)
    }

    /// Runs the case's spray from the sprayer (none when quiet) while the victim's
    /// connection rate and round trips are measured into `s`.
    fn measure_victim(&self, case: &str, s: &mut Sample, last_conns: &mut Instant) -> Result<()> {
        let (victim, server, sip) = (self.victim, self.server, self.sip);
        let (tip, cip) = (self.tip, self.cip);
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| -> Result<()> {
            let t = Instant::now();
            let sprayer_thread = (case != "quiet").then(|| {
                let (stop, sprayer, frame) = (&stop, self.sprayer, self.frame);
                sc.spawn(move || -> Result<(u64, u64)> {
                    sprayer.run(|| match case {
                        "cpu burn" => burn(stop),
                        "flow spray" => spray_flows(tip, stop).map(|n| (n, 0)),
                        _ => spray_events(cip, frame, stop),
                    })?
                })
            });
            if sprayer_thread.is_some() {
                // Let the spray spend its budgets and fill what it fills.
                std::thread::sleep(Duration::from_millis(300));
            }
            // A failed measurement is reported, not fatal: the spray stops below.
            match conn_rate(victim, server, sip, self.conn_s) {
                Ok(c) => s.conns = c,
                Err(e) => s.failures.push(format!("connections: {e:#}")),
            }
            *last_conns = Instant::now();
            match round_trips(victim, server, sip, self.rtt_s) {
                Ok(r) => s.rtts_us = r,
                Err(e) => s.failures.push(format!("round trips: {e:#}")),
            }
            stop.store(true, Ordering::Relaxed);
            if let Some(h) = sprayer_thread {
                let (udp, forged) = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
                s.udp = udp;
                s.forged = forged;
                s.spray_s = t.elapsed().as_secs_f64();
            }
            Ok(())
        })
    }
}

/// Each case's cell: medians over the rounds, and the victim against the quiet case.
fn cells(datapath: &str, samples: &BTreeMap<&str, Vec<Sample>>) -> Vec<Cell> {
    let mut cells: Vec<Cell> = CASES
        .iter()
        .map(|case| {
            let v = &samples[case];
            let med = |f: &dyn Fn(&Sample) -> f64| median(v.iter().map(f).collect());
            let mut budget = BTreeMap::new();
            for k in v.iter().flat_map(|s| s.budget.keys()) {
                budget.insert(k.clone(), med(&|s| s.budget.get(k).copied().unwrap_or(0.0)));
            }
            let per_s = |n: &dyn Fn(&Sample) -> u64| {
                med(&|s| {
                    if s.spray_s > 0.0 {
                        n(s) as f64 / s.spray_s
                    } else {
                        0.0
                    }
                })
            };
            Cell {
                datapath: format!("podnet {datapath}"),
                case: case.to_string(),
                connections_per_s: med(&|s| s.conns),
                connections_vs_quiet: 0.0,
                rtt_p50_us: med(&|s| percentile(&mut s.rtts_us.clone(), 0.5)),
                rtt_p99_us: med(&|s| percentile(&mut s.rtts_us.clone(), 0.99)),
                rtt_p50_vs_quiet: 0.0,
                rtt_p99_vs_quiet: 0.0,
                spray_packets_per_s: per_s(&|s| s.udp + s.forged),
                spray_denied_per_s: if *case == "event spray" {
                    per_s(&|s| s.udp)
                } else {
                    0.0
                },
                spray_forged_per_s: per_s(&|s| s.forged),
                sprayer_entries: med(&|s| s.sprayer_entries as f64),
                table_entries: med(&|s| s.table_entries as f64),
                budget_growth: budget,
                victim_failures: v.iter().flat_map(|s| s.failures.clone()).collect(),
            }
        })
        .collect();
    let quiet = cells[0].clone();
    for c in &mut cells {
        c.connections_vs_quiet = c.connections_per_s / quiet.connections_per_s;
        c.rtt_p50_vs_quiet = c.rtt_p50_us / quiet.rtt_p50_us;
        c.rtt_p99_vs_quiet = c.rtt_p99_us / quiet.rtt_p99_us;
    }
    cells
}

pub fn run(opts: &Options, bins: &Binaries, say: &mut dyn FnMut(&str)) -> Result<Report> {
    let handler = on_interrupt as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic and resets the dispositions.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let tag = format!("sb{}", std::process::id() % 100000);
    let mut cells = Vec::new();
    for dp in ["ebpf", "nftables"] {
        cells.extend(datapath(dp, &tag, opts, bins, say)?);
    }
    Ok(Report {
        seconds: opts.seconds,
        rounds: opts.rounds,
        cells,
    })
}

fn count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.0}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

pub fn render(r: &Report) -> String {
    let conn_s = r.seconds.div_ceil(2).max(1);
    let mut s = format!(
        "Spray: one lab node per datapath. The victim pod (ingress isolated: its replies pass only as remembered flows) opens and closes TCP connections to a server pod for {conn_s} s, then times 1-byte request/response round trips over one connection for {} s; meanwhile the sprayer pod is idle (quiet), spins one CPU and sends nothing (cpu burn, the control), sends UDP to a new flow per datagram to an open pod (flow spray), or alternates denied UDP and forged ARP frames (event spray). Median of {} rounds, cases interleaved.\n\n",
        r.seconds.saturating_sub(conn_s).max(1),
        r.rounds
    );
    s += "The victim:\n\n";
    s += &format!(
        "{:<16} {:<12} {:>9} {:>9} {:>11} {:>9} {:>11} {:>9}\n",
        "datapath",
        "case",
        "conn/s",
        "vs quiet",
        "RTT p50 µs",
        "vs quiet",
        "RTT p99 µs",
        "vs quiet"
    );
    for c in &r.cells {
        s += &format!(
            "{:<16} {:<12} {:>9.0} {:>8.0}% {:>11.1} {:>8.2}× {:>11.1} {:>8.2}×\n",
            c.datapath,
            c.case,
            c.connections_per_s,
            c.connections_vs_quiet * 100.0,
            c.rtt_p50_us,
            c.rtt_p50_vs_quiet,
            c.rtt_p99_us,
            c.rtt_p99_vs_quiet
        );
    }
    s += "\nThe sprayer, the tables and the budgets (entries when the case ends; counters' growth over the case, podnetd's budgets and the node's conntrack statistics):\n\n";
    s += &format!(
        "{:<16} {:<12} {:>10} {:>10} {:>10}  {}\n",
        "datapath", "case", "spray pk/s", "sprayer's", "table", "counters' growth"
    );
    for c in &r.cells {
        let grown: Vec<String> = c
            .budget_growth
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(k, v)| format!("{k} +{}", count(*v)))
            .collect();
        s += &format!(
            "{:<16} {:<12} {:>10} {:>10} {:>10}  {}\n",
            c.datapath,
            c.case,
            count(c.spray_packets_per_s),
            count(c.sprayer_entries),
            count(c.table_entries),
            if grown.is_empty() {
                "-".to_string()
            } else {
                grown.join(", ")
            }
        );
    }
    let failures: Vec<String> = r
        .cells
        .iter()
        .flat_map(|c| {
            c.victim_failures
                .iter()
                .map(move |f| format!("{} {}: {f}", c.datapath, c.case))
        })
        .collect();
    if !failures.is_empty() {
        s += "\nVictim measurements that failed (counted as 0 conn/s, or left out of the round trips):\n";
        for f in failures {
            s += &format!("  {f}\n");
        }
    }
    s
}
