//! The nftables policy datapath's table: rendered, run, checked and read.
//!
//! # Kernel objects it owns
//! One table, `inet podnet`, in the node's network namespace, and nothing else (no
//! other table is read or changed). It holds:
//! - `programmed`: the addresses of local pods whose verdicts are in place. Any other
//!   address of the node's pod CIDR is *closed*: a pod made while the agent is down,
//!   or before its policy is compiled, neither sends nor receives (counter `closed`).
//!   The table outlives the agent, so `kill -9` opens nothing.
//! - `programmed6` and every set below again with a `6` suffix: the same for the pods'
//!   IPv6 addresses (dual-stack), judged by the IPv6 entries of the same tables in the
//!   chains `ingress6` and `egress6`. They exist, empty, on an IPv4-only node too.
//! - per direction `D` (`ingress`, `egress`): `D_isolated` (pods some policy isolates
//!   for D), `D_any` (`pod . peer prefix`: every protocol and port) and `D_ports`
//!   (`pod . peer prefix . protocol . port range`), and `D_denied`, the isolated pods
//!   again with a counter per element: the packets refused to each pod. Entries for
//!   one peer address and one port — most of them: pods as peers, numbered ports — go
//!   to the hash sets `D_any_host` and `D_ports_host` instead: changing an interval
//!   set makes the kernel rebuild it whole, a hash set changes in place, so a change
//!   costs what it changes, not what the node holds.
//! - chain `forward` (hook forward): first, every packet on its way to a pod is marked
//!   ([`crate::guard::NFT_MARK`]): the backstop on each pod veth's egress
//!   (`nft_backstop` in bpf/underlay.c) drops forwarded packets without the mark, so a
//!   flushed table (or `bridge-nf-call-iptables` off) closes pods instead of opening
//!   them until the agent puts it back. Then replies of admitted connections pass through
//!   conntrack (`ct state established,related`); then the closed addresses; then the
//!   source's egress and the destination's ingress. Same-node traffic crosses the
//!   bridge and reaches this hook through `br_netfilter` (`bridge-nf-call-iptables`,
//!   turned on by the agent). On an IPv4-only node bridged IPv6 is dropped whole: a
//!   pod's IPv6 link-local address must not become a way around policy. On a
//!   dual-stack node (an IPv6 pod CIDR), pods' global IPv6 addresses are judged like
//!   the IPv4 ones; neighbour solicitations and advertisements between pods of the
//!   bridge pass (hop limit 255: never forwarded by a router; anti-spoofing has
//!   already checked their source and target), and every other bridged packet from or
//!   to a link-local address, and IPv6 multicast to pods, is dropped (`closed`).
//!   IPv4 broadcast
//!   and multicast are delivered to no pod (counted as `closed`), as on the eBPF
//!   datapath, where no pod holds such an address: an isolated pod must not hear what
//!   its policy would refuse, and the pod network is unicast. Fragments are judged
//!   whole (conntrack reassembles them first), and ICMP errors follow the flow they
//!   quote (`related`); the eBPF datapath does the same with its `frags` map and its
//!   reading of the quoted header.
//!
//! Traffic the node itself sends to its pods (kubelet probes) leaves through the output
//! hook and is never filtered here; the replies match conntrack.
//!
//! # How it changes
//! Every change is one `nft -f -` transaction: all or nothing. The first one after
//! the agent starts replaces the whole table atomically (`delete table` and the new
//! table in one transaction, so nothing is open in between); later ones add and
//! delete only the set elements that differ — one changed label touches only the
//! elements of the pods it changes. Sets, not one rule per peer: the per-packet cost
//! is a few hash/interval lookups, whatever the number of rules.
//!
//! # Connections already open when a policy changes
//! They stay open: conntrack admits their packets before any policy is consulted, as
//! in Calico and Cilium. New connections get the new verdict at once.

