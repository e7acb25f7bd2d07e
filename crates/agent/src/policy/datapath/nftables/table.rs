//! The nftables policy datapath's table: rendered, run, checked and read.
//!
//! # Kernel objects it owns
//! One table, `inet podnet`, in the node's network namespace, and nothing else (no
//! other table is read or changed). It holds:
//! - `programmed`: the addresses of local pods whose verdicts are in place. Any other
//!   address of the node's pod CIDR is *closed*: a pod made while the agent is down,
//!   or before its policy is compiled, neither sends nor receives (counter `closed`).
//!   The table outlives the agent, so `kill -9` opens nothing.
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
//!   turned on by the agent); bridged IPv6 is dropped, since policy is IPv4 and a
//!   pod's IPv6 link-local address must not become a way around it. IPv4 broadcast
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
use podnet_policy::compile::{Allow, PodTables, Table};
use podnet_policy::Direction;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

pub const TABLE: &str = "podnet";

const DIRS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

/// The table's sets, in the order `Elem::set` numbers them.
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

/// One set element, compact (so that diffing a node's thousands of elements costs
/// little), rendered as nft writes it only when it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Elem {
    /// Index into [`SETS`].
    set: u8,
    pod: Ipv4Addr,
    /// Peer, for the `_any` and `_ports` sets.
    net: Option<podnet_policy::net::Prefix>,
    /// Protocol and port range, for the `_ports` sets.
    ports: Option<(u8, u16, u16)>,
}

