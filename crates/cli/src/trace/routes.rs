//! Routes and links as trace reads them: the route a node takes to a pod, whether it
//! is podnet's, the WireGuard peer for a node, and how each is printed.

use super::*;

/// The most specific route in `routes` that covers `ip` (routes of `ip`'s family).
pub(super) fn lookup(routes: &[RouteState], ip: IpAddr) -> Option<&RouteState> {
    routes
        .iter()
        .filter_map(|r| {
            let covers = |dst: &str| -> Option<u8> {
                match ip {
                    IpAddr::V4(a) => {
                        let net: Ipv4Net = dst.parse().ok()?;
                        net.contains(a).then_some(net.prefix())
                    }
                    IpAddr::V6(a) => {
                        let net: Ipv6Net = dst.parse().ok()?;
                        net.contains(a).then_some(net.prefix())
                    }
                }
            };
            let prefix = match (r.dst.as_str(), ip) {
                ("default", _) => 0,
                (dst, _) => covers(dst)?,
            };
            Some((prefix, r))
        })
        .max_by_key(|(p, _)| *p)
        .map(|(_, r)| r)
}

pub(super) fn is_podnets(r: &RouteState) -> bool {
    r.protocol == podnet_conventions::RTPROT_PODNET
}

/// The peer's pod CIDR of one family (`v6`: its IPv6 one).
pub(crate) fn peer_cidr(peer: &PeerStatus, v6: bool) -> &str {
    if v6 {
        &peer.pod_cidr6
    } else {
        &peer.pod_cidr
    }
}

/// Why `r` (the route the lookup chose) is not the route podnet makes on a node
/// with agent status `st` to `peer` for one family (`v6`): prefix, protocol, next
/// hop and device (VXLAN: via the peer CIDR's first address on the VXLAN device,
/// onlink; host-gw: via the peer's underlay address of that family on the underlay
/// device;
/// WireGuard over IPv6: straight to the device). `None` when it is that route.
pub(crate) fn route_to_peer_mismatch(
    r: Option<&RouteState>,
    st: &Status,
    peer: Option<&PeerStatus>,
    v6: bool,
) -> Option<String> {
    let Some(peer) = peer else {
        return Some("the agent knows no such peer".into());
    };
    let Some(r) = r else {
        return Some("no route covers it".into());
    };
    let cidr = peer_cidr(peer, v6);
    if cidr.is_empty() {
        return Some(format!(
            "the agent knows no IPv6 pod CIDR of {}: it is not dual-stack",
            peer.name
        ));
    }
    if r.dst != cidr {
        return Some(format!("the lookup gives {}", route_text(r)));
    }
    if !is_podnets(r) {
        return Some(format!(
            "the route {} was not made by podnet (protocol is not 0x50)",
            route_text(r)
        ));
    }
    let (gw, dev, onlink) = podnet_route(st, peer, v6);
    let rgw = r.gateway.map(|g| g.to_string()).unwrap_or_default();
    if rgw != gw || r.dev.as_deref().unwrap_or("") != dev || r.onlink != onlink {
        return Some(format!(
            "the route {} should go {}",
            route_text(r),
            via_text(&gw, &dev, onlink)
        ));
    }
    None
}

/// `via GW dev DEV [onlink]`, or `dev DEV` without a next hop.
fn via_text(gw: &str, dev: &str, onlink: bool) -> String {
    let via = if gw.is_empty() {
        String::new()
    } else {
        format!("via {gw} ")
    };
    format!("{via}dev {dev}{}", if onlink { " onlink" } else { "" })
}