use crate::Failure;
use podnet_cni_spec::Ipv4Net;
use podnet_conventions::Ipv6Net;
use podnet_policy::compile::{Allow, PodTables, Table};
use podnet_policy::Direction;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

pub const TABLE: &str = "podnet";

const DIRS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

/// The table's sets, in the order `Elem::set` numbers them; [`SETS6`] are their
/// IPv6 twins.
const SETS: [&str; 13] = [
    "programmed",
    "ingress_isolated",
    "ingress_denied",
    "ingress_any_host",
    "ingress_ports_host",
    "ingress_any",
    "ingress_ports",
    "egress_isolated",
    "egress_denied",
    "egress_any_host",
    "egress_ports_host",
    "egress_any",
    "egress_ports",
];

const SETS6: [&str; 13] = [
    "programmed6",
    "ingress_isolated6",
    "ingress_denied6",
    "ingress_any_host6",
    "ingress_ports_host6",
    "ingress_any6",
    "ingress_ports6",
    "egress_isolated6",
    "egress_denied6",
    "egress_any_host6",
    "egress_ports_host6",
    "egress_any6",
    "egress_ports6",
];

/// One set element, compact (so that diffing a node's thousands of elements costs
/// little), rendered as nft writes it only when it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Elem {
    /// Index into [`SETS`] (or [`SETS6`] for an IPv6 `pod`).
    set: u8,
    /// The pod's address of the set's family.
    pod: IpAddr,
    /// Peer, for the `_any` and `_ports` sets.
    net: Option<podnet_policy::net::Prefix>,
    /// Protocol and port range, for the `_ports` sets.
    ports: Option<(u8, u16, u16)>,
}

impl Elem {
    pub fn set_name(&self) -> &'static str {
        if self.pod.is_ipv6() {
            SETS6[self.set as usize]
        } else {
            SETS[self.set as usize]
        }
    }

    pub fn render(&self) -> String {
        let addr = |n: &podnet_policy::net::Prefix| n.render();
        match (self.net, self.ports) {
            (None, _) => self.pod.to_string(),
            (Some(n), None) => format!("{} . {}", self.pod, addr(&n)),
            (Some(n), Some((proto, a, b))) if a == b => {
                format!("{} . {} . {proto} . {a}", self.pod, addr(&n))
            }
            (Some(n), Some((proto, a, b))) => {
                format!("{} . {} . {proto} . {a}-{b}", self.pod, addr(&n))
            }
        }
    }
}

/// Every set element one pod's tables stand for: for its IPv4 address the tables'
/// IPv4 entries, for its IPv6 address (if any) their IPv6 entries.
fn pod_elements(t: &PodTables, out: &mut BTreeSet<Elem>) {
    family_elements(t, IpAddr::V4(t.ip), out);
    if let Some(ip6) = t.ip6 {
        family_elements(t, IpAddr::V6(ip6), out);
    }
}

fn family_elements(t: &PodTables, pod: IpAddr, out: &mut BTreeSet<Elem>) {
    let e = |set: u8, net, ports| Elem {
        set,
        pod,
        net,
        ports,
    };
    out.insert(e(0, None, None));
    for (i, dir) in DIRS.into_iter().enumerate() {
        let base = 1 + 6 * i as u8;
        if let Table::Isolated { allow, .. } = t.table(dir) {
            out.insert(e(base, None, None));
            out.insert(e(base + 1, None, None));
            for Allow { net, ports } in allow.iter().filter(|a| a.net.is_v6() == pod.is_ipv6()) {
                let host = net.is_host();
                let el = match ports {
                    None => e(if host { base + 2 } else { base + 4 }, Some(*net), None),
                    Some(p) => e(
                        if host && p.first == p.last {
                            base + 3
                        } else {
                            base + 5
                        },
                        Some(*net),
                        Some((p.proto.number(), p.first, p.last)),
                    ),
                };
                out.insert(el);
            }
        }
    }
}

