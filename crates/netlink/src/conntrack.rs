//! Connection tracking (ctnetlink, `NETLINK_NETFILTER`): reading the entries of the
//! current network namespace (of one family) and deleting those of one address, IPv4
//! or IPv6 (a dual-stack pod's IPv6 address is reused like its IPv4 one).
//!
//! # Why podnet deletes conntrack entries
//! The nftables policy datapath admits `ct state established,related` before any
//! policy is consulted (an open connection survives a policy change). An entry
//! outlives the pod that made it, so without this the next pod given the same address
//! would receive the old pod's peers' packets, whatever its own policy says. DEL and
//! GC therefore delete every entry naming the pod's address before the address can
//! be given out again ([`flush_addr`]).
//!
//! # How
//! `conntrack -D -s ADDR`, `-d ADDR`, `--reply-src ADDR` and `--reply-dst ADDR` in
//! one go: a dump of the namespace's entries of the address's family (`IPCTNL_MSG_CT_GET` +
//! `NLM_F_DUMP`), each checked here, then one `IPCTNL_MSG_CT_DELETE` per match with
//! its original tuple (and zone), pipelined.
//!
//! The cost is the dump: the kernel keeps one hash table for all namespaces and a
//! dump walks every bucket of it, whatever it finds (262144 buckets: ~10 ms here).
//! So: no dump at all when the namespace tracks nothing (`nf_conntrack_count`, per
//! namespace); one dump of everything while the namespace holds few entries; above
//! [`FILTER_ABOVE`], four dumps each filtered by the kernel on one of the four fields
//! (`CTA_FILTER`, Linux 5.9+; an older kernel ignores the filter and sends
//! everything, which the check here still sorts out) — four walks, but only the
//! matches cross to user space.
//!
//! Not a filtered *flush* (`IPCTNL_MSG_CT_DELETE` with `CTA_FILTER` and no complete
//! tuple): Linux 6.12+ honours one (older kernels refuse it), but it walks the table
//! as a dump does, says nothing of what it deleted, and a flush whose filter a kernel
//! misread would take every connection of the node with it. (The test
//! `kernel_filtered_flush_behaviour` records what this kernel does with one.)

use crate::error::{Error, Result};
use crate::msg::{self, Msg};
use crate::socket::{Request, Socket};
use crate::sys::NLA_F_NESTED;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `NETLINK_NETFILTER`.
pub const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
// enum ctattr_tuple
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
// enum ctattr_ip
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
// enum ctattr_filter, and the flags of nf_conntrack_netlink.c
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
const CTA_FILTER_F_CTA_IP_SRC: u32 = 1 << 0;
const CTA_FILTER_F_CTA_IP_DST: u32 = 1 << 1;

/// Above this many entries in the namespace, four kernel-filtered dumps (four walks
/// of the kernel's table) cost less than one dump of everything (one walk, but every
/// entry sent and parsed: ~1 µs each).
pub const FILTER_ABOVE: u64 = 16384;

/// Deletes in batches of this many requests: every acknowledgement waits in the
/// socket's receive buffer until the batch is sent, and an overflowing buffer drops
/// them.
const DELETE_BATCH: usize = 64;

/// One direction of a connection as conntrack sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP…).
    pub proto: u8,
    /// Ports for TCP, UDP, SCTP…; 0 for protocols without.
    pub sport: u16,
    pub dport: u16,
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "proto {} {}:{} -> {}:{}",
            self.proto, self.src, self.sport, self.dst, self.dport
        )
    }
}

/// One conntrack entry (IPv4 or IPv6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
    /// `CTA_ZONE`, when the entry is not in the default zone.
    pub zone: Option<u16>,
    /// The original tuple as the kernel sent it (the key of a delete).
    raw_orig: Vec<u8>,
}

impl Entry {
    /// Whether `addr` is a source or destination of either direction.
    pub fn involves(&self, addr: impl Into<IpAddr>) -> bool {
        let addr = addr.into();
        [self.orig, self.reply]
            .iter()
            .any(|t| t.src == addr || t.dst == addr)
    }
}

/// Which field of which tuple a dump filters on.
#[derive(Clone, Copy, Debug)]
enum Field {
    OrigSrc,
    OrigDst,
    ReplySrc,
    ReplyDst,
}

/// The ctnetlink message type of `msg`.
fn ct_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

/// `struct nfgenmsg` for the family of `v6`, version 0.
fn nfgenmsg(v6: bool) -> [u8; 4] {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    [family as u8, 0, 0, 0]
}

