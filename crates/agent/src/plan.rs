//! The per-peer plan: what should exist for each peer node, diffed against what
//! exists, as a list of operations. Pure — no I/O — so it is tested without root, and
//! every operation prints as the iproute2 command that would do the same.
//!
//! Per peer, with the VXLAN backend (the Flannel model):
//! - route `<peer CIDR> via <peer VTEP addr> dev <vxlan> onlink proto 0x50`
//! - neighbour `<peer VTEP addr> lladdr <peer VTEP MAC> dev <vxlan> nud permanent`
//! - FDB `<peer VTEP MAC> dev <vxlan> dst <peer underlay IP> self permanent`
//!
//! where the peer's VTEP address is the network address of its pod CIDR. A
//! dual-stack peer (an IPv6 pod CIDR in its record) adds, through the same device and
//! FDB entry:
//! - route `<peer CIDR6> via <peer VTEP addr6> dev <vxlan> onlink proto 0x50`
//! - neighbour `<peer VTEP addr6> lladdr <peer VTEP MAC> dev <vxlan> nud permanent`
//!
//! (the VTEP address6 being the network address of its IPv6 pod CIDR: Linux routes
//! IPv6 only through an IPv6 next hop, so IPv6 needs a neighbour entry of its own).
//! With the
//! host-gw backend, only a route `<peer CIDR> via <peer underlay IP> dev <underlay>`
//! (and `<peer CIDR6> via <peer underlay IPv6> dev <underlay>`: not onlink, so the
//! kernel refuses a next hop that is not on the link, as for IPv4).
//! With the WireGuard backend, only a route `<peer CIDR> via <peer VTEP addr> dev
//! podnet.wg onlink` (the device is point-to-point: the next hop is never resolved,
//! WireGuard picks the peer by the inner destination; the WireGuard peers themselves
//! are [`crate::wireguard`]'s).
//!
//! podnet's routes carry protocol 0x50, so a route podnet did not make is never
//! touched; neighbour and FDB entries are only managed on podnet's VXLAN device.

use podnet_cni_spec::net::{Ipv4Net, Ipv6Net};
use podnet_netlink::neigh::{FdbInfo, NeighInfo};
use podnet_netlink::route::RouteInfo;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Route protocol number marking podnet's routes.
pub use podnet_conventions::RTPROT_PODNET;
const NUD_PERMANENT: u16 = 0x80;

/// A peer node, as the datastore describes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub name: String,
    pub cidr: Ipv4Net,
    /// A dual-stack peer's IPv6 pod CIDR.
    pub cidr6: Option<Ipv6Net>,
    pub underlay: Ipv4Addr,
    /// A dual-stack peer's global IPv6 address on the underlay (host-gw routes its
    /// IPv6 pods there).
    pub underlay6: Option<Ipv6Addr>,
    /// Where its overlay tunnel ends: `underlay`, or `underlay6` with an IPv6
    /// underlay (`--underlay-family ipv6`; [`crate::peers::check_peer6`] makes sure
    /// it has one).
    pub endpoint: IpAddr,
    pub vtep_mac: [u8; 6],
    /// With the WireGuard backend: its public key and port.
    pub wireguard: Option<([u8; 32], u16)>,
}

impl Peer {
    /// The address of the peer's VTEP: its CIDR's network address.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.cidr.network()
    }
}

/// How this node reaches its peers: the backend with the device it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Through the VXLAN device with this index.
    Vxlan { dev: u32 },
    /// Directly through the underlay link with this index.
    HostGw { dev: u32 },
    /// Through the WireGuard device with this index.
    WireGuard { dev: u32 },
}

/// The kernel state the plan compares with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    /// Routes with protocol [`RTPROT_PODNET`].
    pub routes: Vec<RouteInfo>,
    /// Permanent neighbour entries on the VXLAN device.
    pub neighs: Vec<NeighInfo>,
    /// FDB entries with a destination on the VXLAN device.
    pub fdb: Vec<FdbInfo>,
    /// IPv6 routes with protocol [`RTPROT_PODNET`].
    pub routes6: Vec<Route6>,
    /// Permanent IPv6 neighbour entries on the VXLAN device.
    pub neighs6: Vec<Neigh6>,
}