pub fn elements(tables: &BTreeMap<String, PodTables>) -> BTreeSet<Elem> {
    let mut out = BTreeSet::new();
    for t in tables.values() {
        pod_elements(t, &mut out);
    }
    out
}

fn set_decls() -> Vec<(String, String, &'static str)> {
    let mut v = vec![];
    for (ty, sfx) in [("ipv4_addr", ""), ("ipv6_addr", "6")] {
        let pair = format!("{ty} . {ty}");
        let quad = format!("{ty} . {ty} . inet_proto . inet_service");
        v.push((format!("programmed{sfx}"), ty.to_string(), ""));
        for dir in DIRS {
            let d = dir.as_str();
            v.push((format!("{d}_isolated{sfx}"), ty.to_string(), ""));
            v.push((format!("{d}_denied{sfx}"), ty.to_string(), "counter;"));
            v.push((format!("{d}_any_host{sfx}"), pair.clone(), ""));
            v.push((format!("{d}_ports_host{sfx}"), quad.clone(), ""));
            v.push((format!("{d}_any{sfx}"), pair.clone(), "flags interval;"));
            v.push((format!("{d}_ports{sfx}"), quad.clone(), "flags interval;"));
        }
    }
    v
}

/// The chain that judges one direction for one family (`ip` or `ip6`): the pod's
/// address first, then the peer's.
fn dir_chain(dir: Direction, fam: &str, sfx: &str) -> String {
    let d = dir.as_str();
    let (pod, peer) = match dir {
        Direction::Ingress => ("daddr", "saddr"),
        Direction::Egress => ("saddr", "daddr"),
    };
    format!(
        "  chain {d}{sfx} {{
    {fam} {pod} . {fam} {peer} @{d}_any_host{sfx} return
    {fam} {pod} . {fam} {peer} . meta l4proto . th dport @{d}_ports_host{sfx} return
    {fam} {pod} . {fam} {peer} @{d}_any{sfx} return
    {fam} {pod} . {fam} {peer} . meta l4proto . th dport @{d}_ports{sfx} return
    {fam} {pod} @{d}_denied{sfx} log prefix \"podnet:{d}:\" group {LOG_GROUP} drop
    log prefix \"podnet:{d}:\" group {LOG_GROUP} drop
  }}
"
    )
}

/// The forward chain's IPv6 rules before conntrack: on an IPv4-only node (`cidr6`
/// none) bridged IPv6 dropped whole; on a dual-stack node neighbour discovery between
/// pods passed, link-local and multicast to pods dropped.
fn ipv6_gate(bridge: &str, cidr6: Option<Ipv6Net>) -> String {
    match cidr6 {
        None => format!(
            "    meta nfproto ipv6 iifname \"{bridge}\" drop
    meta nfproto ipv6 oifname \"{bridge}\" drop
"
        ),
        Some(_) => format!(
            "    oifname \"{bridge}\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} ip6 hoplimit 255 accept
    oifname \"{bridge}\" ip6 daddr ff00::/8 counter name closed drop
    oifname \"{bridge}\" ip6 saddr fe80::/10 counter name closed drop
    oifname \"{bridge}\" ip6 daddr fe80::/10 counter name closed drop
"
        ),
    }
}

/// The forward chain's rules for the pods' IPv6 addresses (none on an IPv4-only node).
fn ipv6_policy(cidr6: Option<Ipv6Net>) -> (String, String) {
    let Some(net6) = cidr6 else {
        return (String::new(), String::new());
    };
    (
        format!(
            "    ip6 saddr {net6} ip6 saddr != @programmed6 counter name closed log prefix \"podnet:closed-src:\" group {LOG_GROUP} drop
    ip6 daddr {net6} ip6 daddr != @programmed6 counter name closed log prefix \"podnet:closed-dst:\" group {LOG_GROUP} drop
"
        ),
        "    ip6 saddr @egress_isolated6 jump egress6
    ip6 daddr @ingress_isolated6 jump ingress6
"
        .to_string(),
    )
}