/// Next hop (empty: none), device and onlink of the route podnet makes to `peer` on
/// a node with agent status `st`, for one family (`v6`).
pub(super) fn podnet_route(st: &Status, peer: &PeerStatus, v6: bool) -> (String, String, bool) {
    let first = || {
        let cidr = peer_cidr(peer, v6);
        let net = if v6 {
            cidr.parse::<Ipv6Net>().map(|n| n.network().to_string())
        } else {
            cidr.parse::<Ipv4Net>().map(|n| n.network().to_string())
        };
        net.unwrap_or_default()
    };
    match (&st.wireguard, st.vxlan_dev.is_empty()) {
        // WireGuard picks the peer by its allowed IPs: IPv6 goes straight to the device.
        (Some(w), _) if v6 => (String::new(), w.device.clone(), false),
        (Some(w), _) => (first(), w.device.clone(), true),
        (None, false) => (first(), st.vxlan_dev.clone(), true),
        // host-gw: via the peer's underlay address of that family, on the link.
        (None, true) if v6 => (peer.underlay_ip6.clone(), st.underlay_dev.clone(), false),
        (None, true) => (peer.underlay_ip.clone(), st.underlay_dev.clone(), false),
    }
}

/// How long ago Unix time `t` was, for people ("never" for 0).
pub(crate) fn age(t: u64) -> String {
    if t == 0 {
        return "never".into();
    }
    let s = podnet_conventions::now().saturating_sub(t);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// What is wrong with the WireGuard peer `node` (agent status `st`) has for `peer`:
/// the device must hold a peer for the peer's pod CIDR, with the public key the
/// datastore publishes for it, which must be the key the peer's own device holds
/// (`peer_st`, when known), at the peer's underlay address and port. `Ok` gives the
/// peer as configured, for the detail.
pub(crate) fn wireguard_peer_mismatch<'a>(
    st: &'a Status,
    peer: &PeerStatus,
    peer_st: Option<&Status>,
) -> std::result::Result<&'a podnet_api::WireGuardPeerStatus, String> {
    let Some(w) = &st.wireguard else {
        return Err("the node does not run the wireguard backend".into());
    };
    if let Some(e) = &w.error {
        return Err(format!("its device does not answer: {e}"));
    }
    let Some(c) = w
        .peers
        .iter()
        .find(|c| c.allowed_ips.contains(&peer.pod_cidr))
    else {
        return Err(format!(
            "{} holds no peer for {}'s pod CIDR {}",
            w.device, peer.name, peer.pod_cidr
        ));
    };
    if c.public_key != peer.wireguard_public_key {
        return Err(format!(
            "{} holds key {} for {}, but the datastore publishes {}",
            w.device, c.public_key, peer.name, peer.wireguard_public_key
        ));
    }
    if let Some(real) = peer_st
        .and_then(|p| p.wireguard.as_ref())
        .map(|p| &p.device_public_key)
        .filter(|k| !k.is_empty())
    {
        if *real != c.public_key {
            return Err(format!(
                "{} holds key {} for {} (as the datastore publishes), but {}'s own device has key {real}: handshakes fail",
                w.device, c.public_key, peer.name, peer.name
            ));
        }
    }
    let want = match peer.tunnel().parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, peer.wireguard_port).to_string(),
        Err(_) => format!("{}:{}", peer.tunnel(), peer.wireguard_port),
    };
    if c.endpoint != want {
        return Err(format!(
            "{} sends {}'s packets to {}, not to {want}",
            w.device, peer.name, c.endpoint
        ));
    }
    Ok(c)
}

