//! The hops between two nodes, and on the destination node.

use super::*;

/// Between the two nodes: the source node's route, forwarding and overlay entries
/// towards the destination, the destination's way back (read before probing, so a
/// broken return path is not blamed on the physical network), then the physical
/// network probed from the source.
pub(super) fn between_nodes(b: &mut Builder, s: &End, d: &End, vteps: &[Vtep]) -> Result<()> {
    let (sn, sst, s_state, sc) = (&s.node, &s.st, &s.state, &s.agent);
    let (dn, dip) = (&d.node, d.ip);
    let v6 = dip.is_ipv6();
    let r = lookup(s_state.routes_for(dip), dip);
    let peer = sst.peers.iter().find(|p| &p.name == dn);
    let vx = sst.vxlan_dev.clone();
    let want = peer
        .map(|p| peer_cidr(p, v6).to_string())
        .unwrap_or_default();
    let bad = route_to_peer_mismatch(r, sst, peer, v6);
    let ok = bad.is_none();
    b.check(
        "src-node",
        "route",
        ok,
        match &bad {
            None => format!("{dip} goes to peer {dn} ({want})"),
            Some(why) => format!("{dn}'s pod CIDR {want} is not routed to {dn}: {why}"),
        },
        r.map(route_text).unwrap_or_else(|| "(none)".into()),
        format!("ip route get {dip}   (on {sn})"),
        &route_fix(sst, peer, v6),
    );
    forwarding_hop(
        b,
        "src-node",
        sn,
        s_state,
        v6,
        " (podnetd turns it on when repair is on)",
    );
    if !vx.is_empty() {
        overlay_hops(b, "src-node", sn, s_state, &vx, (peer, d), vteps, v6);
    }
    let wg = sst.wireguard.as_ref().map(|w| w.device.clone());
    if let Some(dev) = &wg {
        device_hop(
            b,
            "src-node",
            "wireguard",
            sn,
            (s_state, sst),
            dev,
            "WireGuard device",
        );
        wireguard_peer_hop(b, "src-node", sn, (sst, peer), Some(&d.st), v6);
    }
    // ---- the destination node's way back to the source (read before probing, so
    // a broken return path is not blamed on the physical network)
    let back = way_back(s, d, &vx, vteps);
    let back_ok = !back.hops.iter().any(|h| h.status == "broken");
    // ---- the physical network, probed from the source node
    let overlay = match (&sst.wireguard, vx.is_empty()) {
        (Some(_), _) => Some(Overlay::WireGuard),
        (None, false) => Some(Overlay::Vxlan),
        (None, true) => None,
    };
    underlay_dev_hops(b, s, d);
    underlay_hops(b, sn, sc, sst, peer, overlay, back_ok)?;
    b.hops.extend(back.hops);
    Ok(())
}

/// Forwarding of one family (`v6`) on `node` (kernel state `state`), as a hop. An
/// agent that does not report IPv6 forwarding leaves it unjudged.
fn forwarding_hop(
    b: &mut Builder,
    where_: &str,
    node: &str,
    state: &NodeState,
    v6: bool,
    fix_note: &str,
) {
    let (family, key, on) = if v6 {
        let Some(on) = state.forwarding6 else {
            return;
        };
        ("IPv6", "net.ipv6.conf.all.forwarding", on)
    } else {
        ("IPv4", "net.ipv4.ip_forward", state.forwarding)
    };
    b.check(
        where_,
        "forwarding",
        on,
        format!(
            "{family} forwarding is {} on {node}",
            if on { "on" } else { "off" }
        ),
        format!("{key} = {}", u8::from(on)),
        format!("sysctl {key}   (on {node})"),
        &format!("sysctl -w {key}=1{fix_note}"),
    );
}