/// The rules chain `forward` holds as [`render_full`] writes it.
fn forward_rules(cidr6: Option<Ipv6Net>) -> usize {
    if cidr6.is_some() {
        16
    } else {
        10
    }
}

/// The whole table, replacing whatever `inet podnet` held, in one transaction.
/// `cidr6`: the node's IPv6 pod CIDR on a dual-stack node.
pub fn render_full(
    cidr: Ipv4Net,
    cidr6: Option<Ipv6Net>,
    bridge: &str,
    elems: &BTreeSet<Elem>,
) -> String {
    let mut s = String::new();
    // Creating an empty table first makes the delete valid when none exists yet.
    s.push_str(&format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
    ));
    s.push_str(&format!("table inet {TABLE} {{\n"));
    s.push_str("  comment \"podnet NetworkPolicy: owned by podnetd, rewritten on every change\"\n");
    s.push_str("  counter closed {}\n");
    for (name, ty, flags) in set_decls() {
        s.push_str(&format!("  set {name} {{ type {ty}; {flags}"));
        let mine: Vec<String> = elems
            .iter()
            .filter(|e| e.set_name() == name)
            .map(Elem::render)
            .collect();
        if !mine.is_empty() {
            s.push_str(&format!(" elements = {{ {} }};", mine.join(", ")));
        }
        s.push_str(" }\n");
    }
    let net = cidr.to_string();
    let bcast = cidr.broadcast();
    let mark = crate::guard::NFT_MARK;
    let gate6 = ipv6_gate(bridge, cidr6);
    let (closed6, jumps6) = ipv6_policy(cidr6);
    s.push_str(&format!(
        "  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    oifname \"{bridge}\" meta mark set meta mark or {mark:#x}
{gate6}    oifname \"{bridge}\" ip daddr {{ 224.0.0.0/4, 255.255.255.255, {bcast} }} counter name closed drop
    ct state established,related accept
    ip saddr {net} ip saddr != @programmed counter name closed log prefix \"podnet:closed-src:\" group {LOG_GROUP} drop
    ip daddr {net} ip daddr != @programmed counter name closed log prefix \"podnet:closed-dst:\" group {LOG_GROUP} drop
{closed6}    ip saddr @egress_isolated jump egress
    ip daddr @ingress_isolated jump ingress
{jumps6}    ct state new jump allowed_log
  }}
  chain allowed_log {{
  }}
"
    ));
    for (fam, sfx) in [("ip", ""), ("ip6", "6")] {
        for dir in [Direction::Egress, Direction::Ingress] {
            s.push_str(&dir_chain(dir, fam, sfx));
        }
    }
    s.push_str("}\n");
    s
}

/// Only what differs between `old` and `new`: deletions first, then additions, in one
/// transaction. Empty when nothing differs.
pub fn render_update(old: &BTreeSet<Elem>, new: &BTreeSet<Elem>) -> String {
    let mut s = String::new();
    fn group(it: Vec<&Elem>) -> BTreeMap<&'static str, Vec<String>> {
        let mut m: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for e in it {
            m.entry(e.set_name()).or_default().push(e.render());
        }
        m
    }
    for (set, es) in group(old.difference(new).collect()) {
        s.push_str(&format!(
            "delete element inet {TABLE} {set} {{ {} }}\n",
            es.join(", ")
        ));
    }
    for (set, es) in group(new.difference(old).collect()) {
        s.push_str(&format!(
            "add element inet {TABLE} {set} {{ {} }}\n",
            es.join(", ")
        ));
    }
    s
}

/// Runs one nft transaction.
pub fn run(script: &str) -> Result<(), Failure> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run nft ({e}): install nftables (apt-get install nftables)")
        })?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())
        .map_err(|e| format!("cannot write to nft: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft did not finish: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        // nft quotes the whole offending statement; the first lines say what failed.
        let short: Vec<&str> = err.lines().take(6).collect();
        Err(format!(
            "nft refused the transaction ({}): {}",
            out.status,
            short.join(" | ")
        )
        .into())
    }
}