/// An IPv6 route podnet keeps: `dst via via dev dev [onlink]`. `via`/`dev` `None`: a
/// route of podnet's read back without them (only ever deleted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route6 {
    pub dst: Ipv6Net,
    pub via: Option<Ipv6Addr>,
    pub dev: Option<u32>,
    /// VXLAN's next hop is a VTEP address no link holds: onlink. host-gw's is the
    /// peer's address on the shared link: resolved as any neighbour.
    pub onlink: bool,
}

/// A permanent IPv6 neighbour entry on the VXLAN device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neigh6 {
    pub ip: Ipv6Addr,
    pub mac: Option<[u8; 6]>,
    pub dev: u32,
}

/// One change to the kernel.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    AddRoute {
        dst: Ipv4Net,
        via: Ipv4Addr,
        dev: u32,
        onlink: bool,
    },
    DelRoute {
        dst: Ipv4Net,
        via: Option<Ipv4Addr>,
        dev: Option<u32>,
        /// The route's scope as the kernel reported it: part of what a delete matches.
        scope: u8,
    },
    AddNeigh {
        ip: Ipv4Addr,
        mac: [u8; 6],
        dev: u32,
    },
    DelNeigh {
        ip: Ipv4Addr,
        dev: u32,
    },
    AddFdb {
        mac: [u8; 6],
        dst: IpAddr,
        dev: u32,
    },
    DelFdb {
        mac: [u8; 6],
        dst: Option<IpAddr>,
        dev: u32,
    },
    /// Through `via` on the link (VXLAN), or straight to the device (WireGuard's
    /// layer-3 TUN, `via` none).
    AddRoute6 {
        dst: Ipv6Net,
        via: Option<Ipv6Addr>,
        dev: u32,
        onlink: bool,
    },
    DelRoute6 {
        dst: Ipv6Net,
        via: Option<Ipv6Addr>,
        dev: Option<u32>,
        onlink: bool,
    },
    AddNeigh6 {
        ip: Ipv6Addr,
        mac: [u8; 6],
        dev: u32,
    },
    DelNeigh6 {
        ip: Ipv6Addr,
        dev: u32,
    },
}

impl fmt::Display for Op {
    /// The iproute2 command that does the same (devices by index: `dev #7`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&|d| format!("#{d}")))
    }
}

impl Op {
    /// What kind of kernel object it changes: `route`, `neigh` or `fdb`.
    pub fn object(&self) -> &'static str {
        match self {
            Op::AddRoute { .. }
            | Op::DelRoute { .. }
            | Op::AddRoute6 { .. }
            | Op::DelRoute6 { .. } => "route",
            Op::AddNeigh { .. }
            | Op::DelNeigh { .. }
            | Op::AddNeigh6 { .. }
            | Op::DelNeigh6 { .. } => "neigh",
            Op::AddFdb { .. } | Op::DelFdb { .. } => "fdb",
        }
    }

    /// True for a delete: one that finds nothing to delete has nothing left to do.
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Op::DelRoute { .. }
                | Op::DelNeigh { .. }
                | Op::DelFdb { .. }
                | Op::DelRoute6 { .. }
                | Op::DelNeigh6 { .. }
        )
    }

    /// The iproute2 command that does the same, each device written by `name`
    /// (the agent logs names; [`Display`](fmt::Display) writes `#index`).
    pub fn render(&self, name: &dyn Fn(u32) -> String) -> String {
        let mac = |m: &[u8; 6]| podnet_netlink::fmt_mac(m);
        match self {
            Op::AddRoute {
                dst,
                via,
                dev,
                onlink,
            } => format!(
                "ip route add {dst} via {via} dev {}{} proto 0x50",
                name(*dev),
                if *onlink { " onlink" } else { "" }
            ),
            Op::DelRoute { dst, via, dev, .. } => {
                let mut s = format!("ip route del {dst}");
                if let Some(v) = via {
                    s += &format!(" via {v}");
                }
                if let Some(d) = dev {
                    s += &format!(" dev {}", name(*d));
                }
                s
            }
            Op::AddNeigh { ip, mac: m, dev } => format!(
                "ip neigh replace {ip} lladdr {} dev {} nud permanent",
                mac(m),
                name(*dev)
            ),
            Op::DelNeigh { ip, dev } => format!("ip neigh del {ip} dev {}", name(*dev)),
            Op::AddFdb { mac: m, dst, dev } => format!(
                "bridge fdb replace {} dev {} dst {dst} self permanent",
                mac(m),
                name(*dev)
            ),
            Op::DelFdb { mac: m, dst, dev } => {
                let mut s = format!("bridge fdb del {} dev {}", mac(m), name(*dev));
                if let Some(d) = dst {
                    s += &format!(" dst {d}");
                }
                s + " self"
            }
            Op::AddRoute6 {
                dst,
                via,
                dev,
                onlink,
            } => match via {
                Some(via) => format!(
                    "ip -6 route add {dst} via {via} dev {}{} proto 0x50",
                    name(*dev),
                    if *onlink { " onlink" } else { "" }
                ),
                None => format!("ip -6 route add {dst} dev {} proto 0x50", name(*dev)),
            },
            Op::DelRoute6 { dst, via, dev, .. } => {
                let mut s = format!("ip -6 route del {dst}");
                if let Some(v) = via {
                    s += &format!(" via {v}");
                }
                if let Some(d) = dev {
                    s += &format!(" dev {}", name(*d));
                }
                s
            }
            Op::AddNeigh6 { ip, mac: m, dev } => format!(
                "ip -6 neigh replace {ip} lladdr {} dev {} nud permanent",
                mac(m),
                name(*dev)
            ),
            Op::DelNeigh6 { ip, dev } => format!("ip -6 neigh del {ip} dev {}", name(*dev)),
        }
    }
}

