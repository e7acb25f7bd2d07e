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
    if !m.on {
        out.put(
            "masquerade",
            "ok",
            "off (--masquerade=false): pod traffic leaving the cluster keeps the pod's address; the network must route pod CIDRs back".into(),
            "",
        );
    } else if let Some(p) = &m.problem {
        out.check(
            "masquerade",
            false,
            format!("{p}: pod traffic leaving the cluster may leave with the pod's address and get no reply"),
            "podnetd writes table ip podnet_nat again within a second (`repairing drift` in its log); `nft list table ip podnet_nat` on the node shows it",
        );
    } else {
        out.put(
            "masquerade",
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
