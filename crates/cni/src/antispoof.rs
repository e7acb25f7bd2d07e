//! Anti-spoofing: the kernel objects that stop one pod from stealing another's traffic.
//!
//! # What exists
//! - Per node: the nftables table `netdev podnet` (created on first use, never removed
//!   by a pod's DEL, since other pods' chains live in it).
//! - Per pod: one base chain in that table, named after the pod's host-side veth and
//!   hooked on that veth's **ingress** — i.e. every frame the pod sends, before the
//!   bridge sees it (before MAC learning, before ARP reaches the node). Its comment
//!   records the network, container ID and interface, so GC can find it.
//!
//! # Why netdev ingress
//! The attack in the lesson is a pod sending ARP replies that claim a neighbour's IP.
//! Filtering at the veth's ingress drops such frames before the bridge forwards them
//! or the node's ARP cache learns from them. One chain per pod makes DEL exact (destroy
//! that chain, nothing else) and makes the install one atomic nftables transaction,
//! committed *before* the veth is attached to the bridge: a pod is never reachable
//! without its protection.
//!
//! # The rules (in order; every drop is counted, reason in the comment)
//! | reason | drops |
//! |---|---|
//! | `src-mac` | any frame whose Ethernet source is not the pod's MAC |
//! | `arp-malformed` | ARP that is not Ethernet/IPv4 (offsets below would not apply) |
//! | `arp-sha` | ARP whose sender hardware address is not the pod's MAC |
//! | `arp-spa` | ARP whose sender IP is not the pod's IP |
//! | `ip-src` | IPv4 whose source is not the pod's IP |
//! | `ipv6-ra` | IPv6 router advertisements |
//! | `ethertype` | anything not IPv4, ARP or IPv6 (VLAN tags included) |
//!
//! VLAN-tagged frames carry 0x8100 at the Ethernet type offset (nft rebuilds the tag
//! for link-layer reads), so they fall to `ethertype` and cannot smuggle ARP past the
//! checks. IPv6 other than router advertisements is allowed (pods get only link-local
//! IPv6 addresses from podnet).

use podnet_netlink::nft::{self, Base, Batch, Expr, MetaKey, Op, Verdict, FAMILY_NETDEV};
use podnet_netlink::{Result, Socket};
use std::net::Ipv4Addr;

/// The per-node table holding every pod's chain.
pub const TABLE: &str = "podnet";

/// Stable drop reasons: `(reason, what it drops)`. Comments of the rules start with
/// `podnet drop <reason>:`, which is how counters are read back.
pub const DROP_REASONS: &[(&str, &str)] = &[
    ("src-mac", "Ethernet source is not the pod's MAC"),
    ("arp-malformed", "ARP that is not Ethernet/IPv4"),
    ("arp-sha", "ARP sender MAC is not the pod's"),
    ("arp-spa", "ARP sender IP is not the pod's"),
    ("ip-src", "IPv4 source is not the pod's IP"),
    ("ipv6-ra", "IPv6 router advertisement from a pod"),
    ("ethertype", "not IPv4, ARP or IPv6"),
];

const ETH_ARP: [u8; 2] = [0x08, 0x06];
const ETH_IP: [u8; 2] = [0x08, 0x00];
const ETH_IP6: [u8; 2] = [0x86, 0xdd];

fn ethertype(t: [u8; 2]) -> [Expr; 2] {
    [
        Expr::Payload {
            base: Base::Link,
            offset: 12,
            len: 2,
        },
        Expr::Cmp(Op::Eq, t.to_vec()),
    ]
}

fn comment(reason: &str) -> String {
    let what = DROP_REASONS
        .iter()
        .find(|(r, _)| *r == reason)
        .map(|(_, w)| *w)
        .unwrap_or("");
    format!("podnet drop {reason}: {what}")
}

/// The chain's comment: identifies the attachment for GC and for people.
pub fn chain_comment(network: &str, container_id: &str, ifname: &str) -> String {
    format!("podnet net={network} if={ifname} cid={container_id}")
}