/// What should exist for `peers`, as the `Current` it would read back.
pub fn desired(backend: Via, peers: &[Peer]) -> Current {
    let mut c = Current::default();
    for p in peers {
        match backend {
            Via::Vxlan { dev } => {
                c.routes.push(route(p.cidr, Some(p.vtep_ip()), dev, true));
                c.neighs.push(NeighInfo {
                    index: dev,
                    ip: p.vtep_ip(),
                    mac: Some(p.vtep_mac),
                    state: NUD_PERMANENT,
                });
                c.fdb.push(FdbInfo {
                    index: dev,
                    mac: p.vtep_mac,
                    dst: Some(p.endpoint),
                    state: NUD_PERMANENT,
                });
                if let Some(c6) = p.cidr6 {
                    c.routes6.push(Route6 {
                        dst: c6,
                        via: Some(c6.network()),
                        dev: Some(dev),
                        onlink: true,
                    });
                    c.neighs6.push(Neigh6 {
                        ip: c6.network(),
                        mac: Some(p.vtep_mac),
                        dev,
                    });
                }
            }
            Via::HostGw { dev } => {
                c.routes.push(route(p.cidr, Some(p.underlay), dev, false));
                // IPv6 needs an IPv6 next hop: the peer's underlay IPv6 address
                // (check_peer6 refuses a dual-stack host-gw peer without one).
                if let (Some(c6), Some(u6)) = (p.cidr6, p.underlay6) {
                    c.routes6.push(Route6 {
                        dst: c6,
                        via: Some(u6),
                        dev: Some(dev),
                        onlink: false,
                    });
                }
            }
            Via::WireGuard { dev } => {
                c.routes.push(route(p.cidr, Some(p.vtep_ip()), dev, true));
                // IPv6 straight to the device: WireGuard picks the peer by its
                // allowed IPs, no next hop (an IPv4 one cannot serve an IPv6 route).
                if let Some(c6) = p.cidr6 {
                    c.routes6.push(Route6 {
                        dst: c6,
                        via: None,
                        dev: Some(dev),
                        onlink: false,
                    });
                }
            }
        }
    }
    c
}

fn route(dst: Ipv4Net, via: Option<Ipv4Addr>, dev: u32, onlink: bool) -> RouteInfo {
    RouteInfo {
        dst: dst.network(),
        prefix: dst.prefix(),
        gateway: via,
        oif: Some(dev),
        table: 254,
        protocol: RTPROT_PODNET,
        scope: 0,
        kind: 1,
        onlink,
        prefsrc: None,
    }
}