/// Opens a ctnetlink socket in the calling thread's namespace. `None` when the
/// kernel has no nfnetlink (then it has no conntrack entries either).
pub fn open() -> Result<Option<Socket>> {
    match Socket::open(NETLINK_NETFILTER) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.errno() == Some(libc::EPROTONOSUPPORT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `e` says the kernel has no conntrack to ask (no `nf_conntrack_netlink`, or
/// no conntrack in this namespace): then there is nothing to read or delete.
fn no_conntrack(e: &Error) -> bool {
    matches!(
        e.errno(),
        Some(libc::EOPNOTSUPP) | Some(libc::EPROTONOSUPPORT)
    )
}

/// Every IPv4 entry of the namespace (`conntrack -L -f ipv4`).
pub fn list(sock: &mut Socket) -> Result<Vec<Entry>> {
    list_family(sock, false)
}

/// Every entry of one family (`conntrack -L -f ipv4` or `-f ipv6`).
pub fn list_family(sock: &mut Socket, v6: bool) -> Result<Vec<Entry>> {
    let m = Msg::new(ct_type(IPCTNL_MSG_CT_GET), 0).fixed(&nfgenmsg(v6));
    let what = if v6 { "ipv6" } else { "ipv4" };
    dump_entries(sock, m, "list conntrack entries", what)
}

/// The entries whose `field` is `addr`, filtered by the kernel where it can; the
/// caller checks each entry again.
fn list_filtered(sock: &mut Socket, addr: IpAddr, field: Field) -> Result<Vec<Entry>> {
    let (tuple, src, flag) = match field {
        Field::OrigSrc => (CTA_TUPLE_ORIG, true, CTA_FILTER_F_CTA_IP_SRC),
        Field::OrigDst => (CTA_TUPLE_ORIG, false, CTA_FILTER_F_CTA_IP_DST),
        Field::ReplySrc => (CTA_TUPLE_REPLY, true, CTA_FILTER_F_CTA_IP_SRC),
        Field::ReplyDst => (CTA_TUPLE_REPLY, false, CTA_FILTER_F_CTA_IP_DST),
    };
    let (ip_attr, octets) = match (addr, src) {
        (IpAddr::V4(a), true) => (CTA_IP_V4_SRC, a.octets().to_vec()),
        (IpAddr::V4(a), false) => (CTA_IP_V4_DST, a.octets().to_vec()),
        (IpAddr::V6(a), true) => (CTA_IP_V6_SRC, a.octets().to_vec()),
        (IpAddr::V6(a), false) => (CTA_IP_V6_DST, a.octets().to_vec()),
    };
    let mut m = Msg::new(ct_type(IPCTNL_MSG_CT_GET), 0).fixed(&nfgenmsg(addr.is_ipv6()));
    let t = m.nest(tuple);
    let ip = m.nest(CTA_TUPLE_IP);
    m.attr(ip_attr, &octets);
    m.end(ip);
    m.end(t);
    let f = m.nest(CTA_FILTER);
    let (orig, reply) = if tuple == CTA_TUPLE_ORIG {
        (flag, 0)
    } else {
        (0, flag)
    };
    m.u32(CTA_FILTER_ORIG_FLAGS, orig);
    m.u32(CTA_FILTER_REPLY_FLAGS, reply);
    m.end(f);
    dump_entries(sock, m, "list conntrack entries of", &addr.to_string())
}

fn dump_entries(sock: &mut Socket, m: Msg, op: &'static str, obj: &str) -> Result<Vec<Entry>> {
    let bodies = match sock.dump(m, op, obj) {
        Ok(b) => b,
        Err(e) if no_conntrack(&e) => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    Ok(bodies.iter().filter_map(|b| parse_entry(b)).collect())
}

/// Reads one `IPCTNL_MSG_CT_NEW` body (nfgenmsg, then attributes); `None` for an entry
/// that is neither IPv4 nor IPv6, or lacks a tuple.
fn parse_entry(body: &[u8]) -> Option<Entry> {
    let v6 = match body.first().map(|f| i32::from(*f)) {
        Some(libc::AF_INET) => false,
        Some(libc::AF_INET6) => true,
        _ => return None,
    };
    let attrs = body.get(4..)?;
    let raw_orig = msg::find(attrs, CTA_TUPLE_ORIG)?;
    let orig = parse_tuple(raw_orig, v6)?;
    let reply = parse_tuple(msg::find(attrs, CTA_TUPLE_REPLY)?, v6)?;
    let zone = msg::find(attrs, CTA_ZONE)
        .and_then(|p| Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?)));
    Some(Entry {
        orig,
        reply,
        zone,
        raw_orig: raw_orig.to_vec(),
    })
}

fn parse_tuple(p: &[u8], v6: bool) -> Option<Tuple> {
    let ip = msg::find(p, CTA_TUPLE_IP)?;
    let addr = |src: bool| -> Option<IpAddr> {
        if v6 {
            let ty = if src { CTA_IP_V6_SRC } else { CTA_IP_V6_DST };
            let b: [u8; 16] = msg::find(ip, ty)?.get(..16)?.try_into().ok()?;
            Some(Ipv6Addr::from(b).into())
        } else {
            let ty = if src { CTA_IP_V4_SRC } else { CTA_IP_V4_DST };
            let b: [u8; 4] = msg::find(ip, ty)?.get(..4)?.try_into().ok()?;
            Some(Ipv4Addr::from(b).into())
        }
    };
    let l4 = msg::find(p, CTA_TUPLE_PROTO).unwrap_or(&[]);
    let port = |ty| {
        msg::find(l4, ty)
            .and_then(|b| Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?)))
            .unwrap_or(0)
    };
    Some(Tuple {
        src: addr(true)?,
        dst: addr(false)?,
        proto: msg::find(l4, CTA_PROTO_NUM)
            .and_then(|b| b.first().copied())
            .unwrap_or(0),
        sport: port(CTA_PROTO_SRC_PORT),
        dport: port(CTA_PROTO_DST_PORT),
    })
}

