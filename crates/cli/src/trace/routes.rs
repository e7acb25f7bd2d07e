//! Routes and links as trace reads them: the route a node takes to a pod, whether it
//! is podnet's, the WireGuard peer for a node, and how each is printed.

use super::*;

/// The most specific route in `routes` that covers `ip`.
pub(super) fn lookup(routes: &[RouteState], ip: Ipv4Addr) -> Option<&RouteState> {
    routes
        .iter()
        .filter_map(|r| {
            let net: Ipv4Net = if r.dst == "default" {
                "0.0.0.0/0".parse().ok()?
            } else {
                r.dst.parse().ok()?
            };
            net.contains(ip).then_some((net.prefix(), r))
        })
        .max_by_key(|(p, _)| *p)
        .map(|(_, r)| r)
}

pub(super) fn is_podnets(r: &RouteState) -> bool {
    r.protocol == podnet_conventions::RTPROT_PODNET
}

/// Why `r` (the route the lookup chose) is not the route podnet makes on a node
/// with agent status `st` to `peer`: prefix, protocol, next hop and device
/// (VXLAN: via the peer CIDR's first address on the VXLAN device, onlink;
/// host-gw: via the peer's underlay address on the underlay device).
/// `None` when it is that route.
pub(crate) fn route_to_peer_mismatch(
    r: Option<&RouteState>,
    st: &Status,
    peer: Option<&PeerStatus>,
) -> Option<String> {
    let Some(peer) = peer else {
        return Some("the agent knows no such peer".into());
    };
    let Some(r) = r else {
        return Some("no route covers it".into());
    };
    if r.dst != peer.pod_cidr {
        return Some(format!("the lookup gives {}", route_text(r)));
    }
    if !is_podnets(r) {
        return Some(format!(
            "the route {} was not made by podnet (protocol is not 0x50)",
            route_text(r)
        ));
    }
    let (gw, dev, onlink) = podnet_route(st, peer);
    let rgw = r.gateway.map(|g| g.to_string()).unwrap_or_default();
    if rgw != gw || r.dev.as_deref().unwrap_or("") != dev || r.onlink != onlink {
        return Some(format!(
            "the route {} should go via {gw} dev {dev}{}",
            route_text(r),
            if onlink { " onlink" } else { "" }
        ));
    }
    None
}

/// Next hop, device and onlink of the route podnet makes to `peer` on a node
/// with agent status `st`.
pub(super) fn podnet_route(st: &Status, peer: &PeerStatus) -> (String, String, bool) {
    let first = || {
        peer.pod_cidr
            .parse::<Ipv4Net>()
            .map(|n| n.network().to_string())
            .unwrap_or_default()
    };
    match (&st.wireguard, st.vxlan_dev.is_empty()) {
        (Some(w), _) => (first(), w.device.clone(), true),
        (None, false) => (first(), st.vxlan_dev.clone(), true),
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
    let want = format!("{}:{}", peer.underlay_ip, peer.wireguard_port);
    if c.endpoint != want {
        return Err(format!(
            "{} sends {}'s packets to {}, not to {want}",
            w.device, peer.name, c.endpoint
        ));
    }
    Ok(c)
}

/// The WireGuard peer a node holds for `peer`, as a hop (with the latest handshake's
/// age in its detail).
pub(super) fn wireguard_peer_hop(
    b: &mut Builder,
    where_: &str,
    node: &str,
    (st, peer): (&Status, Option<&PeerStatus>),
    peer_st: Option<&Status>,
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
    let r = wireguard_peer_mismatch(st, p, peer_st);
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

/// The command that puts podnet's route to `peer` back by hand.
pub(crate) fn route_fix(st: &Status, peer: Option<&PeerStatus>) -> String {
    let add = match peer {
        Some(p) => {
            let (gw, dev, onlink) = podnet_route(st, p);
            format!(
                "ip route replace {} via {gw} dev {dev}{} proto 0x50",
                p.pod_cidr,
                if onlink { " onlink" } else { "" }
            )
        }
        None => "ip route replace <peer CIDR> via <next hop> dev <device> proto 0x50".into(),
    };
    format!(
        "podnetd restores it within a second unless it runs with --no-repair; or by hand: {add}"
    )
}

pub(super) fn route_text(r: &RouteState) -> String {
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