/// The destination node's way back to the source: its devices, forwarding, its route
/// to the source node's pod CIDR, its overlay entries or WireGuard peer for it.
fn way_back(s: &End, d: &End, vx: &str, vteps: &[Vtep]) -> Builder {
    let (sn, sst, sip) = (&s.node, &s.st, s.ip);
    let (dn, dst_st, d_state) = (&d.node, &d.st, &d.state);
    let mut back = Builder { hops: vec![] };
    if let Some(dev) = dst_st.wireguard.as_ref().map(|w| &w.device) {
        device_hop(
            &mut back,
            "dst-node",
            "wireguard",
            dn,
            (d_state, dst_st),
            dev,
            "WireGuard device",
        );
    }
    if !vx.is_empty() {
        device_hop(
            &mut back,
            "dst-node",
            "link",
            dn,
            (d_state, dst_st),
            vx,
            "VXLAN device",
        );
    }
    let v6 = sip.is_ipv6();
    forwarding_hop(&mut back, "dst-node", dn, d_state, v6, "");
    let src_peer = dst_st.peers.iter().find(|p| &p.name == sn);
    let back_cidr = src_peer
        .map(|p| peer_cidr(p, v6).to_string())
        .unwrap_or_default();
    let br = lookup(d_state.routes_for(sip), sip);
    let bad = route_to_peer_mismatch(br, dst_st, src_peer, v6);
    let ok = bad.is_none();
    back.check(
        "dst-node",
        "route",
        ok,
        match &bad {
            None => format!("replies to {sip} go back to {sn} ({back_cidr})"),
            Some(why) => {
                format!("{dn} does not route replies back to {sn}'s pod CIDR {back_cidr}: {why}")
            }
        },
        br.map(route_text).unwrap_or_else(|| "(none)".into()),
        format!("ip route get {sip}   (on {dn})"),
        &route_fix(dst_st, src_peer, v6),
    );
    if !vx.is_empty() {
        overlay_hops(
            &mut back,
            "dst-node",
            dn,
            d_state,
            vx,
            (src_peer, s),
            vteps,
            v6,
        );
    }
    if dst_st.wireguard.is_some() {
        wireguard_peer_hop(&mut back, "dst-node", dn, (dst_st, src_peer), Some(sst), v6);
    }
    back
}

/// The destination node: its bridge, its route to the pod's bridge, the pod's
/// neighbour entry (held against the pod's real MAC), the pod's host veth. The bridge
/// comes first: a bridge that is down takes its connected route with it, and a route
/// missing for that reason is not the cause.
pub(super) fn dst_node_hops(b: &mut Builder, d: &End, macs: &Macs, cross: bool) {
    let (dn, dst_st, d_state, dip, d_pod) = (&d.node, &d.st, &d.state, d.ip, &d.pod);
    let d_bridge = dst_st.bridge.clone();
    if cross {
        bridge_hop(b, "dst-node", dn, d_state, dst_st);
    }
    let bridge_down = match link(d_state, &d_bridge) {
        None => Some(format!("bridge {d_bridge} on {dn} is missing")),
        Some(l) if !l.up => Some(format!("bridge {d_bridge} on {dn} is down")),
        Some(_) => None,
    };
    let dr = lookup(d_state.routes_for(dip), dip);
    let ok = dr.is_some_and(|r| r.dev.as_deref() == Some(d_bridge.as_str()));
    let (status, detail) = match (&bridge_down, ok) {
        (_, true) => ("ok", format!("{dip} is on {d_bridge}")),
        (Some(why), false) => (
            "warn",
            format!("{dn} does not route {dip} to {d_bridge}: the kernel removed the bridge's connected route because {why} (its own hop)"),
        ),
        (None, false) => (
            "broken",
            format!("{dn} does not route {dip} to its bridge {d_bridge}"),
        ),
    };
    b.add(
        "dst-node",
        "route",
        status,
        detail,
        dr.map(route_text).unwrap_or_else(|| "(none)".into()),
        format!("ip route get {dip}   (on {dn})"),
        if status == "broken" {
            "the bridge must hold the gateway address of the node's pod CIDR (of each family); restart podnetd"
        } else {
            ""
        },
    );
    b.hops.push(node_neigh_for_pod(
        "dst-node", macs, dip, d_pod, &d.name, cross,
    ));
    host_veth_hop(b, "dst-node", dn, d_pod, dst_st, &d.name);
}