/// How many entries the calling thread's namespace tracks (`nf_conntrack_count`);
/// `None` when the kernel has no conntrack loaded, or does not say.
pub fn count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The entries naming `addr` as source or destination of either direction, each
/// once. `tracked` is the namespace's entry count if known ([`count`]): it chooses
/// between one dump of everything and four filtered dumps.
pub fn list_addr(sock: &mut Socket, addr: IpAddr, tracked: Option<u64>) -> Result<Vec<Entry>> {
    let v6 = addr.is_ipv6();
    if tracked.is_some_and(|n| n <= FILTER_ABOVE) {
        let mut all = list_family(sock, v6)?;
        all.retain(|e| e.involves(addr));
        return Ok(all);
    }
    let mut out: Vec<Entry> = Vec::new();
    for field in [
        Field::OrigSrc,
        Field::OrigDst,
        Field::ReplySrc,
        Field::ReplyDst,
    ] {
        let found = match list_filtered(sock, addr, field) {
            Ok(v) => v,
            // A kernel that knows CTA_FILTER but not this use of it: filter here.
            Err(e) if matches!(e.errno(), Some(libc::EINVAL)) => list_family(sock, v6)?,
            Err(e) => return Err(e),
        };
        for e in found {
            if e.involves(addr) && !out.iter().any(|o| o.orig == e.orig && o.zone == e.zone) {
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// Deletes `entries` (`conntrack -D` of each original tuple); one already gone counts
/// as deleted by someone else. Returns how many this call deleted.
pub fn delete(sock: &mut Socket, entries: &[Entry]) -> Result<usize> {
    let mut deleted = 0;
    for chunk in entries.chunks(DELETE_BATCH) {
        let reqs: Vec<Request> = chunk
            .iter()
            .filter(|e| !e.raw_orig.is_empty())
            .map(|e| {
                // A delete without a tuple would flush the whole table: never sent,
                // since every entry carries the tuple it was parsed from.
                let mut m = Msg::new(ct_type(IPCTNL_MSG_CT_DELETE), 0)
                    .fixed(&nfgenmsg(e.orig.src.is_ipv6()));
                m.attr(CTA_TUPLE_ORIG | NLA_F_NESTED, &e.raw_orig);
                if let Some(z) = e.zone {
                    m.attr(CTA_ZONE, &z.to_be_bytes());
                }
                Request::new(m, "delete conntrack entry", e.orig.to_string())
            })
            .collect();
        for r in sock.ack_all(reqs) {
            match r {
                Ok(()) => deleted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(deleted)
}

/// Deletes every conntrack entry of the calling thread's namespace whose original or
/// reply direction has `addr` (either family) as source or destination (`conntrack
/// -D` with `-s`, `-d`, `--reply-src`, `--reply-dst`). Returns how many it deleted.
/// A kernel without conntrack has nothing to delete: 0.
pub fn flush_addr(addr: impl Into<IpAddr>) -> Result<usize> {
    let addr = addr.into();
    let tracked = count();
    if tracked == Some(0) {
        return Ok(0);
    }
    let Some(mut sock) = open()? else {
        return Ok(0);
    };
    let entries = list_addr(&mut sock, addr, tracked)?;
    delete(&mut sock, &entries)
}

#[cfg(test)]
mod tests {
    //! Real conntrack entries in two namespaces the test makes: A (10.213.0.1) talks
    //! UDP to B's two addresses (.2 and .3) over a veth pair; an nftables rule in B
    //! (`ct state new accept`) makes B's conntrack track them. Both namespaces are
    //! removed on drop, also when the test fails.
    use super::*;
    use crate::netns;
    use crate::Netns;
    use std::net::{SocketAddrV4, SocketAddrV6, UdpSocket};
    use std::process::Command;
    use std::time::Duration;

    const A: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
    const B2: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
    const B3: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 3);
    const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 1);
    const B2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 2);
    const B3_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 3);

    struct Pair {
        a: String,
        b: String,
        nsb: Netns,
    }

    impl Drop for Pair {
        fn drop(&mut self) {
            let _ = netns::delete_named(&self.a);
            let _ = netns::delete_named(&self.b);
        }
    }

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let ok = unsafe { libc::geteuid() } == 0;
        if !ok {
            eprintln!("skipped: creating network namespaces needs root");
        }
        ok
    }

    fn run(cmd: &str, args: &[&str]) {
        let o = Command::new(cmd).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// The two namespaces, connected, with B tracking connections and serving UDP
    /// 5000 on both its addresses; A has sent a datagram from port 4000 to each, and
    /// B answered the one to .2. The same over IPv6 (fd00:213::1 to ::2 and ::3).
    fn pair(tag: &str) -> Pair {
        let id = format!("{}-{tag}", std::process::id());
        let (a, b) = (format!("pnct-a-{id}"), format!("pnct-b-{id}"));
        netns::create_named(&a).unwrap();
        let nsb = match netns::create_named(&b) {
            Ok(n) => n,
            Err(e) => {
                let _ = netns::delete_named(&a);
                panic!("create {b}: {e}");
            }
        };
        let p = Pair { a, b, nsb };
        let (a, b) = (p.a.as_str(), p.b.as_str());
        run(
            "ip",
            &[
                "-n", a, "link", "add", "ct0", "type", "veth", "peer", "name", "ct1", "netns", b,
            ],
        );
        run(
            "ip",
            &["-n", a, "addr", "add", "10.213.0.1/24", "dev", "ct0"],
        );
        run("ip", &["-n", a, "link", "set", "ct0", "up"]);
        run(
            "ip",
            &["-n", b, "addr", "add", "10.213.0.2/24", "dev", "ct1"],
        );
        run(
            "ip",
            &["-n", b, "addr", "add", "10.213.0.3/24", "dev", "ct1"],
        );
        for (ns, dev, addr) in [
            (a, "ct0", "fd00:213::1/64"),
            (b, "ct1", "fd00:213::2/64"),
            (b, "ct1", "fd00:213::3/64"),
        ] {
            run("ip", &["-n", ns, "addr", "add", addr, "dev", dev, "nodad"]);
        }
        run("ip", &["-n", b, "link", "set", "ct1", "up"]);
        for rule in [
            "add table inet pnct",
            "add chain inet pnct in { type filter hook input priority 0; }",
            "add rule inet pnct in ct state new accept",
        ] {
            run("ip", &["netns", "exec", b, "nft", rule]);
        }
        let nsa = Netns::open(netns::named_path(a)).unwrap();
        let bind = |ip, port| {
            let s = UdpSocket::bind(SocketAddrV4::new(ip, port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        };
        let (s2, s3) = p.nsb.run(|| (bind(B2, 5000), bind(B3, 5000))).unwrap();
        let c = nsa.run(|| bind(A, 4000)).unwrap();
        let mut buf = [0u8; 16];
        // The veth may still be coming up (DAD is off for IPv4, but the carrier is
        // not instant): retry the first datagram.
        let mut got = None;
        for _ in 0..30 {
            c.send_to(b"x", SocketAddrV4::new(B2, 5000)).unwrap();
            s2.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            if let Ok((_, from)) = s2.recv_from(&mut buf) {
                got = Some(from);
                break;
            }
        }
        let from = got.expect("B never received A's datagram");
        s2.send_to(b"r", from).unwrap();
        c.recv_from(&mut buf).expect("A never received B's answer");
        c.send_to(b"y", SocketAddrV4::new(B3, 5000)).unwrap();
        s3.recv_from(&mut buf)
            .expect("B never received A's datagram to .3");
        // IPv6: a datagram to each of B's IPv6 addresses (neighbour discovery first:
        // the first may take a moment, so each is retried until it arrives).
        let bind6 = |ip, port| {
            let s = UdpSocket::bind(SocketAddrV6::new(ip, port, 0, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            s
        };
        let (r2, r3) = p
            .nsb
            .run(|| (bind6(B2_6, 5000), bind6(B3_6, 5000)))
            .unwrap();
        let c6 = nsa.run(|| bind6(A6, 4000)).unwrap();
        for (to, r) in [(B2_6, &r2), (B3_6, &r3)] {
            let arrived = (0..30).any(|_| {
                c6.send_to(b"z", SocketAddrV6::new(to, 5000, 0, 0)).unwrap();
                r.recv_from(&mut buf).is_ok()
            });
            assert!(arrived, "B never received A's IPv6 datagram to {to}");
        }
        p
    }

    fn entries(p: &Pair) -> Vec<Entry> {
        p.nsb
            .run(|| list(&mut open().unwrap().expect("nfnetlink")))
            .unwrap()
            .unwrap()
    }

    fn of(es: &[Entry], addr: impl Into<IpAddr>) -> usize {
        let addr = addr.into();
        es.iter().filter(|e| e.involves(addr)).count()
    }

    fn entries6(p: &Pair) -> Vec<Entry> {
        p.nsb
            .run(|| list_family(&mut open().unwrap().expect("nfnetlink"), true))
            .unwrap()
            .unwrap()
    }

    /// A dual-stack pod's IPv6 address is reused like its IPv4 one: its entries go,
    /// and only those.
    #[test]
    fn flush_addr_deletes_the_entries_of_one_ipv6_address_and_only_those() {
        if !root() {
            return;
        }
        let p = pair("flush6");
        let before = entries6(&p);
        assert_eq!(of(&before, B2_6), 1, "{before:?}");
        assert_eq!(of(&before, B3_6), 1, "{before:?}");
        let e = before
            .iter()
            .find(|e| e.orig.dst == IpAddr::V6(B2_6))
            .unwrap();
        assert_eq!(
            (e.orig.src, e.orig.proto, e.orig.sport),
            (IpAddr::V6(A6), 17, 4000)
        );
        // The IPv4 listing holds none of them.
        assert!(entries(&p).iter().all(|e| e.orig.src.is_ipv4()));
        let (small, large) = p
            .nsb
            .run(|| {
                let mut s = open().unwrap().unwrap();
                (
                    list_addr(&mut s, B2_6.into(), Some(1)).unwrap(),
                    list_addr(&mut s, B2_6.into(), Some(FILTER_ABOVE + 1)).unwrap(),
                )
            })
            .unwrap();
        assert_eq!(small, large);
        assert_eq!(small.len(), 1);
        let v4 = entries(&p).len();
        assert_eq!(p.nsb.run(|| flush_addr(B2_6)).unwrap().unwrap(), 1);
        let after = entries6(&p);
        assert_eq!(of(&after, B2_6), 0, "{after:?}");
        assert_eq!(of(&after, B3_6), 1, "the other address's entry went too");
        assert_eq!(entries(&p).len(), v4, "an IPv4 entry went too");
    }

    #[test]
    fn flush_addr_deletes_every_entry_of_one_address_and_only_those() {
        if !root() {
            return;
        }
        let p = pair("flush");
        let before = entries(&p);
        let to2 = before
            .iter()
            .find(|e| e.orig.dst == IpAddr::V4(B2))
            .unwrap_or_else(|| panic!("no entry to {B2}: {before:?}"));
        assert_eq!(
            (to2.orig.src, to2.orig.proto, to2.orig.sport, to2.orig.dport),
            (IpAddr::V4(A), 17, 4000, 5000)
        );
        assert_eq!(
            (to2.reply.src, to2.reply.dst),
            (IpAddr::V4(B2), IpAddr::V4(A))
        );
        assert_eq!(of(&before, B3), 1, "{before:?}");

        // The kernel filters dumps (CTA_FILTER): only .2's entries come back.
        let filtered = p
            .nsb
            .run(|| list_filtered(&mut open().unwrap().unwrap(), B2.into(), Field::OrigDst))
            .unwrap()
            .unwrap();
        assert!(
            !filtered.is_empty() && filtered.iter().all(|e| e.orig.dst == IpAddr::V4(B2)),
            "this kernel did not filter the dump: {filtered:?}"
        );

        // Both ways of finding an address's entries find the same ones.
        let (small, large) = p
            .nsb
            .run(|| {
                let mut s = open().unwrap().unwrap();
                (
                    list_addr(&mut s, B2.into(), Some(1)).unwrap(),
                    list_addr(&mut s, B2.into(), Some(FILTER_ABOVE + 1)).unwrap(),
                )
            })
            .unwrap();
        assert_eq!(small, large);
        assert_eq!(small.len(), of(&before, B2));
        assert!(p.nsb.run(count).unwrap().is_some_and(|n| n >= 2));

        let n = p.nsb.run(|| flush_addr(B2)).unwrap().unwrap();
        assert_eq!(n, of(&before, B2));
        let after = entries(&p);
        assert_eq!(of(&after, B2), 0, "{after:?}");
        assert_eq!(
            of(&after, B3),
            1,
            "the other address's entry went too: {after:?}"
        );
        // A second flush finds nothing: 0, no error.
        assert_eq!(p.nsb.run(|| flush_addr(B2)).unwrap().unwrap(), 0);
        // By the peer's address (source of the original direction, destination of the
        // reply): the rest goes.
        assert_eq!(p.nsb.run(|| flush_addr(A)).unwrap().unwrap(), 1);
        assert_eq!(of(&entries(&p), A), 0);
    }

    #[test]
    fn a_namespace_that_tracks_nothing_has_nothing_to_flush() {
        if !root() {
            return;
        }
        let p = pair("empty");
        // A has no conntrack hook: no entries, no error.
        let nsa = Netns::open(netns::named_path(&p.a)).unwrap();
        assert_eq!(nsa.run(|| flush_addr(A)).unwrap().unwrap(), 0);
        // Deleting an entry that is already gone is not an error.
        let es = entries(&p);
        let mine: Vec<Entry> = es.into_iter().filter(|e| e.involves(B3)).collect();
        let mut s = p.nsb.run(open).unwrap().unwrap().unwrap();
        let (first, second) = (
            p.nsb.run(|| delete(&mut s, &mine)).unwrap().unwrap(),
            p.nsb.run(|| delete(&mut s, &mine)).unwrap().unwrap(),
        );
        assert_eq!((first, second), (1, 0));
    }

    /// What this kernel does with a *filtered flush* (a delete request carrying
    /// `CTA_FILTER` and an incomplete tuple): Linux 6.12+ deletes only what the filter
    /// matches; older kernels refuse it (EINVAL for the incomplete tuple, or
    /// EOPNOTSUPP). Either is recorded; deleting anything the filter excludes fails.
    #[test]
    fn kernel_filtered_flush_behaviour() {
        if !root() {
            return;
        }
        let p = pair("kflush");
        let before = entries(&p);
        let outcome = p
            .nsb
            .run(|| {
                let mut s = open().unwrap().unwrap();
                let mut m = Msg::new(ct_type(IPCTNL_MSG_CT_DELETE), 0).fixed(&nfgenmsg(false));
                let t = m.nest(CTA_TUPLE_ORIG);
                let ip = m.nest(CTA_TUPLE_IP);
                m.attr(CTA_IP_V4_DST, &B2.octets());
                m.end(ip);
                m.end(t);
                let f = m.nest(CTA_FILTER);
                m.u32(CTA_FILTER_ORIG_FLAGS, CTA_FILTER_F_CTA_IP_DST);
                m.u32(CTA_FILTER_REPLY_FLAGS, 0);
                m.end(f);
                s.ack(m, "filtered conntrack flush", B2.to_string())
            })
            .unwrap();
        let after = entries(&p);
        match outcome {
            Ok(()) => {
                eprintln!("this kernel honours a filtered conntrack flush");
                assert_eq!(of(&after, B2), 0, "{after:?}");
            }
            Err(e) => {
                eprintln!("this kernel refuses a filtered conntrack flush: {e}");
                assert!(
                    matches!(e.errno(), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)),
                    "{e}"
                );
                assert_eq!(of(&after, B2), of(&before, B2));
            }
        }
        assert_eq!(of(&after, B3), 1, "a filtered flush deleted other entries");
    }
}