/// What the kernel holds after `plan(want, cur)` ran and the operations in `failed`
/// did not take: `want`, less what failed to be added, plus what failed to be
/// deleted. Without repair this is the next round's base, so exactly the failed
/// operations are tried again (and nothing that took is sent twice).
pub fn after(want: &Current, cur: &Current, failed: &[Op]) -> Current {
    let mut c = want.clone();
    for op in failed {
        match *op {
            Op::AddRoute { dst, via, dev, .. } => c.routes.retain(|r| {
                !(net_of(r) == Some(dst) && r.gateway == Some(via) && r.oif == Some(dev))
            }),
            Op::DelRoute { dst, via, dev, .. } => c.routes.extend(
                cur.routes
                    .iter()
                    .filter(|r| net_of(r) == Some(dst) && r.gateway == via && r.oif == dev)
                    .cloned(),
            ),
            Op::AddNeigh { ip, dev, .. } => c.neighs.retain(|n| !(n.index == dev && n.ip == ip)),
            Op::DelNeigh { ip, dev } => c.neighs.extend(
                cur.neighs
                    .iter()
                    .filter(|n| n.index == dev && n.ip == ip)
                    .cloned(),
            ),
            Op::AddFdb { mac, dst, dev } => c
                .fdb
                .retain(|f| !(f.index == dev && f.mac == mac && f.dst == Some(dst))),
            Op::DelFdb { mac, dst, dev } => c.fdb.extend(
                cur.fdb
                    .iter()
                    .filter(|f| f.index == dev && f.mac == mac && f.dst == dst)
                    .cloned(),
            ),
            Op::AddRoute6 {
                dst,
                via,
                dev,
                onlink,
            } => c.routes6.retain(|r| {
                *r != Route6 {
                    dst,
                    via,
                    dev: Some(dev),
                    onlink,
                }
            }),
            Op::DelRoute6 {
                dst,
                via,
                dev,
                onlink,
            } => c.routes6.extend(
                cur.routes6
                    .iter()
                    .filter(|r| {
                        **r == Route6 {
                            dst,
                            via,
                            dev,
                            onlink,
                        }
                    })
                    .copied(),
            ),
            Op::AddNeigh6 { ip, dev, .. } => c.neighs6.retain(|n| !(n.dev == dev && n.ip == ip)),
            Op::DelNeigh6 { ip, dev } => c.neighs6.extend(
                cur.neighs6
                    .iter()
                    .filter(|n| n.dev == dev && n.ip == ip)
                    .copied(),
            ),
        }
    }
    c
}

fn net_of(r: &RouteInfo) -> Option<Ipv4Net> {
    Ipv4Net::new(r.dst, r.prefix)
}