/// The WireGuard peer a node holds for `peer`, as a hop (with the latest handshake's
/// age in its detail). `v6`: the peer must also allow the peer's IPv6 pod CIDR (the
/// device drops what no peer's allowed IPs cover).
pub(super) fn wireguard_peer_hop(
    b: &mut Builder,
    where_: &str,
    node: &str,
    (st, peer): (&Status, Option<&PeerStatus>),
    peer_st: Option<&Status>,
    v6: bool,
) {
    let dev = st
        .wireguard
        .as_ref()
        .map(|w| w.device.clone())
        .unwrap_or_default();
    let Some(p) = peer else {
        b.add(
            where_,
            "wireguard-peer",
            "broken",
            "the other node is not among this node's peers".into(),
            "(none)".into(),
            "podnet lab status".into(),
            "is its agent registered? check the datastore",
        );
        return;
    };
    let r = wireguard_peer_mismatch(st, p, peer_st).and_then(|c| {
        if v6 && !c.allowed_ips.contains(&p.pod_cidr6) {
            return Err(format!(
                "{dev}'s peer for {} allows {}, not its IPv6 pod CIDR {}: the device drops IPv6 for {}'s pods",
                p.name,
                c.allowed_ips.join(","),
                p.pod_cidr6,
                p.name
            ));
        }
        Ok(c)
    });
    let kernel = st
        .wireguard
        .as_ref()
        .and_then(|w| w.peers.iter().find(|c| c.allowed_ips.contains(&p.pod_cidr)))
        .map(|c| {
            format!(
                "peer {} endpoint {} allowed ips {} latest handshake {}",
                c.public_key,
                c.endpoint,
                c.allowed_ips.join(","),
                age(c.last_handshake)
            )
        })
        .unwrap_or_else(|| "(none)".into());
    let fix = match &r {
        Err(e) if e.contains("own device") => format!(
            "{}'s record is stale or forged: its podnetd publishes its real key at its next lease renewal; restart podnetd on {} to publish it now",
            p.name, p.name
        ),
        _ => format!(
            "podnetd on {node} configures its peers from the datastore within a second unless it runs with --no-repair; restart it"
        ),
    };
    b.check(
        where_,
        "wireguard-peer",
        r.is_ok(),
        match &r {
            Ok(c) => format!(
                "{} is peer {} at {}, latest handshake {}",
                p.name,
                c.public_key,
                c.endpoint,
                age(c.last_handshake)
            ),
            Err(e) => e.clone(),
        },
        kernel,
        format!("podnet wireguard status   (or: wg show {dev}, on {node})"),
        &fix,
    );
}

/// The command that puts podnet's route to `peer` (of one family, `v6`) back by hand.
pub(crate) fn route_fix(st: &Status, peer: Option<&PeerStatus>, v6: bool) -> String {
    let ip = if v6 { "ip -6" } else { "ip" };
    let add = match peer {
        Some(p) => {
            let (gw, dev, onlink) = podnet_route(st, p, v6);
            format!(
                "{ip} route replace {} {} proto 0x50",
                peer_cidr(p, v6),
                via_text(&gw, &dev, onlink)
            )
        }
        None => format!("{ip} route replace <peer CIDR> via <next hop> dev <device> proto 0x50"),
    };
    format!(
        "podnetd restores it within a second unless it runs with --no-repair; or by hand: {add}"
    )
}

pub(crate) fn route_text(r: &RouteState) -> String {
    let mut t = r.dst.clone();
    if let Some(g) = r.gateway {
        t.push_str(&format!(" via {g}"));
    }
    if let Some(d) = &r.dev {
        t.push_str(&format!(" dev {d}"));
    }
    if r.onlink {
        t.push_str(" onlink");
    }
    if is_podnets(r) {
        t.push_str(" proto 0x50");
    }
    t
}

pub(super) fn link<'a>(state: &'a NodeState, name: &str) -> Option<&'a LinkState> {
    state.links.iter().find(|l| l.name == name)
}

/// A link as `ip link` prints it, in short.
pub(super) fn link_text(name: &str, up: bool, mtu: u32, master: Option<&str>) -> String {
    format!(
        "{name}: <{}> mtu {mtu}{}",
        if up { "UP" } else { "DOWN" },
        master.map(|m| format!(" master {m}")).unwrap_or_default()
    )
}

pub(super) fn neigh_text(n: &NeighState, dev: Option<&str>) -> String {
    format!(
        "{}{} lladdr {} {}",
        n.ip,
        dev.map(|d| format!(" dev {d}")).unwrap_or_default(),
        n.mac.as_deref().unwrap_or("(none)"),
        n.state
    )
}