/// Adds the table (if missing) and the pod's chain with all its rules to `b`.
pub fn install(b: &mut Batch, host_veth: &str, mac: [u8; 6], ip: Ipv4Addr, chain_comment: &str) {
    b.add_table(
        FAMILY_NETDEV,
        TABLE,
        "podnet anti-spoofing: one chain per pod, on the ingress of its host-side veth",
    );
    b.add_ingress_chain(TABLE, host_veth, host_veth, -300, chain_comment);
    let drop = |mut e: Vec<Expr>| {
        e.push(Expr::Counter);
        e.push(Expr::Verdict(Verdict::Drop));
        e
    };
    let ip = ip.octets().to_vec();
    let rules: Vec<(Vec<Expr>, String)> = vec![
        (
            drop(vec![
                Expr::Payload {
                    base: Base::Link,
                    offset: 6,
                    len: 6,
                },
                Expr::Cmp(Op::Neq, mac.to_vec()),
            ]),
            comment("src-mac"),
        ),
        (
            drop(
                [
                    ethertype(ETH_ARP).to_vec(),
                    vec![
                        Expr::Payload {
                            base: Base::Network,
                            offset: 0,
                            len: 6,
                        },
                        Expr::Cmp(Op::Neq, vec![0, 1, 8, 0, 6, 4]),
                    ],
                ]
                .concat(),
            ),
            comment("arp-malformed"),
        ),
        (
            drop(
                [
                    ethertype(ETH_ARP).to_vec(),
                    vec![
                        Expr::Payload {
                            base: Base::Network,
                            offset: 8,
                            len: 6,
                        },
                        Expr::Cmp(Op::Neq, mac.to_vec()),
                    ],
                ]
                .concat(),
            ),
            comment("arp-sha"),
        ),
        (
            drop(
                [
                    ethertype(ETH_ARP).to_vec(),
                    vec![
                        Expr::Payload {
                            base: Base::Network,
                            offset: 14,
                            len: 4,
                        },
                        Expr::Cmp(Op::Neq, ip.clone()),
                    ],
                ]
                .concat(),
            ),
            comment("arp-spa"),
        ),
        (
            [
                ethertype(ETH_ARP).to_vec(),
                vec![Expr::Verdict(Verdict::Accept)],
            ]
            .concat(),
            "podnet accept: ARP from the pod's own MAC and IP".into(),
        ),
        (
            drop(
                [
                    ethertype(ETH_IP).to_vec(),
                    vec![
                        Expr::Payload {
                            base: Base::Network,
                            offset: 12,
                            len: 4,
                        },
                        Expr::Cmp(Op::Neq, ip),
                    ],
                ]
                .concat(),
            ),
            comment("ip-src"),
        ),
        (
            [
                ethertype(ETH_IP).to_vec(),
                vec![Expr::Verdict(Verdict::Accept)],
            ]
            .concat(),
            "podnet accept: IPv4 from the pod's own address".into(),
        ),
        (
            drop(
                [
                    ethertype(ETH_IP6).to_vec(),
                    vec![
                        Expr::Meta(MetaKey::L4Proto),
                        Expr::Cmp(Op::Eq, vec![58]),
                        Expr::Payload {
                            base: Base::Transport,
                            offset: 0,
                            len: 1,
                        },
                        Expr::Cmp(Op::Eq, vec![134]),
                    ],
                ]
                .concat(),
            ),
            comment("ipv6-ra"),
        ),
        (
            [
                ethertype(ETH_IP6).to_vec(),
                vec![Expr::Verdict(Verdict::Accept)],
            ]
            .concat(),
            "podnet accept: IPv6 (not router advertisements)".into(),
        ),
        (drop(vec![]), comment("ethertype")),
    ];
    for (exprs, c) in rules {
        b.add_rule(FAMILY_NETDEV, TABLE, host_veth, &exprs, &c);
    }
}

/// Adds the removal of the pod's chain to `b` (absent is fine).
pub fn remove(b: &mut Batch, host_veth: &str) {
    b.destroy_chain(FAMILY_NETDEV, TABLE, host_veth);
}

/// Drop counters of one pod: `(reason, packets)` for every reason, in table order.
pub fn counters(sock: &mut Socket, host_veth: &str) -> Result<Vec<(String, u64)>> {
    let rules = nft::list_rules(sock, FAMILY_NETDEV, TABLE, host_veth)?;
    Ok(rules
        .iter()
        .filter_map(|r| {
            let c = r.comment.as_deref()?;
            let reason = c.strip_prefix("podnet drop ")?.split(':').next()?;
            Some((reason.to_string(), r.packets.unwrap_or(0)))
        })
        .collect())
}

/// True if the pod's chain exists with the full rule set.
pub fn is_installed(sock: &mut Socket, host_veth: &str) -> Result<bool> {
    let chains = nft::list_chains(sock, FAMILY_NETDEV, TABLE)?;
    if !chains.iter().any(|c| c.name == host_veth) {
        return Ok(false);
    }
    Ok(counters(sock, host_veth)?.len() == DROP_REASONS.len())
}
