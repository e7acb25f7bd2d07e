//! The nftables policy datapath.
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
//!   again with a counter per element: the packets refused to each pod.
//! - chain `forward` (hook forward): replies of admitted connections pass through
//!   conntrack (`ct state established,related`); then the closed addresses; then the
//!   source's egress and the destination's ingress. Same-node traffic crosses the
//!   bridge and reaches this hook through `br_netfilter` (`bridge-nf-call-iptables`,
//!   turned on by the agent); bridged IPv6 is dropped, since policy is IPv4 and a
//!   pod's IPv6 link-local address must not become a way around it.
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

use podnet_cni_spec::Ipv4Net;
use podnet_policy::compile::{Allow, PodTables, Table};
use podnet_policy::Direction;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

pub const TABLE: &str = "podnet";

const DIRS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

/// One set element: `(set name, element as nft writes it)`.
type Elem = (String, String);

fn addr(net: &podnet_policy::net::Prefix) -> String {
    if net.len == 32 {
        net.network().to_string()
    } else {
        net.to_string()
    }
}

/// Every set element one pod's tables stand for.
fn pod_elements(t: &PodTables, out: &mut BTreeSet<Elem>) {
    let ip = t.ip;
    out.insert(("programmed".into(), ip.to_string()));
    for dir in DIRS {
        let d = dir.as_str();
        if let Table::Isolated { allow, .. } = t.table(dir) {
            out.insert((format!("{d}_isolated"), ip.to_string()));
            out.insert((format!("{d}_denied"), ip.to_string()));
            for Allow { net, ports } in allow {
                match ports {
                    None => out.insert((format!("{d}_any"), format!("{ip} . {}", addr(net)))),
                    Some(p) => out.insert((
                        format!("{d}_ports"),
                        format!(
                            "{ip} . {} . {} . {}-{}",
                            addr(net),
                            p.proto.number(),
                            p.first,
                            p.last
                        ),
                    )),
                };
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
        let mine: Vec<&str> = elems
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, e)| e.as_str())
            .collect();
        if !mine.is_empty() {
            s.push_str(&format!(" elements = {{ {} }};", mine.join(", ")));
        }
        s.push_str(" }\n");
    }
    let net = cidr.to_string();
    s.push_str(&format!(
        "  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    meta nfproto ipv6 iifname \"{bridge}\" drop
    meta nfproto ipv6 oifname \"{bridge}\" drop
    ct state established,related accept
    ip saddr {net} ip saddr != @programmed counter name closed drop
    ip daddr {net} ip daddr != @programmed counter name closed drop
    ip saddr @egress_isolated jump egress
    ip daddr @ingress_isolated jump ingress
  }}
  chain egress {{
    ip saddr . ip daddr @egress_any return
    ip saddr . ip daddr . meta l4proto . th dport @egress_ports return
    ip saddr @egress_denied drop
    drop
  }}
  chain ingress {{
    ip daddr . ip saddr @ingress_any return
    ip daddr . ip saddr . meta l4proto . th dport @ingress_ports return
    ip daddr @ingress_denied drop
    drop
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
    fn group(it: Vec<&Elem>) -> BTreeMap<&str, Vec<&str>> {
        let mut m: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (set, e) in it {
            m.entry(set.as_str()).or_default().push(e.as_str());
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
pub fn run(script: &str) -> Result<(), String> {
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
        ))
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
pub type DeniedCounts = BTreeMap<(Ipv4Addr, Direction), u64>;

pub fn counters() -> Result<(DeniedCounts, u64), String> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .output()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft list table inet {TABLE}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("nft -j output: {e}"))?;
    let mut per_pod = BTreeMap::new();
    let mut closed = 0;
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(set) = item.get("set") {
            let dir = match set["name"].as_str() {
                Some("ingress_denied") => Direction::Ingress,
                Some("egress_denied") => Direction::Egress,
                _ => continue,
            };
            for e in set["elem"].as_array().into_iter().flatten() {
                let inner = &e["elem"];
                let ip = inner["val"].as_str().and_then(|s| s.parse().ok());
                let packets = inner["counter"]["packets"].as_u64().unwrap_or(0);
                if let Some(ip) = ip {
                    per_pod.insert((ip, dir), packets);
                }
            }
        }
        if let Some(c) = item.get("counter") {
            if c["name"].as_str() == Some("closed") {
                closed = c["packets"].as_u64().unwrap_or(0);
            }
        }
    }
    Ok((per_pod, closed))
}

/// Removes the table (the agent's `--policy-datapath none`, and tests).
pub fn delete() -> Result<(), String> {
    run(&format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_policy::compile::Ports;
    use podnet_policy::net::Prefix;
    use podnet_policy::Proto;

    fn tables() -> BTreeMap<String, PodTables> {
        let allow = BTreeSet::from([
            Allow {
                net: Prefix::new("10.0.0.0".parse().unwrap(), 8),
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
