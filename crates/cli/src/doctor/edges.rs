//! The node's edges: the underlay guard (what comes in from the wire), outbound
//! masquerade (what leaves the cluster) and what podnet cannot serve of the node's
//! Service set-up (kube-proxy in IPVS mode).

use super::{NodeView, Out};

pub(super) fn underlay_guard(out: &mut Out, n: &NodeView) {
    let Some(g) = &n.st.underlay_guard else {
        out.put(
            "underlay guard",
            "broken",
            "the agent reports no underlay guard: encapsulated traffic is taken from anyone".into(),
            "this podnetd is older than the guard, or failed to load it: see its log",
        );
        return;
    };
    let drops: Vec<String> = g
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let refused = if drops.is_empty() {
        "nothing refused".to_string()
    } else {
        format!("refused: {}", drops.join(", "))
    };
    if !g.attached {
        out.check(
            "underlay guard",
            false,
            format!("podnet_guard is not on the ingress of {}: encapsulated traffic is taken from anyone", g.device),
            &format!("`tc filter show dev {} ingress`; podnetd puts it back within a second (`repairing drift`): if it does not, see its log", g.device),
        );
    } else if g.peers != n.st.peers.len() {
        out.check(
            "underlay guard",
            false,
            format!("the guard on {} admits {} peers, the agent has {}: traffic from the others is refused as vxlan-src", g.device, g.peers, n.st.peers.len()),
            "see podnetd's log for underlay guard errors",
        );
    } else {
        out.put(
            "underlay guard",
            "ok",
            format!("on {}, {} peers admitted; {refused}", g.device, g.peers),
            "",
        );
    }
}

/// Outbound masquerade: on and in place, or off by choice.
pub(super) fn masquerade(out: &mut Out, n: &NodeView) {
    for p in &n.st.service_problems {
        out.check("services", false, p.clone(), "reconfigure kube-proxy on this node and restart it; then delete the kube-ipvs0 device (`ip link del kube-ipvs0`)");
    }
    let Some(m) = &n.st.masquerade else {
        return;
    };
    masquerade_family(out, m, false);
    if let Some(m6) = &m.ipv6 {
        masquerade_family(out, m6, true);
    }
}

/// One family's masquerade table (`masquerade`, `masquerade6`).
fn masquerade_family(out: &mut Out, m: &podnet_api::MasqueradeStatus, v6: bool) {
    let (check, table, off) = if v6 {
        ("masquerade6", "table ip6 podnet_nat", "off (--masquerade-ipv6=false, or a global IPv6 range): pods' IPv6 leaving the cluster keeps the pod's address; the network must route the IPv6 pod range back")
    } else {
        ("masquerade", "table ip podnet_nat", "off (--masquerade=false): pod traffic leaving the cluster keeps the pod's address; the network must route pod CIDRs back")
    };
    if !m.on {
        out.put(check, "ok", off.into(), "");
    } else if let Some(p) = &m.problem {
        out.check(
            check,
            false,
            format!("{p}: pod traffic leaving the cluster may leave with the pod's address and get no reply"),
            &format!("podnetd writes {table} again within a second (`repairing drift` in its log); `nft list {table}` on the node shows it"),
        );
    } else {
        out.put(
            check,
            "ok",
            format!(
                "from {} to anything outside {}: {} packets so far",
                m.cluster,
                m.keep.join(", "),
                m.packets
            ),
            "",
        );
    }
}