/// Rules each direction's chains hold as [`render_full`] writes them (`allowed_log` is
/// filled while allowed flows are watched, so it is not counted; `forward`: see
/// [`forward_rules`]).
const CHAIN_RULES: [(&str, usize); 4] = [
    ("ingress", 6),
    ("egress", 6),
    ("ingress6", 6),
    ("egress6", 6),
];
/// The sets whose loss would open a pod rather than close it: isolation.
const GUARDING_SETS: [&str; 6] = [
    "programmed",
    "ingress_isolated",
    "egress_isolated",
    "programmed6",
    "ingress_isolated6",
    "egress_isolated6",
];

/// Reads back, in one `nft` run, what keeps pods isolated: the three chains (their
/// hook and rule count) and the sets of programmed and isolated pods, compared with
/// `want` (the elements the agent last programmed). `Err` says what drifted: a missing
/// table (`nft flush ruleset`, a firewall reload), a flushed chain or set. Any of these
/// opens pods; the caller rewrites the whole table.
pub fn check_intact(want: &BTreeSet<Elem>, cidr6: Option<Ipv6Net>) -> Result<(), Failure> {
    // The structure without the elements (`-t`), then each guarding set: nft 1.0's
    // `-f` cannot list several sets in one run.
    let structure = list(&["-t", "list", "table", "inet", TABLE])?;
    let blocks = blocks(&structure);
    for (c, n) in [("forward", forward_rules(cidr6))]
        .into_iter()
        .chain(CHAIN_RULES)
    {
        let Some(lines) = blocks.get(&format!("chain {c}")) else {
            return Err(format!("chain {c} of table inet {TABLE} is gone").into());
        };
        let rules = lines
            .iter()
            .filter(|l| !l.starts_with("type ") && !l.starts_with("policy "))
            .count();
        if rules != n {
            return Err(
                format!("chain {c} of table inet {TABLE} holds {rules} rules, not {n}").into(),
            );
        }
        if c == "forward" && !lines.iter().any(|l| l.contains("hook forward")) {
            return Err(
                format!("chain {c} of table inet {TABLE} is not on the forward hook").into(),
            );
        }
    }
    for set in GUARDING_SETS {
        let text = list(&["list", "set", "inet", TABLE, set])?;
        let have: BTreeSet<IpAddr> = blocks_of_set(&text, set);
        let need: BTreeSet<IpAddr> = want
            .iter()
            .filter(|e| e.set_name() == set)
            .map(|e| e.pod)
            .collect();
        if have != need {
            let missing = need.difference(&have).count();
            let extra = have.difference(&need).count();
            return Err(format!(
                "set {set} of table inet {TABLE} lacks {missing} and has {extra} unexpected addresses"
            ).into());
        }
    }
    Ok(())
}

/// One `nft` listing; an error says whether the table itself is gone.
fn list(args: &[&str]) -> Result<String, Failure> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!("cannot run nft ({e}): install nftables (apt-get install nftables)")
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(if exists() {
        format!(
            "{} of table inet {TABLE} is gone ({})",
            args[args.len() - 1],
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        )
        .into()
    } else {
        format!("table inet {TABLE} is gone (nft flush ruleset, or a firewall reload)").into()
    })
}