/// The operations that turn `cur` into `want`. Deletions come first, so a route that
/// moves (same destination, new gateway) is replaced cleanly.
pub fn plan(want: &Current, cur: &Current) -> Vec<Op> {
    let mut dels = BTreeSet::new();
    let mut adds = BTreeSet::new();
    let same_route = |a: &RouteInfo, b: &RouteInfo| {
        a.dst == b.dst
            && a.prefix == b.prefix
            && a.gateway == b.gateway
            && a.oif == b.oif
            && a.onlink == b.onlink
    };
    for c in &cur.routes {
        if !want.routes.iter().any(|w| same_route(w, c)) {
            if let Some(dst) = net_of(c) {
                dels.insert(Op::DelRoute {
                    dst,
                    via: c.gateway,
                    dev: c.oif,
                    scope: c.scope,
                });
            }
        }
    }
    for w in &want.routes {
        if !cur.routes.iter().any(|c| same_route(w, c)) {
            if let (Some(dst), Some(via), Some(dev)) = (net_of(w), w.gateway, w.oif) {
                adds.insert(Op::AddRoute {
                    dst,
                    via,
                    dev,
                    onlink: w.onlink,
                });
            }
        }
    }
    for c in &cur.neighs {
        if !want
            .neighs
            .iter()
            .any(|w| w.index == c.index && w.ip == c.ip)
        {
            dels.insert(Op::DelNeigh {
                ip: c.ip,
                dev: c.index,
            });
        }
    }
    for w in &want.neighs {
        if !cur.neighs.iter().any(|c| {
            c.index == w.index && c.ip == w.ip && c.mac == w.mac && c.state == NUD_PERMANENT
        }) {
            if let Some(mac) = w.mac {
                adds.insert(Op::AddNeigh {
                    ip: w.ip,
                    mac,
                    dev: w.index,
                });
            }
        }
    }
    for c in &cur.fdb {
        if !want
            .fdb
            .iter()
            .any(|w| w.index == c.index && w.mac == c.mac && w.dst == c.dst)
        {
            dels.insert(Op::DelFdb {
                mac: c.mac,
                dst: c.dst,
                dev: c.index,
            });
        }
    }
    for w in &want.fdb {
        if !cur
            .fdb
            .iter()
            .any(|c| c.index == w.index && c.mac == w.mac && c.dst == w.dst)
        {
            if let Some(dst) = w.dst {
                adds.insert(Op::AddFdb {
                    mac: w.mac,
                    dst,
                    dev: w.index,
                });
            }
        }
    }
    for c in cur.routes6.iter().filter(|c| !want.routes6.contains(c)) {
        dels.insert(Op::DelRoute6 {
            dst: c.dst,
            via: c.via,
            dev: c.dev,
            onlink: c.onlink,
        });
    }
    for w in want.routes6.iter().filter(|w| !cur.routes6.contains(w)) {
        if let Some(dev) = w.dev {
            adds.insert(Op::AddRoute6 {
                dst: w.dst,
                via: w.via,
                dev,
                onlink: w.onlink,
            });
        }
    }
    for c in &cur.neighs6 {
        if !want.neighs6.iter().any(|w| w.dev == c.dev && w.ip == c.ip) {
            dels.insert(Op::DelNeigh6 {
                ip: c.ip,
                dev: c.dev,
            });
        }
    }
    for w in want.neighs6.iter().filter(|w| !cur.neighs6.contains(w)) {
        if let Some(mac) = w.mac {
            adds.insert(Op::AddNeigh6 {
                ip: w.ip,
                mac,
                dev: w.dev,
            });
        }
    }
    dels.into_iter().chain(adds).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> Peer {
        Peer {
            name: format!("node{n}"),
            cidr: format!("10.244.{n}.0/24").parse().unwrap(),
            cidr6: None,
            underlay: Ipv4Addr::new(192, 168, 1, 10 + n),
            underlay6: None,
            endpoint: Ipv4Addr::new(192, 168, 1, 10 + n).into(),
            vtep_mac: [0x0a, 0x59, 192, 168, 1, 10 + n],
            wireguard: None,
        }
    }

    const VX: Via = Via::Vxlan { dev: 7 };

    /// Over an IPv6 underlay the FDB entry sends a peer's VTEP MAC to its IPv6
    /// tunnel end, and reads back as made (no operation the next round).
    #[test]
    fn the_fdb_entry_names_the_peers_tunnel_end() {
        let mut p = peer(1);
        p.endpoint = "fd00:192:168:1::b".parse::<Ipv6Addr>().unwrap().into();
        let want = desired(VX, std::slice::from_ref(&p));
        assert_eq!(want.fdb[0].dst, Some(p.endpoint));
        let ops = plan(&want, &Current::default());
        assert!(
            ops.iter().any(|o| o.to_string().contains(
                "bridge fdb replace 0a:59:c0:a8:01:0b dev #7 dst fd00:192:168:1::b self permanent"
            )),
            "{ops:?}"
        );
        assert!(plan(&want, &want).is_empty());
        // The peer moved to another tunnel end: the entry is replaced.
        let mut moved = p.clone();
        moved.endpoint = "fd00:192:168:1::c".parse::<Ipv6Addr>().unwrap().into();
        let ops = plan(&desired(VX, &[moved]), &want);
        assert!(
            ops.iter().any(
                |o| matches!(o, Op::AddFdb { dst, .. } if dst.to_string() == "fd00:192:168:1::c")
            ),
            "{ops:?}"
        );
    }

    #[test]
    fn one_route_neigh_and_fdb_per_peer() {
        let want = desired(VX, &[peer(1), peer(2)]);
        let ops = plan(&want, &Current::default());
        assert_eq!(ops.len(), 6);
        let text: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
        assert!(
            text.contains(
                &"ip route add 10.244.1.0/24 via 10.244.1.0 dev #7 onlink proto 0x50".to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(
                &"ip neigh replace 10.244.2.0 lladdr 0a:59:c0:a8:01:0c dev #7 nud permanent"
                    .to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(
                &"bridge fdb replace 0a:59:c0:a8:01:0b dev #7 dst 192.168.1.11 self permanent"
                    .to_string()
            ),
            "{text:?}"
        );
    }

    /// Over WireGuard a dual-stack peer's IPv6 range is routed straight to the device
    /// (no next hop, no neighbour): WireGuard picks the peer by its allowed IPs.
    #[test]
    fn a_dual_stack_wireguard_peer_gets_a_device_route() {
        let wg = Via::WireGuard { dev: 9 };
        let dual = Peer {
            cidr6: Some("fd00:10:244:1::/64".parse().unwrap()),
            ..peer(1)
        };
        let want = desired(wg, &[dual]);
        assert!(want.neighs6.is_empty());
        let ops = plan(&want, &Current::default());
        let text: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
        assert!(
            text.contains(&"ip -6 route add fd00:10:244:1::/64 dev #9 proto 0x50".to_string()),
            "{text:?}"
        );
        assert!(plan(&want, &want.clone()).is_empty());
        assert!(
            plan(&desired(wg, &[peer(1)]), &want).contains(&Op::DelRoute6 {
                dst: "fd00:10:244:1::/64".parse().unwrap(),
                via: None,
                dev: Some(9),
                onlink: false,
            })
        );
    }

    /// A dual-stack peer adds an IPv6 route and neighbour through the same device and
    /// FDB entry; its departure, or a new MAC, is planned like IPv4's.
    #[test]
    fn a_dual_stack_peer_gets_an_ipv6_route_and_neighbour_too() {
        let dual = |n: u8| Peer {
            cidr6: Some(format!("fd00:10:244:{n}::/64").parse().unwrap()),
            ..peer(n)
        };
        let want = desired(VX, &[dual(1), peer(2)]);
        let ops = plan(&want, &Current::default());
        assert_eq!(ops.len(), 8, "{ops:?}");
        let text: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
        for line in [
            "ip -6 route add fd00:10:244:1::/64 via fd00:10:244:1:: dev #7 onlink proto 0x50",
            "ip -6 neigh replace fd00:10:244:1:: lladdr 0a:59:c0:a8:01:0b dev #7 nud permanent",
        ] {
            assert!(text.contains(&line.to_string()), "{text:?}");
        }
        assert!(plan(&want, &want.clone()).is_empty());
        // Gone: both deleted. Drift (a route moved by hand): replaced.
        let ops = plan(&desired(VX, &[peer(2)]), &want);
        assert!(ops.contains(&Op::DelRoute6 {
            dst: "fd00:10:244:1::/64".parse().unwrap(),
            via: Some("fd00:10:244:1::".parse().unwrap()),
            dev: Some(7),
            onlink: true,
        }));
        assert!(ops.contains(&Op::DelNeigh6 {
            ip: "fd00:10:244:1::".parse().unwrap(),
            dev: 7
        }));
        let mut moved = want.clone();
        moved.routes6[0].via = Some("fd00::99".parse().unwrap());
        assert_eq!(plan(&want, &moved).len(), 2);
        // Without repair, a failed IPv6 add is all the next round sends.
        let failed: Vec<Op> = ops_of(&want)
            .into_iter()
            .filter(|o| matches!(o, Op::AddNeigh6 { .. }))
            .collect();
        assert_eq!(
            plan(&want, &after(&want, &Current::default(), &failed)),
            failed
        );
        // A route that lost its onlink flag (put back by hand without it) is drift.
        let mut plain = want.clone();
        plain.routes6[0].onlink = false;
        assert_eq!(plan(&want, &plain).len(), 2);
    }

    /// host-gw routes a dual-stack peer's IPv6 pods to its underlay IPv6 address on
    /// the underlay link, not onlink (a next hop off the link is refused by the
    /// kernel, as for IPv4); without that address there is no IPv6 route.
    #[test]
    fn host_gw_routes_ipv6_via_the_peers_underlay_ipv6_address() {
        let hg = Via::HostGw { dev: 2 };
        let dual = Peer {
            cidr6: Some("fd00:10:244:3::/64".parse().unwrap()),
            underlay6: Some("fd00:192:168:1::c".parse().unwrap()),
            ..peer(3)
        };
        let want = desired(hg, std::slice::from_ref(&dual));
        assert!(want.neighs6.is_empty() && want.neighs.is_empty());
        let text: Vec<String> = plan(&want, &Current::default())
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(
            text,
            [
                "ip route add 10.244.3.0/24 via 192.168.1.13 dev #2 proto 0x50",
                "ip -6 route add fd00:10:244:3::/64 via fd00:192:168:1::c dev #2 proto 0x50"
            ]
        );
        assert!(plan(&want, &want.clone()).is_empty());
        let no_underlay6 = Peer {
            underlay6: None,
            ..dual
        };
        assert!(desired(hg, &[no_underlay6]).routes6.is_empty());
    }

    fn ops_of(want: &Current) -> Vec<Op> {
        plan(want, &Current::default())
    }

    #[test]
    fn converged_state_needs_nothing() {
        let want = desired(VX, &[peer(1), peer(2)]);
        assert!(plan(&want, &want.clone()).is_empty());
    }

    #[test]
    fn departed_peer_is_removed_and_drift_repaired() {
        let cur = desired(VX, &[peer(1), peer(2)]);
        let mut want = desired(VX, &[peer(1)]);
        let ops = plan(&want, &cur);
        assert_eq!(ops.len(), 3);
        assert!(ops.iter().all(|o| matches!(
            o,
            Op::DelRoute { .. } | Op::DelNeigh { .. } | Op::DelFdb { .. }
        )));
        // A changed VTEP MAC (the peer rebooted with a new device) replaces neigh and fdb.
        let mut p = peer(1);
        p.vtep_mac[5] = 0x99;
        want = desired(VX, &[p]);
        let ops = plan(&want, &desired(VX, &[peer(1)]));
        assert!(ops.iter().any(|o| matches!(o, Op::DelFdb { .. })));
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::AddFdb { mac, .. } if mac[5] == 0x99)));
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::AddNeigh { mac, .. } if mac[5] == 0x99)));
    }

    #[test]
    fn without_repair_only_failed_operations_are_tried_again() {
        // Round 1: peer 1 is gone, peer 3 arrives; the route add for peer 3 and the
        // FDB delete for peer 1 fail, everything else takes.
        let cur = desired(VX, &[peer(1), peer(2)]);
        let want = desired(VX, &[peer(2), peer(3)]);
        let ops = plan(&want, &cur);
        let failed: Vec<Op> = ops
            .iter()
            .filter(|o| {
                matches!(o, Op::AddRoute { dst, .. } if *dst == peer(3).cidr)
                    || matches!(o, Op::DelFdb { mac, .. } if *mac == peer(1).vtep_mac)
            })
            .cloned()
            .collect();
        assert_eq!(failed.len(), 2, "{ops:?}");
        let base = after(&want, &cur, &failed);
        // Round 2 from that base: exactly the two failed operations, nothing else.
        let mut again = plan(&want, &base);
        again.sort();
        let mut failed = failed;
        failed.sort();
        assert_eq!(again, failed);
        // When nothing failed the base is what was wanted.
        assert_eq!(after(&want, &cur, &[]), want);
    }

    #[test]
    fn host_gw_routes_via_underlay() {
        let want = desired(Via::HostGw { dev: 2 }, &[peer(3)]);
        let ops = plan(&want, &Current::default());
        assert_eq!(ops.len(), 1);
        assert_eq!(
            ops[0].to_string(),
            "ip route add 10.244.3.0/24 via 192.168.1.13 dev #2 proto 0x50"
        );
    }

    #[test]
    fn wireguard_needs_one_route_per_peer_through_its_device() {
        let want = desired(Via::WireGuard { dev: 9 }, &[peer(1), peer(2)]);
        assert!(want.neighs.is_empty() && want.fdb.is_empty());
        let ops = plan(&want, &Current::default());
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[0].to_string(),
            "ip route add 10.244.1.0/24 via 10.244.1.0 dev #9 onlink proto 0x50"
        );
    }
}