impl Elem {
    pub fn set_name(&self) -> &'static str {
        SETS[self.set as usize]
    }

    pub fn render(&self) -> String {
        let addr = |n: &podnet_policy::net::Prefix| {
            if n.prefix() == 32 {
                n.network().to_string()
            } else {
                n.to_string()
            }
        };
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

/// Every set element one pod's tables stand for.
fn pod_elements(t: &PodTables, out: &mut BTreeSet<Elem>) {
    let e = |set: u8, net, ports| Elem {
        set,
        pod: t.ip,
        net,
        ports,
    };
    out.insert(e(0, None, None));
    for (i, dir) in DIRS.into_iter().enumerate() {
        let base = 1 + 6 * i as u8;
        if let Table::Isolated { allow, .. } = t.table(dir) {
            out.insert(e(base, None, None));
            out.insert(e(base + 1, None, None));
            for Allow { net, ports } in allow {
                let host = net.prefix() == 32;
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

fn set_decls() -> Vec<(String, &'static str, &'static str)> {
    let mut v = vec![("programmed".to_string(), "ipv4_addr", "")];
    for dir in DIRS {
        let d = dir.as_str();
        v.push((format!("{d}_isolated"), "ipv4_addr", ""));
        v.push((format!("{d}_denied"), "ipv4_addr", "counter;"));
        v.push((format!("{d}_any_host"), "ipv4_addr . ipv4_addr", ""));
        v.push((
            format!("{d}_ports_host"),
            "ipv4_addr . ipv4_addr . inet_proto . inet_service",
            "",
        ));
        v.push((
            format!("{d}_any"),
            "ipv4_addr . ipv4_addr",
            "flags interval;",
        ));
        v.push((
            format!("{d}_ports"),
            "ipv4_addr . ipv4_addr . inet_proto . inet_service",
            "flags interval;",
        ));
    }
    v
}

/// The whole table, replacing whatever `inet podnet` held, in one transaction.
pub fn render_full(cidr: Ipv4Net, bridge: &str, elems: &BTreeSet<Elem>) -> String {
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
    s.push_str(&format!(
        "  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    oifname \"{bridge}\" meta mark set meta mark or {mark:#x}
    meta nfproto ipv6 iifname \"{bridge}\" drop
    meta nfproto ipv6 oifname \"{bridge}\" drop
    oifname \"{bridge}\" ip daddr {{ 224.0.0.0/4, 255.255.255.255, {bcast} }} counter name closed drop
    ct state established,related accept
    ip saddr {net} ip saddr != @programmed counter name closed log prefix \"podnet:closed-src:\" group {LOG_GROUP} drop
    ip daddr {net} ip daddr != @programmed counter name closed log prefix \"podnet:closed-dst:\" group {LOG_GROUP} drop
    ip saddr @egress_isolated jump egress
    ip daddr @ingress_isolated jump ingress
    ct state new jump allowed_log
  }}
  chain allowed_log {{
  }}
  chain egress {{
    ip saddr . ip daddr @egress_any_host return
    ip saddr . ip daddr . meta l4proto . th dport @egress_ports_host return
    ip saddr . ip daddr @egress_any return
    ip saddr . ip daddr . meta l4proto . th dport @egress_ports return
    ip saddr @egress_denied log prefix \"podnet:egress:\" group {LOG_GROUP} drop
    log prefix \"podnet:egress:\" group {LOG_GROUP} drop
  }}
  chain ingress {{
    ip daddr . ip saddr @ingress_any_host return
    ip daddr . ip saddr . meta l4proto . th dport @ingress_ports_host return
    ip daddr . ip saddr @ingress_any return
    ip daddr . ip saddr . meta l4proto . th dport @ingress_ports return
    ip daddr @ingress_denied log prefix \"podnet:ingress:\" group {LOG_GROUP} drop
    log prefix \"podnet:ingress:\" group {LOG_GROUP} drop
  }}
}}
"
    ));
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

/// Rules each chain holds as [`render_full`] writes it (`allowed_log` is filled while
/// allowed flows are watched, so it is not counted).
const CHAIN_RULES: [(&str, usize); 3] = [("forward", 10), ("ingress", 6), ("egress", 6)];
/// The sets whose loss would open a pod rather than close it: isolation.
const GUARDING_SETS: [&str; 3] = ["programmed", "ingress_isolated", "egress_isolated"];

/// Reads back, in one `nft` run, what keeps pods isolated: the three chains (their
/// hook and rule count) and the sets of programmed and isolated pods, compared with
/// `want` (the elements the agent last programmed). `Err` says what drifted: a missing
/// table (`nft flush ruleset`, a firewall reload), a flushed chain or set. Any of these
/// opens pods; the caller rewrites the whole table.
pub fn check_intact(want: &BTreeSet<Elem>) -> Result<(), Failure> {
    // The structure without the elements (`-t`), then each guarding set: nft 1.0's
    // `-f` cannot list several sets in one run.
    let structure = list(&["-t", "list", "table", "inet", TABLE])?;
    let blocks = blocks(&structure);
    for (c, n) in CHAIN_RULES {
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
        let have: BTreeSet<Ipv4Addr> = blocks_of_set(&text, set);
        let need: BTreeSet<Ipv4Addr> = want
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
fn blocks_of_set(text: &str, set: &str) -> BTreeSet<Ipv4Addr> {
    blocks(text)
        .get(&format!("set {set}"))
        .map(|ls| {
            ls.iter()
                .filter(|l| !l.starts_with("type ") && !l.starts_with("flags "))
                .flat_map(|l| {
                    l.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                        .filter_map(|w| w.parse::<Ipv4Addr>().ok())
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
                    Some("ingress_denied") => Direction::Ingress,
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
        let s = render_full("10.244.0.0/24".parse().unwrap(), "podnet0", &e);
        assert!(s.starts_with("table inet podnet {}\ndelete table inet podnet\n"));
        assert!(s.contains("set programmed { type ipv4_addr;  elements = { 10.244.0.5 }; }"));
        assert!(s.contains("set ingress_any { type ipv4_addr . ipv4_addr; flags interval; elements = { 10.244.0.5 . 10.0.0.0/8 }; }"));
        assert!(s.contains("elements = { 10.244.0.5 . 192.0.2.1 . 6 . 80-81 }"));
        assert!(s.contains("set ingress_ports_host { type ipv4_addr . ipv4_addr . inet_proto . inet_service;  elements = { 10.244.0.5 . 192.0.2.2 . 17 . 53 }; }"), "{s}");
        assert!(s.contains("ip saddr 10.244.0.0/24 ip saddr != @programmed"));
        assert!(!s.contains("egress_any { type ipv4_addr . ipv4_addr; flags interval; elements"));
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
        let want: BTreeSet<Ipv4Addr> = ["10.244.1.2", "10.244.1.3", "10.244.1.40"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(have, want);
        assert!(blocks_of_set(set, "ingress_isolated").is_empty());
    }
}