/// The addresses listed as elements of `set`.
fn blocks_of_set(text: &str, set: &str) -> BTreeSet<IpAddr> {
    blocks(text)
        .get(&format!("set {set}"))
        .map(|ls| {
            ls.iter()
                .filter(|l| !l.starts_with("type ") && !l.starts_with("flags "))
                .flat_map(|l| {
                    l.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
                        .filter_map(|w| w.parse::<IpAddr>().ok())
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `nft list` output cut into its `chain X` / `set X` blocks: the trimmed lines of each.
fn blocks(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cur: Option<String> = None;
    for l in text.lines().map(str::trim) {
        if let Some(h) = l.strip_suffix(" {") {
            if h.starts_with("chain ") || h.starts_with("set ") {
                cur = Some(h.to_string());
                out.entry(h.to_string()).or_default();
                continue;
            }
        }
        if l == "}" || l.starts_with("table ") {
            cur = None;
            continue;
        }
        if let (Some(c), false) = (&cur, l.is_empty()) {
            out.get_mut(c).expect("block opened").push(l.to_string());
        }
    }
    out
}

/// Follows every nftables change in this network namespace (the nf_tables netlink
/// multicast group), calling `changed` after each batch of messages until it returns
/// false. Podnet's own transactions are followed too; the caller's check is cheap.
pub fn watch(mut changed: impl FnMut() -> bool) -> Result<(), Failure> {
    const NETLINK_NETFILTER: i32 = 12;
    const NFNLGRP_NFTABLES: u32 = 7;
    // SAFETY: a netlink socket, owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(format!("netlink socket: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: fd was just created and is ours.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed sockaddr_nl is valid; bind with its size.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = 1 << (NFNLGRP_NFTABLES - 1);
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r != 0 {
        return Err(format!(
            "join the nftables netlink group: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // ENOBUFS: events were lost, which is a change all the same.
            if e.raw_os_error() != Some(libc::ENOBUFS)
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                return Err(format!("read nftables events: {e}").into());
            }
        }
        if !changed() {
            return Ok(());
        }
    }
}

/// Whether the table exists.
pub fn exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether set `set` of the table holds `elem` (read from the kernel).
pub fn holds(set: &str, elem: &str) -> bool {
    Command::new("nft")
        .args([
            "get",
            "element",
            "inet",
            TABLE,
            set,
            &format!("{{ {elem} }}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Packets refused per pod address and direction, and to closed addresses, read from
/// the kernel.
/// Packets refused per `(pod address, direction)`.
use crate::policy::datapath::DeniedCounts;

pub fn counters() -> Result<(DeniedCounts, u64), Failure> {
    let mut per_pod = BTreeMap::new();
    let mut closed = 0;
    // Only the two counting sets and the counter: not the whole table.
    for what in [
        ["set", "ingress_denied"],
        ["set", "egress_denied"],
        ["set", "ingress_denied6"],
        ["set", "egress_denied6"],
        ["counter", "closed"],
    ] {
        let out = Command::new("nft")
            .args(["-j", "list", what[0], "inet", TABLE, what[1]])
            .output()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "nft list {} inet {TABLE} {}: {}",
                what[0],
                what[1],
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("nft -j output: {e}"))?;
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(set) = item.get("set") {
                let dir = match set["name"].as_str() {
                    Some("ingress_denied" | "ingress_denied6") => Direction::Ingress,
                    _ => Direction::Egress,
                };
                for e in set["elem"].as_array().into_iter().flatten() {
                    let inner = &e["elem"];
                    if let Some(ip) = inner["val"].as_str().and_then(|s| s.parse().ok()) {
                        per_pod
                            .insert((ip, dir), inner["counter"]["packets"].as_u64().unwrap_or(0));
                    }
                }
            }
            if let Some(c) = item.get("counter") {
                closed = c["packets"].as_u64().unwrap_or(0);
            }
        }
    }
    Ok((per_pod, closed))
}

/// Removes the table (the agent's `--policy-datapath none`, and tests).
pub fn delete() -> Result<(), Failure> {
    run(&format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
    ))
}

/// Admitted new flows logged too (`podnet:allow:` to [`LOG_GROUP`]) or not: fills or
/// empties the chain `allowed_log`, which every admitted new flow jumps to. Idempotent;
/// a table rewritten whole comes back empty, so the caller repeats it while wanted.
pub fn set_allowed_log(on: bool) -> Result<(), Failure> {
    let mut script = format!("flush chain inet {TABLE} allowed_log\n");
    if on {
        script += &format!(
            "add rule inet {TABLE} allowed_log log prefix \"podnet:allow:\" group {LOG_GROUP}\n"
        );
    }
    run(&script)
}

/// The NFLOG group the table's drop rules log to (per network namespace): podnetd's
/// event reader ([`crate::observe`]) binds it. The prefix says which pod the verdict is
/// about: `podnet:egress:` and `podnet:closed-src:` the source, `podnet:ingress:` and
/// `podnet:closed-dst:` the destination.
pub const LOG_GROUP: u16 = 7;

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_policy::compile::Ports;
    use podnet_policy::net::Prefix;
    use podnet_policy::Proto;

    fn tables() -> BTreeMap<String, PodTables> {
        let allow = BTreeSet::from([
            Allow {
                net: Prefix::truncating("10.0.0.0".parse().unwrap(), 8),
                ports: None,
            },
            Allow {
                net: Prefix::host("192.0.2.1".parse().unwrap()),
                ports: Some(Ports {
                    proto: Proto::Tcp,
                    first: 80,
                    last: 81,
                }),
            },
            Allow {
                net: Prefix::host("192.0.2.2".parse().unwrap()),
                ports: Some(Ports {
                    proto: Proto::Udp,
                    first: 53,
                    last: 53,
                }),
            },
        ]);
        BTreeMap::from([(
            "x/a".to_string(),
            PodTables {
                ip: "10.244.0.5".parse().unwrap(),
                ip6: None,
                ingress: Table::Isolated {
                    policies: vec!["x/p".into()],
                    allow,
                },
                egress: Table::Open,
            },
        )])
    }

    #[test]
    fn full_table_holds_every_element() {
        let e = elements(&tables());
        let s = render_full("10.244.0.0/24".parse().unwrap(), None, "podnet0", &e);
        assert!(s.starts_with("table inet podnet {}\ndelete table inet podnet\n"));
        assert!(s.contains("set programmed { type ipv4_addr;  elements = { 10.244.0.5 }; }"));
        assert!(s.contains("set ingress_any { type ipv4_addr . ipv4_addr; flags interval; elements = { 10.244.0.5 . 10.0.0.0/8 }; }"));
        assert!(s.contains("elements = { 10.244.0.5 . 192.0.2.1 . 6 . 80-81 }"));
        assert!(s.contains("set ingress_ports_host { type ipv4_addr . ipv4_addr . inet_proto . inet_service;  elements = { 10.244.0.5 . 192.0.2.2 . 17 . 53 }; }"), "{s}");
        assert!(s.contains("ip saddr 10.244.0.0/24 ip saddr != @programmed"));
        assert!(!s.contains("egress_any { type ipv4_addr . ipv4_addr; flags interval; elements"));
    }

    /// A dual-stack pod: its IPv6 address goes to the `6` sets with the tables' IPv6
    /// entries only, and the forward chain judges IPv6 instead of dropping it.
    #[test]
    fn a_dual_stack_pod_is_judged_over_both_families() {
        let mut t = tables();
        let pod = t.get_mut("x/a").unwrap();
        pod.ip6 = Some("fd00:10:244::5".parse().unwrap());
        if let Table::Isolated { allow, .. } = &mut pod.ingress {
            allow.insert(Allow {
                net: Prefix::truncating("fd00:10:244:1::".parse().unwrap(), 64),
                ports: None,
            });
            allow.insert(Allow {
                net: Prefix::host("fd00:10:244:1::9".parse().unwrap()),
                ports: Some(Ports {
                    proto: Proto::Tcp,
                    first: 80,
                    last: 80,
                }),
            });
        }
        let e = elements(&t);
        let in_set = |set: &str| -> Vec<String> {
            e.iter()
                .filter(|x| x.set_name() == set)
                .map(Elem::render)
                .collect()
        };
        assert_eq!(in_set("programmed6"), ["fd00:10:244::5"]);
        assert_eq!(in_set("ingress_isolated6"), ["fd00:10:244::5"]);
        assert_eq!(
            in_set("ingress_any6"),
            ["fd00:10:244::5 . fd00:10:244:1::/64"]
        );
        assert_eq!(
            in_set("ingress_ports_host6"),
            ["fd00:10:244::5 . fd00:10:244:1::9 . 6 . 80"]
        );
        // IPv4 entries stay with the IPv4 address, and the other way round.
        assert_eq!(in_set("ingress_any"), ["10.244.0.5 . 10.0.0.0/8"]);
        assert!(e
            .iter()
            .all(|x| x.net.is_none_or(|n| n.is_v6() == x.pod.is_ipv6())));
        let cidr6: Ipv6Net = "fd00:10:244::/64".parse().unwrap();
        let s = render_full("10.244.0.0/24".parse().unwrap(), Some(cidr6), "podnet0", &e);
        assert!(
            s.contains("ip6 saddr fd00:10:244::/64 ip6 saddr != @programmed6"),
            "{s}"
        );
        assert!(s.contains("ip6 daddr @ingress_isolated6 jump ingress6"));
        assert!(s.contains("ip6 daddr . ip6 saddr @ingress_any6 return"));
        assert!(
            !s.contains("meta nfproto ipv6 oifname \"podnet0\" drop"),
            "{s}"
        );
        assert!(s.contains("oifname \"podnet0\" ip6 saddr fe80::/10 counter name closed drop"));
        // Rule counts as the drift check expects them.
        let forward = |s: &str| {
            let b = blocks(s);
            b["chain forward"]
                .iter()
                .filter(|l| !l.starts_with("type "))
                .count()
        };
        assert_eq!(forward(&s), forward_rules(Some(cidr6)));
        let s4 = render_full("10.244.0.0/24".parse().unwrap(), None, "podnet0", &e);
        assert_eq!(forward(&s4), forward_rules(None));
        assert!(s4.contains("meta nfproto ipv6 oifname \"podnet0\" drop"));
    }

    #[test]
    fn updates_touch_only_what_differs() {
        let old = elements(&tables());
        let mut t = tables();
        t.get_mut("x/a").unwrap().ingress = Table::Open;
        let new = elements(&t);
        let s = render_update(&old, &new);
        assert!(s.contains("delete element inet podnet ingress_isolated { 10.244.0.5 }"));
        assert!(s.contains("delete element inet podnet ingress_any { 10.244.0.5 . 10.0.0.0/8 }"));
        assert!(!s.contains("programmed"), "{s}");
        assert!(!s.contains("add element"), "{s}");
        assert_eq!(render_update(&new, &new), "");
    }
}

#[cfg(test)]
mod drift_tests {
    use super::*;

    /// `nft -t list table` and `nft list set` output as nft 1.0 prints them.
    #[test]
    fn listings_are_read_into_chains_and_set_addresses() {
        let table = "table inet podnet {\n\tset programmed {\n\t\ttype ipv4_addr\n\t}\n\tchain forward {\n\t\ttype filter hook forward priority filter - 10; policy accept;\n\t\tct state established,related accept\n\t\tip saddr @egress_isolated jump egress\n\t}\n\tchain allowed_log {\n\t}\n}\n";
        let b = blocks(table);
        assert_eq!(b["chain forward"].len(), 3);
        assert!(b["chain forward"][0].contains("hook forward"));
        assert!(b["chain allowed_log"].is_empty());
        let set = "table inet podnet {\n\tset programmed {\n\t\ttype ipv4_addr\n\t\telements = { 10.244.1.2, 10.244.1.3,\n\t\t\t     10.244.1.40 }\n\t}\n}\n";
        let have = blocks_of_set(set, "programmed");
        let want: BTreeSet<IpAddr> = ["10.244.1.2", "10.244.1.3", "10.244.1.40"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(have, want);
        assert!(blocks_of_set(set, "ingress_isolated").is_empty());
    }
}
